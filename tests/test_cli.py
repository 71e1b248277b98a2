"""The `wikigpt` command line."""

import subprocess
import sys

import pytest

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


# ----------------------------------------------------------------------------- wikigpt train

QUICK_RUN = ["--preset", "cpu-quick", "--data", "sample", "--no-progress", "--eval-batches", "2"]


def _train(out, *extra):
    return main(["train", "--out", str(out), *QUICK_RUN, *extra])


def test_train_end_to_end_then_resume(tmp_path, capsys):
    import json

    import torch

    from wikigpt_lib.checkpoint import load_model

    out = tmp_path / "run"
    assert _train(out, "--max-steps", "6", "--eval-interval", "3") == 0
    printed = capsys.readouterr().out
    assert "stopped: max_steps at step 6" in printed and "best validation loss" in printed
    assert json.loads((out / "latest.json").read_text())["step"] == 6
    model = load_model(out)
    logits, _ = model(torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, model.config.vocab_size)

    # --resume continues from step 6 with a larger step budget; the data comes from the run.
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "9", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and "at step 6 of 9" in printed and "at step 9" in printed
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert steps == sorted(steps) and steps[-1] == 9


def test_train_refuses_to_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-steps", "2") == 0
    capsys.readouterr()
    assert _train(out, "--max-steps", "2") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--force" in err
    assert _train(out, "--max-steps", "3", "--force") == 0  # starts over
    assert "at step 3" in capsys.readouterr().out


def test_train_force_never_deletes_a_folder_that_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    assert _train(out, "--max-steps", "2", "--force") == 2
    assert "not a wikigpt run folder" in capsys.readouterr().err
    assert (out / "chapter1.tex").read_text() == "precious"


def test_train_bad_arguments_are_clear_errors(tmp_path, capsys):
    assert _train(tmp_path / "a", "--max-steps", "0") == 2
    assert "--max-steps must be an integer >= 1" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "b"), "--data", "no-such-corpus"]) == 2
    assert "unknown data 'no-such-corpus'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "c"), "--resume", "--data", "sample"]) == 2
    assert "holds no run to continue" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    with pytest.raises(SystemExit):  # argparse: unknown preset
        main(["train", "--out", str(tmp_path / "d"), "--preset", "gigantic"])
