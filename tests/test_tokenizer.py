"""The BPE trainer, the ranks files, the shipped course tokenizer and GPT-2's tokenizer."""

from __future__ import annotations

import importlib.util
import os
import random
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import regex
import tiktoken
import tiktoken.load
import tiktoken.registry
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wikigpt_lib import tokenizer as tok
from wikigpt_lib.tokenizer import (
    COURSE_TOKENIZER_FILE,
    COURSE_VOCAB_SIZE,
    EOT,
    SPLIT_PATTERN,
    TokenizerUnavailableError,
    bytes_per_token,
    get_tokenizer,
    load_bpe,
    save_bpe,
    train_bpe,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL_CORPUS = [
    " = Robert Boulter = \n",
    " Robert Boulter is an English film , television and theatre actor . \n",
    " He had a guest @-@ starring role on the television series The <unk> in 2000 . \n",
    "",
    " In 2006 , Boulter starred alongside <unk> in the play Herons written by Simon <unk> . \n",
    " He appeared on a 2006 episode of the television series , Doctors , 'cause it's fun! \n",
    " Über café naïve — 東京 😀 tabs\tand  double  spaces  \n",
]


def _random_corpus(seed: int) -> list[str]:
    """Rows of made-up words over a small alphabet, so pairs repeat and counts often tie."""
    rng = random.Random(seed)
    letters = rng.choice(["abc", "abcd", "abcde "])
    return [
        " ".join(
            "".join(rng.choice(letters) for _ in range(rng.randint(1, 9)))
            for _ in range(rng.randint(1, 8))
        )
        for _ in range(rng.randint(20, 60))
    ]


@pytest.fixture(scope="module")
def small_enc() -> tiktoken.Encoding:
    return train_bpe(SMALL_CORPUS * 3, 400)


@pytest.fixture(scope="module")
def course_enc() -> tiktoken.Encoding:
    return get_tokenizer()


def _merged_tokens(enc: tiktoken.Encoding) -> list[bytes]:
    """The merged tokens of a byte-level BPE encoding, in rank order."""
    specials = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    ranks = [r for r in range(256, enc.max_token_value + 1) if r not in specials]
    return [enc.decode_single_token_bytes(r) for r in ranks]


# ----------------------------------------------------------------------------- references


def _reference_train(texts: list[str], n_merges: int) -> list[bytes]:
    """Textbook BPE: recount every pair each step, merge the best (ties: smallest ids)."""
    words = Counter(w for t in texts for w in regex.findall(SPLIT_PATTERN, t))
    chunks = [(list(w.encode("utf-8")), n) for w, n in words.items()]
    tokens = [bytes([b]) for b in range(256)]
    for _ in range(n_merges):
        counts: Counter[tuple[int, int]] = Counter()
        for ids, n in chunks:
            for pair in pairwise(ids):
                counts[pair] += n
        if not counts or max(counts.values()) < 2:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        new_id = len(tokens)
        tokens.append(tokens[best[0]] + tokens[best[1]])
        chunks = [(_replace_pair(ids, best, new_id), n) for ids, n in chunks]
    return tokens[256:]


def _replace_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _reference_encode(merged: list[bytes], text: str) -> list[int]:
    """Pre-split, then apply the learned merges one after another, each left to right."""
    rank = {t: 256 + k for k, t in enumerate(merged)}
    out = []
    for chunk in regex.findall(SPLIT_PATTERN, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        for token in merged:
            i, joined = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] + parts[i + 1] == token:
                    joined.append(token)
                    i += 2
                else:
                    joined.append(parts[i])
                    i += 1
            parts = joined
        out += [rank[p] if len(p) > 1 else p[0] for p in parts]
    return out


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("seed", range(6))
def test_trainer_matches_textbook_bpe(seed):
    texts = _random_corpus(seed)
    n_merges = 40
    enc = train_bpe(texts, 256 + n_merges + 1)
    assert _merged_tokens(enc) == _reference_train(texts, n_merges)


@pytest.mark.parametrize("texts", [SMALL_CORPUS, _random_corpus(7), _random_corpus(8)])
def test_tiktoken_encodes_training_text_as_the_merges_say(texts):
    enc = train_bpe(texts, 256 + 60 + 1)
    merged = _merged_tokens(enc)
    for text in texts:
        assert enc.encode_ordinary(text) == _reference_encode(merged, text)


def test_training_is_deterministic(tmp_path):
    a = save_bpe(train_bpe(SMALL_CORPUS, 256 + 50 + 1), tmp_path / "a.tiktoken")
    b = save_bpe(train_bpe(SMALL_CORPUS, 256 + 50 + 1), tmp_path / "b.tiktoken")
    assert a.read_bytes() == b.read_bytes()


def test_ties_go_to_the_smallest_pair():
    # "cd" and "ab" both occur twice: (97, 98) beats (99, 100), whatever the input order.
    for texts in (["cd", "ab", "cd", "ab"], ["ab", "cd", "ab", "cd"]):
        enc = train_bpe(texts, 256 + 2 + 1)
        assert _merged_tokens(enc) == [b"ab", b"cd"]


def test_more_merges_extend_fewer():
    texts = _random_corpus(3)
    long = _merged_tokens(train_bpe(texts, 256 + 50 + 1))
    for k in (1, 10, 30):
        assert _merged_tokens(train_bpe(texts, 256 + k + 1)) == long[:k]


def test_vocab_layout_and_special_token_last(small_enc):
    assert small_enc.n_vocab == 400
    assert small_enc.eot_token == 399 == small_enc.max_token_value
    assert [small_enc.decode_single_token_bytes(b) for b in (0, 65, 255)] == [b"\0", b"A", b"\xff"]
    assert len(small_enc.decode_single_token_bytes(256)) == 2  # the first merge


def test_stops_early_when_no_pair_repeats():
    with pytest.warns(UserWarning, match="stopped after 1 of"):
        enc = train_bpe(["ab", "ab"], 1000)
    assert _merged_tokens(enc) == [b"ab"]
    assert enc.eot_token == 257 == enc.n_vocab - 1


def test_empty_corpus_gives_bytes_only():
    with pytest.warns(UserWarning, match="stopped after 0"):
        enc = train_bpe([], 300)
    assert enc.n_vocab == 257
    assert enc.decode(enc.encode_ordinary("hi")) == "hi"


@pytest.mark.parametrize("vocab_size", [0, 255, 256, 300.0])
def test_vocab_size_too_small(vocab_size):
    with pytest.raises(ValueError, match="vocab_size >= 257"):
        train_bpe(SMALL_CORPUS, vocab_size)


def test_texts_must_be_strings():
    with pytest.raises(TypeError, match=r"wrap it as \[text\]"):
        train_bpe("just one string", 300)
    with pytest.raises(TypeError, match=r"texts\[1\] is a bytes"):
        train_bpe(["ok", b"bytes"], 300)


def test_bad_pattern_and_special_tokens():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        train_bpe(SMALL_CORPUS, 300, pattern="(")
    with pytest.raises(ValueError, match="distinct non-empty"):
        train_bpe(SMALL_CORPUS, 300, special_tokens=[EOT, EOT])


# ----------------------------------------------------------------------------- round trips

TRICKY = st.text(alphabet=st.sampled_from(list("ab <unk>|@-\n\t\r\x00é東😀\u200d'sl")))


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(st.text(), TRICKY))
@example(text="")
@example(text="😀👍🏽 family: 👨‍👩‍👧")
@example(text="\x00\x01\x1f\x7f\r\n\t\x0b\x0c")
@example(text=" the <unk> of <unk><unk> <<unk>> <|endoftext|>")
def test_round_trip(course_enc, small_enc, text):
    for enc in (course_enc, small_enc):
        assert enc.decode(enc.encode_ordinary(text)) == text


def test_endoftext_follows_tiktoken(course_enc):
    text = "one<|endoftext|>two"
    with pytest.raises(ValueError, match="disallowed special token"):
        course_enc.encode(text)
    plain = course_enc.encode_ordinary(text)
    assert course_enc.eot_token not in plain
    special = course_enc.encode(text, allowed_special={EOT})
    assert special.count(course_enc.eot_token) == 1
    assert course_enc.decode(special) == course_enc.decode(plain) == text


# ----------------------------------------------------------------------------- course tokenizer


def test_course_tokenizer_shape(course_enc):
    assert course_enc.n_vocab == COURSE_VOCAB_SIZE
    assert course_enc.eot_token == COURSE_VOCAB_SIZE - 1
    assert get_tokenizer("course") is course_enc  # alias, cached


def test_unk_is_one_token(course_enc):
    ids = course_enc.encode_ordinary(" the <unk> of")
    assert [course_enc.decode_single_token_bytes(i) for i in ids] == [b" the", b" <unk>", b" of"]
    assert course_enc.decode(ids) == " the <unk> of"


def test_unknown_tokenizer_name():
    with pytest.raises(ValueError, match="wikitext2, course, gpt2"):
        get_tokenizer("gpt-4")


def test_bytes_per_token(small_enc):
    assert bytes_per_token(train_bpe([], 256, special_tokens=()), "héllo") == 1.0
    assert bytes_per_token(small_enc, " the television series") > 2
    with pytest.raises(ValueError, match="non-empty"):
        bytes_per_token(small_enc, "")


# ----------------------------------------------------------------------------- files


def test_save_load_round_trip(small_enc, tmp_path):
    path = save_bpe(small_enc, tmp_path / "sub" / "small.tiktoken")
    lines = path.read_bytes().splitlines()
    assert len(lines) == small_enc.n_vocab - 1  # no line for <|endoftext|>
    assert lines[65] == b"QQ== 65"
    loaded = load_bpe(path)
    assert loaded.name == "small"
    assert loaded.n_vocab == small_enc.n_vocab and loaded.eot_token == small_enc.eot_token
    text = " ".join(SMALL_CORPUS)
    assert loaded.encode_ordinary(text) == small_enc.encode_ordinary(text)
    again = save_bpe(loaded, tmp_path / "again.tiktoken")
    assert again.read_bytes() == path.read_bytes()
    assert not [p for p in tmp_path.rglob("*.tmp")]  # nothing left behind


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No BPE ranks file"):
        load_bpe(tmp_path / "nope.tiktoken")


@pytest.mark.parametrize(
    "bad_line, message",
    [
        (b"!!notbase64 2", "line 3: expected"),
        (b"Ag==", "line 3: expected"),
        (b"Ag== two", "line 3: expected"),
        (b"Ag== 5", "line 3: rank 5 is out of order"),
        (b"AA== 2", "line 3: token"),
    ],
)
def test_load_malformed_line(small_enc, tmp_path, bad_line, message):
    lines = save_bpe(small_enc, tmp_path / "ok.tiktoken").read_bytes().splitlines()
    lines[2] = bad_line
    broken = tmp_path / "broken.tiktoken"
    broken.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=message):
        load_bpe(broken)


def test_load_needs_every_byte(tmp_path):
    path = tmp_path / "short.tiktoken"
    path.write_bytes(b"AA== 0\nAQ== 1\n")
    with pytest.raises(ValueError, match="254 single bytes have no rank"):
        load_bpe(path)


def test_shipped_file_is_what_save_writes(course_enc, tmp_path):
    shipped = ROOT / "wikigpt_lib" / "assets" / COURSE_TOKENIZER_FILE
    assert save_bpe(course_enc, tmp_path / "x.tiktoken").read_bytes() == shipped.read_bytes()


def _tool():
    spec = importlib.util.spec_from_file_location(
        "train_course_tokenizer", ROOT / "tools" / "train_course_tokenizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_read_rows_like_hugging_face(tmp_path):
    path = tmp_path / "wiki.train.tokens"
    path.write_bytes(b" \n = Title = \n \t \n text <unk> .\nlast")
    assert _tool().read_rows(path) == ["", " = Title = \n", "", " text <unk> .\n", "last"]


def test_retraining_reproduces_the_shipped_file(tmp_path):
    data_dir = os.environ.get("WIKIGPT_DATA_DIR")
    if not data_dir:
        pytest.skip("WIKIGPT_DATA_DIR is not set: retraining needs WikiText-2's wiki.train.tokens")
    enc = _tool().train_course_tokenizer(data_dir, COURSE_VOCAB_SIZE)
    fresh = save_bpe(enc, tmp_path / COURSE_TOKENIZER_FILE).read_bytes()
    assert fresh == (ROOT / "wikigpt_lib" / "assets" / COURSE_TOKENIZER_FILE).read_bytes()


# ----------------------------------------------------------------------------- gpt2


@pytest.fixture(scope="module")
def gpt2_enc() -> tiktoken.Encoding:
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        pytest.skip("TIKTOKEN_CACHE_DIR is not set: the tests never download GPT-2's files")
    try:
        return get_tokenizer("gpt2")
    except TokenizerUnavailableError as err:
        pytest.skip(f"GPT-2 tokenizer unavailable: {err}")


def test_gpt2_known_ids(gpt2_enc):
    assert gpt2_enc.encode("Hello world") == [15496, 995]
    assert gpt2_enc.n_vocab == 50257 and gpt2_enc.eot_token == 50256


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No GPT-2 files anywhere: an empty cache, a forgotten registry, and no network."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})

    def no_network(blobpath):
        raise ConnectionError(f"(test) no network for {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    return monkeypatch


def test_gpt2_unavailable_error(offline):
    with pytest.raises(TokenizerUnavailableError, match="TIKTOKEN_CACHE_DIR") as info:
        get_tokenizer("gpt2")
    assert isinstance(info.value, RuntimeError)
    assert "could not be downloaded" in str(info.value)
    assert "(test) no network" in str(info.value)


def test_gpt2_stalled_download_gives_up(offline):
    def stall(blobpath):
        time.sleep(0.5)
        raise ConnectionError("(test) gave up")

    offline.setattr(tiktoken.load, "read_file", stall)
    offline.setattr(tok, "GPT2_LOAD_TIMEOUT_S", 0.05)
    with pytest.raises(TokenizerUnavailableError, match="no answer in 0 s"):
        get_tokenizer("gpt2")


def test_variants_register_from_above():
    """The tokenizer module knows nothing of chat: chat_template registers "-chat"."""
    from wikigpt_lib import tokenizer as tk

    assert "-chat" in tk._VARIANTS  # registered when wikigpt_lib was imported
    chat = tk.get_tokenizer("course-chat")
    assert chat.n_vocab == tk.COURSE_VOCAB_SIZE + 4 and chat.name == "course-chat"
    with pytest.raises(ValueError, match="each also with '-chat'"):
        tk.get_tokenizer("bert-chat")
    with pytest.raises(ValueError, match="starts with '-'"):
        tk.register_tokenizer_variant("chat", lambda name: chat)
