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
# # 06 · Generation
#
# Notebook 05 showed how the course model learns to predict the next token. A language model
# does not write text by itself: at every step it gives a probability for each of the 8,192
# tokens of the vocabulary, and a *decoding* rule picks one, appends it, and asks again. This
# notebook looks at that distribution, builds the usual decoding rules (greedy, temperature,
# top-k, top-p) and compares what they write, and then makes generation fast with a key/value
# cache.
#
# **What you will build**
#
# - the course model's next-token distribution, as a bar chart;
# - temperature, top-k and top-p (nucleus) filtering from scratch, and pictures of what each
#   does to the distribution;
# - a generation loop, and samples from the course model with each rule;
# - a KV cache, step by step: keys and values per layer, positions tracked; why learned
#   absolute positions make a rolling cache wrong past the context, and what the library does
#   instead;
# - a timing plot of generation with and without the cache;
# - a check that the notebook's filters, sampling and cached forward pass match
#   `wikigpt_lib.generate`.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/wiki-gpt/wiki-gpt/blob/main/notebooks/06_generation.ipynb)

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
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm: no Jupyter widgets

from wikigpt_lib.course import course_model
from wikigpt_lib.data import detokenize, load_wikitext2, tokenize_split, wikitext2_source
from wikigpt_lib.device import pick_device, seed_everything
from wikigpt_lib.tokenizer import get_tokenizer

torch.set_printoptions(precision=4, sci_mode=False)
plt.rcParams["figure.dpi"] = 80  # small images keep the notebook file small

# %% [markdown]
# ## 1. The course model
#
# The course model is the `cpu` preset of notebook 05 (4 layers, width 256, a context of 128
# tokens), trained on the whole WikiText-2 training split with the command line tool:
# `wikigpt train --preset cpu --out runs/cpu`, run from the repository's root, saves it in the
# `runs/cpu` folder. We load its best checkpoint. If the folder is not there, the next cell
# trains the smaller `cpu-quick` preset right here (a minute or two), so the notebook always
# runs; in quick mode (the tests) it trains a tiny model for 30 steps, which writes nonsense,
# but nonsense of the right shape. The cell prints which model it used: the outputs shown on
# GitHub come from the course model. The choice is made by `course_model` from
# `wikigpt_lib.course`, which notebooks 07 and 09 use too.

# %% tags=["nbval-ignore-output"]
RUN_DIR = Path("..") / "runs" / "cpu"  # relative to this notebook

ds = load_wikitext2(fallback="sample")
tok = get_tokenizer()
device = pick_device()
course = course_model(RUN_DIR, data=ds, tokenizer=tok, device=device)  # loads, or trains here
model, model_name = course.model, course.description
block_size = model.config.block_size
print("data:", wikitext2_source(ds))
print("model:", model_name)
print(f"  {model.num_params():,} parameters, {model.config.n_layer} layers, width "
      f"{model.config.n_embd}, context {block_size} tokens, on {device}")  # fmt: skip

# %% [markdown]
# ## 2. The next-token distribution
#
# Give the model a prompt and look at the logits at the last position: one score per token of
# the vocabulary, turned into probabilities by a softmax. The prompt is written the way
# WikiText writes text, with a space before each word and around punctuation.

# %% tags=["nbval-ignore-output"]
prompt = " The album was released in"
idx = torch.tensor([tok.encode_ordinary(prompt)], device=device)  # (1, T)
with torch.no_grad():
    logits, _ = model(idx)  # (1, T, V)
next_logits = logits[0, -1].float()  # (V,): the scores for the token after the prompt
probs = next_logits.softmax(-1)  # (V,), sums to 1
top = probs.topk(15)
labels = [repr(tok.decode([i])) for i in top.indices.tolist()]
entropy = -(probs * probs.clamp_min(1e-30).log()).sum().item()
print(f"prompt {prompt!r}: {idx.size(1)} tokens -> logits {tuple(logits.shape)}")
print(
    "top 5:",
    ", ".join(f"{lab} {p:.3f}" for lab, p in zip(labels[:5], top.values[:5].tolist(), strict=True)),
)
print(f"the 15 most likely tokens hold {top.values.sum().item():.1%} of the probability")
print(f"entropy {entropy:.2f} nats: as uncertain as a uniform choice among "
      f"{math.exp(entropy):.0f} tokens")  # fmt: skip
assert abs(probs.sum().item() - 1) < 1e-4

fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(range(15), top.values.cpu())
ax.set_xticks(range(15), labels, rotation=60, fontsize=8)
ax.set(ylabel="probability", title=f"Next token after {prompt!r}")
fig.tight_layout()
plt.show()

# %% [markdown]
# The distribution has a head (a few tokens that fit well) and a very long tail: thousands of
# tokens with tiny probabilities that add up to a lot. Decoding is the question of what to do
# with that tail.
#
# To see exactly what each rule does we also use a toy distribution over eight words, with
# made-up logits:

# %%
words = ["the", "a", "1990", "its", "their", "an", "this", "June"]
toy = torch.tensor([3.0, 1.5, 1.2, 1.0, 0.5, 0.2, -0.5, -1.0])  # (8,) logits


def show(name: str, p: torch.Tensor) -> None:
    """Print a distribution over the toy words, one column per word."""
    print(f"{name:<16}" + " ".join(f"{x:>5.3f}" for x in p.tolist()))


print(f"{'':<16}" + " ".join(f"{w:>5}" for w in words))
show("softmax", toy.softmax(-1))

# %% [markdown]
# ## 3. Greedy decoding
#
# The simplest rule takes the most likely token every time (`argmax`). It is deterministic, and
# it makes each single step as likely as possible. That does not make the *text* good: once a
# phrase has appeared, repeating it is often the single most likely next step (text does repeat
# itself, and the model has learned that), so greedy decoding tends to fall into loops. Here is
# the loop for generation, with greedy decoding; the model sees at most `block_size` tokens, so
# each step feeds it the last `block_size` tokens.


# %% tags=["nbval-ignore-output"]
@torch.no_grad()
def greedy(model, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Append max_new_tokens argmax tokens to idx (B, T); returns (B, T + max_new_tokens)."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size :])  # (B, T', V)
        next_id = logits[:, -1, :].argmax(dim=-1)  # (B,)
        idx = torch.cat([idx, next_id[:, None]], dim=1)  # (B, T + 1)
    return idx


def show_text(ids: torch.Tensor) -> str:
    """Token ids (T,) -> text, with WikiText's spaces before punctuation removed."""
    return detokenize(tok.decode(ids.tolist()))


out = greedy(model, idx, 60)
print(show_text(out[0]))
assert torch.equal(out, greedy(model, idx, 60))  # no randomness: the same text every time

# %% [markdown]
# `detokenize` only changes the display (`town , 1 @,@ 000` becomes `town, 1,000`); the model
# reads and writes WikiText's spacing. Everything else in this notebook is about *sampling*:
# drawing the next token at random from the distribution, so that less likely tokens get their
# turn, in proportion to their probability, and shaping the distribution first.
#
# ## 4. Temperature
#
# Divide the logits by a temperature $\tau$ before the softmax:
# $p_i \propto \exp(z_i / \tau)$. With $\tau = 1$ nothing changes. $\tau < 1$ stretches the
# differences between logits, so the head gets more of the mass (sharper, safer, more
# repetitive); $\tau > 1$ shrinks them, so the tail gets more (flatter, more varied, more
# errors). As $\tau \to 0$ all mass goes to the argmax, which is greedy decoding; as
# $\tau \to \infty$ the distribution becomes uniform. The name comes from the Boltzmann
# distribution of statistical physics, which has exactly this form.


# %%
def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits (..., V) -> probabilities (..., V) of softmax(logits / temperature).
    Temperature 0 means greedy: all the probability on the most likely token."""
    logits = logits.float()
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.size(-1)).float()
    return torch.softmax(logits / temperature, dim=-1)


def entropy_nats(p: torch.Tensor) -> float:
    return -(p * p.clamp_min(1e-30).log()).sum().item() + 0.0  # + 0.0 turns -0.0 into 0.0


print(f"{'':<16}" + " ".join(f"{w:>5}" for w in words) + " | entropy")
for t in [0, 0.5, 1.0, 2.0, 100.0]:
    p = apply_temperature(toy, t)
    print(
        f"{'T = ' + str(t):<16}"
        + " ".join(f"{x:>5.3f}" for x in p.tolist())
        + f" | {entropy_nats(p):.3f}"
    )
print(f"uniform over 8 words: entropy ln 8 = {math.log(8):.3f}")

# %% [markdown]
# The same on the course model's distribution, for the 15 most likely tokens (the rest of the
# mass is in the tail, not shown):

# %%
fig, axes = plt.subplots(1, 3, figsize=(10, 2.8), sharey=True)
for ax, t in zip(axes, [0.5, 1.0, 1.5], strict=True):
    p = apply_temperature(next_logits, t)
    ax.bar(range(15), p[top.indices].cpu())
    ax.set_xticks(range(15), labels, rotation=70, fontsize=7)
    ax.set_title(f"T = {t}: top 15 hold {p[top.indices].sum().item():.0%}", fontsize=9)
axes[0].set_ylabel("probability")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Top-k
#
# Temperature reshapes the whole distribution, but every token keeps a chance, and with 8,192
# tokens the tail adds up: a sample of a hundred tokens will contain a few picked from far down
# the tail, often garbage that the text then has to live with. **Top-k** sampling (Fan, Lewis
# and Dauphin, 2018) cuts the tail off: keep the $k$ most likely tokens, set the other logits
# to $-\infty$ (probability 0), and renormalise.


# %%
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (..., V); set the others to -inf."""
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).indices  # (..., k): positions of the k largest
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, kth, True)  # (..., V)
    return logits.masked_fill(~keep, float("-inf"))


print(f"{'':<16}" + " ".join(f"{w:>5}" for w in words))
for k in [1, 3, 5]:
    show(f"top-k, k = {k}", top_k_filter(toy, k).softmax(-1))

# %% [markdown]
# With $k = 1$ top-k is greedy. The weakness of a fixed $k$: some contexts have one or two
# sensible continuations ("the United" → "States"), others have thousands ("The" → almost any
# noun). A $k$ that suits one is too large or too small for the other.
#
# ## 6. Top-p (nucleus sampling)
#
# **Top-p** (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration") adapts the
# cut to the distribution: sort the tokens by probability and keep the smallest set whose mass
# reaches $p$, the *nucleus*. A token is kept when the tokens more likely than it hold less than
# $p$ together; the most likely token is always kept.


# %%
def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (..., V)."""
    if p >= 1.0:
        return logits  # everything: also avoids dropping tail tokens to float rounding
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    sorted_probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens ahead
    drop_sorted = mass_before >= p  # (..., V) in sorted order
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # vocabulary order
    return logits.masked_fill(drop, float("-inf"))


print(f"{'':<16}" + " ".join(f"{w:>5}" for w in words))
for p in [0.5, 0.8, 0.95]:
    show(f"top-p, p = {p}", top_p_filter(toy, p).softmax(-1))

# %% [markdown]
# On the course model, with the same $p = 0.9$, the nucleus of a near-certain context is a
# handful of tokens and that of an open context is hundreds or thousands:

# %% tags=["nbval-ignore-output"]
for context in [" the United", " The album was released in", " The"]:
    ids = torch.tensor([tok.encode_ordinary(context)], device=device)
    with torch.no_grad():
        z = model(ids)[0][0, -1].float()  # (V,)
    kept = torch.isfinite(top_p_filter(z, 0.9)).sum().item()
    best = tok.decode([z.argmax().item()])
    print(f"{context!r:>30}: top-p 0.9 keeps {kept:>5,} tokens | most likely {best!r} "
          f"({z.softmax(-1).max().item():.2f})")  # fmt: skip

# %% [markdown]
# The three rules combine, and the order matters: temperature first, then top-k, then top-p on
# the tempered distribution (the library's order; Hugging Face's `generate` does the same).
# Here is what each does to the model's distribution, drawn for the 40 most likely tokens
# (grey: filtered out). The picture uses top-p with $p = 0.5$: at $p = 0.9$ the nucleus of this
# prompt holds over a thousand tokens (the output above), so none of the 40 drawn here would be
# filtered out.


# %%
def next_token_probs(logits, temperature=1.0, top_k=None, top_p=None) -> torch.Tensor:
    """Logits (..., V) -> the distribution to sample from (..., V): temperature, top-k, top-p."""
    logits = logits.float()
    if temperature == 0:
        return apply_temperature(logits, 0)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.softmax(logits, dim=-1)


settings = {
    "softmax (T = 1)": {},
    "T = 0.7": {"temperature": 0.7},
    "top-k, k = 10": {"top_k": 10},
    "top-p, p = 0.5": {"top_p": 0.5},
}
order40 = probs.topk(40).indices
fig, axes = plt.subplots(1, 4, figsize=(11, 2.6), sharey=True)
for ax, (name, kw) in zip(axes, settings.items(), strict=True):
    q = next_token_probs(next_logits, **kw)[order40].cpu()
    ax.bar(range(40), q, color=["C0" if x > 0 else "lightgrey" for x in q])
    ax.bar(range(40), probs[order40].cpu(), fill=False, edgecolor="grey", lw=0.3)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("40 most likely tokens")
axes[0].set_ylabel("probability")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Samples from the course model
#
# The generation loop of section 3, with a sampling step in place of the argmax. A
# `torch.Generator` with a fixed seed makes a sample reproducible without touching PyTorch's
# global random state. The function is a Python *generator* that yields each new token as
# soon as it is chosen, so text can be shown while it is being written.


# %%
def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """Logits (B, V) -> the chosen next token ids (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # greedy: draws no random numbers
    probs = next_token_probs(logits, temperature, top_k, top_p)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


@torch.no_grad()
def sample_steps(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None):
    """Yield max_new_tokens new token ids (B,), one step at a time, for the prompts idx (B, T).
    No cache: every step runs the last block_size tokens through the whole model."""
    gen = None if seed is None else torch.Generator(device=idx.device).manual_seed(seed)
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size :])  # (B, T', V)
        next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, gen)  # (B,)
        yield next_id
        idx = torch.cat([idx, next_id[:, None]], dim=1)  # (B, T + 1)


def complete(steps, idx: torch.Tensor) -> torch.Tensor:
    """Run a step generator to the end; returns the prompt and the new tokens, (B, T + new)."""
    return torch.cat([idx, torch.stack(list(steps), dim=1)], dim=1)


def repeated_4grams(ids: list[int]) -> float:
    """The share of the 4-grams of ids that already occurred earlier in ids."""
    grams = [tuple(ids[i : i + 4]) for i in range(len(ids) - 3)]
    return 1 - len(set(grams)) / len(grams)


# %% [markdown]
# Each rule with the same prompt and seed, 100 new tokens:

# %% tags=["nbval-ignore-output"]
rules = {
    "greedy": {"temperature": 0},
    "T = 0.7": {"temperature": 0.7},
    "T = 1.0": {"temperature": 1.0},
    "T = 1.5": {"temperature": 1.5},
    "top-k 40": {"top_k": 40},
    "top-p 0.9": {"top_p": 0.9},
}
n_new = 100
for name, kw in rules.items():
    out = complete(sample_steps(model, idx, n_new, seed=0, **kw), idx)  # (1, T + 100)
    new = out[0, idx.size(1) :].tolist()
    print(f"--- {name} (repeated 4-grams: {repeated_4grams(new):.0%})")
    print(show_text(out[0]).strip())
    assert out.shape == (1, idx.size(1) + n_new)

# %% [markdown]
# What to look for (the outputs above come from the course model; a tiny model in quick mode
# writes noise):
#
# - **greedy** repeats itself: a loop, and a large share of repeated 4-grams;
# - **T = 0.7** stays closer to common words and phrases; **T = 1.5** wanders into the tail
#   and produces made-up words (the byte-level tokenizer can spell anything);
# - **top-k** and **top-p** sample from the model's own distribution (T = 1) but without the
#   tail, which keeps the text varied and removes the worst picks.
#
# No rule makes a 5-million-parameter model coherent: the text is WikiText-shaped (`<unk>`s,
# dates, section headings), locally grammatical for a few words, and meaningless beyond that.
#
# Since the loop yields tokens one at a time, text can be printed as it is generated. Two
# things make naive per-token printing wrong: a token can end in the middle of a UTF-8
# character, and `detokenize`'s rules look at neighbouring tokens. The library's `TextStreamer`
# handles both, and `stream` is its version of `sample_steps`:

# %% tags=["nbval-ignore-output"]
from wikigpt_lib.generate import TextStreamer, stream

streamer = TextStreamer(tok)
print(prompt.strip(), end="")
pieces = []
for token in stream(model, idx, 40, top_p=0.9, seed=1):  # token: (B,) = (1,)
    piece = streamer.add([int(token)])
    pieces.append(piece)
    print(piece, end="", flush=True)
pieces.append(streamer.flush())
print(pieces[-1])
streamed = "".join(pieces)

# %% [markdown]
# ## 8. The KV cache
#
# Generating $n$ tokens with `sample_steps` runs the model $n$ times, each time on the whole
# window: the prompt and everything generated so far, up to `block_size` tokens. Most of that
# work is repeated. Attention is causal, so the keys and values a layer computes for a token
# depend only on that token and the ones *before* it. When a new token is appended, the keys
# and values of all earlier tokens in every layer stay exactly what they were. Only the new
# token needs computing: its query attends to the stored keys and values plus its own.
#
# A **KV cache** stores, for every layer, the keys and values of the tokens seen so far, each
# of shape `(B, n_head, length, head_size)`, and the number of positions they cover. A step then
# runs one token through the model instead of up to `block_size`.


# %%
class Cache:
    """Keys and values of every layer for the tokens seen so far, at positions 0 ... length-1."""

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer  # per layer: (B, nh, length, hs)
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0  # positions stored

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Add k, v (B, nh, T, hs) of T new tokens to `layer`; return all of that layer's."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)  # (B, nh, length + T, hs)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


# %% [markdown]
# The model's own modules do the work; only attention changes, because the new tokens must
# also look at the cached keys. New token $i$ sits at position `past + i`, and may see every
# cached position and the new ones up to itself: the causal mask, aligned to the bottom right.
# The position embeddings must be those of the real positions, `past ... past + T - 1`, not
# `0 ... T - 1`: the cache tracks how many positions it holds for exactly this.


# %%
def attend_cached(attn, x: torch.Tensor, cache: Cache, layer: int) -> torch.Tensor:
    """Causal self-attention for T new tokens x (B, T, C) that also attend to the cache."""
    B, T, C = x.shape
    nh = attn.n_head
    q, k, v = attn.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    k, v = cache.append(layer, k, v)  # (B, nh, past + T, hs)
    past = k.size(2) - T
    query_pos = past + torch.arange(T, device=x.device)  # (T,) where the new tokens sit
    key_pos = torch.arange(past + T, device=x.device)  # (past + T,)
    allowed = key_pos[None, :] <= query_pos[:, None]  # (T, past + T): True = may attend
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, nh, T, hs)
    y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
    return attn.c_proj(y)  # eval mode: no dropout


def forward_cached(model, idx: torch.Tensor, cache: Cache) -> torch.Tensor:
    """Run the new tokens idx (B, T) at positions cache.length ... cache.length + T - 1,
    attending to the cache, and store their keys and values. Returns logits (B, T, V)."""
    tr = model.transformer
    start = cache.length
    T = idx.size(1)
    assert start + T <= model.config.block_size, "no position embedding past the context"
    pos = torch.arange(start, start + T, device=idx.device)  # (T,) absolute positions
    x = tr.wte(idx) + tr.wpe(pos)  # (B, T, C)
    for layer, block in enumerate(tr.h):
        x = x + attend_cached(block.attn, block.ln_1(x), cache, layer)
        x = x + block.mlp(block.ln_2(x))
    cache.length = start + T
    return model.lm_head(tr.ln_f(x))  # (B, T, V)


# %% [markdown]
# Step by step: first the prompt runs through the model at once (the *prefill*), filling the
# cache; then each new token is a step of one token. After every step we compare the cached
# logits with a full forward pass over the whole sequence.

# %% tags=["nbval-ignore-output"]
cache = Cache(model.config.n_layer)
with torch.no_grad():
    logits = forward_cached(model, idx, cache)  # (1, T, V): the prompt
    seq = idx
    print(f"prefill: {idx.size(1)} tokens at positions 0..{cache.length - 1}")
    for step in range(4):
        next_id = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        seq = torch.cat([seq, next_id], dim=1)  # (1, L)
        position = cache.length
        logits = forward_cached(model, next_id, cache)  # (1, 1, V): only the new token runs
        full = model(seq)[0][:, -1:]  # (1, 1, V): the whole sequence again
        gap = (logits - full).abs().max().item()
        shapes = ", ".join(str(tuple(k.shape)) for k in cache.keys)
        print(f"step {step}: {tok.decode(next_id[0].tolist())!r:>12} at position {position:>2} "
              f"| keys per layer {shapes} | max |cached - full| {gap:.1e}")  # fmt: skip
        assert torch.allclose(logits, full, atol=1e-4, rtol=1e-4)
print(f"cache: {cache.length} positions; (B, n_head, length, head_size) in each of "
      f"{len(cache.keys)} layers, keys and values")  # fmt: skip

# %% [markdown]
# The differences are float rounding (a matrix times one vector is summed in another order than
# the same matrix times many), so the cached model computes the same function.
#
# Memory: per token, the cache holds $2 \times n_\text{layer} \times n_\text{embd}$ numbers
# (keys and values, all heads); for the course model, $2 \cdot 4 \cdot 256 = 2{,}048$ floats,
# 8 KiB per token in float32 (8,192 bytes), 1 MiB for a full context of 128. For GPT-2 small
# (12 layers, width 768) it is $2 \cdot 12 \cdot 768 \cdot 4 = 73{,}728$ bytes, 72 KiB (74 kB) per
# token; large models with long contexts spend gigabytes on it, which is why newer models
# share keys and values between heads (multi-query attention, Shazeer, 2019; grouped-query
# attention, Ainslie et al., 2023).
#
# ## 9. Past the context: positions
#
# The cache grows by one position per token, but the model has position embeddings only for
# positions $0 \ldots$ `block_size` $- 1$ (section 4 of notebook 04: GPT-2 *learns* one vector per
# position). When the cache is full there is no position for the next token. Without a cache,
# generation simply slides the window: each step runs the last `block_size` tokens at
# positions $0 \ldots$ `block_size` $- 1$. Every token then moves one position to the left at
# every step, and with it every key and value in every layer changes: the position embedding is
# added at the input, and in every layer after the first, each key and value was computed from
# the whole window before it, including tokens that have since dropped out of the window. That is
# why a rolling cache (below) is inexact even when positions are not the problem.
#
# So a cache cannot slide. The obvious hack, a *rolling* cache (drop the oldest entry, give
# the new token the last position again), keeps keys computed at stale positions, with stale
# context, and gives every new token the same position: the model can no longer tell their
# order. The library's choice: when the cache is full, **restart** it from the newest
# `block_size // 2` tokens, run at positions $0 \ldots$ `block_size // 2` $- 1$ (one prefill),
# and let it grow back to `block_size`. Each step is then exactly the model applied to a window
# of between `block_size // 2` and `block_size` tokens: correct, just with a somewhat shorter
# context than the sliding window, at the cost of one half-window prefill every
# `block_size // 2` tokens.
#
# To compare the three, score real text: take validation tokens, and predict every token after
# the first `block_size` from the tokens before it (*teacher forcing*: the true tokens are fed
# in, not sampled ones), with each scheme. A lower loss means better predictions.


# %%
@torch.no_grad()
def scheme_losses(model, ids: torch.Tensor, scheme: str) -> torch.Tensor:
    """Loss of predicting ids[t] from the tokens before it, t = block_size ... N-1, for ids (N,).
    scheme: "window" (exact sliding window), "restart" (the library's cache) or "rolling"."""
    bs = model.config.block_size
    if scheme == "window":  # every target sees exactly the bs tokens before it
        windows = ids.unfold(0, bs, 1)[:-1]  # (N - bs, bs): windows ending before each target
        logits = torch.cat([model(w)[0][:, -1] for w in windows.split(64)])  # (N - bs, V)
        return F.cross_entropy(logits.float(), ids[bs:], reduction="none")
    cache = Cache(model.config.n_layer)
    logits = forward_cached(model, ids[None, :bs], cache)[:, -1]  # (1, V): predicts ids[bs]
    losses = []
    for t in range(bs, len(ids)):
        losses.append(F.cross_entropy(logits.float(), ids[t : t + 1]))
        if cache.length == bs and scheme == "restart":  # full: start again from the newest half
            cache = Cache(model.config.n_layer)
            logits = forward_cached(model, ids[None, t - bs // 2 + 1 : t + 1], cache)[:, -1]
            continue
        if cache.length == bs and scheme == "rolling":  # full: forget the oldest position
            cache.keys = [k[:, :, 1:] for k in cache.keys]
            cache.values = [v[:, :, 1:] for v in cache.values]
            cache.length -= 1  # so the new token lands on the last position, bs - 1
        logits = forward_cached(model, ids[None, t : t + 1], cache)[:, -1]
    return torch.stack(losses)


# %% tags=["nbval-ignore-output"]
val_text = tokenize_split(ds["validation"], tok)
ids = torch.from_numpy(val_text[: block_size + 4 * block_size].astype("int64")).to(device)
results = {s: scheme_losses(model, ids, s) for s in ("window", "restart", "rolling")}
print(f"{len(ids) - block_size} validation tokens, each predicted after the first {block_size}:")
for s, losses in results.items():
    print(f"  {s:>8}: mean loss {losses.mean().item():.3f} (perplexity "
          f"{losses.mean().exp().item():7.1f})")  # fmt: skip
if course.from_checkpoint:  # calibrated on the course model, not on a stand-in trained here
    assert results["rolling"].mean() > results["window"].mean() + 0.1  # clearly worse
    assert results["restart"].mean() < results["window"].mean() + 0.1  # close to exact

fig, ax = plt.subplots(figsize=(7, 3))
for s, losses in results.items():
    k = 32  # moving average, to see the trend through the noise
    smooth = losses.cpu().unfold(0, k, 1).mean(-1)
    ax.plot(range(block_size + k - 1, block_size + k - 1 + len(smooth)), smooth, label=s)
ax.set(xlabel="position in the text", ylabel=f"loss (moving average of {k})",
       title="Past the context: sliding window, restarted cache, rolling cache")  # fmt: skip
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The rolling cache falls behind as it fills with keys computed at stale positions, every new
# one claiming the same last position. The restarted cache stays close to the exact sliding
# window; its context, between half a window and a whole one, is shorter, but that costs this
# model nothing measurable (notebook 07 shows that its loss stops improving after about 20 to 30
# tokens of context), and on this text it even comes out slightly ahead. Models that must go past
# their context use position schemes that are *relative*, such as rotary embeddings (RoPE; Su et
# al., 2021), where a key's position enters only through its distance to the query. Those can
# roll a cache, approximately: the kept keys still carry traces of the tokens that dropped out,
# and in practice it works well only if the first few tokens are kept too (Xiao et al., 2024,
# "Efficient Streaming Language Models with Attention Sinks").
#
# Here is the full generation loop with the cache and the restart: the prompt is the prefill,
# each step runs one token, and a full cache restarts from the newest half.


# %%
@torch.no_grad()
def cached_steps(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None):
    """Like sample_steps, with a KV cache: each step runs only the newest token."""
    gen = None if seed is None else torch.Generator(device=idx.device).manual_seed(seed)
    bs = model.config.block_size
    cache = Cache(model.config.n_layer)
    logits = forward_cached(model, idx[:, -bs:], cache)  # (B, T, V): the prefill
    for step in range(max_new_tokens):
        next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, gen)  # (B,)
        yield next_id
        if step == max_new_tokens - 1:
            return
        idx = torch.cat([idx, next_id[:, None]], dim=1)  # (B, L + 1)
        if cache.length == bs:  # full: restart from the newest half, at positions 0 ...
            cache = Cache(model.config.n_layer)
            logits = forward_cached(model, idx[:, -(bs // 2) :], cache)
        else:
            logits = forward_cached(model, idx[:, -1:], cache)  # (B, 1, V)


# %% tags=["nbval-ignore-output"]
n = block_size - idx.size(1)  # fills the context exactly: no restart yet
plain = complete(sample_steps(model, idx, n, temperature=0), idx)
fast = complete(cached_steps(model, idx, n, temperature=0), idx)
print(f"{n} greedy tokens within the context: cached == uncached? {torch.equal(plain, fast)}")
assert torch.equal(plain, fast)
n = 3 * block_size  # well past the context
plain = complete(sample_steps(model, idx, n, temperature=0), idx)
fast = complete(cached_steps(model, idx, n, temperature=0), idx)
differ = (plain[0] != fast[0]).nonzero().flatten()  # positions where the two texts differ
first = f"first difference at position {differ[0].item()}" if len(differ) else "no difference"
agree = (plain[0, block_size:] == fast[0, block_size:]).float().mean().item()  # past the context
print(f"{n} greedy tokens, {plain.size(1)} positions in all: {first}; of the positions past "
      f"the context ({block_size} on), the two agree on {agree:.0%}")  # fmt: skip

# %% [markdown]
# Within the context the two loops write the same tokens. Past it they are different
# algorithms (a window of exactly `block_size` tokens against one of half to a whole
# `block_size`), so sooner or later one step picks a different token, and from then on the two
# texts drift apart: each continues its own text. Some positions after the first difference still
# coincide, by chance and because greedy decoding often falls back into the same loop (section
# 3), so the share printed above is not a measure of how close the two algorithms are.
#
# ## 10. How much faster?
#
# Time every step of generating `4 * block_size` tokens from the prompt of section 2, without
# the cache, with this notebook's cache, and with the library's (`stream`, whose cache writes
# into buffers allocated once instead of concatenating at every step). Each step is plotted
# against the length of the sequence it continues. Timings depend on the machine and on what
# else it is doing, so each generation runs three times and every step keeps its fastest time;
# the shapes of the curves do not depend on the machine.


# %% tags=["nbval-ignore-output"]
def step_times(steps) -> list[float]:
    """Seconds taken by each step of a step generator."""
    times, t0 = [], time.perf_counter()
    for _ in steps:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    return times


n = 4 * block_size
methods = {
    "no cache": lambda: sample_steps(model, idx, n, temperature=0),
    "KV cache": lambda: cached_steps(model, idx, n, temperature=0),
    "KV cache (library)": lambda: stream(model, idx, n, temperature=0),
}
list(cached_steps(model, idx, 8, temperature=0))  # warm-up
runs = {name: [] for name in methods}
for _ in range(3):  # other programs can only add time: keep each step's fastest of three runs
    for name, steps in methods.items():
        runs[name].append(step_times(steps()))
times = {name: [min(ts) for ts in zip(*r, strict=True)] for name, r in runs.items()}
lengths = [idx.size(1) + i for i in range(n)]  # the sequence length that step i continues
total = {name: sum(t) for name, t in times.items()}
within = block_size - idx.size(1)  # steps before the sequence outgrows the context
for name, t in times.items():
    print(f"{name:>18}: {n} tokens in {total[name]:5.2f} s ({n / total[name]:5,.0f} tokens/s); "
          f"speed-up {total['no cache'] / total[name]:4.1f}x, within the context "
          f"{sum(times['no cache'][:within]) / sum(t[:within]):4.1f}x")  # fmt: skip
print("median ms per step at sequence length:")
for L in [idx.size(1) + 4, block_size // 2, block_size - 4, 2 * block_size, 3 * block_size]:
    i = L - idx.size(1)
    row = {name: 1e3 * sorted(t[i - 4 : i + 4])[4] for name, t in times.items()}
    print(f"  {L:>4}: " + " | ".join(f"{name} {ms:5.2f}" for name, ms in row.items()))
assert total["no cache"] > total["KV cache"]

fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for name, t in times.items():
    axes[0].plot(lengths, [1e3 * s for s in t], label=name, lw=0.8)
    axes[1].plot(lengths, [sum(t[: i + 1]) for i in range(len(t))], label=name)
for ax in axes:
    ax.axvline(block_size, color="grey", ls=":", lw=0.8)
axes[0].set(xlabel="sequence length (tokens)", ylabel="ms per step", yscale="log",
            title="Time per step")  # fmt: skip
axes[1].set(xlabel="sequence length (tokens)", ylabel="seconds", title="Total time")
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Without the cache a step costs more and more as the sequence grows, up to the full window at
# `block_size` (the dotted line), and stays there: every step is a full forward pass over the
# last `block_size` tokens. With the cache a step runs one token at every length, and the
# spikes every `block_size // 2` steps past the context are the restarts. Past the context the
# cache never holds more than `block_size` keys, so attention adds little; the library's step
# stays flat. The notebook's cache copies all its keys and values into a new tensor at every step
# (`torch.cat`), a copy that grows with the cache, so its steps cost a little more as the cache
# fills, and a little more than the library's, which writes the new ones into buffers allocated
# once. The speed-up is largest past the context, where every uncached step runs a full window.
# It is smaller than the ratio of tokens processed because a single cached step is dominated by
# fixed per-step costs rather than arithmetic: reading every weight matrix to multiply it by one
# vector, and PyTorch's overhead for each of the many small operations in every layer. On a GPU,
# with long contexts and large batches, the cache is what makes generation practical at all.
#
# ## Check against the library
#
# `wikigpt_lib.generate` is this notebook's code, organised (its cache preallocates its
# buffers instead of concatenating). On the same inputs the two must agree: the filters
# exactly, the sampling distribution to float rounding, the sampled tokens exactly for the
# same seed, and the cached forward pass to float rounding.

# %%
from wikigpt_lib.generate import KVCache
from wikigpt_lib.generate import forward_cached as lib_forward_cached
from wikigpt_lib.generate import generate as lib_generate
from wikigpt_lib.generate import sample_probs as lib_sample_probs
from wikigpt_lib.generate import top_k_filter as lib_top_k
from wikigpt_lib.generate import top_p_filter as lib_top_p

gen = seed_everything(0)
z = torch.randn(4, 1000, generator=gen) * 3  # (B, V): four random "logit" rows
for k in [1, 5, 50, 999, 1000, 5000]:
    assert torch.equal(top_k_filter(z, k), lib_top_k(z, k)), k
for p in [0.01, 0.3, 0.9, 0.999, 1.0]:
    assert torch.equal(top_p_filter(z, p), lib_top_p(z, p)), p
for t, k, p in [
    (1.0, None, None),
    (0.7, 40, None),
    (1.3, None, 0.9),
    (0.8, 50, 0.95),
    (0, None, None),
]:
    ours, lib = next_token_probs(z, t, k, p), lib_sample_probs(z, t, k, p)
    assert torch.allclose(ours, lib, rtol=1e-5, atol=1e-7), (t, k, p)
print("top_k_filter, top_p_filter: equal | next_token_probs == sample_probs (to 1e-5)")

# %%
prompts = torch.tensor([tok.encode_ordinary(" The album was released in")] * 2, device=device)
n = 2 * block_size  # past the context, so the restart is checked too
for kw in [{"temperature": 0}, {"top_k": 40}, {"top_p": 0.9, "temperature": 0.8}]:
    ours = complete(sample_steps(model, prompts, n, seed=3, **kw), prompts)
    lib = lib_generate(model, prompts, n, seed=3, use_cache=False, **kw)
    assert torch.equal(ours, lib), kw  # the same random draws give the same tokens
    ours = complete(cached_steps(model, prompts, n, seed=3, **kw), prompts)
    lib = lib_generate(model, prompts, n, seed=3, use_cache=True, **kw)
    assert torch.equal(ours, lib), kw
print(
    "2 x block_size new tokens; greedy, top-k, top-p; with and without the cache: the same tokens"
)

seq = torch.from_numpy(val_text[: block_size + 1].astype("int64"))[None].to(device)  # (1, bs+1)
ours, lib = Cache(model.config.n_layer), KVCache(model.config.n_layer, block_size)
with torch.no_grad():
    for chunk in [seq[:, :5], seq[:, 5:6], seq[:, 6:7], seq[:, 7:20], seq[:, 20:block_size]]:
        a, b = forward_cached(model, chunk, ours), lib_forward_cached(model, chunk, lib)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert ours.length == lib.length == block_size
    for layer in range(model.config.n_layer):
        assert torch.allclose(ours.keys[layer], lib.keys[layer][:, :, :block_size], atol=1e-5)
        assert torch.allclose(ours.values[layer], lib.values[layer][:, :, :block_size], atol=1e-5)
print("forward_cached == the library's, in chunks of 5, 1, 1, 13 and the rest (to 1e-5),")
print("and the two caches hold the same keys and values")

# %% [markdown]
# ## Summary
#
# - At each step the model gives a distribution over the whole vocabulary, with a head of
#   likely tokens and a long tail; decoding decides how to pick from it.
# - Greedy decoding (argmax) is deterministic and falls into loops. Sampling draws from the
#   distribution; temperature sharpens ($\tau < 1$) or flattens ($\tau > 1$) it first.
# - Top-k keeps a fixed number of tokens; top-p keeps the smallest set that holds probability
#   $p$, so its size adapts to how certain the model is. Both cut off the tail, where most bad
#   picks come from.
# - The KV cache stores every layer's keys and values, so each step runs one token instead of
#   the whole window; within the context it computes the same logits as the full model.
# - With learned absolute positions a cache cannot slide past the context: a rolling cache
#   is simply wrong. The library restarts a full cache from its newest half, which is exact
#   for a window of half to a whole context and keeps nearly all of the speed.
#
# ## Exercises
#
# 1. *(easy)* Temperature and entropy. For the prompts `" the United"`, `" The album was
#    released in"` and `" The"`, plot the entropy of the next-token distribution against the
#    temperature (0.1 to 3, log scale). Which temperature makes the three distributions about
#    as uncertain as a uniform choice among 10 tokens? Check the limits: at $\tau \to 0$ the
#    entropy goes to 0 and at $\tau \to \infty$ to $\ln V$.
# 2. *(medium)* Repetition. Continue 10 different prompts by 200 tokens each with greedy,
#    $\tau = 0.7$, $\tau = 1$, top-k 40 and top-p 0.9, and measure the share of repeated
#    4-grams and the mean loss the model assigns to its own samples. How do the rules order on
#    each measure? Compare with the same measures on real validation text.
# 3. *(medium)* Min-p. A newer rule (Nguyen et al., 2024) keeps the tokens whose probability
#    is at least $p_\text{min}$ times that of the most likely token. Implement
#    `min_p_filter(logits, p_min)`, and compare how many tokens it keeps with top-p 0.9 on the
#    three prompts of exercise 1. Which one adapts more to the model's certainty?
# 4. *(medium)* Batches. The cache works for a batch of prompts of the same length. Generate
#    greedily from 8 different prompts of 6 tokens at once with `cached_steps`, check that
#    every row equals that prompt generated alone, and measure tokens per second for batch
#    sizes 1, 4, 16 and 64. Why does a larger batch give more tokens per second, on a CPU too?
# 5. *(harder)* The restart point. The library restarts a full cache from the newest
#    `block_size // 2` tokens. Add a parameter `keep` to `cached_steps` and to the "restart"
#    scheme of `scheme_losses`, and for `keep` in 16, 32, 64, 96 and 120, measure the mean
#    loss on the validation text of section 9 and count the tokens the model processes per
#    generated token. Derive the count as a formula in `block_size` and `keep`. Which `keep`
#    would you choose?
