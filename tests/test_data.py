"""Loading, reading, tokenizing and batching WikiText-2 (and the built-in sample corpus)."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from wikigpt_lib import data
from wikigpt_lib.data import (
    TokenWindowDataset,
    WikiTextNotFoundError,
    count_words,
    detokenize,
    get_batch,
    iter_eval_batches,
    load_wikitext2,
    rows_from_text,
    split_articles,
    tokenize_split,
    wikitext2_source,
)
from wikigpt_lib.sample_corpus import sample_wikitext, write_sample_files
from wikigpt_lib.tokenizer import get_tokenizer

REAL = os.environ.get("WIKIGPT_DATA_DIR")
needs_real = pytest.mark.skipif(not REAL, reason="WIKIGPT_DATA_DIR is not set: no real WikiText-2")


@pytest.fixture
def no_sources(monkeypatch):
    """No data_dir, no env var, no hub: only the fallback is left."""
    monkeypatch.delenv("WIKIGPT_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "hub_reachable", lambda: False)


def test_rows_follow_the_hugging_face_convention():
    text = " \n = Title = \n \n Some text , here . \n\u2028 odd line \n"
    assert rows_from_text(text) == [
        "",
        " = Title = \n",
        "",
        " Some text , here . \n",
        "\u2028 odd line \n",
    ]


def test_folder_round_trip_equals_sample_rows(tmp_path, monkeypatch):
    monkeypatch.delenv("WIKIGPT_DATA_DIR", raising=False)
    for variant, suffix in (("tokens", "tokens"), ("raw", "raw")):
        folder = write_sample_files(tmp_path / variant, variant)
        ds = load_wikitext2(variant, data_dir=folder)
        expected = sample_wikitext(variant)
        assert list(ds) == ["train", "validation", "test"]
        assert ds["validation"]["text"] == expected["valid"]
        assert ds["train"]["text"] == expected["train"]
        assert wikitext2_source(ds) == str(folder)
        assert (folder / f"wiki.test.{suffix}").is_file()


def test_env_var_is_used(tmp_path, monkeypatch):
    folder = write_sample_files(tmp_path)
    monkeypatch.setenv("WIKIGPT_DATA_DIR", str(folder))
    assert wikitext2_source(load_wikitext2()) == str(folder)


def test_missing_split_file_is_named(tmp_path, monkeypatch):
    folder = write_sample_files(tmp_path)
    (folder / "wiki.valid.tokens").unlink()
    with pytest.raises(WikiTextNotFoundError, match=r"wiki\.valid\.tokens"):
        load_wikitext2(data_dir=folder)


def test_non_utf8_file_is_named(tmp_path):
    folder = write_sample_files(tmp_path)
    (folder / "wiki.test.tokens").write_bytes(b" = T = \n caf\xe9 \n")
    with pytest.raises(ValueError, match=r"wiki\.test\.tokens is not UTF-8.*offset 12"):
        load_wikitext2(data_dir=folder)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown variant"):
        load_wikitext2("wikitext-103")
    with pytest.raises(ValueError, match="fallback"):
        load_wikitext2(fallback="yes")


def test_nothing_reachable_says_what_was_tried(no_sources):
    with pytest.raises(WikiTextNotFoundError) as err:
        load_wikitext2()
    message = str(err.value)
    assert "WIKIGPT_DATA_DIR" in message and "huggingface.co cannot be reached" in message
    assert "fallback='sample'" in message


def test_fallback_warns_and_returns_the_sample(no_sources):
    with pytest.warns(UserWarning, match="SAMPLE corpus"):
        ds = load_wikitext2(fallback="sample")
    assert wikitext2_source(ds) == "built-in sample corpus"
    assert ds["train"]["text"] == sample_wikitext()["train"]


def test_offline_env_skips_the_hub(monkeypatch):
    monkeypatch.delenv("WIKIGPT_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(data, "hub_reachable", lambda: pytest.fail("probed the hub while offline"))
    with pytest.raises(WikiTextNotFoundError, match="HF_HUB_OFFLINE"):
        load_wikitext2()


def test_hub_path_and_its_failure(monkeypatch):
    monkeypatch.delenv("WIKIGPT_DATA_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(data, "hub_reachable", lambda: True)
    monkeypatch.setattr(data, "_from_hub", lambda variant: data._sample(variant))
    assert wikitext2_source(load_wikitext2()).startswith("Hugging Face hub")

    def broken(variant):
        raise ConnectionError("read timed out")

    monkeypatch.setattr(data, "_from_hub", broken)
    with pytest.raises(WikiTextNotFoundError, match="ConnectionError: read timed out"):
        load_wikitext2()


def test_sample_corpus_is_deterministic_and_shaped_like_wikitext():
    a, b = sample_wikitext(), sample_wikitext()
    assert a == b and a is not b
    train = a["train"]
    assert 300_000 < sum(map(len, train)) < 600_000
    assert train[0] == "" and train[1].startswith(" = ") and train[1].endswith(" = \n")
    assert any(row.startswith(" = = ") for row in train)
    assert any(" @,@ " in row for row in train)
    assert any("<unk>" in row for row in train)
    assert not any("<unk>" in row for row in sample_wikitext("raw")["train"])
    raw = sample_wikitext("raw")
    titles = [art.title for split in raw.values() for art in split_articles(split)]
    assert len(titles) == 288 and len(set(titles)) > 280  # different articles in each split


def test_split_articles():
    rows = [
        "",
        " = First = \n",
        "",
        " text one \n",
        " = = Part = = \n",
        " more \n",
        " = Second = \n",
        " two \n",
    ]
    arts = split_articles(rows)
    assert [a.title for a in arts] == ["First", "Second"]
    assert arts[0].text == " text one \n = = Part = = \n more \n"


@pytest.mark.parametrize(
    "wiki, plain",
    [
        (
            "a well @-@ known town , 1 @,@ 000 people ( est . ) .",
            "a well-known town, 1,000 people (est.).",
        ),
        (
            'it is 3 @.@ 5 km long ; the " old " road \'s end !',
            'it is 3.5 km long; the "old" road\'s end!',
        ),
        ("they didn 't : see [ 1 ]", "they didn't: see [1]"),
    ],
)
def test_detokenize(wiki, plain):
    assert detokenize(wiki) == plain


def test_count_words():
    assert count_words(["", " a b c \n", " d \n"]) == 1 + 4 + 2


def test_tokenize_split_caches_and_matches_whole_text(tmp_path):
    enc = get_tokenizer()
    rows = sample_wikitext()["valid"]
    ids = tokenize_split(rows, enc, cache_dir=tmp_path)
    assert ids.dtype == np.uint16
    assert ids.tolist() == enc.encode_ordinary("".join(rows))
    (cached,) = list(tmp_path.iterdir())
    assert np.array_equal(tokenize_split(rows, enc, cache_dir=tmp_path), ids)
    cached.write_bytes(b"not a numpy file")  # a broken cache is rebuilt, not trusted
    assert np.array_equal(tokenize_split(rows, enc, cache_dir=tmp_path), ids)
    assert np.load(cached).tolist() == ids.tolist()


def test_cache_key_depends_on_the_tokenizer(tmp_path):
    from wikigpt_lib.tokenizer import train_bpe

    rows = sample_wikitext()["valid"][:200]
    small = train_bpe(rows, 300, name="same-name")
    other = train_bpe(rows[::-1], 320, name="same-name")
    a = tokenize_split(rows, small, cache_dir=tmp_path)
    b = tokenize_split(rows, other, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2 and len(a) != len(b)


def test_get_batch_shifts_targets_and_is_reproducible():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = get_batch(tokens, 4, 8, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)  # consecutive integers: the target is the next token
    x2, _ = get_batch(tokens, 4, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_eval_windows_cover_the_split_without_overlap():
    tokens = np.arange(50, dtype=np.uint16)
    batches = list(iter_eval_batches(tokens, 2, 8))
    xs = torch.cat([x for x, _ in batches]).flatten()
    assert xs.tolist() == list(range(48))  # 6 windows of 8, the leftover 1 token dropped
    assert [len(x) for x, _ in batches] == [2, 2, 2]
    ds = TokenWindowDataset(tokens, 8, stride=4)
    assert len(ds) == 11 and ds[1][0].tolist() == list(range(4, 12))
    loader = torch.utils.data.DataLoader(TokenWindowDataset(tokens, 8), batch_size=3)
    assert [x.shape for x, _ in loader] == [(3, 8), (3, 8)]


def test_batching_bad_sizes():
    tokens = np.arange(5, dtype=np.uint16)
    with pytest.raises(ValueError, match="too few"):
        get_batch(tokens, 1, 8)
    with pytest.raises(ValueError, match=">= 1"):
        get_batch(np.arange(50), 0, 8)
    with pytest.raises(ValueError, match="stride"):
        TokenWindowDataset(np.arange(50), 8, stride=0)


@needs_real
def test_real_wikitext2_rows_and_counts():
    ds = load_wikitext2(data_dir=Path(REAL))
    assert {k: len(v) for k, v in ds.items()} == {
        "train": 36_718,
        "validation": 3_760,
        "test": 4_358,
    }
    assert (
        ds["train"][0]["text"] == "" and ds["train"][1]["text"] == " = Valkyria Chronicles III = \n"
    )
    assert ds["validation"][1]["text"] == " = Homarus gammarus = \n"
    assert count_words(ds["validation"]["text"]) == 217_646
    assert count_words(ds["test"]["text"]) == 245_569
    assert len(split_articles(ds["validation"]["text"])) == 60
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real data must not fall back
        load_wikitext2(fallback="sample")
