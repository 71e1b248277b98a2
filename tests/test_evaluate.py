"""Tests of wikigpt_lib.evaluate (perplexity), wikigpt_lib.ngram (baselines) and `wikigpt eval`."""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_tiny_model, random_tokens

from wikigpt_lib.checkpoint import save_checkpoint
from wikigpt_lib.cli import main
from wikigpt_lib.data import count_words, load_corpus, tokenize_split
from wikigpt_lib.evaluate import evaluate_perplexity, evaluate_split, score_windows
from wikigpt_lib.model import GPT
from wikigpt_lib.ngram import EOS, UNK, KneserNeyLM, UnigramLM, ngram_baselines, words_of
from wikigpt_lib.tokenizer import get_tokenizer

REAL = os.environ.get("WIKIGPT_DATA_DIR")
needs_real = pytest.mark.skipif(not REAL, reason="WIKIGPT_DATA_DIR is not set: no real WikiText-2")


def tiny(seed: int = 0, dtype: torch.dtype = torch.float64) -> GPT:
    """The tiny test GPT without biases (the `tiny` preset's shape at 64 ids and 16 positions),
    in `dtype`, in eval mode."""
    return make_tiny_model(seed, bias=False).to(dtype).eval()


# --- windows -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5, 16, 17, 33, 100, 101])
@pytest.mark.parametrize("stride", [1, 3, 8, 16])
def test_every_token_after_the_first_is_scored_exactly_once(n, stride):
    T = 16
    scored = Counter()
    for start, n_scored in score_windows(n, T, stride):
        T_used = min(T, n - 1)
        assert start >= 0 and start + T_used <= n - 1 and 1 <= n_scored <= T_used
        scored.update(range(start + T_used - n_scored + 1, start + T_used + 1))  # targets
    assert scored == Counter(range(1, n))


def _brute_force_nats(model: GPT, ids: np.ndarray, T: int, stride: int) -> float:
    """Token by token: the loss of token t from the model run on the window that scores it.

    Token t <= T is scored by the first window (inputs 0 ... T-1). A later token is scored by
    window k = ceil((t - T) / stride), which starts at k * stride, or by the last window,
    which ends at the last token, when that start would run past the end."""
    x = torch.from_numpy(ids.astype(np.int64))
    total, last = 0.0, len(ids) - 1
    for t in range(1, len(ids)):
        start = 0 if t <= T else min(math.ceil((t - T) / stride) * stride, last - T)
        logits, _ = model(x[None, start : start + T])
        total += F.cross_entropy(logits[0, t - start - 1], x[t]).item()
    return total


@pytest.mark.parametrize("stride", [1, 5, 16])
def test_sliding_windows_equal_a_direct_computation(stride):
    model, ids = tiny(), random_tokens(70)
    r = evaluate_perplexity(model, ids, stride=stride, batch_size=3)
    expected = _brute_force_nats(model, ids, 16, stride)
    assert r["n_tokens"] == 69 and r["stride"] == stride and r["block_size"] == 16
    assert math.isclose(r["total_nats"], expected, rel_tol=1e-10)
    assert math.isclose(r["loss"], expected / 69, rel_tol=1e-10)


def test_non_overlapping_windows_equal_the_mean_of_model_losses():
    model, ids = tiny(dtype=torch.float32), random_tokens(16 * 7 + 1)
    x = torch.from_numpy(ids.astype(np.int64))
    losses = [
        model(x[None, s : s + 16], x[None, s + 1 : s + 17])[1].item() for s in range(0, 112, 16)
    ]
    r = evaluate_perplexity(model, ids, batch_size=4)
    assert math.isclose(r["loss"], sum(losses) / len(losses), rel_tol=1e-6)
    assert math.isclose(r["token_ppl"], math.exp(r["loss"]), rel_tol=1e-12)
    assert r == evaluate_perplexity(model, torch.from_numpy(ids.astype(np.int64)), stride=16)


def test_a_smaller_block_and_a_short_text():
    model, ids = tiny(), random_tokens(40)
    r = evaluate_perplexity(model, ids, block_size=8, stride=4)
    assert math.isclose(r["total_nats"], _brute_force_nats(model, ids, 8, 4), rel_tol=1e-10)
    short = evaluate_perplexity(model, ids[:6])  # 5 predictions: one window of 5
    assert short["n_tokens"] == 5
    assert math.isclose(short["total_nats"], _brute_force_nats(model, ids[:6], 5, 5))


def test_word_perplexity_and_bits_per_byte():
    model, ids = tiny(), random_tokens(50)
    r = evaluate_perplexity(model, ids, n_words=30, n_bytes=200)
    assert math.isclose(r["word_ppl"], math.exp(r["loss"] * r["n_tokens"] / 30), rel_tol=1e-12)
    assert math.isclose(r["bits_per_byte"], r["loss"] * r["n_tokens"] / math.log(2) / 200)
    plain = evaluate_perplexity(model, ids)
    assert plain["word_ppl"] is None and plain["bits_per_byte"] is None


def test_evaluate_split_counts_words_and_bytes(tmp_path, tiny_preset_model):
    model = tiny_preset_model
    rows = ["", " = Title = \n", "", " Café costs 1 @,@ 000 € , they said . \n", " Bye . \n"]
    enc = get_tokenizer()
    r = evaluate_split(model, rows, enc, use_cache=False)
    assert r["n_words"] == count_words(rows) == 3 + 9 + 3 + 5
    assert r["n_bytes"] == len("".join(rows).encode("utf-8"))
    ids = tokenize_split(rows, enc, use_cache=False)
    assert r == evaluate_perplexity(model, ids, n_words=r["n_words"], n_bytes=r["n_bytes"])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"block_size": 17}, r"block_size must be an integer in \[1, 16\]"),
        ({"block_size": 0}, r"block_size must be an integer in \[1, 16\]"),
        ({"stride": 0}, r"stride must be an integer in \[1, block_size=16\]"),
        ({"stride": 17}, r"stride must be an integer in \[1, block_size=16\]"),
        ({"block_size": 8, "stride": 9}, r"stride must be an integer in \[1, block_size=8\]"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"n_words": 0}, "n_words must be a positive count"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate_perplexity(tiny(), random_tokens(40), **kwargs)


def test_bad_ids_and_training_mode():
    model = tiny()
    with pytest.raises(ValueError, match="at least 2 tokens"):
        evaluate_perplexity(model, [3])
    with pytest.raises(TypeError, match="integer token ids"):
        evaluate_perplexity(model, np.zeros(10))
    model.train()
    evaluate_perplexity(model, random_tokens(20))
    assert model.training  # set back


# --- n-gram baselines ----------------------------------------------------------------------

TRAIN = [" the cat sat on the mat \n", "", " the dog sat on the log \n", " a cat ran \n"]
TEST = [" the cat sat on the log \n", " a bird sat \n", ""]  # "bird" is unseen


def test_words_of_matches_count_words():
    assert words_of(TRAIN)[:7] == ["the", "cat", "sat", "on", "the", "mat", EOS]
    assert len(words_of(TRAIN)) == count_words(TRAIN) == 7 + 1 + 7 + 4


CONTEXTS = [(), ("the",), ("the", "cat"), ("sat", "on"), ("on", "the"), ("bird", "zebra"),
            (UNK,), ("cat", EOS), ("x", "y", "the", "dog")]  # fmt: skip


@pytest.mark.parametrize("model", [UnigramLM(), KneserNeyLM(2), KneserNeyLM(3), KneserNeyLM(4)])
def test_ngram_probabilities_sum_to_one(model):
    model.fit(words_of(TRAIN))
    assert set(model.vocab) == set(words_of(TRAIN)) | {UNK}
    for context in CONTEXTS:
        p = model.probs(context)
        assert p.shape == (model.vocab_size,) and (p > 0).all()
        assert math.isclose(p.sum(), 1.0, rel_tol=1e-12), context


def _kneser_ney_by_hand(train: list[str], D: float, u: str, v: str, w: str) -> float:
    """Interpolated Kneser-Ney trigram probability from the textbook formulas, with dicts."""
    words = [EOS, EOS, *train]
    vocab = sorted(set(words) | {UNK})
    tri = Counter(zip(words, words[1:], words[2:], strict=False))
    bi_types = {(b, c) for _, b, c in tri}  # bigrams that end a trigram
    cont_bi = Counter((b, c) for _, b, c in tri)  # N1+(. b c)
    cont_uni = Counter(c for _, c in bi_types)  # N1+(. c) over those bigram types
    total_uni = sum(cont_uni.values())
    p1 = max(cont_uni[w] - D, 0) / total_uni + D * len(cont_uni) / total_uni / len(vocab)
    after_v = {c: n for (b, c), n in cont_bi.items() if b == v}
    p2 = p1
    if after_v:
        c_v = sum(after_v.values())
        p2 = max(after_v.get(w, 0) - D, 0) / c_v + D * len(after_v) / c_v * p1
    after_uv = {c: n for (a, b, c), n in tri.items() if (a, b) == (u, v)}
    if not after_uv:
        return p2
    c_uv = sum(after_uv.values())
    return max(after_uv.get(w, 0) - D, 0) / c_uv + D * len(after_uv) / c_uv * p2


def test_kneser_ney_matches_the_formulas():
    train = words_of(TRAIN)
    model = KneserNeyLM(3, discount=0.6).fit(train)
    for u, v in [("the", "cat"), ("sat", "on"), ("cat", "sat"), ("dog", "cat"), (EOS, EOS)]:
        p = model.probs((u, v))
        for w in model.vocab:
            expected = _kneser_ney_by_hand(train, 0.6, u, v, w)
            assert math.isclose(p[model.index[w]], expected, rel_tol=1e-12), (u, v, w)


def test_ngram_perplexity_and_unknown_words():
    train, test = words_of(TRAIN), words_of(TEST)
    uni = UnigramLM().fit(train)
    counts = Counter(train)
    n, V = len(train), len(uni.vocab)
    expected = [(counts[w if w in counts else UNK] + 1) / (n + V) for w in test]
    assert math.isclose(uni.perplexity(test), math.exp(-np.mean(np.log(expected))))
    tri = KneserNeyLM(3).fit(train)
    assert tri.encode(["bird"])[0] == tri.index[UNK]  # unseen words are read as <unk>
    probs = np.exp(tri.log_probs(test))  # each word given the two before it
    for i, w in enumerate(test):
        expected = tri.probs(test[max(0, i - 2) : i])[tri.encode([w])[0]]
        assert math.isclose(probs[i], expected, rel_tol=1e-12)
    results = ngram_baselines(TRAIN, TEST)
    assert results["n_words"] == count_words(TEST) and results["oov_rate"] == 1 / 12
    assert results["trigram (Kneser-Ney)"] == pytest.approx(tri.perplexity(test))


def test_ngram_bad_arguments():
    with pytest.raises(ValueError, match="order must be an integer >= 2"):
        KneserNeyLM(1)
    with pytest.raises(ValueError, match=r"discount must be in \(0, 1\)"):
        KneserNeyLM(3, discount=1.5)
    with pytest.raises(ValueError, match="add must be > 0"):
        UnigramLM(add=0)


@needs_real
@pytest.mark.real_data
def test_ngram_baselines_on_wikitext2():
    ds = load_corpus("wikitext-2")
    results = ngram_baselines(ds["train"]["text"], ds["test"]["text"])
    assert results["n_words"] == 245_569 and results["oov_rate"] == 0
    # Recorded 2026-11-25 (python -m wikigpt_lib.ngram): 914.4, 266.4, 235.4.
    assert results["unigram (add-one)"] == pytest.approx(914.4, abs=0.1)
    assert results["bigram (Kneser-Ney)"] == pytest.approx(266.4, abs=0.1)
    assert results["trigram (Kneser-Ney)"] == pytest.approx(235.4, abs=0.1)


# --- command line --------------------------------------------------------------------------


def test_cli_eval(tmp_path, monkeypatch, capsys, tiny_preset_model):
    monkeypatch.setenv("WIKIGPT_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_preset_model
    state = {"step": 1, "best_val_loss": None}
    save_checkpoint(tmp_path / "run", model=model, train_config={}, state=state, is_best=True)
    args = ["eval", "--checkpoint", str(tmp_path / "run"), "--data", "sample"]
    assert main([*args, "--split", "test", "--stride", "16"]) == 0
    out = capsys.readouterr().out
    r = evaluate_split(model, load_corpus("sample")["test"], get_tokenizer(), stride=16)
    assert f"loss          {r['loss']:.4f} nats/token" in out
    assert f"word ppl      {r['word_ppl']:.2f}" in out and "stride 16" in out
    assert f"bits per byte {r['bits_per_byte']:.4f}" in out and f"{r['n_words']:,} words" in out
    assert main([*args, "--split", "valid"]) == 0
    assert "sample (built-in sample corpus) validation" in capsys.readouterr().out
    assert main([*args, "--stride", "99"]) == 2
    assert "stride must be an integer in [1, block_size=32]" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_ngram_command_prints_the_baselines(capsys):
    from wikigpt_lib import ngram

    ngram.main(["--data", "sample", "--split", "validation"])
    out = capsys.readouterr().out
    assert "sample (built-in sample corpus), validation:" in out
    assert out.count("word perplexity") == 3 and "trigram (Kneser-Ney)" in out
