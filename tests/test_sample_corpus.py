"""The built-in sample corpus: deterministic, WikiText-shaped, and loadable like the real files."""

import hashlib
import os
import re
import subprocess
import sys

import pytest

from wikigpt_lib import sample_corpus
from wikigpt_lib.data import load_wikitext2, split_articles
from wikigpt_lib.sample_corpus import sample_wikitext, write_sample_files

SPLITS = ("train", "valid", "test")


def digest(rows: list[str]) -> str:
    return hashlib.sha256("".join(rows).encode()).hexdigest()


def test_same_rows_every_call_and_a_fresh_list_each_time():
    a, b = sample_wikitext(), sample_wikitext()
    assert a == b and a["train"] is not b["train"]
    a["train"].clear()  # the caller's copy: the cached corpus is not touched
    assert sample_wikitext()["train"] == b["train"]


def test_same_rows_in_a_fresh_process_with_another_hash_seed():
    # load the module by path: importing the package would pull in torch (slow)
    code = (
        "import hashlib, importlib.util as u, sys; "
        "spec = u.spec_from_file_location('sc', sys.argv[1]); m = u.module_from_spec(spec); "
        "spec.loader.exec_module(m); "
        "print(hashlib.sha256(''.join(m.sample_wikitext()['train']).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, sample_corpus.__file__],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == digest(sample_wikitext()["train"])


def test_sizes():
    sizes = {name: sum(map(len, rows)) for name, rows in sample_wikitext("raw").items()}
    assert 300_000 <= sizes["train"] <= 500_000
    for split in ("valid", "test"):
        assert 0.05 * sizes["train"] < sizes[split] < 0.15 * sizes["train"]


def test_splits_hold_different_articles():
    titles = {s: [a.title for a in split_articles(r)] for s, r in sample_wikitext("raw").items()}
    assert all(len(t) >= 20 for t in titles.values())
    for s in SPLITS:
        assert len(set(titles[s])) > 0.95 * len(titles[s])  # invented names rarely repeat
    assert not set(titles["valid"]) & set(titles["train"])
    assert not set(titles["test"]) & set(titles["train"])


@pytest.mark.parametrize("variant", ["tokens", "raw"])
def test_rows_look_like_wikitext(variant):
    train = sample_wikitext(variant)["train"]
    assert train[:3] == ["", train[1], ""] and re.fullmatch(r" = [^=].* = \n", train[1])
    assert all(row == "" or (row.startswith(" ") and row.endswith(" \n")) for row in train)
    assert all(row.count("\n") == (row != "") for row in train)  # one line per row
    assert any(re.fullmatch(r" = = [^=].* = = \n", row) for row in train)  # sections
    text = "".join(train)
    for mark in (" @-@ ", " @,@ ", " @.@ ", " , ", " . ", ' " ', " ( "):
        assert mark in text, mark
    assert re.search(r" \d+ @,@ \d{3} ", text) and re.search(r" 1[5-9]\d\d ", text)  # numbers
    assert "  " not in text.replace(" \n", "")  # words separated by exactly one space


def test_unk_only_in_the_tokens_variant_and_only_for_rare_words():
    tokens, raw = sample_wikitext("tokens"), sample_wikitext("raw")
    assert not any("<unk>" in row for rows in raw.values() for row in rows)
    for split in SPLITS:
        assert any("<unk>" in row for row in tokens[split])
        # the same text with some words replaced: word for word, row for row
        for t_row, r_row in zip(tokens[split], raw[split], strict=True):
            t_words, r_words = t_row.split(" "), r_row.split(" ")
            assert len(t_words) == len(r_words)
            assert all(t == r or t == "<unk>" for t, r in zip(t_words, r_words, strict=True))
    counts: dict[str, int] = {}
    for row in raw["train"]:
        for word in row.split():
            counts[word] = counts.get(word, 0) + 1
    kept = {w for row in tokens["train"] for w in row.split()}
    assert all((counts[w] >= 3) == (w in kept) for w in counts)  # rare <=> replaced
    assert "<unk>" not in counts


def test_bad_variant(tmp_path):
    with pytest.raises(ValueError, match="Unknown variant"):
        sample_wikitext("wikitext-103")
    with pytest.raises(ValueError, match="Unknown variant"):
        write_sample_files(tmp_path / "unused", "Raw")
    assert not (tmp_path / "unused").exists()  # nothing written for a bad variant


@pytest.mark.parametrize("variant", ["tokens", "raw"])
def test_files_round_trip_through_the_loader(tmp_path, variant):
    folder = write_sample_files(tmp_path, variant)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"wiki.{s}.{variant}" for s in SPLITS)
    assert (folder / f"wiki.train.{variant}").read_text(encoding="utf-8").startswith(" \n = ")
    ds = load_wikitext2(variant, data_dir=folder)
    rows = sample_wikitext(variant)
    assert {name: ds[name]["text"][:] for name in ds} == {
        "train": rows["train"],
        "validation": rows["valid"],
        "test": rows["test"],
    }
