"""N-gram baselines: what a GPT has to beat, in the same word-level units.

The text is a stream of words: each row split on whitespace, then an end-of-line word
`<eos>` (so blank rows count too, as in `wikigpt_lib.data.count_words`). `<unk>`, WikiText-2's
marker for a rare word, is an ordinary word. Words never seen in training are read as
`<unk>` (in wikitext-2-v1 there are none: every test and validation word occurs in train).
The stream starts with order - 1 `<eos>` words, as if it followed a line end.

UnigramLM     P(w) = (c(w) + 1) / (N + V): add-one (Laplace) smoothing
KneserNeyLM   interpolated Kneser-Ney (plain: one discount D per model, 0.75 by default)

Interpolated Kneser-Ney, for a context h (the n-1 words before w) and h' (h without its
first word):

    P(w | h) = max(c(h w) - D, 0) / c(h ·)  +  D · N1+(h ·) / c(h ·) · P(w | h')

c(h w) counts the n-gram at the top order; at lower orders it is the *continuation count*
N1+(· h w), the number of different words seen before h w. That is the idea of Kneser-Ney:
"Francisco" is frequent but follows almost only "San", so as a guess after an unseen context
it should be rare. N1+(h ·) is the number of different words seen after h, so the mass taken
off by the discount is exactly what the lower order gets. A context never seen falls back
to the lower order. At the bottom, the unigram continuation distribution is itself
discounted and interpolated with the uniform 1 / V, so every word of the vocabulary has a
probability above zero, and every distribution sums to 1 (tested).

Everything is counted with numpy on integer-coded n-grams, so WikiText-2 train (2.1M words)
fits in a few seconds. `python -m wikigpt_lib.ngram` prints the baselines.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterable, Sequence

import numpy as np

EOS, UNK = "<eos>", "<unk>"


def words_of(rows: Iterable[str]) -> list[str]:
    """The word stream of rows of text: each row's whitespace-separated words, then `<eos>`.
    len(words_of(rows)) == count_words(rows)."""
    words: list[str] = []
    for row in rows:
        words.extend(row.split())
        words.append(EOS)
    return words


class _WordLM:
    """Vocabulary handling and scoring shared by the n-gram models."""

    order = 1

    def _build_vocab(self, words: Sequence[str]) -> np.ndarray:
        self.vocab = sorted(set(words) | {EOS, UNK})
        self.index = {w: i for i, w in enumerate(self.vocab)}
        return self.encode(words)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, words: Sequence[str]) -> np.ndarray:
        """Word ids (int64); words outside the vocabulary become `<unk>`."""
        unk = self.index[UNK]
        return np.fromiter((self.index.get(w, unk) for w in words), np.int64, len(words))

    def _padded(self, ids: np.ndarray) -> np.ndarray:
        pad = np.full(self.order - 1, self.index[EOS], dtype=np.int64)
        return np.concatenate([pad, ids])

    def _contexts(self, padded: np.ndarray) -> np.ndarray:
        """(M, order-1) the context of each word of a padded stream of M + order - 1 ids."""
        n, k = len(padded) - (self.order - 1), self.order - 1
        return np.stack([padded[j : j + n] for j in range(k)], axis=1) if k else np.empty((n, 0))

    def _prob(self, contexts: np.ndarray, words: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def log_probs(self, words: Sequence[str]) -> np.ndarray:
        """ln P(word | the order-1 words before it) for every word of the stream (nats)."""
        padded = self._padded(self.encode(words))
        ctx = self._contexts(padded).astype(np.int64)  # (M, order-1)
        return np.log(self._prob(ctx, padded[self.order - 1 :]))

    def probs(self, context: Sequence[str] = ()) -> np.ndarray:
        """P(w | context) for every word w of `self.vocab` (sums to 1). Only the last
        order-1 words of `context` matter; a shorter one is padded with `<eos>` on the left."""
        k = self.order - 1
        ctx = ([EOS] * k + list(context))[len(context) :]  # the last k words, padded
        ctx_ids = self.encode(ctx)  # (k,)
        V = self.vocab_size
        return self._prob(np.tile(ctx_ids, (V, 1)), np.arange(V, dtype=np.int64))

    def perplexity(self, words: Sequence[str]) -> float:
        """exp(mean negative log-likelihood per word) over the word stream `words`."""
        return math.exp(-float(np.mean(self.log_probs(words))))


class UnigramLM(_WordLM):
    """P(w) = (c(w) + add) / (N + add · V), over the training vocabulary (+ `<unk>`)."""

    order = 1

    def __init__(self, add: float = 1.0) -> None:
        if add <= 0:
            raise ValueError(f"add must be > 0 (it keeps unseen words possible), got {add}.")
        self.add = add

    def fit(self, words: Sequence[str]) -> UnigramLM:
        """Count the words of a training stream (see `words_of`). Returns self."""
        ids = self._build_vocab(words)
        counts = np.bincount(ids, minlength=self.vocab_size).astype(np.float64)
        self.p = (counts + self.add) / (counts.sum() + self.add * self.vocab_size)  # (V,)
        return self

    def _prob(self, contexts: np.ndarray, words: np.ndarray) -> np.ndarray:
        return self.p[words]


class KneserNeyLM(_WordLM):
    """Interpolated Kneser-Ney n-gram model (plain: one discount for every order)."""

    def __init__(self, order: int = 3, discount: float = 0.75) -> None:
        if isinstance(order, bool) or not isinstance(order, int) or order < 2:
            raise ValueError(f"order must be an integer >= 2 (use UnigramLM for 1), got {order!r}.")
        if not 0 < discount < 1:
            raise ValueError(f"discount must be in (0, 1), got {discount}.")
        self.order, self.discount = order, discount

    def fit(self, words: Sequence[str]) -> KneserNeyLM:
        """Count n-grams of every order in a training stream (see `words_of`). Returns self."""
        ids = self._padded(self._build_vocab(words))
        V, n = self.vocab_size, self.order
        if V**n >= 2**63:
            raise ValueError(f"a vocabulary of {V} words is too large for order {n} n-gram keys.")
        # An n-gram is one int64 key, its words as digits in base V (first word first), so
        # sorting keys sorts n-grams by context, then word.
        keys = sum(ids[j : len(ids) - n + 1 + j] * V ** (n - 1 - j) for j in range(n))
        keys, counts = np.unique(keys, return_counts=True)  # top order: raw counts
        self.levels: dict[int, tuple[np.ndarray, ...]] = {}
        for k in range(n, 1, -1):
            self.levels[k] = self._level(keys, counts.astype(np.float64))
            # Continuation counts of the (k-1)-grams: in how many k-gram types each ends.
            keys, counts = np.unique(keys % V ** (k - 1), return_counts=True)
        self.uni = np.zeros(V)
        self.uni[keys] = counts  # (V,) continuation counts N1+(· w)
        return self

    def _level(self, keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per-context totals c(h ·) and number of different next words N1+(h ·)."""
        ctx = keys // self.vocab_size  # sorted, since keys are
        ctx_keys, first, n_types = np.unique(ctx, return_index=True, return_counts=True)
        totals = np.add.reduceat(counts, first)
        return keys, counts, ctx_keys, totals, n_types.astype(np.float64)

    def _prob(self, contexts: np.ndarray, words: np.ndarray) -> np.ndarray:
        """P(words[i] | contexts[i]) for (M, order-1) contexts and (M,) words."""
        D, V = self.discount, self.vocab_size
        # Bottom: discounted continuation unigram, interpolated with the uniform distribution.
        total, n_types = self.uni.sum(), np.count_nonzero(self.uni)
        p = np.maximum(self.uni[words] - D, 0) / total + D * n_types / total / V
        for k in range(2, self.order + 1):  # then each order interpolates with the one below
            h = contexts[:, self.order - k :]  # (M, k-1): the last k-1 words of the context
            h_key = sum(h[:, j] * V ** (k - 2 - j) for j in range(k - 1))
            keys, counts, ctx_keys, totals, n_types = self.levels[k]
            c_hw = _lookup(keys, counts, h_key * V + words)
            c_h = _lookup(ctx_keys, totals, h_key)
            t_h = _lookup(ctx_keys, n_types, h_key)
            seen = c_h > 0
            c_h = np.where(seen, c_h, 1.0)  # avoid 0/0; unseen contexts take the lower order
            interpolated = np.maximum(c_hw - D, 0) / c_h + D * t_h / c_h * p
            p = np.where(seen, interpolated, p)
        return p


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """values of `queries` in `sorted_keys`, 0 where absent."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries))
    at = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == queries, values[at], 0.0)


def ngram_baselines(
    train_rows: Iterable[str], eval_rows: Iterable[str], discount: float = 0.75
) -> dict[str, float]:
    """Word-level perplexity on `eval_rows` of models trained on `train_rows`: add-one unigram,
    Kneser-Ney bigram and trigram. Also the number of words and the out-of-vocabulary rate."""
    train, test = words_of(train_rows), words_of(eval_rows)
    models = {
        "unigram (add-one)": UnigramLM(),
        "bigram (Kneser-Ney)": KneserNeyLM(2, discount),
        "trigram (Kneser-Ney)": KneserNeyLM(3, discount),
    }
    results = {name: m.fit(train).perplexity(test) for name, m in models.items()}
    vocab = models["unigram (add-one)"].index
    results["n_words"] = len(test)
    results["oov_rate"] = sum(w not in vocab for w in test) / len(test)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m wikigpt_lib.ngram [--split test] [--data wikitext-2]`: print the baselines."""
    from wikigpt_lib.data import load_corpus, wikitext2_source

    parser = argparse.ArgumentParser(description="n-gram baselines, word-level perplexity")
    parser.add_argument("--data", default="wikitext-2")
    parser.add_argument("--split", choices=["validation", "test"], default="test")
    parser.add_argument("--discount", type=float, default=0.75)
    args = parser.parse_args(argv)
    ds = load_corpus(args.data)
    start = time.perf_counter()
    results = ngram_baselines(ds["train"]["text"], ds[args.split]["text"], args.discount)
    print(
        f"{args.data} ({wikitext2_source(ds)}), {args.split}: {results['n_words']:,} words, "
        f"{results['oov_rate']:.2%} out of vocabulary"
    )
    for name, ppl in results.items():
        if name not in ("n_words", "oov_rate"):
            print(f"  {name:<22} word perplexity {ppl:8.1f}")
    print(f"(trained and scored in {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
