"""The `wikigpt` command line."""

import subprocess
import sys

from wikigpt_lib.cli import main
from wikigpt_lib.sample_corpus import write_sample_files
from wikigpt_lib.tokenizer import load_bpe


def test_tokenize_shows_pieces(capsys):
    assert main(["tokenize", " The <unk> river"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 tokens") and "' <unk>'" in out


def test_bpe_trains_and_saves(tmp_path, capsys):
    folder = write_sample_files(tmp_path / "data")
    out = tmp_path / "bpe.tiktoken"
    assert main(["bpe", "--vocab-size", "300", "--out", str(out), "--data-dir", str(folder)]) == 0
    assert load_bpe(out).n_vocab == 300
    assert "trained 300 tokens" in capsys.readouterr().out


def test_info_runs_offline(monkeypatch, capsys):
    from wikigpt_lib import data

    monkeypatch.delenv("WIKIGPT_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out and "course tokenizer" in out and "not found" in out


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    code = main(
        ["bpe", "--vocab-size", "10", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("wikigpt bpe: error:") and "Traceback" not in err


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "wikigpt_lib", "--help"], capture_output=True, text=True, check=True
    )
    assert "tokenize" in result.stdout and "bpe" in result.stdout
