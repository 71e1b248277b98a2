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
# # 06 · Generation: solutions to the exercises
#
# Worked answers to the exercises of [06_generation](../notebooks/06_generation.ipynb). Try
# them yourself first; each answer is code you can run plus a short explanation. The numbers
# quoted in the text are from a run with the course model (`runs/cpu`) on the real WikiText-2,
# on a 2-core CPU.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/wiki-gpt/wiki-gpt/blob/main/solutions/06_generation_solutions.ipynb)

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
import numpy as np
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm: no Jupyter widgets

from wikigpt_lib.course import course_model
from wikigpt_lib.data import load_wikitext2, tokenize_split, wikitext2_source
from wikigpt_lib.device import pick_device, quick
from wikigpt_lib.evaluate import evaluate_perplexity
from wikigpt_lib.generate import KVCache, forward_cached, generate, sample_probs, top_p_filter
from wikigpt_lib.tokenizer import get_tokenizer

plt.rcParams["figure.dpi"] = 80

# %% [markdown]
# The model, as in the notebook: the course model from `runs/cpu`, or a model trained here.
# The notebook checked its own filters, sampling and cache against `wikigpt_lib.generate`, so
# the answers use the library's versions.

# %% tags=["nbval-ignore-output"]
RUN_DIR = Path("..") / "runs" / "cpu"  # relative to this notebook

ds = load_wikitext2(fallback="sample")
tok = get_tokenizer()
device = pick_device()
course = course_model(RUN_DIR, data=ds, tokenizer=tok, device=device)  # loads, or trains here
model, model_name = course.model, course.description
block_size, V = model.config.block_size, model.config.vocab_size
val_text = tokenize_split(ds["validation"], tok)  # (N,) validation token ids
print("data:", wikitext2_source(ds))
print("model:", model_name, f"| context {block_size} tokens")


def next_logits(prompt: str) -> torch.Tensor:
    """The model's logits (V,) for the token after `prompt`."""
    ids = torch.tensor([tok.encode_ordinary(prompt)], device=device)[:, -block_size:]
    with torch.no_grad():
        return model(ids)[0][0, -1].float()


def entropy(p: torch.Tensor) -> float:
    return -(p * p.clamp_min(1e-30).log()).sum().item()


prompts = [" the United", " The album was released in", " The"]

# %% [markdown]
# ## Exercise 1: temperature and entropy
#
# `sample_probs(logits, temperature)` is the notebook's `next_token_probs`. The entropy of each
# prompt's distribution, for temperatures from 0.1 to 3:

# %% tags=["nbval-ignore-output"]
temps = np.geomspace(0.1, 3, 40)
fig, ax = plt.subplots(figsize=(6, 3.2))
for prompt in prompts:
    z = next_logits(prompt)
    H = [entropy(sample_probs(z, float(t))) for t in temps]
    t10 = np.interp(math.log(10), H, temps)  # H grows with T, so interpolate T(H)
    ax.plot(temps, H, label=repr(prompt))
    print(f"{prompt!r:>28}: entropy at T=1 {entropy(sample_probs(z, 1.0)):.2f} nats; "
          f"as uncertain as 10 equally likely tokens at T = {t10:.2f}")  # fmt: skip
    assert entropy(sample_probs(z, 0.01)) < 0.1  # T -> 0: greedy, one token
    assert abs(entropy(sample_probs(z, 1e4)) - math.log(V)) < 1e-3  # T -> inf: uniform
ax.axhline(math.log(10), color="grey", ls=":", label="ln 10")
ax.axhline(math.log(V), color="grey", ls="--", label=f"ln {V:,} (uniform)")
ax.set(xscale="log", xlabel="temperature", ylabel="entropy (nats)",
       title="Entropy of the next-token distribution")  # fmt: skip
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Entropy grows monotonically with the temperature, from 0 (all mass on the argmax: greedy) towards
# $\ln V = 9.01$ nats (uniform over the 8,192 tokens). The three prompts need very different
# temperatures for the same uncertainty: after "the United" the model is so sure of " States" that
# it takes $T \approx 1.1$ to make it as uncertain as 10 equally likely tokens, while after " The"
# it is far more uncertain than that already at $T = 1$ (7.3 nats, like a choice among some 1,400
# tokens) and needs $T \approx 0.4$ to get there (numbers from the run on the real data). One
# temperature cannot give every context the same amount of randomness, which is the motivation for
# top-p.
#
# ## Exercise 2: repetition
#
# Ten prompts of 8 tokens from the validation text, continued by 200 tokens with each rule, in
# one batch per rule (rows of a batch are sampled independently). For each sample we measure
# the share of repeated 4-grams and the model's own loss on the sample (its perplexity,
# evaluated like any text); real validation text of the same length is the reference.


# %% tags=["nbval-ignore-output"]
def repeated_4grams(ids: list[int]) -> float:
    grams = [tuple(ids[i : i + 4]) for i in range(len(ids) - 3)]
    return 1 - len(set(grams)) / len(grams)


n_prompts, n_new = quick(10, 3), quick(200, 40)
starts = np.linspace(0, len(val_text) - 400, n_prompts).astype(int)
prompt_ids = torch.tensor(np.stack([val_text[s : s + 8] for s in starts]).astype(np.int64))
rules = {"greedy": {"temperature": 0}, "T = 0.7": {"temperature": 0.7},
         "T = 1.0": {"temperature": 1.0}, "top-k 40": {"top_k": 40},
         "top-p 0.9": {"top_p": 0.9}}  # fmt: skip
rows = {}
for name, kw in rules.items():
    out = generate(model, prompt_ids.to(device), n_new, seed=0, **kw)  # (10, 8 + 200)
    samples = out[:, 8:].cpu().numpy()
    rows[name] = samples
real = np.stack([val_text[s + 8 : s + 8 + n_new] for s in starts]).astype(np.int64)
rows["real text"] = real

print(f"{'':>10} | repeated 4-grams | model's loss on it")
for name, samples in rows.items():
    rep = np.mean([repeated_4grams(list(s)) for s in samples])
    loss = np.mean([evaluate_perplexity(model, s, stride=block_size // 2)["loss"] for s in samples])
    print(f"{name:>10} | {rep:16.1%} | {loss:.2f}")

# %% [markdown]
# The measures order the rules in opposite ways. Greedy has by far the lowest loss (each token
# is the model's favourite, so the model finds the text very likely) and by far the most
# repetition: it falls into a loop and stays there. $T = 0.7$ and top-k 40 also write text that
# the model finds more likely than real text. Pure sampling at $T = 1$ overshoots the other way:
# the model finds its own samples *less* likely than real text, because now and then a draw from
# the long tail lands on a token that derails what follows. Top-p 0.9 comes closest to real text
# in loss. That is the pattern Holtzman et al. (2020) found for GPT-2: pure sampling gives text
# of higher perplexity than people write, greedy and beam search text of far lower, and nucleus
# sampling comes closest. Repetition is not zero in real text either: over 200 tokens it repeats
# a few 4-grams (1.6% here: mostly names, such as *Homarus gammarus* or *Joshua Tree*, and a
# phrase or two), more than the samples at $T = 1$, top-k and top-p do, less than $T = 0.7$, and
# far less than greedy. Making text likely and making it good are different goals.
#
# ## Exercise 3: min-p
#
# Min-p keeps the tokens whose probability is at least `p_min` times the largest probability,
# so the threshold rises when the model is confident and falls when it is not.


# %%
def min_p_filter(logits: torch.Tensor, p_min: float) -> torch.Tensor:
    """Keep the tokens with probability >= p_min * (largest probability), (..., V)."""
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = p_min * probs.max(dim=-1, keepdim=True).values  # (..., 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


z = torch.tensor([3.0, 1.5, 1.2, 1.0, 0.5, 0.2, -0.5, -1.0])  # the notebook's toy logits
p = z.softmax(-1)
print("toy: p / max p =", [round(x, 3) for x in (p / p.max()).tolist()])
for p_min in (0.1, 0.2, 0.5):
    print(f"  min-p {p_min}: keeps", torch.isfinite(min_p_filter(z, p_min)).sum().item(), "tokens")
assert torch.isfinite(min_p_filter(z, 0.2)).tolist() == [True] * 2 + [False] * 6

# %% tags=["nbval-ignore-output"]
print(f"{'prompt':>28} | top p | top-p 0.9 | min-p 0.1 | min-p 0.05")
for prompt in prompts:
    z = next_logits(prompt)
    kept = [torch.isfinite(f).sum().item() for f in
            (top_p_filter(z, 0.9), min_p_filter(z, 0.1), min_p_filter(z, 0.05))]  # fmt: skip
    print(f"{prompt!r:>28} | {z.softmax(-1).max().item():5.2f} | {kept[0]:9,} | {kept[1]:9,} "
          f"| {kept[2]:10,}")  # fmt: skip

# %% [markdown]
# Both adapt to the model's certainty, but in opposite directions. Top-p's nucleus grows with
# the uncertainty: after "the United" top-p 0.9 keeps 11 tokens, but after " The" it has to
# gather 90% of a very flat distribution and lets in 2,548 tokens, deep into the tail. Min-p's
# threshold is tied to the best token's probability, so it keeps only the tokens within a factor
# of 10 (or 20) of the best: 2 to 35 tokens over the three prompts at $p_\text{min} = 0.1$. That
# is the argument of Nguyen et al. (2024): the tail that top-p lets in when the distribution is
# flat is where incoherent samples come from, especially at temperatures above 1.
#
# ## Exercise 4: batches
#
# The exercise asks for `cached_steps`; we use the library's `generate`, which the notebook's
# last section showed writes exactly the tokens of `cached_steps` for the same inputs. Eight
# different 6-token prompts from the validation text, generated together and one by one:

# %% tags=["nbval-ignore-output"]
starts = np.linspace(0, len(val_text) - 100, 8).astype(int)
batch = torch.tensor(np.stack([val_text[s : s + 6] for s in starts]).astype(np.int64)).to(device)
n_new = quick(60, 20)
together = generate(model, batch, n_new, temperature=0)  # (8, 6 + n_new)
alone = torch.cat([generate(model, row[None], n_new, temperature=0) for row in batch])
same = (together == alone).all(dim=1)
print(f"rows equal to their own generation: {same.sum().item()} of {len(same)}")
assert same.float().mean() >= 0.75  # a near-tie may flip an argmax (see below)

# %% [markdown]
# Every row of the batch equals its prompt generated alone (should one differ, it is a near
# tie: a batched matrix multiply adds in another order, the last bits of two logits change,
# and the argmax flips; after that the texts go their own ways). Throughput:

# %% tags=["nbval-ignore-output"]
n_new = quick(64, 16)
batches = {}  # batch size B -> B different 6-token prompts, (B, 6)
for B in quick([1, 4, 16, 64], [1, 4]):
    starts = np.arange(B) * 97
    batches[B] = torch.tensor(np.stack([val_text[s : s + 6] for s in starts]).astype(np.int64))
    batches[B] = batches[B].to(device)
    generate(model, batches[B], 4, temperature=0)  # warm-up
best = dict.fromkeys(batches, float("inf"))  # B -> fastest seconds for n_new steps
for _ in range(5):  # interleaved, so a burst of load elsewhere does not hit one batch size only
    for B, prompts_b in batches.items():
        t0 = time.perf_counter()
        generate(model, prompts_b, n_new, temperature=0)
        best[B] = min(best[B], time.perf_counter() - t0)  # other programs only add time
throughput = {B: B * n_new / best[B] for B in batches}
print("batch | tokens/s | x batch 1 | time per step, x batch 1")
for B in batches:
    print(f"{B:>5} | {throughput[B]:8,.0f} | {throughput[B] / throughput[1]:9.1f} "
          f"| {best[B] / best[1]:6.1f}")  # fmt: skip
if course.from_checkpoint:  # a tiny quick-mode model can be too small for batching to pay
    assert max(throughput.values()) > throughput[1]

# %% [markdown]
# Each batch size runs five times, interleaved with the others, and keeps its fastest run:
# other programs on the machine can only add time. Tokens per second grow with the batch because
# the time of a step grows much more slowly than the number of rows it serves (last column). A
# cached step for one token is dominated by fixed per-step costs rather than by arithmetic: it
# reads every weight matrix to multiply it by a single vector (a matrix-*vector* product, little
# arithmetic per number read), and it pays PyTorch's overhead for each of the many small operations
# in every layer. With a batch the same reads and the same operations serve $B$ rows
# (a matrix-*matrix* product), so the fixed cost is shared, until arithmetic, or the memory for
# $B$ rows of 8,192 logits and $B$ caches, becomes the limit and the gain flattens. Where that
# happens depends on the machine: measure on yours. That is why servers batch requests, on CPUs
# and GPUs alike.
#
# ## Exercise 5: the restart point
#
# The notebook's `cached_steps` and the "restart" scheme of its `scheme_losses`, with the restart
# point as a parameter `keep`. They are built on the library's `KVCache` and `forward_cached`,
# which the notebook showed compute what its own `Cache` does; `scheme_losses` leaves out the
# rolling cache, which does not restart. `cached_steps` also records how many tokens each forward
# pass runs, so we can count them.


# %%
@torch.no_grad()
def cached_steps(model, idx, max_new_tokens, keep=None, temperature=1.0, top_k=None, top_p=None,
                 seed=None, processed=None):  # fmt: skip
    """The notebook's cached_steps: yield max_new_tokens new token ids (B,) for the prompts idx
    (B, T). A full cache restarts from the newest `keep` tokens (None: block_size // 2, as the
    library does). If `processed` is a list, each forward pass appends the tokens it ran."""
    gen = None if seed is None else torch.Generator(device=idx.device).manual_seed(seed)
    bs = model.config.block_size
    keep = bs // 2 if keep is None else keep
    cache = KVCache(model.config.n_layer, bs)

    def run(new: torch.Tensor) -> torch.Tensor:
        """Run new (B, T) at the next T positions; logits for the token after them, (B, V)."""
        if processed is not None:
            processed.append(new.size(1))
        return forward_cached(model, new, cache)[:, -1]

    logits = run(idx[:, -bs:])  # the prefill
    for step in range(max_new_tokens):
        if temperature == 0:
            next_id = logits.argmax(dim=-1)  # (B,)
        else:
            probs = sample_probs(logits, temperature, top_k, top_p)  # (B, V)
            next_id = torch.multinomial(probs, 1, generator=gen).squeeze(-1)  # (B,)
        yield next_id
        if step == max_new_tokens - 1:
            return
        idx = torch.cat([idx, next_id[:, None]], dim=1)  # (B, L + 1)
        if cache.length == bs:  # full: restart from the newest `keep` tokens, at positions 0 ...
            cache.reset()
            logits = run(idx[:, -keep:])
        else:
            logits = run(idx[:, -1:])


@torch.no_grad()
def scheme_losses(model, ids: torch.Tensor, scheme: str, keep=None) -> torch.Tensor:
    """Loss of predicting ids[t] from the tokens before it, t = block_size ... N-1, for ids (N,).
    scheme: "window" (exact sliding window) or "restart" (a cache that restarts from the newest
    `keep` tokens when full; None: block_size // 2)."""
    bs = model.config.block_size
    if scheme == "window":  # every target sees exactly the bs tokens before it
        windows = ids.unfold(0, bs, 1)[:-1]  # (N - bs, bs): windows ending before each target
        logits = torch.cat([model(w)[0][:, -1] for w in windows.split(64)])  # (N - bs, V)
        return F.cross_entropy(logits.float(), ids[bs:], reduction="none")
    keep = bs // 2 if keep is None else keep
    cache = KVCache(model.config.n_layer, bs)
    logits = forward_cached(model, ids[None, :bs], cache)[:, -1]  # (1, V): predicts ids[bs]
    losses = []
    for t in range(bs, len(ids)):
        losses.append(F.cross_entropy(logits.float(), ids[t : t + 1]))
        if cache.length == bs:  # full: start again from the newest `keep` tokens
            cache.reset()
            logits = forward_cached(model, ids[None, t - keep + 1 : t + 1], cache)[:, -1]
        else:
            logits = forward_cached(model, ids[None, t : t + 1], cache)[:, -1]
    return torch.stack(losses)


# %% [markdown]
# With the default `keep` the new `cached_steps` must write what the library writes, past the
# context too. Then, for each `keep`: the mean loss on the validation text of section 9 (the first
# `5 * block_size` tokens, each token after the first `block_size` predicted), and the tokens run
# per generated token while generating `4 * block_size` tokens greedily from a prompt that fills
# the context (not counting the prompt's prefill).

# %% tags=["nbval-ignore-output"]
prompt = torch.from_numpy(val_text[:block_size].astype(np.int64))[None].to(device)  # (1, bs)
n_gen = 4 * block_size
new = torch.stack(list(cached_steps(model, prompt, n_gen, temperature=0)), dim=1)  # (1, n_gen)
assert torch.equal(torch.cat([prompt, new], dim=1), generate(model, prompt, n_gen, temperature=0))

ids = torch.from_numpy(val_text[: block_size + 4 * block_size].astype(np.int64)).to(device)
window_loss = scheme_losses(model, ids, "window").mean().item()
print(f"{len(ids) - block_size} validation tokens, each predicted after the first {block_size}")
print(f"sliding window: loss {window_loss:.3f}, {block_size} tokens run per token")
print(f"{'keep':>5} | loss  | tokens run per token | formula bs/(bs-keep+1)")
keeps = sorted({max(1, block_size * f // 128) for f in (16, 32, 64, 96, 120)})
results = {}
for keep in keeps:
    loss = scheme_losses(model, ids, "restart", keep).mean().item()
    processed = []  # filled by cached_steps: the tokens each forward pass runs
    list(cached_steps(model, prompt, n_gen, keep, temperature=0, processed=processed))
    per_token = sum(processed[1:]) / len(processed[1:])  # each pass after the prefill: one token
    results[keep] = (loss, per_token)
    print(
        f"{keep:>5} | {loss:.3f} | {per_token:20.2f} | {block_size / (block_size - keep + 1):.2f}"
    )

# %% [markdown]
# The count follows from one cycle: after a restart the cache holds `keep` tokens and grows by
# one per step, so it takes `block_size - keep` single-token steps to fill, then the next
# restart runs `keep` tokens. A cycle makes `block_size - keep + 1` predictions and runs
# `keep + (block_size - keep) = block_size` tokens through the model:
#
# $$\text{tokens per generated token} = \frac{\text{block\_size}}{\text{block\_size} -
#   \text{keep} + 1}$$
#
# (the measured values are slightly higher because the run ends mid-cycle, with a restart but
# not all of the cheap steps after it). The uncached sliding window runs `block_size` tokens per
# token, 128 here. On the same model and text, `keep = 64` reproduces the notebook's "restart" loss
# (4.809) and the sliding window its "window" loss (4.841). The average context is
# $(\text{keep} + \text{block\_size}) / 2$ tokens, so for a model that used its whole context the
# loss would fall as `keep` grows, towards the sliding window's (which is the stride-1
# evaluation: context always `block_size`). For the course model it hardly moves: the five
# settings lie within 0.02 nats of each other, and all of them came out slightly *better* than
# the exact sliding window on this text, differences of the size that 512 tokens cannot resolve.
# That is what notebook 07 measured: the model's loss stops improving beyond the 17-32 bin, after
# about 20 to 30 tokens of context, so any `keep` gives it enough. The cost, on the other hand,
# explodes near the top (at `keep = 120` a restart every 9 tokens, 14 tokens run per token).
# `keep = block_size // 2` costs about 2 tokens per token and keeps at least half a window of
# context, which a better model would use: a good default, and the library's. (We count tokens,
# not time: the attention part of a step also grows with the context, but at this size the
# matrix multiplies dominate.)
