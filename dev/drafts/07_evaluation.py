# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Evaluation
#
# How good is the course model? Notebook 05 reported a validation loss and its exponential,
# the perplexity, and used them to compare checkpoints of one run. Comparing with *other*
# models (an LSTM from 2018, a trigram model, GPT-2) needs more care: the number depends on how
# a long text is cut into windows, and on the tokenizer. This notebook computes perplexity
# properly, converts it into units that do not depend on the tokenizer, and puts the course
# model on WikiText-2's test split beside simple baselines and published results.
#
# **What you will build**
#
# - perplexity from per-token probabilities, and what the number means;
# - an evaluation over a long text in windows, and the loss as a function of how much context
#   a token gets;
# - sliding-window evaluation, and why non-overlapping windows overstate the perplexity;
# - word-level perplexity and bits per byte, which compare models with different tokenizers;
# - n-gram baselines (unigram, Kneser-Ney bigram and trigram) on the same split, in the same
#   units;
# - the course model's test results beside published results;
# - a check that the notebook's perplexity and word count match `wikigpt_lib.evaluate` and
#   `wikigpt_lib.data.count_words`.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/wiki-gpt/wiki-gpt/blob/main/notebooks/07_evaluation.ipynb)

# %%
import sys

if "google.colab" in sys.modules:  # on Colab, install the course library first
    get_ipython().run_line_magic(
        "pip", 'install -q "wikigpt-lib @ git+https://github.com/wiki-gpt/wiki-gpt"'
    )

# %%
import math
import time
import warnings
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm: no Jupyter widgets

from wikigpt_lib.course import course_model
from wikigpt_lib.data import SAMPLE_SOURCE, load_wikitext2, tokenize_split, wikitext2_source
from wikigpt_lib.device import is_quick, pick_device, quick
from wikigpt_lib.tokenizer import get_tokenizer

torch.set_printoptions(precision=4, sci_mode=False)
plt.rcParams["figure.dpi"] = 80  # small images keep the notebook file small

# %% [markdown]
# ## 1. The course model and the test split
#
# As in notebook 06: the course model from the repository's `runs/cpu` folder (the `cpu`
# preset of notebook 05, trained by `wikigpt train --preset cpu --out runs/cpu`: 4 layers,
# width 256, context 128), or, if that folder is missing, the smaller `cpu-quick` preset trained
# here; in quick mode (the tests) a tiny model trained for 30 steps, and only the first 150 rows
# of the test split. The cell prints what it used; the outputs on GitHub are the course model's
# on the whole test split of `wikitext-2-v1`.

# %% tags=["nbval-ignore-output"]
RUN_DIR = Path("..") / "runs" / "cpu"  # relative to this notebook

ds = load_wikitext2(fallback="sample")
real_data = wikitext2_source(ds) != SAMPLE_SOURCE
tok = get_tokenizer()
device = pick_device()
course = course_model(RUN_DIR, data=ds, tokenizer=tok, device=device)  # loads, or trains here
model, model_name, tokens_seen = course.model, course.description, course.tokens_seen
block_size = model.config.block_size
n_train_tokens = len(tokenize_split(ds["train"], tok))

test_rows = ds["test"]["text"][: quick(len(ds["test"]), 150)]  # rows of text, "\n" included
test_ids = tokenize_split(test_rows, tok)  # (N,) token ids of the rows joined
print("data:", wikitext2_source(ds))
print("model:", model_name)
print(f"  {model.num_params():,} parameters, context {block_size} tokens, on {device}")
print(f"  trained on {tokens_seen / 1e6:.2f}M tokens: {tokens_seen / n_train_tokens:.2f} passes "
      f"over the {n_train_tokens / 1e6:.2f}M tokens of the training split")  # fmt: skip
print(f"test split: {len(test_rows):,} rows, {len(test_ids):,} tokens")

# %% [markdown]
# ## 2. What perplexity means
#
# A language model gives every token of a text a probability, given the tokens before it:
# $p(x_t \mid x_{<t})$. The probability of the whole text is the product, and its negative
# logarithm is a sum, the **total loss** in nats: $-\sum_t \ln p(x_t \mid x_{<t})$. Divided by
# the number of tokens it is the mean loss, the cross-entropy of training. **Perplexity** is its
# exponential:
#
# $$\text{PPL} = \exp\Big(-\frac{1}{N}\sum_{t=1}^{N} \ln p(x_t \mid x_{<t})\Big)
#   = \Big(\prod_t \frac{1}{p(x_t \mid x_{<t})}\Big)^{1/N}$$
#
# the geometric mean of $1/p$. A model that spreads its probability evenly over $k$ tokens
# gives each correct token $1/k$ and has perplexity exactly $k$; so a perplexity of 150 means
# the model is, on average, as uncertain as if it had to choose uniformly among 150 tokens.
# Lower is better; 1 is a perfect model.

# %%
p = torch.tensor([0.5, 0.1, 0.9, 0.02, 0.3])  # probabilities a model gave to 5 correct tokens
nll = -p.log()  # (5,) loss of each token, in nats
loss = nll.mean()
print("loss per token (nats):", [round(x, 3) for x in nll.tolist()])
print(f"mean loss {loss.item():.4f} -> perplexity {loss.exp().item():.3f}")
print(f"geometric mean of 1/p: {(1 / p).prod().item() ** (1 / len(p)):.3f}")
print(f"uniform over 8,192 tokens: loss ln(8192) = {math.log(8192):.3f}, perplexity "
      f"{math.exp(math.log(8192)):,.0f}")  # fmt: skip

# %% [markdown]
# One unlikely token (the 0.02: 3.9 nats) costs about twice as much as the three likely ones
# together (0.5, 0.9 and 0.3: 2.0 nats), and almost as much as the other four combined (4.3
# nats): perplexity punishes confident mistakes hard. Here is the course model on the first
# sentence of the test split, token by token:

# %% tags=["nbval-ignore-output"]
n = min(40, block_size)
ids = torch.from_numpy(test_ids[:n].astype(np.int64))[None].to(device)  # (1, n)
with torch.no_grad():
    logits, _ = model(ids)  # (1, n, V)
token_nll = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="none")  # (n - 1,)
for t in range(1, 16):
    print(f"{tok.decode(ids[0, :t].tolist())[-28:]!r:>32} -> {tok.decode([ids[0, t].item()])!r:<12}"
          f" p = {math.exp(-token_nll[t - 1].item()):.3f}  loss {token_nll[t - 1].item():5.2f}")  # fmt: skip
print(
    f"{n - 1} tokens: mean loss {token_nll.mean().item():.3f}, perplexity {token_nll.mean().exp().item():.1f}"
)

# %% [markdown]
# Names and unusual words are expensive: the model cannot know that this article is about a
# Robert (about 10 nats), nor that "film" is followed by "television" (about 9). The line end
# after a heading's closing `=` and the `<unk>` after a first name are cheap. Note the second
# " Robert", right after the heading that names him: it still costs almost 7 nats, because a
# model this small has barely learned to copy words from its context.
#
# ## 3. A long text, in windows
#
# The test split is about 290,000 tokens, the model reads at most `block_size`. The simplest
# evaluation cuts the text into non-overlapping windows of `block_size` tokens and scores every
# prediction in each: that is what notebook 05's `evaluate` did. We write a general version that
# also handles overlapping windows (next section): windows start every `stride` tokens; the
# first scores all its predictions; each later one scores only its last `stride` tokens, the
# ones no earlier window reached; and the last window is moved back so that it ends exactly at
# the last token. Every token but the first (which has nothing before it) is scored exactly
# once. The function returns each token's loss and how many tokens of context it had.


# %%
@torch.no_grad()
def token_losses(model, ids: np.ndarray, block_size: int, stride: int, batch_size: int = 16):
    """Score tokens 1 ... N-1 of ids (N,) in windows of block_size tokens starting every
    `stride` tokens. Returns (loss, context), each (N-1,): the loss in nats of token i+1, and
    how many tokens the model saw before it."""
    n = len(ids)
    T = min(block_size, n - 1)
    starts = list(range(0, n - 1 - T, stride)) + [n - 1 - T]  # the last window ends at the end
    loss, context = np.zeros(n - 1), np.zeros(n - 1, dtype=np.int64)
    device = next(model.parameters()).device
    data = torch.from_numpy(ids.astype(np.int64))
    done = 0  # tokens 1 ... done are scored
    for first in range(0, len(starts), batch_size):
        batch = starts[first : first + batch_size]
        chunk = torch.stack([data[s : s + T + 1] for s in batch]).to(device)  # (B, T + 1)
        logits, _ = model(chunk[:, :-1])  # (B, T, V): position j predicts token s + j + 1
        nll = F.cross_entropy(
            logits.flatten(0, 1).float(), chunk[:, 1:].flatten(), reduction="none"
        )
        nll = nll.view(len(batch), T).double().cpu().numpy()  # (B, T)
        for s, row in zip(batch, nll, strict=True):
            new = s + T - done  # this window's predictions that no earlier window made
            loss[s + T - new : s + T] = row[T - new :]  # loss[i] belongs to token i + 1
            context[s + T - new : s + T] = np.arange(T - new + 1, T + 1)  # position j saw j + 1
            done = s + T
    return loss, context


# %% tags=["nbval-ignore-output"]
model.eval()
t0 = time.perf_counter()
loss_nonoverlap, ctx_nonoverlap = token_losses(model, test_ids, block_size, stride=block_size)
seconds = time.perf_counter() - t0
total_nats = loss_nonoverlap.sum()
print(f"non-overlapping windows of {block_size}: {len(loss_nonoverlap):,} tokens scored in "
      f"{seconds:.0f} s")  # fmt: skip
print(f"total loss {total_nats:,.0f} nats | mean loss {loss_nonoverlap.mean():.4f} | "
      f"token perplexity {math.exp(loss_nonoverlap.mean()):.1f}")  # fmt: skip
assert (ctx_nonoverlap >= 1).all() and ctx_nonoverlap.max() == block_size

# %% [markdown]
# With non-overlapping windows the first token of each window is predicted from one token of
# context, the second from two, and so on: the context grows from 1 to `block_size` and then
# starts again. Averaged over a window, a token sees only about `block_size / 2` tokens. How
# much does that cost? Group the losses by context length:

# %% tags=["nbval-ignore-output"]
edges = [1, 2, 3, 5, 9, 17, 33, 65, block_size + 1]  # context bins 1, 2, 3-4, 5-8, ..., 65-128
edges = [e for e in edges if e <= block_size] + [block_size + 1]
print("tokens of context | share of tokens | mean loss")
centres, means = [], []
for lo, hi in zip(edges[:-1], edges[1:], strict=True):
    in_bin = (ctx_nonoverlap >= lo) & (ctx_nonoverlap < hi)
    centres.append(math.sqrt(lo * (hi - 1)))
    means.append(loss_nonoverlap[in_bin].mean())
    label = f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}"
    print(f"{label:>17} | {in_bin.mean():15.1%} | {means[-1]:.3f}")
if course.from_checkpoint:  # (a model trained here has barely learned to use any context)
    assert means[0] > means[-1]  # one token of context is worse than a full window

by_context = np.bincount(ctx_nonoverlap, weights=loss_nonoverlap) / np.maximum(
    np.bincount(ctx_nonoverlap), 1
)  # mean loss for each context length (index 0 unused)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(np.arange(1, block_size + 1), by_context[1:], lw=0.6, alpha=0.5, label="each length")
ax.plot(centres, means, "o-", label="binned")
ax.axhline(loss_nonoverlap.mean(), color="grey", ls="--", lw=0.8, label="non-overlapping mean")
ax.set(xscale="log", xlabel="tokens of context", ylabel="mean loss (nats)",
       title="Loss against context, test split")  # fmt: skip
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The first few tokens of context matter most: with one token the model can only guess from
# the previous word piece; with a handful it knows the phrase it is in. For the course model
# the curve still falls a little into the 17-32 bin and is flat beyond it (the 33-64 and 65-128
# bins are even a hair worse): it stops improving after about 20 to 30 tokens and makes no
# measurable use of longer context (larger, longer-trained models keep improving much further
# into theirs). The non-overlapping
# mean (dashed) includes all the poorly informed predictions at the start of each window, so it
# overstates the perplexity the model achieves when it sees a whole window of text, which is
# how it is used when it writes.
#
# ## 4. Sliding windows
#
# The fix is to let windows overlap: start a window every `stride` tokens and score only its
# last `stride` predictions, so each scored token sees at least `block_size - stride` tokens of
# context. (This is the `stride` of Hugging Face's perplexity guide; with `stride = 1` every
# token sees a full window, at `block_size` times the cost.) The whole test split, with stride
# `block_size` (non-overlapping) and `block_size / 2`:

# %% tags=["nbval-ignore-output"]
t0 = time.perf_counter()
loss_sliding, ctx_sliding = token_losses(model, test_ids, block_size, stride=block_size // 2)
print(f"stride {block_size // 2}: scored in {time.perf_counter() - t0:.0f} s")
for name, (loss, ctx) in {
    f"stride {block_size} (non-overlapping)": (loss_nonoverlap, ctx_nonoverlap),
    f"stride {block_size // 2} (sliding)": (loss_sliding, ctx_sliding),
}.items():
    print(f"{name:>28}: loss {loss.mean():.4f}, token perplexity {math.exp(loss.mean()):6.1f}, "
          f"mean context {ctx.mean():5.1f} tokens")  # fmt: skip
assert ctx_sliding.min() >= min(block_size // 2, ctx_nonoverlap.min())  # more context for all
if course.from_checkpoint:  # the course model uses the extra context (a stand-in may not)
    assert loss_sliding.mean() < loss_nonoverlap.mean()

# %% [markdown]
# Smaller strides help less and less and cost more and more: each halving doubles the number
# of windows. On the first part of the validation split:

# %% tags=["nbval-ignore-output"]
val_ids = tokenize_split(ds["validation"], tok)[: quick(16_384, 2_048)]
strides = [block_size // d for d in (1, 2, 4, 8)]
ppl_by_stride = {}
for stride in strides:
    loss, _ = token_losses(model, val_ids, block_size, stride)
    ppl_by_stride[stride] = math.exp(loss.mean())
    windows = math.ceil((len(val_ids) - 1 - block_size) / stride) + 1
    print(f"stride {stride:>3}: {windows:>5} windows, token perplexity {ppl_by_stride[stride]:.2f}")
if course.from_checkpoint:  # checked for the course model; a stand-in may not gain
    assert ppl_by_stride[strides[-1]] < ppl_by_stride[strides[0]]

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(range(len(strides)), list(ppl_by_stride.values()), "o-")
ax.set_xticks(range(len(strides)), [f"{s}\n({block_size // s}x cost)" for s in strides])
ax.set(xlabel="stride (tokens)", ylabel="token perplexity",
       title=f"Effect of the stride, {len(val_ids):,} validation tokens")  # fmt: skip
fig.tight_layout()
plt.show()

# %% [markdown]
# The first halving brings most of the gain: it removes the predictions made with almost no context.
# For the course model smaller strides bring nothing more; the perplexity even rises slightly (140.3
# at stride 64, 140.6 at stride 16), matching the context curve of section 3, where the 33-64 and
# 65-128 bins are a hair worse than 17-32: context beyond about 20 to 30 tokens does not help this
# model. `block_size / 2` is the usual compromise and the setting we report. Whatever you choose, say it: two perplexities computed with different
# windows are not comparable. (Language models with recurrent state, like the LSTMs below, carry
# their state across the whole text, so every word they predict has all of the text before it.)
#
# ## 5. Perplexity per word, and bits per byte
#
# The mean in the perplexity divides by the number of *tokens*, and that number belongs to the
# tokenizer, not to the text. The total loss of the test split, however, is a property of the
# model and the text alone: it is $-\ln$ of the probability the model gives the whole text.
# Divide the same total by different counts and you get different perplexities:

# %% tags=["nbval-ignore-output"]
n_tokens = len(test_ids) - 1  # scored tokens (the first one has no context)
n_words = sum(len(row.split()) + 1 for row in test_rows)  # words + one end-of-line per row
n_bytes = sum(len(row.encode("utf-8")) for row in test_rows)  # UTF-8 bytes of the text
total = loss_sliding.sum()  # nats, stride block_size / 2
print(f"the test split: {n_bytes:,} bytes, {len(test_ids):,} tokens, {n_words:,} words")
print(
    f"  {n_bytes / len(test_ids):.2f} bytes per token, {len(test_ids) / n_words:.3f} tokens per word"
)
head = f"{total:,.0f} nats in total; "  # one total, divided by three different counts
pad = " " * len(head)
print(f"{head}per token: perplexity {math.exp(total / n_tokens):8.2f}")
print(f"{pad}per word:  perplexity {math.exp(total / n_words):8.2f}")
print(f"{pad}per byte:  perplexity {math.exp(total / n_bytes):8.2f}"
      f"  = {total / n_bytes / math.log(2):.3f} bits per byte")  # fmt: skip
if real_data and not is_quick():
    assert n_words == 245_569  # the number every word-level WikiText-2 result divides by

# %% [markdown]
# A tokenizer with longer tokens makes fewer, harder predictions: its token perplexity is
# higher even when the model is exactly as good. A character-level model with the same total
# loss would report a perplexity of about 3 per character; a word-level model, a few hundred per
# word. So token perplexities of models with different tokenizers cannot be compared; the two
# fixes divide by a count that does not depend on the tokenizer:
#
# - **Word-level perplexity** divides by the number of words. WikiText-2's results are word
#   perplexities of word-level models, whose vocabulary is the words of the training split (so
#   rare words were replaced by `<unk>` in the data, the `-v1` variant). Those models read each
#   line as its words and an end-of-line token `<eos>`, so the count is the whitespace-separated
#   words plus one per line, blank lines included: **245,569** for the test split. Our model
#   predicts the same words, spaces and line ends, token by token; its probability of a word is
#   the product of its tokens' probabilities, so $\exp(\text{total} / \text{words})$ is its word
#   perplexity. (The blank rows are empty strings here and cost our model nothing, while a
#   word-level model has to predict their `<eos>`; that is a tiny, easy share of the words.)
# - **Bits per byte** divides the total in bits ($\text{nats} / \ln 2$) by the number of UTF-8
#   bytes. It needs no notion of a word, so it also works for code, for languages without
#   spaces, and for character-level models. It is what GPT-2-style evaluations report on text
#   that has not been split into words (Gao et al., 2020, for The Pile).
#
# Both are just the token loss, rescaled: word perplexity $= \text{token PPL}^{N_\text{tokens} /
# N_\text{words}}$. With about 1.19 course tokens per word, the course model's token perplexity
# of about 141 becomes a word perplexity of about 354.
#
# ## 6. N-gram baselines
#
# What does it take to beat a model that only counts? An **n-gram model** predicts a word from
# the $n - 1$ words before it, with probabilities from counts in the training split. Counts
# alone give probability 0 to every n-gram never seen, and one zero makes the perplexity
# infinite, so the counts are *smoothed*:
#
# - **unigram, add-one** (Laplace): $P(w) = (c(w) + 1) / (N + V)$, no context at all;
# - **interpolated Kneser-Ney** (Kneser and Ney, 1995; Chen and Goodman, 1998): subtract a
#   discount $D \approx 0.75$ from every count and give the mass saved to a lower-order model,
#   whose counts are *continuation counts*: how many different words a word follows, not how
#   often it occurs. "Francisco" is frequent but follows almost only "San", so after an unseen
#   context it should be a rare guess. For decades this was the strongest simple language
#   model.
#
# The library's `wikigpt_lib.ngram` implements both with numpy in a few dozen lines. First the
# unigram by hand, on the word stream (each row's words, then `<eos>`):


# %% tags=["nbval-ignore-output"]
def word_stream(rows) -> list[str]:
    """Each row's whitespace-separated words, then an end-of-line token."""
    return [w for row in rows for w in [*row.split(), "<eos>"]]


train_words, test_words = word_stream(ds["train"]["text"]), word_stream(test_rows)
counts = Counter(train_words)
vocab = set(counts) | {"<unk>"}
N, V = len(train_words), len(vocab)
seen = [w if w in counts else "<unk>" for w in test_words]  # a word never seen is an <unk>
unigram_nll = [-math.log((counts[w] + 1) / (N + V)) for w in seen]
unigram_ppl = math.exp(sum(unigram_nll) / len(test_words))
print(f"train: {N:,} words, vocabulary {V:,} | test: {len(test_words):,} words, "
      f"{sum(w not in vocab for w in test_words)} of them never seen in train")  # fmt: skip
print(f"add-one unigram: word perplexity {unigram_ppl:.1f}")
print("most frequent:", ", ".join(f"{w} {c / N:.3f}" for w, c in counts.most_common(6)))

# %% [markdown]
# The Kneser-Ney models, fitted on the same training words and scored on the same test words:

# %% tags=["nbval-ignore-output"]
from wikigpt_lib.ngram import KneserNeyLM, UnigramLM

t0 = time.perf_counter()
ngrams = {"unigram (add-one)": UnigramLM(), "bigram (Kneser-Ney)": KneserNeyLM(2),
          "trigram (Kneser-Ney)": KneserNeyLM(3)}  # fmt: skip
ngram_nats = {}
for name, lm in ngrams.items():
    lm.fit(train_words)
    ngram_nats[name] = -lm.log_probs(test_words).sum()  # total nats over the test words
    print(f"{name:>21}: word perplexity {math.exp(ngram_nats[name] / n_words):7.1f}, "
          f"{ngram_nats[name] / n_bytes / math.log(2):.3f} bits per byte")  # fmt: skip
print(f"(fitted and scored in {time.perf_counter() - t0:.1f} s)")
context = ["the", "United"]
p_next = ngrams["trigram (Kneser-Ney)"].probs(context)  # (V,) sums to 1
best = np.argsort(-p_next)[:5]
print(f"trigram, after {' '.join(context)!r}:",
      ", ".join(f"{ngrams['trigram (Kneser-Ney)'].vocab[i]} {p_next[i]:.3f}" for i in best))  # fmt: skip
if real_data and not is_quick():  # the library author's numbers for wikitext-2-v1 test
    assert [round(math.exp(v / n_words), 1) for v in ngram_nats.values()] == [914.4, 266.4, 235.4]

# %% [markdown]
# The bigram cuts the unigram's perplexity by a factor of more than three (914 -> 266); the
# trigram gains less again.
# The n-gram models predict exactly the 245,569 words of the split, so their word perplexity
# and ours are directly comparable, and so are the bits per byte (the same text, the same bytes).
#
# ## 7. The course model on the test split
#
# All the numbers together, with results published for WikiText-2's test split. Every row is a
# word-level perplexity on the same 245,569 words; for the published ones, bits per byte are
# converted from the word perplexity with this split's word and byte counts (so they are
# approximate: the original files differ slightly in their bytes). A `~` marks the two
# published figures that are only approximate (see the note after the table).


# %% tags=["nbval-ignore-output"]
def summarise(loss: np.ndarray) -> tuple[float, float, float, float]:
    """Per-token losses -> (mean loss, token perplexity, word perplexity, bits per byte)."""
    total = loss.sum()
    return (
        total / len(loss),
        math.exp(total / len(loss)),
        math.exp(total / n_words),
        (total / n_bytes / math.log(2)),
    )


rows = []  # (name, params, word perplexity, bits per byte, approximate?, source)
for name, loss in [(f"course model, stride {block_size}", loss_nonoverlap),
                   (f"course model, stride {block_size // 2}", loss_sliding)]:  # fmt: skip
    _, tok_ppl, word_ppl, bpb = summarise(loss)
    params = f"{model.num_params() / 1e6:.1f}M"
    rows.append((name, params, word_ppl, bpb, False, "measured here"))
for name, nats in ngram_nats.items():
    word_ppl, bpb = math.exp(nats / n_words), nats / n_bytes / math.log(2)
    rows.append((name, "", word_ppl, bpb, False, "measured here"))
published = [
    ("Transformer, trained on WT2 only", "", 133.0, True, "see the note"),
    ("LSTM, 2 x 650 units", "", 94.0, True, "see the note"),
    ("Variational LSTM, 2 x 650, tied", "", 87.7, False, "Inan et al., ICLR 2017"),
    ("AWD-LSTM", "33M", 65.8, False, "Merity et al., ICLR 2018"),
]
whole_split = real_data and n_words == 245_569  # the published figures are for the whole split
for name, params, word_ppl, approx, source in published:
    bpb = math.log(word_ppl) * n_words / n_bytes / math.log(2) if whole_split else math.nan
    rows.append((name, params, word_ppl, bpb, approx, source))

print(f"{'model':<34} {'params':>6} {'word ppl':>9} {'bits/byte':>9}  source")
for name, params, word_ppl, bpb, approx, source in rows:
    ppl_text = f"{'~' if approx else ''}{word_ppl:.1f}"
    bpb_text = "-" if math.isnan(bpb) else f"{'~' if approx else ''}{bpb:.3f}"
    print(f"{name:<34} {params:>6} {ppl_text:>9} {bpb_text:>9}  {source}")
loss, tok_ppl, word_ppl, bpb = summarise(loss_sliding)
print(f"\ncourse model, stride {block_size // 2}: loss {loss:.4f} nats per token, token perplexity "
      f"{tok_ppl:.1f}, word perplexity {word_ppl:.1f}, {bpb:.3f} bits per byte")  # fmt: skip

fig, ax = plt.subplots(figsize=(7, 3.2))
names = [r[0] for r in rows][::-1]  # top to bottom as in the table
colours = ["C0" if r[5] == "measured here" else "C1" for r in rows][::-1]
ax.barh(names, [r[2] for r in rows][::-1], color=colours)
ax.set(xscale="log", xlabel="word perplexity, test split (log scale; lower is better)",
       title="WikiText-2 test: measured here (blue) and published (orange)")  # fmt: skip
ax.tick_params(axis="y", labelsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Be honest about what this says. The course model, trained for about 13 minutes on two CPU
# cores, reaches a word perplexity of about 355: far better than counting words (the unigram),
# but **worse than the Kneser-Ney bigram and trigram**, which are fitted in seconds, and about
# four times the perplexity of Inan et al.'s variational LSTM of 2017 (87.7) and 5.4 times that
# of AWD-LSTM (65.8). Why:
#
# - it saw the training text about once (the cell of section 1 prints how many tokens it
#   trained on); the n-gram models use every count of the training words exactly, and the LSTMs
#   trained for many passes on a GPU, with heavy regularisation (AWD-LSTM's weight-dropped
#   LSTM, variational dropout, averaged SGD);
# - it is small (5 million parameters, 40% of them the embedding table), and it makes little
#   use of its context: the loss-against-context curve of section 3 stops improving beyond the
#   17-32 bin, after about 20 to 30 tokens (LSTM language models were measured to use about 200
#   tokens of context: Khandelwal et al., 2018, "Sharp Nearby, Fuzzy Far Away");
# - two million words are little data for a transformer, which lacks the LSTM's built-in bias
#   towards recent words; plain transformers trained on small corpora are reported to trail
#   well-tuned LSTMs (Wang, Li and Smola, 2019, "Language Models with Transformers").
#
# How to do better, in this course: the GPU preset (notebook 05) trains a larger model for many
# more steps with dropout; notebook 08 loads GPT-2, pretrained on 40 GB of web text, which
# without any training on WikiText-2 reaches lower perplexities on it than every model in the
# table (Radford et al., 2019). Whatever the model, compare it as we did here: the same split,
# sliding windows, word-level perplexity or bits per byte.
#
# **On the published figures.** Two rows are checked against their papers. AWD-LSTM, 65.8:
# Merity, Keskar and Socher, "Regularizing and Optimizing LSTM Language Models", ICLR 2018; the
# test perplexity of their fine-tuned model (33 million parameters, 68.6 on validation); a neural
# cache on top brings it to 52.0. Variational LSTM, 87.7: Inan, Khosravi and Socher, "Tying Word
# Vectors and Word Classifiers: A Loss Framework for Language Modeling", ICLR 2017: two layers of
# 650 units with the input and output embeddings tied. The two rows marked `~` are not: "about 94"
# for an LSTM of two layers of 650 units (the size Zaremba et al., 2014, called medium) and "about
# 133" for a standard Transformer trained on WikiText-2 alone are approximate figures commonly
# quoted for such models, which we could not trace to a single table. They are there only to show
# the rough ordering (a plain Transformer trained on this little data behind the LSTMs); no
# conclusion in this notebook rests on them beyond that ordering.
#
# ## Check against the library
#
# `wikigpt_lib.evaluate.evaluate_perplexity` runs the same windows (`score_windows`) and
# returns the same units. On the test tokens and on short texts, with several strides, its
# total loss must equal the sum of the notebook's per-token losses, and the word count and the
# unigram must match `count_words` and `UnigramLM`.

# %%
from wikigpt_lib.data import count_words
from wikigpt_lib.evaluate import evaluate_perplexity, score_windows

n_check = quick(10_000, 2_000)
for ids, stride in [(test_ids[:n_check], block_size), (test_ids[:n_check], block_size // 2),
                    (test_ids[:3_000], 7), (test_ids[: block_size + 5], 3),
                    (test_ids[:10], block_size)]:  # fmt: skip
    loss, ctx = token_losses(model, ids, block_size, stride)
    lib = evaluate_perplexity(model, ids, stride=stride, n_words=1000, n_bytes=5000)
    assert lib["n_tokens"] == len(loss) == len(ids) - 1
    assert math.isclose(lib["total_nats"], loss.sum(), rel_tol=1e-6), (len(ids), stride)
    assert math.isclose(lib["word_ppl"], math.exp(loss.sum() / 1000), rel_tol=1e-5)
    assert math.isclose(lib["bits_per_byte"], loss.sum() / 5000 / math.log(2), rel_tol=1e-6)
    # the windows: each scored token's context is what score_windows implies
    windows = score_windows(len(ids), block_size, stride)
    assert sum(n for _, n in windows) == len(loss) and ctx.min() >= 1
print("token_losses == evaluate_perplexity: total loss, word perplexity, bits per byte")

assert count_words(test_rows) == n_words == len(test_words)
assert math.isclose(UnigramLM().fit(train_words).perplexity(test_words), unigram_ppl, rel_tol=1e-9)
print("word count == count_words; hand-made unigram == UnigramLM")

# %% [markdown]
# ## Summary
#
# - Perplexity is the exponential of the mean loss per token: the geometric mean of
#   $1/p(\text{correct token})$, the number of equally likely choices the model is as unsure as.
# - A long text is scored in windows. With non-overlapping windows a token sees on average only
#   half a window of context, which overstates the perplexity; sliding windows (stride
#   `block_size / 2`) give every scored token at least half a window, for twice the cost.
# - Token perplexity depends on the tokenizer. The total loss does not: divided by the words
#   (whitespace words plus one end-of-line per line: 245,569 on the test split) it is the word
#   perplexity of the WikiText-2 literature; divided by the bytes, in bits, it is bits per byte.
# - Add-one unigram, Kneser-Ney bigram and trigram reach word perplexities of about 914, 266 and
#   235 on the test split. The course model, about 13 minutes on a CPU, reaches about 355:
#   between the unigram and the bigram, about four times the perplexity of the variational
#   LSTM of 2017 (87.7) and 5.4 times AWD-LSTM's (65.8).
#
# ## Exercises
#
# 1. *(easy)* Baselines that need no training. Compute the token perplexity, word perplexity
#    and bits per byte on the test split of (a) a uniform distribution over the 8,192 course
#    tokens and (b) an add-one unigram model over course *tokens* (counted on the training
#    split). How does (b) compare with the word-level unigram of section 6, and why are the two
#    not the same model?
# 2. *(medium)* Is the difference real? The test perplexity is an average over tokens that are
#    not independent. Cut the test split into blocks of 1,024 tokens, resample blocks with
#    replacement 1,000 times, and give a 95% interval for the course model's word perplexity
#    (stride `block_size / 2`). Then bootstrap the *difference* between stride `block_size` and
#    `block_size / 2` on the same blocks. Is it larger than the noise?
# 3. *(medium)* Tune Kneser-Ney. On the validation split, try discounts from 0.5 to 0.95 and
#    orders 2, 3 and 4; pick the best and report its test perplexity. How much does a 4-gram
#    gain over the trigram on two million words, and why so little?
# 4. *(medium)* Where does the loss go? Using `loss_sliding`, split the test tokens into those
#    that start a word (begin with a space), those that continue a word, line ends, and the
#    tokens of `<unk>`. Report each group's share of the tokens and of the total loss, and its
#    mean loss.
# 5. *(harder)* Tokenizer dependence, measured. Train a byte-level BPE with `train_bpe` with 512
#    tokens on the training split, and train two `cpu-quick` models for the same number of
#    steps, one with each tokenizer. Compare their validation token perplexity, word perplexity
#    and bits per byte. Which measure would you use to say which model is better?
