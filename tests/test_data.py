"""Loading, reading, tokenizing and batching WikiText-2 (offline; real data when available)."""

import os
import random
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tiktoken
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

REAL = os.environ.get("WIKIGPT_DATA_DIR")
needs_real = pytest.mark.skipif(not REAL, reason="WIKIGPT_DATA_DIR is not set: no real WikiText-2")

# Pre-tokenizer regexes in the style of GPT-2 and of cl100k (simplified), to build small
# tiktoken encodings here instead of depending on downloaded files.
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CL100K_PAT = (
    r"""'(?:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
MERGES = [b"th", b" t", b" th", b"he", b" the", b"an", b" a", b"\n\n", b" \n", b" \n ", b"  "]


def make_encoding(name="test-bpe", pat=GPT2_PAT, merges=MERGES) -> tiktoken.Encoding:
    ranks = {bytes([i]): i for i in range(256)}
    for token in merges:
        ranks[token] = len(ranks)
    return tiktoken.Encoding(name, pat_str=pat, mergeable_ranks=ranks, special_tokens={})


class FakeTokenizer:
    """Only what tokenize_split promises to need: no batch method, one id per character."""

    def __init__(self, n_vocab=300):
        self.name, self.n_vocab, self.calls = "fake", n_vocab, 0

    def encode_ordinary(self, text):
        self.calls += 1
        return [self.n_vocab - 1 - (ord(c) % 256) for c in text]


@pytest.fixture
def no_sources(monkeypatch):
    """No data_dir, no env var, no offline flag, no hub: only the fallback is left."""
    monkeypatch.delenv("WIKIGPT_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "_hub_offline", lambda: (False, False))
    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    monkeypatch.setattr(data, "_from_hub", lambda v: pytest.fail("tried the unreachable hub"))


# ----------------------------------------------------------------------------- loading


def test_rows_follow_the_hugging_face_convention():
    text = " \n = Title = \n \n Some text , here . \n\u2028 odd\x0c line \n\t\n"
    assert rows_from_text(text) == [
        "",
        " = Title = \n",
        "",
        " Some text , here . \n",
        "\u2028 odd\x0c line \n",  # not split: only "\n" ends a row
        "",
    ]
    assert rows_from_text(" a \n b") == [" a \n", " b\n"]  # no final newline: same rows


def test_data_dir_comes_first_then_the_env_var(tmp_path, monkeypatch):
    first = write_sample_files(tmp_path / "first")
    second = write_sample_files(tmp_path / "second")
    monkeypatch.setenv("WIKIGPT_DATA_DIR", str(second))
    assert wikitext2_source(load_wikitext2(data_dir=first)) == str(first)
    assert wikitext2_source(load_wikitext2()) == str(second)
    with pytest.warns(UserWarning, match="is not a folder"):  # a typo is not silently ignored
        ds = load_wikitext2(data_dir=tmp_path / "typo")
    assert wikitext2_source(ds) == str(second)


def test_raw_variant_reads_raw_files(tmp_path):
    folder = write_sample_files(tmp_path, "raw")
    ds = load_wikitext2("raw", data_dir=folder)
    assert ds["train"]["text"][:] == sample_wikitext("raw")["train"]
    with pytest.raises(WikiTextNotFoundError, match=r"wiki\.train\.tokens"):
        load_wikitext2("tokens", data_dir=folder)


def test_missing_split_file_is_named_with_what_is_there(tmp_path):
    folder = write_sample_files(tmp_path)
    (folder / "wiki.valid.tokens").unlink()
    with pytest.raises(WikiTextNotFoundError, match=r"wiki\.valid\.tokens") as err:
        load_wikitext2(data_dir=folder)
    assert "wiki.train.tokens" in str(err.value)  # lists what the folder holds
    assert isinstance(err.value, FileNotFoundError)


def test_non_utf8_file_is_named_with_the_offset(tmp_path):
    folder = write_sample_files(tmp_path)
    (folder / "wiki.test.tokens").write_bytes(b" = T = \n caf\xe9 \n")
    with pytest.raises(ValueError, match=r"wiki\.test\.tokens is not UTF-8.*offset 12"):
        load_wikitext2(data_dir=folder)


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    folder = write_sample_files(tmp_path)
    real_read = Path.read_bytes

    def read_bytes(path):
        if path.name == "wiki.valid.tokens":
            raise PermissionError(13, "Permission denied")
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(OSError, match=r"Cannot read .*wiki\.valid\.tokens: Permission denied"):
        load_wikitext2(data_dir=folder)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"Unknown variant.*'raw', 'tokens'"):
        load_wikitext2("wikitext-103")
    with pytest.raises(ValueError, match="fallback must be None or 'sample'"):
        load_wikitext2(fallback="yes")


def test_nothing_found_says_what_was_tried_and_how_to_fix_it(no_sources):
    with pytest.raises(WikiTextNotFoundError) as err:
        load_wikitext2()
    message = str(err.value)
    assert "data_dir: not set" in message and "$WIKIGPT_DATA_DIR: not set" in message
    assert "huggingface.co:443 cannot be reached" in message
    assert "fallback='sample'" in message and "set WIKIGPT_DATA_DIR" in message


def test_fallback_warns_loudly_and_returns_the_sample(no_sources):
    with pytest.warns(UserWarning, match=r"SAMPLE corpus[\s\S]*NOT WikiText-2"):
        ds = load_wikitext2(fallback="sample")
    assert wikitext2_source(ds) == "built-in sample corpus"
    assert list(ds) == ["train", "validation", "test"] and ds["test"].column_names == ["text"]
    assert ds["validation"]["text"][:] == sample_wikitext()["valid"]


def test_source_of_other_objects_is_unknown():
    assert wikitext2_source({"train": []}).startswith("unknown")


def test_hub_is_used_when_reachable_and_its_errors_are_reported(monkeypatch):
    monkeypatch.delenv("WIKIGPT_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "_hub_offline", lambda: (False, False))
    monkeypatch.setattr(data, "hub_reachable", lambda: True)
    asked = []
    monkeypatch.setattr(data, "_from_hub", lambda v: asked.append(v) or data._to_datasetdict({}))
    assert wikitext2_source(load_wikitext2("raw")).startswith("Hugging Face hub")
    assert asked == ["raw"]

    def broken(variant):
        raise ConnectionError("read timed out")

    monkeypatch.setattr(data, "_from_hub", broken)
    with pytest.raises(WikiTextNotFoundError, match="hub: ConnectionError: read timed out"):
        load_wikitext2()


def test_offline_mode_reads_the_datasets_cache_without_probing(monkeypatch):
    monkeypatch.delenv("WIKIGPT_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "_hub_offline", lambda: (True, True))
    monkeypatch.setattr(data, "hub_reachable", lambda: pytest.fail("probed while offline"))
    monkeypatch.setattr(data, "_from_hub", lambda v: data._to_datasetdict({}))
    assert wikitext2_source(load_wikitext2()).startswith("Hugging Face hub")

    def not_cached(variant):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub")

    monkeypatch.setattr(data, "_from_hub", not_cached)
    with pytest.raises(WikiTextNotFoundError, match=r"datasets cache \(offline mode\)"):
        load_wikitext2()


def test_offline_flag_set_after_importing_datasets_skips_the_hub(monkeypatch):
    monkeypatch.delenv("WIKIGPT_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    assert data._hub_offline() == (True, False)
    monkeypatch.setattr(data, "hub_reachable", lambda: pytest.fail("probed while offline"))
    with pytest.raises(WikiTextNotFoundError, match="set it before importing"):
        load_wikitext2()


def test_probe_gives_up_quickly_and_remembers(monkeypatch):
    calls = []

    def hang(address, timeout):
        calls.append(address)
        time.sleep(1)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org:8443")
    data.hub_reachable.cache_clear()
    try:
        start = time.perf_counter()
        assert data.hub_reachable(0.2) is False
        assert time.perf_counter() - start < 2
        assert data.hub_reachable(0.2) is False and calls == [("hub.example.org", 8443)]
    finally:
        data.hub_reachable.cache_clear()


# ----------------------------------------------------------------------------- reading


def test_split_articles_needs_blank_rows_around_a_title():
    rows = [
        "",
        " = First = \n",
        "",
        " text one \n",
        " = = Part = = \n",
        " Key : Pld \n",
        " = Played , W = \n",  # a table row in real WikiText-2, not a title
        " Wins \n",
        "",
        " = Second = \n",
        "",
        " two \n",
    ]
    arts = split_articles(rows)
    assert [a.title for a in arts] == ["First", "Second"]
    assert arts[0].text == "".join(rows[2:9]) and arts[1].text == " two \n"
    assert split_articles([" no title \n"]) == []


def test_split_articles_on_the_sample():
    rows = sample_wikitext()["test"]
    arts = split_articles(rows)
    titles = [r for r in rows if r.startswith(" = ") and not r.startswith(" = = ")]
    assert len(arts) == len(titles) > 10
    assert "".join(a.text for a in arts) == "".join(r for r in rows if r not in titles)


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
        ("they didn 't : see [ 1 ] ? yes", "they didn't: see [1]? yes"),
        (" = Valkyria Chronicles III = \n", " = Valkyria Chronicles III = \n"),
        ('he said " no " , then " yes "', 'he said "no", then "yes"'),
        ("the Knights ' ships , ' A ' Company", "the Knights ' ships, ' A ' Company"),  # kept
    ],
)
def test_detokenize(wiki, plain):
    assert detokenize(wiki) == plain


def test_count_words():
    assert count_words(["", " a b c \n", " d \n"]) == 1 + 4 + 2
    assert count_words(data._to_datasetdict({"v": ["", " a b \n"]})["v"]) == 4
    with pytest.raises(TypeError, match="one str"):
        count_words(" a b c \n")


# ----------------------------------------------------------------------------- tokenizing


def random_rows(rng: random.Random, n: int) -> list[str]:
    pieces = [" ", "  ", "\n", "\t", "\r", "a", "the", "b", ".", ",", "'s", "7", "12", "@-@", "é"]
    rows = []
    for _ in range(n):
        row = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        rows.append(row + "\n" if rng.random() < 0.8 else row)
    return rows


@pytest.mark.parametrize("pat", [GPT2_PAT, CL100K_PAT], ids=["gpt2", "cl100k"])
def test_cutting_at_safe_row_boundaries_keeps_the_encoding(pat):
    enc = make_encoding(pat=pat)
    rng = random.Random(0)
    cases = [random_rows(rng, 40) for _ in range(300)] + [sample_wikitext()["valid"]]
    for rows in cases:
        blocks = data._blocks(rows, size=1)  # cut at every boundary that is allowed
        assert "".join(blocks) == "".join(rows)
        chunked = [t for ids in enc.encode_ordinary_batch(blocks) for t in ids]
        assert chunked == enc.encode_ordinary("".join(rows)), rows
    assert len(data._blocks(sample_wikitext()["valid"], size=1)) > 100  # it does cut


@pytest.mark.parametrize("rows", [[" a \n", "  b \n"], [" a \n", "b \n"], [" a\n\n", "@b\n"]])
def test_an_unsafe_cut_would_change_the_encoding(rows):
    # why _safe_cut refuses these: each cut splits a whitespace run GPT-2 would split elsewhere
    enc = make_encoding()
    cut = enc.encode_ordinary(rows[0]) + enc.encode_ordinary(rows[1])
    assert cut != enc.encode_ordinary("".join(rows))
    assert data._blocks(rows, size=1) == ["".join(rows)]


def test_tokenize_split_encodes_and_caches(tmp_path):
    enc = make_encoding()
    rows = sample_wikitext()["valid"]
    ids = tokenize_split(rows, enc, cache_dir=tmp_path)
    assert ids.dtype == np.uint16 and ids.ndim == 1
    assert ids.tolist() == enc.encode_ordinary("".join(rows))
    (cached,) = tmp_path.iterdir()  # one file, no temporary left behind
    assert cached.suffix == ".npy" and np.load(cached, allow_pickle=False).tolist() == ids.tolist()
    ds = data._to_datasetdict({"validation": rows})["validation"]
    assert np.array_equal(tokenize_split(ds, enc, cache_dir=tmp_path), ids)  # a Dataset works


def test_second_call_reads_the_cache(tmp_path):
    fake = FakeTokenizer()
    rows = sample_wikitext()["test"][:50]
    first = tokenize_split(rows, fake, cache_dir=tmp_path)
    assert fake.calls >= 1
    calls = fake.calls
    assert np.array_equal(tokenize_split(rows, fake, cache_dir=tmp_path), first)
    assert fake.calls == calls
    tokenize_split(rows, fake, cache_dir=tmp_path, use_cache=False)
    assert fake.calls > calls


@pytest.mark.parametrize("damage", [b"not a numpy file", "truncate", "pickle"])
def test_a_broken_cache_file_is_rebuilt(tmp_path, damage):
    enc = make_encoding()
    rows = sample_wikitext()["test"][:200]
    ids = tokenize_split(rows, enc, cache_dir=tmp_path)
    (cached,) = tmp_path.iterdir()
    if damage == "truncate":
        cached.write_bytes(cached.read_bytes()[:-10])
    elif damage == "pickle":
        np.save(cached, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        cached.write_bytes(damage)
    assert np.array_equal(tokenize_split(rows, enc, cache_dir=tmp_path), ids)
    assert np.load(cached, allow_pickle=False).tolist() == ids.tolist()


def test_cache_key_depends_on_text_and_tokenizer_not_just_its_name(tmp_path):
    rows = sample_wikitext()["test"][:200]
    a = tokenize_split(rows, make_encoding("same-name"), cache_dir=tmp_path)
    b = tokenize_split(rows, make_encoding("same-name", merges=MERGES[:3]), cache_dir=tmp_path)
    assert len(a) < len(b) and len(list(tmp_path.iterdir())) == 2
    tokenize_split(rows[:-5], make_encoding("same-name"), cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3


def test_cache_dir_comes_from_the_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("WIKIGPT_CACHE_DIR", str(tmp_path / "cache"))
    tokenize_split([" a b \n"], FakeTokenizer())
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_large_vocab_gives_uint32_and_fakes_without_batch_work(tmp_path):
    big = FakeTokenizer(n_vocab=70_000)
    ids = tokenize_split([" a \n", " b \n"], big, cache_dir=tmp_path)
    assert ids.dtype == np.uint32 and ids.max() == 70_000 - 1 - ord("\n")
    assert ids.tolist() == big.encode_ordinary(" a \n b \n")
    assert tokenize_split([], FakeTokenizer(), use_cache=False).shape == (0,)


# ----------------------------------------------------------------------------- batching


def test_get_batch_shifts_targets_and_is_reproducible():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = get_batch(tokens, 4, 8, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:] - x[:, :1], torch.arange(1, 8).expand(4, 7))  # windows
    assert torch.equal(y, x + 1)  # consecutive integers: the target is the next token
    x2, y2 = get_batch(tokens, 4, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = get_batch(tokens, 4, 8, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(x, x3)


def test_get_batch_reaches_every_start_including_the_last():
    tokens = np.arange(12, dtype=np.uint32)
    x, y = get_batch(tokens, 2000, 8, generator=torch.Generator().manual_seed(0))
    assert sorted(set(x[:, 0].tolist())) == [0, 1, 2, 3]
    assert y.max().item() == 11  # the last token is used as a target


def test_eval_batches_cover_the_split_in_order_without_overlap():
    tokens = np.arange(50, dtype=np.uint16)
    batches = list(iter_eval_batches(tokens, 4, 8))
    assert [x.shape for x, _ in batches] == [(4, 8), (2, 8)]  # 6 windows, the last batch short
    xs = torch.cat([x for x, _ in batches]).flatten()
    ys = torch.cat([y for _, y in batches]).flatten()
    assert xs.tolist() == list(range(48)) and ys.tolist() == list(range(1, 49))
    assert [x.shape[0] for x, _ in iter_eval_batches(np.arange(9), 4, 8)] == [1]


def test_token_window_dataset():
    tokens = np.arange(50, dtype=np.uint16)
    ds = TokenWindowDataset(tokens, 8, stride=4)
    assert len(ds) == 11 and ds[1][0].tolist() == list(range(4, 12))
    assert ds[10][1].tolist() == list(range(41, 49))
    with pytest.raises(IndexError):
        ds[11]
    loader = torch.utils.data.DataLoader(TokenWindowDataset(tokens, 8), batch_size=4)
    pairs = list(loader)
    assert [x.shape for x, _ in pairs] == [(4, 8), (2, 8)]
    reference = list(iter_eval_batches(tokens, 4, 8))
    for (x, y), (x_ref, y_ref) in zip(pairs, reference, strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_batching_bad_input():
    with pytest.raises(ValueError, match="5 tokens, too few"):
        get_batch(np.arange(5), 1, 8)
    with pytest.raises(ValueError, match="too few"):
        list(iter_eval_batches(np.arange(8), 1, 8))
    with pytest.raises(ValueError, match=">= 1"):
        get_batch(np.arange(50), 0, 8)
    with pytest.raises(ValueError, match=">= 1"):
        TokenWindowDataset(np.arange(50), 0)
    with pytest.raises(ValueError, match="stride"):
        TokenWindowDataset(np.arange(50), 8, stride=0)
    with pytest.raises(TypeError, match="1-D numpy array"):
        get_batch(list(range(50)), 2, 8)


# ----------------------------------------------------------------------------- real data


@needs_real
def test_real_wikitext2_rows_counts_and_articles():
    ds = load_wikitext2(data_dir=Path(REAL))
    assert {k: len(v) for k, v in ds.items()} == {
        "train": 36_718,
        "validation": 3_760,
        "test": 4_358,
    }
    assert (
        ds["train"][0]["text"] == "" and ds["train"][1]["text"] == " = Valkyria Chronicles III = \n"
    )
    assert count_words(ds["validation"]) == 217_646
    assert count_words(ds["test"]) == 245_569
    assert [len(split_articles(ds[s])) for s in ds] == [600, 60, 60]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # found through the env var: no fallback, no warning
        assert wikitext2_source(load_wikitext2(fallback="sample")) == str(Path(REAL))


@needs_real
def test_real_wikitext2_chunked_encoding_equals_whole_text():
    rows = load_wikitext2(data_dir=Path(REAL))["validation"]["text"][:]
    enc = make_encoding()
    blocks = data._blocks(rows, size=4096)
    assert len(blocks) > 50
    chunked = [t for ids in enc.encode_ordinary_batch(blocks) for t in ids]
    assert chunked == enc.encode_ordinary("".join(rows))


def test_epoch_window_starts_visit_every_window_once_per_epoch():
    from wikigpt_lib.data import epoch_window_starts

    n, T, seed = 1000, 16, 3
    windows = (n - T) // T  # 61
    stream = epoch_window_starts(n, T, seed, 0, 3 * windows)
    for e in range(3):
        epoch = stream[e * windows : (e + 1) * windows]
        offsets = epoch % T
        assert len(set(offsets.tolist())) == 1  # one shift per epoch
        assert sorted(epoch.tolist()) == [int(offsets[0]) + i * T for i in range(windows)]
        assert int(epoch.max()) + T + 1 <= n  # every window has its shifted target
    assert not torch.equal(stream[:windows], stream[windows : 2 * windows])  # epochs differ
    # Any slice is the same as the matching part of the whole stream: resuming is exact.
    assert torch.equal(epoch_window_starts(n, T, seed, 50, 30), stream[50:80])
    assert not torch.equal(epoch_window_starts(n, T, seed + 1, 0, 30), stream[:30])
