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
# # 05 · Training
#
# Notebook 04 built the GPT and made it memorise one batch. Training it on a whole corpus takes
# a few more pieces: a way to measure progress on text the model never trains on, an optimizer
# and a learning-rate schedule that suit transformers, protection against the occasional huge
# gradient, tricks to go faster (mixed precision) or fit bigger batches (gradient
# accumulation), and checkpoints so that a run can stop and continue. This notebook adds them
# one at a time to a bare loop, then trains the course model on WikiText-2 and looks at what
# happens when a model trains too long on too little data.
#
# **What you will build**
#
# - the bare training loop: forward, loss, backward, step;
# - evaluation on the validation split, and perplexity;
# - AdamW with weight decay on the weight matrices only, and a warmup + cosine schedule;
# - gradient clipping, mixed precision (bf16, fp16 with a gradient scaler, fp32) and gradient
#   accumulation, each checked by a small experiment;
# - checkpoints that survive a crash, and a run that is interrupted and resumed with exactly the
#   losses of a run that never stopped;
# - the course model trained on WikiText-2, with its loss curves and text sampled before and
#   after training;
# - an overfitting experiment, with what dropout, weight decay and early stopping do about it;
# - a check that the notebook's schedule, parameter groups, evaluation and training step match
#   `wikigpt_lib.train`.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/wiki-gpt/wiki-gpt/blob/main/notebooks/05_training.ipynb)
#
# On Colab, pick a GPU first (*Runtime → Change runtime type → T4 GPU*): section 8 then trains
# the larger GPU model instead of the CPU one.

# %%
import sys

if "google.colab" in sys.modules:  # on Colab, install the course library first
    get_ipython().run_line_magic(
        "pip", 'install -q "wikigpt-lib @ git+https://github.com/wiki-gpt/wiki-gpt"'
    )

# %%
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm: no Jupyter widgets

from wikigpt_lib.data import get_batch, iter_eval_batches, load_wikitext2, tokenize_split
from wikigpt_lib.device import is_quick, pick_device, pick_precision, quick, seed_everything
from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.tokenizer import get_tokenizer

torch.set_printoptions(precision=4, sci_mode=False)
plt.rcParams["figure.dpi"] = 80  # small images keep the notebook file small

# %% [markdown]
# The data, as notebook 02 prepared it: WikiText-2's training and validation splits, each
# tokenized into one long array of token ids with the course tokenizer (8,192 tokens). The
# first call tokenizes and caches; later calls load the cache at once.

# %% tags=["nbval-ignore-output"]
from wikigpt_lib.data import wikitext2_source

ds = load_wikitext2(fallback="sample")
tok = get_tokenizer()
train_ids = tokenize_split(ds["train"], tok)  # (N_train,) uint16
val_ids = tokenize_split(ds["validation"], tok)  # (N_val,)
print("data loaded from:", wikitext2_source(ds))
print(f"train: {len(train_ids):,} tokens | validation: {len(val_ids):,} tokens")
device = pick_device()
print("device:", device)

# %% [markdown]
# ## 1. A bare training loop
#
# Training repeats four steps: draw a batch of random windows from the training tokens, run the
# model forward to get the loss, run it backward to get the gradient of the loss with respect
# to every parameter, and let the optimizer move the parameters a little against the gradient.
# Here it is for the library's `tiny` model (2 layers, width 32, context 32) and a plain Adam
# optimizer at a constant learning rate.

# %% tags=["nbval-ignore-output"]
tiny = GPTConfig.preset("tiny")  # vocab 8192, block_size 32, 2 layers, width 32
gen = seed_everything(0)  # a generator of its own for the batches
model = GPT(tiny).to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

steps, batch_size = quick(300, 30), 16
losses = []
start = time.perf_counter()
for step in range(steps):
    x, y = get_batch(train_ids, batch_size, tiny.block_size, generator=gen, device=device)
    logits, loss = model(x, y)  # x, y (B, T) -> logits (B, T, V), loss: a scalar
    optimizer.zero_grad(set_to_none=True)  # gradients accumulate: clear the last step's
    loss.backward()  # d loss / d parameter, into p.grad for every parameter p
    optimizer.step()  # move each parameter against its gradient
    losses.append(loss.item())
    if step % (steps // 6) == 0 or step == steps - 1:
        print(f"step {step:>4} | loss {loss.item():.3f}")
elapsed = time.perf_counter() - start
print(
    f"{steps} steps in {elapsed:.1f} s ({steps * batch_size * tiny.block_size / elapsed:,.0f} tokens/s)"
)
assert losses[-1] < losses[0] - 1.0  # it learns

# %% [markdown]
# The loss starts near $\ln 8192 \approx 9.01$ (notebook 04: an untrained model spreads its
# probability evenly) and falls quickly at first: the model learns which tokens are common, then
# which tokens follow which. The curve is noisy because every step sees a different random batch:

# %%
def smooth(values: list[float], k: int = 10) -> list[float]:
    """Moving average over the last k values (fewer at the start)."""
    windows = [values[max(0, i - k + 1) : i + 1] for i in range(len(values))]
    return [sum(w) / len(w) for w in windows]


fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(losses, alpha=0.4, label="each step")
ax.plot(smooth(losses), label="moving average of 10")
ax.axhline(math.log(tiny.vocab_size), color="gray", ls=":", label="ln(vocab_size)")
ax.set(xlabel="step", ylabel="training loss", title="A bare loop: the tiny model")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Evaluation on the validation split
#
# The training loss tells how well the model fits the batches it trains on. What we want is how
# well it predicts text it has *not* seen, so we measure the loss on the validation split, with
# three differences from a training step:
#
# - `model.eval()` turns dropout off (the model should be at its best, and deterministic);
#   `model.train()` turns it back on afterwards;
# - `torch.no_grad()` skips recording the computation graph: no backward pass will follow, so
#   this saves memory and time;
# - the batches are not random: `iter_eval_batches` walks the split from its start in
#   non-overlapping windows, so every evaluation scores exactly the same tokens and two numbers
#   can be compared.
#
# The loss averages over tokens (a batch's mean loss times its number of targets, summed, and
# divided by the total), so a short last batch counts for its size. Its exponential is the
# **perplexity**: $e^{\text{loss}}$ is the number of equally likely tokens the model is, on
# average, as uncertain as. An untrained model has a perplexity near the vocabulary size.

# %%
@torch.no_grad()
def evaluate(
    model, data, block_size: int, batch_size: int = 16, max_batches: int | None = None
) -> float:
    """Mean next-token loss over non-overlapping windows of `data` (the first max_batches batches)."""
    was_training = model.training
    model.eval()  # dropout off
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i, (x, y) in enumerate(iter_eval_batches(data, batch_size, block_size)):
        if max_batches is not None and i >= max_batches:
            break
        _, loss = model(x.to(device), y.to(device))  # mean over this batch's B*T targets
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)  # back to the mode it was in
    return total / count


# %% tags=["nbval-ignore-output"]
eval_batches = quick(20, 4)
val_loss = evaluate(model, val_ids, tiny.block_size, max_batches=eval_batches)
seed_everything(0)
untrained = GPT(tiny).to(device)
val_loss0 = evaluate(untrained, val_ids, tiny.block_size, max_batches=eval_batches)
print(
    f"untrained model: val loss {val_loss0:.3f}, perplexity {math.exp(val_loss0):7,.0f}  (vocab {tiny.vocab_size:,})"
)
print(f"after section 1: val loss {val_loss:.3f}, perplexity {math.exp(val_loss):7,.0f}")
assert val_loss < val_loss0 and abs(val_loss0 - math.log(tiny.vocab_size)) < 0.3

# %% [markdown]
# After a few hundred steps the tiny model hesitates between several hundred tokens instead of
# eight thousand: progress, though still far from good.
#
# ## 3. AdamW and the learning-rate schedule
#
# **AdamW.** Adam (Kingma and Ba, 2015) scales each parameter's step by running averages of its
# gradient (first moment, $\beta_1$) and squared gradient (second moment, $\beta_2$).
# *Weight decay* pulls every weight a little towards zero at each step, which keeps weights
# small unless the data keeps asking for them: a regulariser. AdamW (Loshchilov and Hutter,
# 2019) applies the decay directly to the weights instead of adding it to the gradient, where
# Adam's scaling would distort it. GPTs use $\beta_2 = 0.95$ rather than the default 0.999, so
# the second moment follows the gradients faster and reacts to a sudden large gradient sooner.
#
# Not every parameter should decay. Weight matrices and embeddings (2-D) hold what the model
# has learned, and keeping them small regularises it. Biases and LayerNorm gains (1-D) are
# different: a LayerNorm gain should sit near 1, and pulling it to 0 only fights the
# normalisation; a bias is an offset whose size says nothing about overfitting. So we make two
# *parameter groups*, one with decay and one without:

# %%
def make_param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: 2-D tensors (matrices, embeddings) decay; 1-D (biases, LayerNorm) do not."""
    params = [p for p in model.parameters() if p.requires_grad]  # the tied wte/lm_head once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


# GPT-2 has biases; the course presets don't (bias=False), so there only LayerNorm gains stay out
example = GPT(GPTConfig.preset("tiny", bias=True))
names = {id(p): n for n, p in example.named_parameters()}
for group in make_param_groups(example, weight_decay=0.1):
    ps = group["params"]
    print(
        f"weight_decay={group['weight_decay']}: {len(ps):>2} tensors, {sum(p.numel() for p in ps):>7,} parameters,"
        f" e.g. {', '.join(names[id(p)] for p in ps[:2])}"
    )

# %% [markdown]
# **The schedule.** The learning rate is the most important setting, and it should not stay
# constant. At the start, Adam's moment estimates rest on a handful of gradients and a fresh
# model's gradients are large and erratic, so full-size steps can throw it somewhere it never
# recovers from: a **linear warmup** raises the rate from almost 0 to its peak over the first
# `warmup` steps. After that, a **cosine decay** lowers it smoothly to a floor `min_lr` at the
# last step: big steps early to make progress, small steps late to settle into a minimum
# instead of bouncing around it (Loshchilov and Hutter, 2017; GPT-2 and GPT-3 train this way).

# %%
def lr_schedule(step: int, lr: float, min_lr: float, warmup: int, max_steps: int) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup, then cosine to min_lr."""
    if step < warmup:
        return lr * (step + 1) / warmup  # step 0 gets lr/warmup, step warmup-1 gets lr
    if step >= max_steps:
        return min_lr
    progress = (step - warmup) / max(1, max_steps - warmup)  # 0 -> 1 over the decay
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


schedule = dict(lr=2e-3, min_lr=2e-4, warmup=50, max_steps=1200)  # the cpu preset's
lrs = [lr_schedule(s, **schedule) for s in range(schedule["max_steps"])]
for s in [0, 24, 49, 50, 625, 1199]:
    print(f"step {s:>4}: lr {lrs[s]:.2e}")

fig, ax = plt.subplots(figsize=(6, 2.8))
ax.plot(lrs)
ax.axvline(schedule["warmup"], color="gray", ls=":", label="end of warmup")
ax.axhline(schedule["min_lr"], color="gray", ls="--", lw=0.8, label="min_lr")
ax.set(xlabel="step", ylabel="learning rate", title="Linear warmup, then cosine decay")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# To use a schedule with a PyTorch optimizer, set the rate of every group before each step:
# `for g in optimizer.param_groups: g["lr"] = lr_schedule(step, ...)`. Section 7 on uses it.
#
# ## 4. Gradient clipping
#
# Now and then a batch produces a gradient far larger than usual (a rare token, an unlucky
# combination, an attention softmax that saturates). One such step can undo hundreds of good
# ones. **Clipping** measures the *global* gradient norm, the length of all gradients together
# seen as one long vector, $\|g\| = \sqrt{\sum_p \|g_p\|^2}$, and if it exceeds a limit (1.0
# for GPTs) scales every gradient by the same factor so the norm equals the limit. The
# direction of the step is kept; only its length is capped.

# %%
def clip_gradients(parameters, max_norm: float) -> float:
    """Scale all gradients so that their global norm is at most max_norm; return the norm before."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)).item()  # one norm over all
    if norm > max_norm:
        for g in grads:
            g.mul_(max_norm / (norm + 1e-6))
    return norm


def global_norm(parameters) -> float:
    return math.sqrt(
        sum((p.grad.float() ** 2).sum().item() for p in parameters if p.grad is not None)
    )


# %% tags=["nbval-ignore-output"]
max_norm = 0.25  # the first gradients of the tiny model are around 0.5
gen = seed_everything(0)
model = GPT(tiny).to(device)
x, y = get_batch(train_ids, 16, tiny.block_size, generator=gen, device=device)
_, loss = model(x, y)
loss.backward()
before = clip_gradients(list(model.parameters()), max_norm)
after = global_norm(model.parameters())
print(f"global gradient norm: before {before:.3f} -> after clipping to {max_norm}: {after:.3f}")
assert before > max_norm and math.isclose(after, max_norm, rel_tol=1e-4)

# %% [markdown]
# How large are the norms in practice? Train the tiny model again, record the norm at every
# step, and clip at 1.0:

# %% tags=["nbval-ignore-output"]
gen = seed_everything(0)
model = GPT(tiny).to(device)
optimizer = torch.optim.AdamW(make_param_groups(model, 0.1), lr=3e-3, betas=(0.9, 0.95))
norms = []
for _ in range(quick(200, 30)):
    x, y = get_batch(train_ids, 16, tiny.block_size, generator=gen, device=device)
    _, loss = model(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norms.append(clip_gradients(list(model.parameters()), max_norm=1.0))
    optimizer.step()
clipped = sum(n > 1.0 for n in norms)
print(
    f"gradient norm: first step {norms[0]:.2f}, median {sorted(norms)[len(norms) // 2]:.2f}, max {max(norms):.2f}"
)
print(f"steps clipped: {clipped} of {len(norms)}")

fig, ax = plt.subplots(figsize=(6, 2.8))
ax.plot(norms)
ax.axhline(1.0, color="red", ls="--", label="clip at 1.0")
ax.set(
    xlabel="step", ylabel="global grad norm", yscale="log", title="Gradient norm before clipping"
)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Most steps have a norm well below 1, but a few spike ten or a hundred times higher. Adam
# divides each step by its running estimate of the gradient's size, so a spike does not turn into
# one giant step; but it enters Adam's running averages and skews the direction of the next ten
# or so steps ($\beta_1 = 0.9$) and shrinks the ones after it ($\beta_2 = 0.95$). Clipping keeps
# such a batch from dominating.
#
# PyTorch's `torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)` does the same in one call
# (and returns the norm before clipping); the library uses it.
#
# ## 5. Mixed precision
#
# A float32 number takes 4 bytes. Modern GPUs multiply 16-bit numbers several times faster and
# move half the bytes, so training runs the big matrix multiplies in 16 bits while keeping the
# weights, the optimizer state and sensitive operations (softmax, losses, norms) in float32.
# `torch.autocast` does the choosing: inside it, each operation runs in the precision that suits
# it. There are two 16-bit formats:

# %%
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    info = torch.finfo(dtype)
    print(
        f"{str(dtype):>15}: {info.bits} bits | largest {info.max:9.3g} | smallest normal "
        f"{info.smallest_normal:9.3g} | precision (eps) {info.eps:.3g}"
    )

# %% [markdown]
# **bfloat16** keeps float32's 8 exponent bits, so it covers the same range and needs no special
# care; it gives up precision instead. **float16** has more precision but a tiny range: numbers
# above 65,504 overflow and numbers below about $6 \cdot 10^{-8}$ (its smallest subnormal)
# become 0. Gradients are often that small, so in fp16 many would vanish. The fix is a
# **gradient scaler**: multiply the loss by a large factor (say $2^{16}$) before `backward()`,
# so every gradient is $2^{16}$ times larger and representable, then divide the gradients by the
# same factor (in float32) before the optimizer step. If the factor was too large and some
# gradient overflowed to inf, the scaler skips that step and halves the factor.

# %%
g = torch.tensor(1e-8)  # a small but real gradient
print("1e-8 in fp16:               ", g.half().item())
print("1e-8 * 2**16 in fp16, back /2**16:", f"{(g * 2**16).half().float().item() / 2**16:.3g}")

# %% [markdown]
# Which to use depends on the hardware, and `pick_precision` decides:
#
# | device | precision | why |
# | --- | --- | --- |
# | GPU with compute capability ≥ 8.0 (A100, H100, RTX 30xx/40xx) | bf16 | native bf16 units; no scaler needed |
# | older GPU (T4 on Colab's free tier, V100) | fp16 + GradScaler | these have fast fp16 units but no bf16 ones |
# | CPU, Apple MPS | fp32 | little or no gain from 16-bit matmuls there; the library keeps it simple |
#
# A trap: `torch.cuda.is_bf16_supported()` says *yes* on a T4, because bf16 *runs* there, but it
# is emulated and slower than fp16. The library asks for the compute capability instead
# (`has_native_bf16`). Here is what it picks on this machine, and a forward pass in it:

# %% tags=["nbval-ignore-output"]
from wikigpt_lib.device import has_native_bf16

precision = pick_precision(device)
print(
    f"device {device}: native bf16 {has_native_bf16(device)} -> precision {precision.name}, "
    f"grad scaler {precision.use_grad_scaler}"
)
model = GPT(tiny).to(device)
x, y = get_batch(train_ids, 4, tiny.block_size, generator=seed_everything(0), device=device)
with precision.autocast():
    logits, loss = model(x, y)
print(
    f"inside autocast: weights {model.lm_head.weight.dtype}, logits {logits.dtype}, loss {loss.dtype}"
)
expected = {"cuda": "bf16" if has_native_bf16(device) else "fp16"}.get(device.type, "fp32")
assert precision.name == expected and loss.dtype == torch.float32

# %% [markdown]
# On a CPU that is plain float32. To see what autocast does, ask for bf16 on the CPU explicitly
# (this works everywhere, just not faster): the matrix multiplies, and so the logits, come out
# in bf16, the weights stay float32, and the cross-entropy is computed in float32.

# %%
model = GPT(tiny)  # on the CPU
x, y = get_batch(train_ids, 4, tiny.block_size, generator=seed_everything(0))
with torch.autocast("cpu", dtype=torch.bfloat16):
    logits, loss = model(x, y)
print(
    f"CPU autocast bf16: weights {model.lm_head.weight.dtype}, logits {logits.dtype}, loss {loss.dtype}"
)

# %% [markdown]
# A training step with mixed precision looks like this. With bf16 or fp32 the scaler is created
# disabled, and its methods then do nothing, so one loop serves all three cases:
#
# ```python
# scaler = torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler)
# with precision.autocast():
#     _, loss = model(x, y)                 # forward in bf16 / fp16 / fp32
# scaler.scale(loss).backward()             # loss * factor (fp16 only)
# scaler.unscale_(optimizer)                # gradients / factor, before clipping them
# torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
# scaler.step(optimizer)                    # skipped if a gradient is inf or NaN
# scaler.update()                           # adjust the factor
# optimizer.zero_grad(set_to_none=True)
# ```
#
# ## 6. Gradient accumulation
#
# Bigger batches give less noisy gradients, but a batch's activations must fit in memory. The
# gradient of a mean loss over $2B$ sequences is the average of the gradients of two halves, so
# we can process the halves one after the other, let `backward()` *add* their gradients into
# `p.grad` (it accumulates until `zero_grad`), and step once. Each half's loss is divided by the
# number of micro-batches so that the sum is the mean. Check it: in float64, two micro-batches
# of $B$ must give the gradients of one batch of $2B$.

# %%
gen = seed_everything(0)
model = GPT(tiny).double()  # float64: the two computations then agree to ~1e-15
x, y = get_batch(train_ids, 8, tiny.block_size, generator=gen)  # one batch of 2B = 8: (8, T)

model.zero_grad()
_, loss = model(x, y)  # mean over all 8 sequences
loss.backward()
full = [p.grad.clone() for p in model.parameters()]

model.zero_grad()
accum_steps = 2
for xm, ym in zip(x.chunk(accum_steps), y.chunk(accum_steps), strict=True):  # 2 x (4, T)
    _, loss = model(xm, ym)
    (loss / accum_steps).backward()  # p.grad += d(loss / 2) / dp
accumulated = [p.grad.clone() for p in model.parameters()]

same = all(
    torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(full, accumulated, strict=True)
)
print(f"1 batch of 8 vs 2 micro-batches of 4: gradients equal? {same}")
assert same

# %% [markdown]
# Without the division the accumulated gradient would be twice as large: with Adam that barely
# matters (it normalises step sizes), but clipping and any plain SGD would see the wrong norm.
# Two caveats: the equality needs every micro-batch to hold the same number of target tokens
# (true here; not when some targets are masked with -100), and it holds only without
# batch-dependent layers such as BatchNorm (GPTs have none). Accumulation trades time for
# memory: 4 micro-batches take about as long as one batch 4 times larger, when that fits.

# %% [markdown]
# ## 7. Checkpoints: stop, crash, continue
#
# A real run takes minutes to days, and it will be interrupted: a Colab session ends, a laptop
# sleeps, someone presses Ctrl-C. A **checkpoint** saves everything needed to continue as if
# nothing had happened:
#
# - the model's weights;
# - the optimizer state: AdamW's two running averages per parameter (twice the model's size);
#   without them the optimizer restarts cold and the loss jumps;
# - the step counter (the learning-rate schedule depends on it), the tokens seen, the best
#   validation loss so far (for early stopping);
# - the random-number states: the generator that draws the batches and the one that draws
#   dropout masks, so that the resumed run sees exactly the batches it would have seen;
# - with fp16, the gradient scaler's current factor.
#
# A checkpoint must also never be half-written: a crash *during* the save must not destroy the
# previous one. The standard trick is to write to a temporary name and then rename, because a
# rename within one file system is atomic: anyone looking sees the old file or the complete
# new one, never a mix.

# %%
def save_atomic(obj, path: Path) -> None:
    """torch.save `obj` to `path` so that a crash leaves either the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)  # may be interrupted half-way: only the .tmp file is broken then
    os.replace(tmp, path)  # atomic: `path` switches from old to new in one go


workdir = Path(tempfile.mkdtemp(prefix="wikigpt-05-"))  # scratch space for this notebook's runs
model = GPT(tiny)
optimizer = torch.optim.AdamW(make_param_groups(model, 0.1), lr=1e-3)
save_atomic(
    {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 0},
    workdir / "ckpt.pt",
)
print("saved:", sorted(p.name for p in workdir.iterdir()))

# %% [markdown]
# The library's `Trainer` (in `wikigpt_lib.train`) runs the loop of this notebook with all of
# the above, and saves checkpoints into a *run folder* with `wikigpt_lib.checkpoint`: weights in
# safetensors (a format that cannot run code when loaded, unlike pickle), configuration and
# counters in JSON, optimizer and random states through `torch.save` (read back with
# `weights_only=True`, again so that loading cannot run code). Each checkpoint folder is
# written under a temporary name and renamed; `latest.json` and `best.json` point to the newest
# checkpoint and to the one with the lowest validation loss.
#
# The test of resuming: train the tiny model for 24 steps in one go; train it again, but stop it
# at step 10 the way Ctrl-C would (a *callback*, a function the trainer calls after every step,
# raises `KeyboardInterrupt`); continue that run from its folder with `Trainer.resume`. The two
# must produce the same losses.

# %% tags=["nbval-ignore-output"]
from wikigpt_lib.train import TrainConfig, Trainer

config7 = TrainConfig(
    max_steps=24, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=4,
    eval_interval=8, eval_batches=2, log_interval=1, progress=False,
)  # fmt: skip


def recorder(losses: list):
    """A callback that appends each step's training loss to `losses`."""
    return lambda trainer, record: losses.append(record["loss"])


def interrupt_at(step: int):
    """A callback that acts like Ctrl-C after optimizer step `step`."""

    def callback(trainer, record):
        if record["step"] == step:
            raise KeyboardInterrupt

    return callback


# run A: straight through
torch.manual_seed(0)
straight = []
result_a = Trainer(GPT(tiny), train_ids, val_ids, config7, run_dir=workdir / "straight",
                   callbacks=[recorder(straight)]).fit()  # fmt: skip

# run B: interrupted at step 10 (the trainer saves a checkpoint and returns), then resumed
torch.manual_seed(0)
before_stop, after_resume = [], []
result_b1 = Trainer(GPT(tiny), train_ids, val_ids, config7, run_dir=workdir / "interrupted",
                    callbacks=[recorder(before_stop), interrupt_at(10)]).fit()  # fmt: skip
resumed = Trainer.resume(
    workdir / "interrupted", train_ids, val_ids, callbacks=[recorder(after_resume)]
)
result_b2 = resumed.fit()

# %%
print(f"run A: stopped by {result_a.stopped!r} after {result_a.steps} steps")
print(
    f"run B: stopped by {result_b1.stopped!r} after {result_b1.steps} steps, "
    f"resumed at step {result_b1.steps}, stopped by {result_b2.stopped!r} after {result_b2.steps}"
)
if device.type == "cpu":  # bit for bit on a CPU; GPU kernels may differ in the last bits
    same = straight == before_stop + after_resume
else:
    same = torch.allclose(
        torch.tensor(straight), torch.tensor(before_stop + after_resume), atol=1e-3
    )
print(
    f"the {len(straight)} losses of A equal the {len(before_stop)} + {len(after_resume)} of B: {same}"
)
assert same and result_b1.stopped == "interrupted" and result_b2.steps == 24

# %% [markdown]
# What is in a run folder, and in one checkpoint:

# %%
from wikigpt_lib.checkpoint import load_checkpoint, load_model

run_b = workdir / "interrupted"
print("run folder:", sorted(p.name for p in run_b.iterdir()))
ckpt = load_checkpoint(run_b, "latest")
print("latest checkpoint:", ckpt.path.name, sorted(p.name for p in ckpt.path.iterdir()))
print(
    "state:",
    {k: ckpt.state[k] for k in ("step", "tokens_seen")},
    "and",
    sorted(set(ckpt.state) - {"step", "tokens_seen"}),
)
print("model config:", ckpt.model_config)

# %% [markdown]
# `load_model` rebuilds the model from a checkpoint's own configuration and weights, ready for
# evaluation or generation; its validation loss is the best one the run recorded:

# %%
from wikigpt_lib.train import evaluate_loss

best = load_model(run_b, "best")  # eval mode, on the CPU
reloaded = evaluate_loss(best, val_ids, tiny.block_size, config7.batch_size, config7.eval_batches)
print(
    f"best checkpoint reloaded: val loss equals the recorded best? "
    f"{math.isclose(reloaded, result_b2.best_val_loss, rel_tol=1e-5)}"
)

# %% [markdown]
# ## 8. Training the course model on WikiText-2
#
# Now the real thing, with the library's presets: on a CPU the course model (`cpu`: 4 layers,
# width 256, context 128, about 5 million parameters); on a GPU the larger `gpu` model (6
# layers, width 384, context 256, dropout 0.1), with fp16 and a scaler on a T4 (`t4`) or bf16
# on newer GPUs (`a100`). The CPU preset's 1,200 steps of 16 x 128 tokens take 10 to 15 minutes on
# two cores; here we stop at 600 steps (the cosine schedule then ends at step 600).
#
# First, a way to see what the model has learned: sample text from it. Notebook 06 covers
# generation properly; this minimal version feeds the tokens so far through the model, keeps
# the `top_k` most likely next tokens, draws one of them in proportion to its probability, and
# repeats.

# %%
@torch.no_grad()
def sample(model, prompt: str, max_new_tokens: int = 40, top_k: int = 50, seed: int = 0) -> str:
    """Continue `prompt` with top-k sampling; returns the prompt and its continuation."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([tok.encode_ordinary(prompt)], device=device)  # (1, T)
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size :])  # (1, T, V): crop to the context
        logits = logits[:, -1, :].float()  # (1, V): the prediction for the next token
        kth = torch.topk(logits, top_k).values[:, -1:]  # (1, 1): the k-th largest logit
        logits[logits < kth] = -float("inf")  # only the top k stay possible
        probs = F.softmax(logits, dim=-1)  # (1, V)
        next_id = torch.multinomial(probs, 1, generator=gen)  # (1, 1)
        idx = torch.cat([idx, next_id], dim=1)  # (1, T+1)
    return tok.decode(idx[0].tolist())


# %% tags=["nbval-ignore-output"]
from wikigpt_lib.train import plot_losses, train_preset

if device.type == "cuda":
    preset = "a100" if has_native_bf16(device) else "t4"
    model_config, train_config = train_preset(preset)
else:
    preset = "cpu"
    # ~6 minutes on 2 cores (the preset's 1,200 steps take ~12); validate every 50 steps
    model_config, train_config = train_preset(preset, max_steps=600, eval_interval=50)
# quick mode (the tests): the tiny model for 20 steps
model_config = quick(model_config, GPTConfig.preset("tiny"))
train_config = train_config.replace(
    progress=False,
    **quick({}, dict(max_steps=20, batch_size=8, warmup_steps=4, eval_interval=10, eval_batches=2)),
)
print(f"preset {preset!r}:", model_config)
print(train_config)

torch.manual_seed(train_config.seed)
model = GPT(model_config)
print(
    f"{model.num_params():,} parameters; {train_config.max_steps} steps of "
    f"{train_config.batch_size * train_config.grad_accum_steps} x {model_config.block_size} tokens"
)

prompt = " The city of"
print("\nbefore training:", repr(sample(model.to(device), prompt)))

# %% tags=["nbval-ignore-output"]
start = time.perf_counter()
result = Trainer(model, train_ids, val_ids, train_config, run_dir=workdir / "course",
                 data_name=wikitext2_source(ds)).fit()  # fmt: skip
minutes = (time.perf_counter() - start) / 60
final_train = next(r["loss"] for r in reversed(result.history) if r["split"] == "train")
final_val = next(r["loss"] for r in reversed(result.history) if r["split"] == "val")
print(
    f"{result.steps} steps, {result.tokens_seen:,} tokens ({result.tokens_seen / len(train_ids):.2f} epochs) "
    f"in {minutes:.1f} min; stopped by {result.stopped!r}"
)
print(
    f"final train loss {final_train:.3f} | final val loss {final_val:.3f} (perplexity {math.exp(final_val):.1f})"
)
print(f"best val loss {result.best_val_loss:.3f} (perplexity {math.exp(result.best_val_loss):.1f})")
assert result.best_val_loss < math.log(model_config.vocab_size) - quick(3.0, 0.2)

# %%
ax = plot_losses(result.history, title=f"The course model on WikiText-2 (preset {preset!r})")
ax.figure.set_size_inches(6, 3.2)
ax.figure.tight_layout()
plt.show()

# %% [markdown]
# The validation loss follows the training loss closely (it even sits slightly below it: the
# validation articles are apparently a little easier to predict than the average training
# batch). In this run the model sees each training token less than once, so it has no chance to
# memorise the training text: every batch is as new to it as the validation text.
#
# The same prompt, sampled with the same seed, from the best checkpoint:

# %% tags=["nbval-ignore-output"]
trained = load_model(workdir / "course", "best", map_location=device)
print("after training:", repr(sample(trained, prompt)))

# %% [markdown]
# Before training the model strings together random tokens. After a few minutes it writes
# WikiText-shaped text: real words, punctuation with WikiText's spaces around it, many `<unk>`s
# (wikitext-2-v1 replaces every rare word by `<unk>`, which makes it one of the most frequent
# tokens), grammar that holds for a few words at a time, and no meaning. A perplexity in the low
# hundreds means it still hesitates between many continuations.
#
# ## 9. Overfitting, and what to do about it
#
# WikiText-2's training split is about 2 million words (2.6 million tokens with the course
# tokenizer). For a language model that is small. A common rule of thumb (Hoffmann et al.,
# 2022, "Chinchilla") is about 20 training tokens per parameter: the `cpu` model's 5 million
# parameters would want some 100 million tokens, the GPU model's 14 million nearly 300 million.
# With only 2.6 million, a model that trains long enough goes over the same text many times
# (epochs), and it starts to **memorise** it: the loss on the training text keeps falling while
# the validation loss turns around and rises, because what the model now learns (this exact
# sentence follows that one) does not carry over to new text.
#
# To see it within a minute or two, shrink the problem: a small model (2 layers, width 128),
# a 20,000-token slice of the training split, and 400 steps of 16 × 64 tokens, about 20 passes
# over the slice. Every 25 steps we measure the loss on the slice itself (in eval mode, with
# `evaluate_loss`, through a callback) and on the validation split (the trainer does that).

# %% tags=["nbval-ignore-output"]
small = quick(GPTConfig.preset("cpu", n_layer=2, n_head=4, n_embd=128, block_size=64), tiny)
slice_ids = train_ids[: quick(20_000, 4_000)]
config9 = TrainConfig(
    max_steps=quick(400, 20), batch_size=16, lr=1e-3, min_lr=1e-4, warmup_steps=quick(20, 2),
    weight_decay=0.0, eval_interval=quick(25, 5), eval_batches=quick(10, 2), log_interval=5,
    progress=False,
)  # fmt: skip


def overfit_run(train_config):
    """Train `small` on the slice; return the result and the loss on the slice at each eval."""
    on_slice = []

    def measure(trainer, record):  # called after every step
        step = record["step"]
        if step % train_config.eval_interval == 0 or step == train_config.max_steps:
            loss = evaluate_loss(
                trainer.model, slice_ids, small.block_size, 16, train_config.eval_batches
            )
            on_slice.append({"step": step, "split": "train", "loss": loss})

    torch.manual_seed(0)
    model = GPT(small)
    result = Trainer(model, slice_ids, val_ids, train_config, callbacks=[measure]).fit()
    return result, on_slice


start = time.perf_counter()
plain, plain_slice = overfit_run(config9)
val = [r for r in plain.history if r["split"] == "val"]
best = min(val, key=lambda r: r["loss"])
print(
    f"{plain.steps} steps, {plain.tokens_seen / len(slice_ids):.0f} epochs of the slice, in {time.perf_counter() - start:.0f} s"
)
print(
    f"loss on the training slice: {plain_slice[0]['loss']:.2f} at step {plain_slice[0]['step']} -> {plain_slice[-1]['loss']:.2f} at step {plain_slice[-1]['step']}"
)
print(
    f"validation loss: {val[0]['loss']:.2f} at step {val[0]['step']} -> best {best['loss']:.2f} at step {best['step']} -> {val[-1]['loss']:.2f} at step {val[-1]['step']}"
)
assert plain_slice[-1]["loss"] < plain_slice[0]["loss"]
if not is_quick():  # the full run is long enough to overfit
    assert val[-1]["loss"] > best["loss"] + 0.3 and best["step"] < plain.steps / 2

# %% [markdown]
# **Early stopping** is the simplest remedy and the one that always works: evaluate every so
# often, keep the checkpoint with the lowest validation loss, and stop once the validation loss
# has not improved for `patience` evaluations in a row. The trainer does both (`best.json`
# points at the best checkpoint; `TrainConfig(patience=...)` stops the run). The same run with
# `patience=3` stops three evaluations after its best one, and keeps exactly that best:

# %% tags=["nbval-ignore-output"]
stopped, _ = overfit_run(config9.replace(patience=3))
print(
    f"with patience 3: stopped by {stopped.stopped!r} at step {stopped.steps}, "
    f"best val loss {stopped.best_val_loss:.2f}"
)
assert math.isclose(stopped.best_val_loss, best["loss"], rel_tol=1e-4)  # the same best as above
if not is_quick():
    assert stopped.stopped == "early_stop" and stopped.steps < plain.steps

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
plot_losses(plain_slice + val, ax=ax, title="Overfitting a 20,000-token slice")
ax.lines[0].set_label("train (loss on the slice)")
ax.lines[1].set_label("validation")
ax.axvline(best["step"], color="green", ls=":", label="best checkpoint")
ax.axvline(stopped.steps, color="red", ls="--", label="early stop (patience 3)")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Two other remedies change the training itself rather than when it stops:
#
# - **Dropout** (Srivastava et al., 2014) sets a random fraction $p$ of the activations to zero
#   at every training step (and scales the rest by $1/(1-p)$ so their expected sum is
#   unchanged). The network can no longer rely on any single unit or on a precise combination
#   of them, which makes memorising specific sequences harder; it is like training many thinned
#   networks that share weights and averaging them at test time, when dropout is off
#   (`model.eval()`). The GPU preset uses $p = 0.1$ because it trains for many epochs of
#   WikiText-2; the CPU preset uses 0, because it sees less than one epoch and dropout would
#   only slow it down. The price: the model learns more slowly, and the training loss (measured
#   with dropout on) reads higher than the model's real fit.
# - **Weight decay** shrinks every weight matrix a little at each step (AdamW's $\lambda$, 0.1
#   in the presets), so weights grow only where the data keeps pushing them. It is a mild
#   regulariser; its effect in a short run is small.
#
# Neither is free, and neither is guaranteed to help at a given scale: exercise 3 tries both on
# the slice above. The real cure is more data: the same model that memorises 20,000 tokens
# cannot memorise 2.6 million in a few minutes (section 8), and models trained on billions of
# tokens see each token about once and need neither dropout nor early stopping.
#
# ## Check against the library
#
# The library's `wikigpt_lib.train` is this notebook's code, organised. Check the pieces on the
# same inputs: the schedule against `lr_at` at every step of three configurations, the
# parameter groups against `configure_optimizer`, the evaluation against `evaluate_loss`, and
# finally the whole training step (schedule, accumulation, clipping, AdamW) against
# `Trainer.train_step`, which draws its batches as `get_batch` does from a generator seeded
# with `TrainConfig.seed`.

# %%
import copy

from wikigpt_lib.train import configure_optimizer, lr_at

configs = [
    TrainConfig(),
    train_preset("cpu")[1],
    TrainConfig(max_steps=100, warmup_steps=0, lr=3e-4, min_lr=0.0),
]
for cfg in configs:
    for s in range(cfg.max_steps + 10):  # past max_steps too
        ours = lr_schedule(s, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
        assert math.isclose(ours, lr_at(s, cfg), rel_tol=1e-12), (cfg, s)
print(f"lr_schedule == lr_at at every step of {len(configs)} configurations")

model = GPT(GPTConfig.preset("tiny", bias=True))
cfg = TrainConfig(weight_decay=0.1)
lib_groups = configure_optimizer(model, cfg, "cpu").param_groups
for ours, lib in zip(make_param_groups(model, cfg.weight_decay), lib_groups, strict=True):
    assert [id(p) for p in ours["params"]] == [id(p) for p in lib["params"]]
    assert ours["weight_decay"] == lib["weight_decay"]
print(
    "make_param_groups == configure_optimizer's groups:",
    [(len(g["params"]), g["weight_decay"]) for g in lib_groups],
)

seed_everything(0)
model = GPT(tiny)
ours = evaluate(model, val_ids, tiny.block_size, batch_size=16, max_batches=20)
lib = evaluate_loss(model, val_ids, tiny.block_size, batch_size=16, max_batches=20)
assert math.isclose(ours, lib, rel_tol=1e-6)
print("evaluate == evaluate_loss:", math.isclose(ours, lib, rel_tol=1e-6))

# %%
cfg = TrainConfig(
    max_steps=8, batch_size=4, grad_accum_steps=2, lr=3e-3, min_lr=3e-4, warmup_steps=3,
    grad_clip=0.5, seed=7, device="cpu", precision="fp32", progress=False,
)  # fmt: skip
torch.manual_seed(0)
ours_model = GPT(tiny)
lib_model = copy.deepcopy(ours_model)

trainer = Trainer(lib_model, train_ids, None, cfg)
lib_losses = [trainer.train_step() for _ in range(cfg.max_steps)]

# the notebook's loop: sections 1, 3, 4 and 6 together
gen = torch.Generator().manual_seed(cfg.seed)
optimizer = torch.optim.AdamW(
    make_param_groups(ours_model, cfg.weight_decay), betas=(cfg.beta1, cfg.beta2)
)
our_losses = []
for step in range(cfg.max_steps):
    for group in optimizer.param_groups:
        group["lr"] = lr_schedule(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
    A = cfg.grad_accum_steps
    x, y = get_batch(train_ids, cfg.batch_size * A, tiny.block_size, generator=gen)  # (A*B, T)
    total = 0.0
    for xm, ym in zip(x.chunk(A), y.chunk(A), strict=True):  # A micro-batches of (B, T)
        _, loss = ours_model(xm, ym)
        (loss / A).backward()
        total += loss.item()
    clip_gradients(list(ours_model.parameters()), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    our_losses.append(total / A)

# clip_gradients adds up the squares in another order than PyTorch's clip_grad_norm_, so the
# gradients differ in their last bits; Adam's division by sqrt(v) magnifies that for weights with
# tiny gradients (rare tokens' embeddings), hence a tolerance well below one update (~1e-3)
assert torch.allclose(torch.tensor(our_losses), torch.tensor(lib_losses), rtol=1e-5)
for p, q in zip(ours_model.parameters(), lib_model.parameters(), strict=True):
    assert torch.allclose(p, q, rtol=0, atol=1e-5)
print(f"notebook loop == Trainer.train_step: {cfg.max_steps} losses and all weights agree")

# %% [markdown]
# ## Summary
#
# - A training step is forward, loss, backward, optimizer step; evaluation runs in eval mode,
#   without gradients, over fixed non-overlapping validation windows, and reports the mean token
#   loss and its exponential, the perplexity.
# - AdamW with $\beta_2 = 0.95$, weight decay on 2-D weights only; a linear warmup followed by a
#   cosine decay to a floor.
# - Clipping caps the global gradient norm (1.0), so a rare huge gradient cannot wreck the model.
# - Mixed precision runs matrix multiplies in 16 bits: bf16 where the GPU has native support, fp16
#   with a gradient scaler on older GPUs such as the T4 (whose tiny range would flush small
#   gradients to zero), fp32 on CPUs.
# - Accumulating the gradients of $k$ micro-batches (each loss divided by $k$) equals one batch
#   $k$ times larger.
# - A checkpoint holds weights, optimizer state, counters and random states, written atomically;
#   the library's `Trainer` resumes an interrupted run with exactly the same losses.
# - The course model learns WikiText-shaped text in minutes on a CPU. With only 2.6 million
#   training tokens a model that trains for many epochs memorises them; early stopping keeps the
#   best checkpoint, dropout and weight decay make memorising harder.
#
# ## Exercises
#
# 1. *(easy)* Warmup. Train the tiny model of section 1 with AdamW, a peak learning rate of
#    `1e-2` and the warmup + cosine schedule over 300 steps, with warmups of 0, 10 and 100 steps.
#    Plot the three loss curves. What happens in the first steps without warmup? Does the final
#    loss depend on the warmup?
# 2. *(medium)* Find the largest learning rate that still trains. Train the `cpu-quick` model
#    (`train_preset("cpu-quick")`) for 100 steps at peak rates from `1e-4` to `1e-1` (log-spaced)
#    and plot the final training loss against the rate. Where is the best rate, and how far above
#    it does training break down? Does gradient clipping move that limit?
# 3. *(medium)* Early stopping and regularisation by hand. Write a bare loop (sections 1-6) that
#    trains the model of section 9 on the slice, evaluates every 25 steps, keeps a copy of the best
#    weights and stops after 3 evaluations without improvement. Check that it stops at the same
#    step as `TrainConfig(patience=3)`. Then add dropout 0.1 or 0.2 or weight decay 0.1: does
#    either lower the best validation loss on this slice?
# 4. *(easy)* Tokens per second. With the `cpu` model, measure training throughput (the
#    `tokens_per_s` field of the trainer's history) for batch 32 without accumulation, batch 8
#    with 4 accumulation steps, and batch 32 with 4 accumulation steps. Which gives the most tokens
#    per second, and why? When would you use accumulation anyway?
# 5. *(medium)* fp16 without a scaler. Compute the gradients of the `cpu` model on a WikiText-2
#    batch in float32, round them to float16 and count the fraction that become exactly 0. Repeat
#    with the loss multiplied by $2^{16}$ first. If you have a CUDA GPU, train the tiny model with
#    fp16 autocast with and without `GradScaler` and compare the losses.
