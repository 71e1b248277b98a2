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
# # 05 · Training: solutions to the exercises
#
# Worked answers to the exercises of [05_training](../notebooks/05_training.ipynb). Try them
# yourself first; each answer is code you can run plus a short explanation. The numbers quoted
# in the text are from a run on the real WikiText-2 on a 2-core CPU.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/wiki-gpt/wiki-gpt/blob/main/solutions/05_training_solutions.ipynb)

# %%
import sys

if "google.colab" in sys.modules:  # on Colab, install the course library first
    get_ipython().run_line_magic(
        "pip", 'install -q "wikigpt-lib @ git+https://github.com/wiki-gpt/wiki-gpt"'
    )

# %%
import copy
import math
import warnings

import matplotlib.pyplot as plt
import torch

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm: no Jupyter widgets

from wikigpt_lib.data import (
    get_batch,
    iter_eval_batches,
    load_wikitext2,
    tokenize_split,
    wikitext2_source,
)
from wikigpt_lib.device import pick_device, quick, seed_everything
from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.tokenizer import get_tokenizer
from wikigpt_lib.train import (
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    evaluate_loss,
    lr_at,
    train_preset,
)

plt.rcParams["figure.dpi"] = 80

# %% tags=["nbval-ignore-output"]
ds = load_wikitext2(fallback="sample")
tok = get_tokenizer()
train_ids = tokenize_split(ds["train"], tok)  # (N_train,)
val_ids = tokenize_split(ds["validation"], tok)  # (N_val,)
print("data loaded from:", wikitext2_source(ds))
print(f"train: {len(train_ids):,} tokens | validation: {len(val_ids):,} tokens")
device = pick_device()

# %% [markdown]
# Most answers train with the library's `Trainer`, which is the notebook's loop (its last
# section checked that step by step). A callback collects the training loss of every step; with
# `val_data=None` the trainer never evaluates.

# %%
tiny = GPTConfig.preset("tiny")


def train_losses(model_config, train_config, seed: int = 0) -> list[float]:
    """Train a fresh model (weights seeded with `seed`) and return the loss of every step; a run
    whose loss becomes NaN or infinite ends with a NaN."""
    losses = []
    torch.manual_seed(seed)
    trainer = Trainer(GPT(model_config), train_ids, None, train_config.replace(progress=False),
                      callbacks=[lambda trainer, record: losses.append(record["loss"])])  # fmt: skip
    try:
        trainer.fit()
    except TrainingDivergedError:
        losses.append(float("nan"))
    return losses


# %% [markdown]
# ## Exercise 1: warmup
#
# First as asked: the tiny model of section 1 (batches of 16), a peak rate of `1e-2` and the
# warmup + cosine schedule over 300 steps, with 0, 10 and 100 warmup steps.

# %% tags=["nbval-ignore-output"]
for warmup in (0, 10, 100):
    config = TrainConfig(max_steps=quick(300, 10), batch_size=16, lr=1e-2, min_lr=1e-3,
                         warmup_steps=quick(warmup, warmup // 20))  # fmt: skip
    losses = train_losses(tiny, config)
    print(
        f"tiny model, warmup {warmup:>3}: loss after 5 steps {losses[4]:.2f}, highest after "
        f"that {max(losses[4:]):.2f}, mean of the last 20 steps {sum(losses[-20:]) / 20:.3f}"
    )

# %% [markdown]
# Nothing dramatic happens. Without warmup the loss falls from the first steps and never climbs
# back, and that run even ends with the lowest loss (6.73, against 6.88 with 10 warmup steps and
# 6.83 with 100, in the run on the real data): in a short run a warmup mostly spends steps at
# rates lower than they need to be. The tiny model (2 layers, width 32) is too small and shallow
# for `1e-2` to hurt it.
#
# Warmup matters when the peak learning rate is high for the model. So take the `cpu-quick`
# model (2 layers, width 128) at a peak rate of `3e-2`, 15 times its preset's, for 200 steps
# with 0, 10 and 100 warmup steps (the cosine decay follows in each case):

# %% tags=["nbval-ignore-output"]
warmup_model, base = train_preset("cpu-quick")
warmup_model = quick(warmup_model, tiny)
steps = quick(200, 20)
runs = {}
for warmup in (0, 10, 100):
    config = base.replace(
        max_steps=steps, lr=3e-2, min_lr=3e-3, warmup_steps=quick(warmup, warmup // 10)
    )
    runs[warmup] = losses = train_losses(warmup_model, config)
    print(
        f"warmup {warmup:>3}: loss after 5 steps {losses[4]:.2f}, highest in steps 5-50 "
        f"{max(losses[4:50]):.2f}, mean of the last 20 steps {sum(losses[-20:]) / 20:.3f}"
    )

fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for warmup, losses in runs.items():
    axes[0].plot(losses, label=f"warmup {warmup}", lw=1)
    smooth = [
        sum(losses[max(0, i - 9) : i + 1]) / len(losses[max(0, i - 9) : i + 1])
        for i in range(len(losses))
    ]
    axes[1].plot(smooth, label=f"warmup {warmup}", lw=1)
axes[0].set(
    xlim=(0, min(60, steps)), xlabel="step", ylabel="training loss", title="The first steps"
)
axes[1].set(xlabel="step", title="The whole run (moving average of 10)")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Without warmup, the very first steps are taken at the full rate. Adam's first updates move
# every weight by about the learning rate whatever its gradient (with one gradient seen, $m /
# \sqrt{v}$ is $\pm 1$), and `3e-2` is more than the typical size of a freshly initialised weight
# (0.02). The loss falls at first, then climbs back *above* its starting value of
# $\ln 8192 \approx 9.0$ within the first 50 steps: the model has been thrown into a bad region and
# spends the next steps recovering. A 10-step warmup avoids that jump. A 100-step warmup is
# slower at first, has a bumpy patch of its own as its rate passes `1e-2` on the way up, and
# still ends with the lowest loss: the model spent the dangerous early phase at gentle rates.
# At the preset's rate (`2e-3`) the three warmups end close together; the higher the peak rate
# and the deeper the model, the more the warmup matters, up to runs that diverge without one
# (the loss becomes NaN). That is why every GPT recipe warms up.
#
# ## Exercise 2: the largest learning rate that still trains
#
# A learning-rate sweep (Smith, 2017): the `cpu-quick` model for 100 steps at each peak rate,
# with and without gradient clipping. We compare the mean training loss of the last 10 steps.

# %% tags=["nbval-ignore-output"]
sweep_config, base = train_preset("cpu-quick")
sweep_config = quick(sweep_config, tiny)
lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
high = [lr for lr in lrs if lr >= 1e-2]  # without clipping, only the high rates are of interest
final = {True: [], False: []}
for clip in (True, False):
    for lr in lrs if clip else high:
        config = base.replace(max_steps=quick(100, 10), lr=lr, min_lr=lr / 10, warmup_steps=quick(10, 1),
                              grad_clip=1.0 if clip else 0.0)  # fmt: skip
        losses = train_losses(sweep_config, config)
        final[clip].append(sum(losses[-10:]) / len(losses[-10:]))  # NaN if it diverged
print("peak lr | final loss, clipped | not clipped")
for i, lr in enumerate(lrs):
    unclipped = f"{final[False][high.index(lr)]:11.3f}" if lr in high else f"{'-':>11}"
    print(f"{lr:7.0e} | {final[True][i]:19.3f} | {unclipped}")
best_lr = min(zip(final[True], lrs, strict=True), key=lambda t: (math.isnan(t[0]), t[0]))[1]
print("best peak lr (with clipping):", best_lr)

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(lrs, final[True], "o-", label="clip 1.0")
ax.plot(high, final[False], "s--", label="no clipping")
ax.set(xscale="log", xlabel="peak learning rate", ylabel="loss after 100 steps",
       title="Learning-rate sweep, cpu-quick model")  # fmt: skip
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The curve has the typical shape: too small a rate learns slowly (the loss after 100 steps is
# still high), the loss falls as the rate grows, reaches a minimum, and then rises again as steps
# become so large that they overshoot. The best rate in this short run lies between `1e-3` and
# `3e-3` (the `cpu-quick` preset uses `2e-3`); ten times higher, training is clearly worse, and
# from `1e-1` up the loss stays near 7.1 nats: about the entropy of the token frequencies in
# the training text (7.05 nats), so the model learns which tokens are common and nothing about
# context. Training does not blow up: Adam's step size does not depend on the size of the
# gradient (it divides by it), so a too-large rate makes every step too big rather than making
# the loss explode.
#
# Clipping does not move that limit here: with and without it the losses at high rates agree
# to a few hundredths, and at `1e-2` the run without clipping even did better (6.92 against
# 7.07 in the run on the real data). Again because of Adam: scaling every gradient by the same
# factor changes $m$ and $\sqrt{v}$ alike and leaves the update unchanged, so clipping only
# matters when the factor changes from step to step, that is when one batch gives a gradient
# spike; it caps that one step. That is its job in long runs of large models: a safety net
# against rare spikes, not a way to train at higher rates. Two caveats: the best rate for 100
# steps is higher than for a long run, and the best rate falls as models grow.
#
# ## Exercise 3: early stopping by hand, and regularisation
#
# The setting of section 9: a small model, a slice of the training split, evaluation every 25
# steps. The hand-written loop draws its batches exactly as the trainer does (one generator
# seeded with `TrainConfig.seed`, `get_batch`), so both runs see the same batches and must stop
# at the same step.

# %% tags=["nbval-ignore-output"]
small = quick(GPTConfig.preset("cpu", n_layer=2, n_head=4, n_embd=128, block_size=64), tiny)
slice_ids = train_ids[: quick(20_000, 4_000)]
config9 = TrainConfig(
    max_steps=quick(400, 20), batch_size=16, lr=1e-3, min_lr=1e-4, warmup_steps=quick(20, 2),
    weight_decay=0.0, eval_interval=quick(25, 5), eval_batches=quick(10, 2), patience=3,
    device="cpu", progress=False,
)  # fmt: skip


def early_stopping_by_hand(model, cfg: TrainConfig):
    """A bare loop with evaluation and patience; returns (best weights, best loss, steps run)."""
    gen = torch.Generator().manual_seed(cfg.seed)  # the batches, as the trainer draws them
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        betas=(cfg.beta1, cfg.beta2),
    )
    best_loss, best_state, bad_evals = float("inf"), None, 0
    for step in range(cfg.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        model.train()
        x, y = get_batch(slice_ids, cfg.batch_size, model.config.block_size, generator=gen)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_steps:
            val_loss = evaluate_loss(model, val_ids, model.config.block_size, cfg.batch_size,
                                     cfg.eval_batches)  # fmt: skip
            if val_loss < best_loss:
                best_loss, bad_evals = val_loss, 0
                best_state = copy.deepcopy(model.state_dict())  # keep the best weights
            else:
                bad_evals += 1
                if bad_evals >= cfg.patience:
                    return best_state, best_loss, step + 1
    return best_state, best_loss, cfg.max_steps


torch.manual_seed(0)
model = GPT(small)
lib_model = copy.deepcopy(model)
best_state, best_loss, stop_step = early_stopping_by_hand(model, config9)
lib = Trainer(lib_model, slice_ids, val_ids, config9).fit()
print(f"by hand:     stopped at step {stop_step}, best val loss {best_loss:.4f}")
print(
    f"the library: stopped at step {lib.steps} ({lib.stopped}), best val loss {lib.best_val_loss:.4f}"
)
assert stop_step == lib.steps and math.isclose(best_loss, lib.best_val_loss, rel_tol=1e-4)
_ = model.load_state_dict(best_state)  # what early stopping gives you: the best model, not the last

# %% [markdown]
# Both stop at the same step with the same best loss. The hand version keeps the best weights in
# memory; the trainer keeps them on disk (the `best.json` checkpoint), which also survives a
# crash.
#
# Now regularisation: the same run (with patience, so each stops after its best) with dropout
# 0.1 or 0.2, or with weight decay 0.1:

# %% tags=["nbval-ignore-output"]
variants = {
    "none": (small, config9),
    "dropout 0.1": (small.replace(dropout=0.1), config9),
    "dropout 0.2": (small.replace(dropout=0.2), config9),
    "weight decay 0.1": (small, config9.replace(weight_decay=0.1)),
}
results = {}
for name, (model_config, train_config) in variants.items():
    torch.manual_seed(0)
    results[name] = Trainer(GPT(model_config), slice_ids, val_ids, train_config).fit()
    val = [r for r in results[name].history if r["split"] == "val"]
    best = min(val, key=lambda r: r["loss"])
    print(
        f"{name:>16}: best val loss {best['loss']:.3f} at step {best['step']}, stopped at {results[name].steps}"
    )

# %% [markdown]
# On this 20,000-token slice neither helps. Weight decay 0.1 changes almost nothing in a few
# hundred steps: AdamW shrinks each weight by a factor $(1 - \text{lr}\cdot\lambda)$ per step, a
# total of about $e^{-400 \cdot 10^{-3} \cdot 0.1} \approx 0.96$ over the whole run. Dropout
# slows the memorisation down (the best step comes later), but its best validation loss is
# *worse*, the more so the higher the rate. Why? A guess worth testing: with so little text, many
# validation targets are tokens the slice does not contain at all, and no regulariser can teach
# the model those. Split the validation loss into targets that occur in the slice and targets
# that do not, for the model without dropout and the one with dropout 0.2, each at its best step:

# %% tags=["nbval-ignore-output"]
seen = torch.zeros(tok.n_vocab, dtype=torch.bool)
seen[torch.from_numpy(slice_ids.astype("int64"))] = True


@torch.no_grad()
def loss_by_seen(model, max_batches: int) -> tuple[float, float, float]:
    """(mean loss on targets seen in the slice, on unseen ones, share of unseen targets)."""
    model.eval()
    losses, is_seen = [], []
    for i, (x, y) in enumerate(iter_eval_batches(val_ids, 16, model.config.block_size)):
        if i >= max_batches:
            break
        logits, _ = model(x)  # (B, T, V)
        losses.append(
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        )
        is_seen.append(seen[y.flatten()])
    losses, is_seen = torch.cat(losses), torch.cat(is_seen)
    return (
        losses[is_seen].mean().item(),
        losses[~is_seen].mean().item(),
        (~is_seen).float().mean().item(),
    )


for name in ("none", "dropout 0.2"):
    model_config, train_config = variants[name]
    torch.manual_seed(0)  # train again, to the step where the run above had its best
    best_step = min(
        (r for r in results[name].history if r["split"] == "val"), key=lambda r: r["loss"]
    )["step"]
    trainer = Trainer(
        GPT(model_config),
        slice_ids,
        val_ids,
        train_config.replace(max_steps=best_step, patience=None),
    )
    trainer.fit()
    on_seen, on_unseen, share = loss_by_seen(trainer.model, train_config.eval_batches)
    print(
        f"{name:>12} (step {best_step}): loss on seen targets {on_seen:.2f}, on unseen {on_unseen:.2f} "
        f"({share:.0%} of the validation targets never occur in the slice)"
    )

# %% [markdown]
# Dropout does what it is meant to do on the text the slice covers: the loss on targets seen in
# the slice is lower with dropout 0.2 (6.00 against 6.10 nats in the run on the real data). But
# about one validation target in seven never occurs in the slice, and each of those costs more
# than 11 nats. The model learns to give such tokens almost no probability (none of them ever
# appears as a target in training), and the longer it trains, the lower it pushes them: the
# dropout run trains 50 steps longer before its best point and pays more on them (12.2 against
# 11.3 nats), more than it gains on the others.
#
# So at this scale the validation loss is dominated by what the slice does not contain, which is
# a data problem no regulariser solves. Dropout and weight decay pay off when a model is large
# relative to a corpus it goes over many times but that covers what it will be tested on, as the
# GPU preset does with the whole of WikiText-2 (dropout 0.1, many epochs). Early stopping helps in
# every case: it costs nothing and always returns the best model the run produced.
#
# ## Exercise 4: tokens per second with and without accumulation
#
# The trainer records `tokens_per_s` every `log_interval` steps, measured over those steps only
# (evaluation excluded). A short run per setting of the `cpu` model, with a record after every
# step; we take the median step, which is less affected by whatever else the machine is doing:

# %% tags=["nbval-ignore-output"]
course, base = train_preset("cpu")
course = quick(course, tiny)
settings = [(32, 1), (8, 4), (32, 4)]
throughput = {}
for batch_size, accum in settings:
    steps = quick(10, 3) if accum == 1 else quick(5, 2)
    config = base.replace(max_steps=steps, batch_size=batch_size, grad_accum_steps=accum,
                          log_interval=1, progress=False)  # fmt: skip
    torch.manual_seed(0)
    result = Trainer(GPT(course), train_ids, None, config).fit()
    per_step = sorted(r["tokens_per_s"] for r in result.history[1:])  # the first step warms up
    throughput[batch_size, accum] = per_step[len(per_step) // 2]  # the median step
    tokens = batch_size * accum * course.block_size
    print(
        f"batch {batch_size:>2} x {accum} micro-batches = {tokens:>6,} tokens per step: "
        f"{throughput[batch_size, accum]:8,.0f} tokens/s"
    )

# %% [markdown]
# Accumulation does not make training faster per token; it makes larger batches possible. On
# this CPU all three settings run at about the same number of tokens per second. Batch 32 × 4
# takes four times as long per step as 32 × 1 for four times the tokens. Batch 8 × 4 sees the
# same 32 sequences (4,096 tokens) per step as 32 × 1, in four passes of 8, and is no slower (in
# the run shown, even slightly faster): for a 5-million-parameter model on two CPU cores a
# micro-batch of 8 × 128 tokens already keeps the cores busy, and the fixed costs of each
# forward and backward pass (Python overhead, launching each operation) are small next to its
# arithmetic. On a GPU it is different: a small micro-batch leaves most of the chip idle and
# those fixed costs are paid four times, so accumulation over small micro-batches is usually
# slower there. Use accumulation when the batch you want does not fit in memory (long
# contexts, large models, a small GPU), or to keep the effective batch size of a recipe when you
# move it to a machine with less memory.
#
# ## Exercise 5: fp16 without a scaler
#
# The gradients of the `cpu` model after one forward and backward pass on a WikiText-2 batch, in
# float32; how many would float16 flush to zero?

# %% tags=["nbval-ignore-output"]
course = quick(GPTConfig.preset("cpu"), tiny)
torch.manual_seed(0)
model = GPT(course)
x, y = get_batch(train_ids, quick(16, 4), course.block_size, generator=seed_everything(0))
_, loss = model(x, y)
loss.backward()
grads = torch.cat([p.grad.flatten() for p in model.parameters()])  # every gradient entry
nonzero = grads[grads != 0]
for scale in (1.0, 2.0**16):
    g16 = (nonzero * scale).half()
    print(
        f"loss scaled by {scale:>7,.0f}: {(g16 == 0).float().mean().item():6.2%} of the gradients "
        f"become 0 in fp16, {torch.isinf(g16).float().mean().item():.2%} overflow"
    )
assert (nonzero.half() == 0).any()

fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(nonzero.abs().log10().numpy(), bins=100)
ax.axvline(math.log10(2**-24), color="red", ls="--", label="smallest fp16 (6e-8)")
ax.axvline(math.log10(2**-24 / 2**16), color="green", ls=":", label="... with loss x 2^16")
ax.set(xlabel="log10 |gradient|", ylabel="count", title="Gradients of the cpu model, one batch")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Here the share is small: a few hundredths of a percent, the thin tail on the left of the
# histogram. This is the first step of a small, shallow model whose loss is still near 9; as the
# loss falls the gradients shrink, deeper models have smaller gradients in their early layers, and
# the share that fp16 flushes to zero grows. Scaling the loss by $2^{16}$ moves the whole
# distribution into fp16's range, and even the largest gradients (a few times $10^{-2}$, so a few
# thousand after scaling) stay far below fp16's largest number, 65,504. If they did not, the scaler
# would see an inf, skip the step and halve its factor. This simulation rounds the *final* weight
# gradients; in real fp16 autocast the gradients of the activations flowing backward are fp16 too,
# and those underflow in the same way, which is what the scaler protects.
#
# On a CUDA GPU you can watch it happen: the tiny model trained with fp16 autocast, with and
# without a `GradScaler`.


# %% tags=["nbval-ignore-output"]
def train_fp16(use_scaler: bool, steps: int = 100) -> list[float]:
    gen = seed_everything(0)
    model = GPT(tiny).to("cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    losses = []
    for _ in range(steps):
        x, y = get_batch(train_ids, 16, tiny.block_size, generator=gen, device="cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            _, loss = model(x, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


if device.type == "cuda":
    for use_scaler in (True, False):
        losses = train_fp16(use_scaler)
        print(f"scaler {use_scaler!s:>5}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
else:
    print("no CUDA GPU here: the fp16 run is skipped (fp16 autocast needs CUDA)")

# %% [markdown]
# For the tiny model the difference in the loss is small: most of its gradients are large
# enough, and what underflows is mostly the updates of rare tokens. In larger and deeper models
# the gradients are smaller, more of them vanish, and training without a scaler stalls or
# becomes unstable. With bf16 the question does not arise: it has float32's range.
