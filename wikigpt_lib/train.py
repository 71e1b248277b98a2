"""The training loop: AdamW, warmup + cosine schedule, clipping, accumulation, mixed precision,
evaluation, early stopping, checkpoints, resuming, and DDP across GPUs.

The `Trainer` knows nothing of GPT beyond `model(x, y) -> (logits, loss)` and `model.config`
(for the context length), so any model with that interface trains with it.

    model_cfg, train_cfg = train_preset("cpu")
    result = train_model(model_cfg, train_cfg, train_ids, val_ids, run_dir="runs/cpu")
    result = Trainer.resume("runs/cpu", train_ids, val_ids).fit()   # after a crash or Ctrl-C
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wikigpt_lib.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    unwrap_model,
)
from wikigpt_lib.data import epoch_window_starts, iter_eval_batches, windows_at
from wikigpt_lib.device import Precision, pick_device, pick_precision
from wikigpt_lib.model import GPT, IGNORE_INDEX, GPTConfig
from wikigpt_lib.optim import (
    OPTIMIZERS,
    SCHEDULES,
    configure_optimizer,
    lr_at,
    set_lr,
)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SAMPLINGS = ("random", "epoch")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. One optimizer step sees batch_size * grad_accum_steps * world_size
    sequences of the model's block_size tokens."""

    max_steps: int = 600
    batch_size: int = 32  # sequences per micro-batch, per process
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate, reached at the end of warmup
    min_lr: float = 1e-4  # where the decay ends, at max_steps
    warmup_steps: int = 50
    schedule: str = "cosine"  # decay after warmup: "cosine", "linear" or "wsd" (see lr_at)
    decay_frac: float = 0.2  # "wsd" only: the share of the steps spent decaying
    optimizer: str = "adamw"  # "adamw", or "muon" for the hidden matrices (optim.Muon)
    muon_lr: float = 0.02  # "muon" only: peak learning rate of the Muon group
    muon_momentum: float = 0.95  # "muon" only
    sampling: str = "random"  # training windows: "random" starts, or "epoch" (each once)
    weight_decay: float = 0.1  # on weight matrices only (not biases, LayerNorm)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    eval_interval: int = 100  # steps between validation evaluations (and checkpoints)
    eval_batches: int | None = 20  # batches per evaluation; None: the whole split
    patience: int | None = None  # stop after this many evaluations without improvement
    seed: int = 1337
    compile: bool = False  # torch.compile the model (faster on GPUs, slow to start)
    device: str | None = None  # None: the best there is (cuda, mps, cpu)
    precision: str = "auto"  # auto: bf16 / fp16 + scaler / fp32 by device (see device.py)
    log_interval: int = 10  # steps between train-loss records
    tensorboard: bool = False  # also write TensorBoard event files into the run folder
    progress: bool = True  # a tqdm bar with loss, learning rate and tokens/s

    def __post_init__(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum_steps", "eval_interval", "log_interval")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {value!r}.")
        for name in ("warmup_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 0, got {value!r}.")
        for name in ("eval_batches", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TrainConfig.{name} must be None or an integer >= 1.")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}.")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(
                f"TrainConfig.min_lr must be in [0, lr={self.lr}], got {self.min_lr}: lower "
                "min_lr too when you lower lr (e.g. min_lr = lr / 10)."
            )
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("TrainConfig.weight_decay and grad_clip must be >= 0.")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("TrainConfig.beta1 and beta2 must be in [0, 1).")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"TrainConfig.schedule must be one of {', '.join(SCHEDULES)}, got "
                f"{self.schedule!r}."
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"TrainConfig.optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                f"{self.optimizer!r}."
            )
        if self.sampling not in SAMPLINGS:
            raise ValueError(
                f"TrainConfig.sampling must be one of {', '.join(SAMPLINGS)}, got "
                f"{self.sampling!r}."
            )
        if not 0 < self.decay_frac <= 1:
            raise ValueError(f"TrainConfig.decay_frac must be in (0, 1], got {self.decay_frac}.")
        if not self.muon_lr > 0 or not 0 <= self.muon_momentum < 1:
            raise ValueError("TrainConfig.muon_lr must be > 0 and muon_momentum in [0, 1).")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainConfig.precision must be one of {', '.join(PRECISIONS)}, got "
                f"{self.precision!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are an error, missing ones take the defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(known)}.")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


# name -> (what it is for, model preset and overrides, training settings)
# The CPU recipe, measured step by step in benchmarks/train.py (the ladder; README, Results):
# Muon for the blocks' matrices, AdamW for embeddings and gains, a linear decay to zero, each
# training window once per epoch, and a narrow model that sees the data more than once.
_RECIPE = {"optimizer": "muon", "schedule": "linear", "min_lr": 0.0, "sampling": "epoch",
           "weight_decay": 0.1}  # fmt: skip
# GPUs see WikiText-2 ten times or more, so overfitting is their limit: dropout (the "gpu"
# model), weight decay and early stopping on the validation loss (patience). Not yet measured.
_GPU = {**_RECIPE, "lr": 1e-3, "muon_lr": 0.02, "warmup_steps": 200, "eval_interval": 250,
        "eval_batches": 40, "patience": 4, "log_interval": 50}  # fmt: skip

# name -> (what it is for, model preset and overrides, training settings)
TRAIN_PRESETS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "cpu-quick": (
        "a first run in about a minute on a laptop CPU (2 layers, width 128, context 64)",
        {"preset": "cpu", "n_layer": 2, "block_size": 64},
        # 200 steps favour high rates: Muon 0.06 and AdamW 1e-2 gave a validation loss of 5.95
        # against 6.11 at 0.02 and 3e-3, and 6.44 for the old AdamW recipe.
        {**_RECIPE, "max_steps": 200, "batch_size": 16, "lr": 1e-2, "muon_lr": 0.06,
         "warmup_steps": 20, "eval_interval": 50, "eval_batches": 10, "log_interval": 10},
    ),
    "cpu": (
        "the course model (4 layers, width 128, context 128) in 15 minutes on 2 CPU cores",
        {"preset": "cpu"},
        # 2,500 steps of 2,048 tokens: 5.1M tokens, 2.0 epochs, under 14 minutes on 2 cores.
        {**_RECIPE, "max_steps": 2500, "batch_size": 16, "lr": 3e-3, "muon_lr": 0.02,
         "warmup_steps": 50, "eval_interval": 250, "eval_batches": 20, "log_interval": 10},
    ),
    "t4": (
        "the GPU course model (6 layers, width 384, context 256) on a T4: fp16 with a scaler",
        {"preset": "gpu"},
        {**_GPU, "max_steps": 5000, "batch_size": 32},
    ),
    "a100": (
        "the GPU course model on an A100: bf16, torch.compile, batch 64",
        {"preset": "gpu"},
        {**_GPU, "max_steps": 4000, "batch_size": 64, "compile": True},
    ),
    "h100": (
        "the GPU course model on an H100: bf16, torch.compile, batch 128 (fewer, larger steps)",
        {"preset": "gpu"},
        {**_GPU, "max_steps": 2500, "batch_size": 128, "lr": 1.5e-3, "muon_lr": 0.03,
         "compile": True},
    ),
}  # fmt: skip


def train_preset(name: str, **train_overrides: Any) -> tuple[GPTConfig, TrainConfig]:
    """The model and training configuration of a named preset (see `TRAIN_PRESETS`)."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose one of {list(TRAIN_PRESETS)}.")
    _, model, settings = TRAIN_PRESETS[name]
    model = dict(model)
    model_cfg = GPTConfig.preset(model.pop("preset"), **model)
    return model_cfg, TrainConfig(**{**settings, **train_overrides})


# ----------------------------------------------------------------------------- the pieces


def _precision_for(name: str, device: torch.device) -> Precision:
    if name == "auto":
        return pick_precision(device)
    if name == "fp32":
        return Precision(device, None, use_grad_scaler=False)
    if name == "bf16":
        return Precision(device, torch.bfloat16, use_grad_scaler=False)
    if device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA GPU; use 'auto' or 'fp32' on this device.")
    return Precision(device, torch.float16, use_grad_scaler=True)


@torch.no_grad()
def loss_sums(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    precision: Precision | None = None,
) -> tuple[float, int]:
    """(sum of token losses in nats, number of tokens) over `batches`, in eval mode. Targets
    equal to IGNORE_INDEX (padding, masked prompts) are not counted, as the loss ignores them."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    total, count = 0.0, 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with autocast:
                _, loss = model(x, y)
            n = int((y != IGNORE_INDEX).sum())  # the targets the mean loss was taken over
            total += float(loss) * n  # mean over the batch -> sum
            count += n
    finally:
        model.train(was_training)
    return total, count


def evaluate_loss(
    model: nn.Module,
    data: np.ndarray,
    block_size: int,
    batch_size: int,
    max_batches: int | None = None,
    precision: Precision | None = None,
) -> float:
    """Mean next-token loss (nats) over non-overlapping windows of `data`, from its start:
    the first `max_batches` batches, or all of them. exp() of it is the token perplexity."""
    batches = iter_eval_batches(data, batch_size, block_size)
    if max_batches is not None:
        batches = (b for i, b in zip(range(max_batches), batches, strict=False))
    total, count = loss_sums(model, batches, precision)
    return total / count


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the weights were left as they were before the step."""


@dataclass
class TrainResult:
    run_dir: Path | None
    steps: int
    tokens_seen: int
    best_val_loss: float | None
    history: list[dict[str, Any]]
    stopped: str  # "max_steps", "early_stop" or "interrupted"
    signal: int | None = None  # the signal that interrupted the run (None: Ctrl-C in code)


# ----------------------------------------------------------------------------- metrics


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (train and val), in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run folder?")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(history: Sequence[dict[str, Any]] | str | os.PathLike, ax=None, title: str = ""):
    """Train and validation loss against step, from a history list or a run folder."""
    import matplotlib.pyplot as plt

    if isinstance(history, (str, os.PathLike)):
        history = read_metrics(history)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for split, style in (("train", "-"), ("val", "o-")):
        points = [(r["step"], r["loss"]) for r in history if r["split"] == split]
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, style, label=split, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or "training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


# ----------------------------------------------------------------------------- the trainer


def _dist_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


# Ctrl-C; `kill`, `timeout`, Colab, Slurm and Kubernetes (before SIGKILL); a closed terminal.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class _StopRequest:
    """Turns the first SIGINT, SIGTERM or SIGHUP into a request that the loop honours between
    steps (so a step is never half done when the checkpoint is written); a second one
    interrupts at once. `signum` is the first signal received (None: none)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _StopRequest:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: keep the default behaviour
                break
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


class Trainer:
    """Trains `model` on a token array. Nothing is written unless `run_dir` is given.

    train_data / val_data: 1-D arrays of token ids (as `tokenize_split` returns).
    callbacks: functions `cb(trainer, record)` called after every optimizer step; raising
    KeyboardInterrupt from one stops the run as Ctrl-C does (checkpoint saved, then return).

    Seeding: batches are drawn from a generator seeded with config.seed, and the global torch
    RNG (dropout masks) is reseeded with config.seed + rank, so a run is reproducible whatever
    random numbers were drawn before. With dropout, DDP runs therefore differ from a
    single-process run (each process has its own masks); without it they match.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: np.ndarray,
        val_data: np.ndarray | None,
        config: TrainConfig,
        *,
        run_dir: str | os.PathLike | None = None,
        tokenizer_name: str = "wikitext2",
        data_name: str = "",
        callbacks: Sequence[Callable[[Trainer, dict[str, Any]], None]] = (),
    ) -> None:
        self.config = cfg = config
        self.rank, self.local_rank, self.world_size = _dist_env()
        self.distributed = self.world_size > 1
        self._owns_process_group = False
        self.is_main = self.rank == 0
        self.device = self._setup_device()
        self.precision = _precision_for(cfg.precision, self.device)
        self.block_size = unwrap_model(model).config.block_size
        for name, data in (("train_data", train_data), ("val_data", val_data)):
            if data is not None and (not isinstance(data, np.ndarray) or data.ndim != 1):
                raise TypeError(f"{name} must be a 1-D numpy array of token ids.")
            if data is not None and len(data) < self.block_size + 1:
                raise ValueError(
                    f"{name} has {len(data)} tokens, fewer than one window of block_size "
                    f"{self.block_size} + 1."
                )
        self.train_data, self.val_data = train_data, val_data
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.tokenizer_name, self.data_name = tokenizer_name, data_name
        self.callbacks = list(callbacks)

        self.model = unwrap_model(model).to(self.device)  # the plain model: saved, evaluated
        self.forward_model: nn.Module = self.model  # what the training step calls
        if cfg.compile:
            self.forward_model = torch.compile(self.model)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.forward_model, device_ids=ids)
        self.optimizer = configure_optimizer(self.model, cfg, self.device.type)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.use_grad_scaler)
        # Batches come from their own generator: evaluation, dropout or user code drawing
        # random numbers cannot shift which windows training sees.
        self.generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed + self.rank)  # dropout masks

        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss: float | None = None
        self.evals_without_improvement = 0
        self.elapsed_s = 0.0  # training time over all sessions of this run
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self._writer = None
        self._checkpoint_step: int | None = None
        self._phase: str | None = None  # where train_step is: "gradients", "update" or None
        self._rewind: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- setup ---------------------------------------------------------------------------

    def _setup_device(self) -> torch.device:
        if not self.distributed:
            return pick_device(self.config.device)
        import torch.distributed as dist

        use_cuda = torch.cuda.is_available() and self.config.device in (None, "cuda")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            self._owns_process_group = True
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    @property
    def tokens_per_step(self) -> int:
        c = self.config
        return c.batch_size * c.grad_accum_steps * self.world_size * self.block_size

    # -- one step ------------------------------------------------------------------------

    def _micro_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's micro-batches for one optimizer step. Every process draws the same
        global set of window starts and takes its own slice, so N processes with batch B
        see exactly what one process with batch N*B would."""
        c = self.config
        shape = (c.grad_accum_steps, self.world_size, c.batch_size)
        if c.sampling == "epoch":  # a function of the step alone: resumes exactly
            per_step = math.prod(shape)
            n = len(self.train_data)
            flat = epoch_window_starts(n, self.block_size, c.seed, self.step * per_step, per_step)
            starts = flat.view(shape)[:, self.rank]  # (A, B)
        else:
            n = len(self.train_data) - self.block_size
            starts = torch.randint(n, shape, generator=self.generator)[:, self.rank]  # (A, B)
        for micro in starts:
            yield windows_at(self.train_data, micro, self.block_size, device=self.device)

    def train_step(self) -> float:
        """One optimizer step over grad_accum_steps micro-batches; returns the mean loss.

        Raises TrainingDivergedError (weights untouched) if the loss is NaN or infinite.
        """
        c = self.config
        # If a hard interrupt lands mid-step, fit() rewinds to this point before saving.
        self._rewind = (self.generator.get_state(), torch.get_rng_state())
        self._phase = "gradients"
        self.forward_model.train()
        lr = lr_at(self.step, c)
        set_lr(self.optimizer, lr)
        total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(self._micro_batches()):
            last = i == c.grad_accum_steps - 1
            # DDP: average gradients across processes only once, after the last micro-batch.
            sync = (
                self.forward_model.no_sync()
                if self.distributed and not last
                else contextlib.nullcontext()
            )
            with sync:
                with self.precision.autocast():
                    _, loss = self.forward_model(x, y)
                # Dividing by the number of micro-batches makes the summed gradients those of
                # the mean loss over the whole batch.
                self.scaler.scale(loss / c.grad_accum_steps).backward()
            total += loss.detach()
        mean = total / c.grad_accum_steps
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(mean, op=dist.ReduceOp.SUM)  # gloo has no AVG
            mean /= self.world_size
        loss_value = float(mean)  # the one host sync per step
        if not math.isfinite(loss_value):
            self._diverged(f"the training loss is {loss_value}", lr)
        if c.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            if not self.precision.use_grad_scaler and not torch.isfinite(norm):
                self._diverged(f"the gradient norm is {float(norm)}", lr)
        self._phase = "update"  # from here on the weights change: no rewinding
        self.scaler.step(self.optimizer)  # with fp16, skips steps whose gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        self._phase = None
        return loss_value

    def _diverged(self, what: str, lr: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        where = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint is not None
            else "no checkpoint was written yet"
        )
        raise TrainingDivergedError(
            f"{what} at step {self.step + 1} (learning rate {lr:.3g}); training stopped and "
            f"{where}. Try a lower learning rate (--lr), a longer warmup, gradient clipping, "
            "or precision fp32."
        )

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self) -> float:
        """Validation loss over the first eval_batches global batches of val_data (all of it
        with None), shared out across processes: N processes with batch B score the same
        windows as one process with batch N*B."""
        if self.val_data is None:
            raise ValueError("this Trainer has no val_data to evaluate on.")
        c = self.config
        batches = iter_eval_batches(self.val_data, c.batch_size, self.block_size)
        if c.eval_batches is not None:  # counted in global batches, as for training
            limit = c.eval_batches * self.world_size
            batches = (b for _, b in zip(range(limit), batches, strict=False))
        mine = (b for i, b in enumerate(batches) if i % self.world_size == self.rank)
        total, count = loss_sums(self.model, mine, self.precision)
        if self.distributed:
            import torch.distributed as dist

            sums = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
            total, count = float(sums[0]), int(sums[1])
        return total / count

    # -- records, checkpoints ------------------------------------------------------------

    def _record(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.is_main or self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            self._writer.add_scalar(f"loss/{record['split']}", record["loss"], record["step"])
            if "lr" in record:
                self._writer.add_scalar("lr", record["lr"], record["step"])
                self._writer.add_scalar("tokens_per_s", record["tokens_per_s"], record["step"])

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "evals_without_improvement": self.evals_without_improvement,
            "elapsed_s": round(self.elapsed_s, 3),
            "world_size": self.world_size,
            "cpu_threads": torch.get_num_threads(),
        }

    def _trainer_state(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": cuda,
            "rng_batches": self.generator.get_state(),
        }

    def save_checkpoint(self, is_best: bool = False) -> Path | None:
        """Write a checkpoint into run_dir (main process only); returns its folder."""
        if self.run_dir is None or not self.is_main:
            return None
        self._checkpoint_step = self.step
        self.last_checkpoint = save_checkpoint(
            self.run_dir,
            model=self.model,
            train_config=self.config.to_dict(),
            state=self._state(),
            trainer_state=self._trainer_state(),
            tokenizer=self.tokenizer_name,
            data=self.data_name,
            is_best=is_best,
        )
        return self.last_checkpoint

    def load_trainer_state(self, state: dict[str, Any], trainer_state: dict[str, Any]) -> None:
        """Restore step counters, optimizer, scaler and RNG states saved by save_checkpoint."""
        saved_world = state.get("world_size", 1)
        if saved_world != self.world_size:
            raise CheckpointError(
                f"this run was trained with {saved_world} process(es) and is resumed with "
                f"{self.world_size}: the batches would differ. Resume with the same number."
            )
        threads = state.get("cpu_threads")
        if self.device.type == "cpu" and threads and threads != torch.get_num_threads():
            # CPU kernels split their sums across threads, so another thread count rounds
            # differently (about 1e-9 after a few steps, growing): train on as many as before.
            warnings.warn(
                f"this run was trained with {threads} CPU threads and this process has "
                f"{torch.get_num_threads()}: using {threads}, so that the resumed run is "
                "bit for bit the run that was interrupted.",
                stacklevel=2,
            )
            torch.set_num_threads(threads)
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.best_val_loss = state.get("best_val_loss")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.optimizer.load_state_dict(trainer_state["optimizer"])
        self.scaler.load_state_dict(trainer_state["scaler"])
        self.generator.set_state(trainer_state["rng_batches"])
        torch.set_rng_state(trainer_state["rng_torch"])
        if trainer_state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(trainer_state["rng_cuda"])

    @classmethod
    def resume(
        cls,
        run_dir: str | os.PathLike,
        train_data: np.ndarray,
        val_data: np.ndarray | None,
        *,
        callbacks: Sequence[Callable[[Trainer, dict[str, Any]], None]] = (),
        **overrides: Any,
    ) -> Trainer:
        """A Trainer that continues the run in `run_dir` from its latest checkpoint, exactly:
        the same batches, dropout masks and updates as if it had never stopped. `overrides`
        change TrainConfig fields (e.g. max_steps=2000 to train on, or progress=False)."""
        run_dir = Path(run_dir)
        ckpt = load_checkpoint(resolve_checkpoint(run_dir, "latest"))
        config = TrainConfig.from_dict({**ckpt.train_config, **overrides})
        model = ckpt.build_model().train()  # with its LoRA adapters, if it had some
        trainer = cls(
            model,
            train_data,
            val_data,
            config,
            run_dir=run_dir,
            tokenizer_name=ckpt.tokenizer,
            data_name=ckpt.data,
            callbacks=callbacks,
        )
        trainer.load_trainer_state(ckpt.state, ckpt.trainer_state(map_location="cpu"))
        trainer.last_checkpoint, trainer._checkpoint_step = ckpt.path, trainer.step
        trainer._restore_history()
        return trainer

    def _restore_history(self) -> None:
        """Reload metrics up to the checkpoint; drop records of steps that will be redone."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = [r for r in read_metrics(self.run_dir) if r["step"] <= self.step]
        self.history = kept
        if self.is_main:
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, path)

    # -- the loop ------------------------------------------------------------------------

    def _open_outputs(self) -> None:
        if self.run_dir is None or not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config.tensorboard and self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError(
                    "tensorboard=True needs the tensorboard package: pip install tensorboard"
                ) from err
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step)

    def _progress_bar(self):
        from tqdm.auto import tqdm

        show = self.config.progress and self.is_main
        return tqdm(total=self.config.max_steps, initial=self.step, disable=not show, unit="step")

    def _after_eval(self, val_loss: float) -> bool:
        """Record an evaluation, checkpoint, and say whether to stop early."""
        improved = self.best_val_loss is None or val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.evals_without_improvement = val_loss, 0
        else:
            self.evals_without_improvement += 1
        self._record(
            {
                "step": self.step,
                "split": "val",
                "loss": round(val_loss, 6),
                "ppl": round(math.exp(min(val_loss, 50.0)), 4),
                "elapsed_s": round(self.elapsed_s, 3),
            }
        )
        self.save_checkpoint(is_best=improved)
        patience = self.config.patience
        return patience is not None and self.evals_without_improvement >= patience

    def _log_line(self, train_loss: float, val_loss: float | None) -> None:
        """Without a progress bar, one line per evaluation, so a log file shows the run going."""
        if self.config.progress or not self.is_main:
            return
        val = "" if val_loss is None else f" | val loss {val_loss:.4f}"
        print(
            f"step {self.step}/{self.config.max_steps} | train loss {train_loss:.4f}{val} | "
            f"lr {lr_at(self.step - 1, self.config):.2e} | {self.elapsed_s:.0f} s",
            flush=True,
        )

    def _save_after_interrupt(self, signum: int | None = None) -> None:
        if self._phase == "gradients":  # half-way through a step: undo its side effects
            self.optimizer.zero_grad(set_to_none=True)
            self.generator.set_state(self._rewind[0])
            torch.set_rng_state(self._rewind[1])
            self._phase = None
        if self._phase == "update":  # the weights are half updated: don't save them
            if self.is_main:
                print(
                    f"\nInterrupted during an optimizer update: not saved; the latest "
                    f"checkpoint is {self.last_checkpoint}."
                )
            return
        saved = self.save_checkpoint()
        if saved is not None:
            what = signal.Signals(signum).name if signum else "Interrupted"
            print(f"\n{what} at step {self.step}: checkpoint saved to {saved}.", flush=True)

    def fit(self) -> TrainResult:
        """Train until max_steps, early stopping, or Ctrl-C (which saves a checkpoint first).

        Evaluates every eval_interval steps and at the end; keeps the best checkpoint (lowest
        validation loss) and the latest. Returns what happened as a TrainResult.
        """
        c = self.config
        self._open_outputs()
        stopped, signum = "max_steps", None
        bar = self._progress_bar()
        window_tokens, window_start = 0, time.perf_counter()
        try:
            with _StopRequest() as stop:
                while self.step < c.max_steps:
                    t0 = time.perf_counter()
                    loss = self.train_step()
                    self.elapsed_s += time.perf_counter() - t0
                    window_tokens += self.tokens_per_step
                    record = {"step": self.step, "split": "train", "loss": loss}
                    record["lr"] = lr_at(self.step - 1, c)
                    if self.step % c.log_interval == 0 or self.step == c.max_steps:
                        now = time.perf_counter()
                        record["tokens_per_s"] = round(window_tokens / (now - window_start), 1)
                        record["elapsed_s"] = round(self.elapsed_s, 3)
                        self._record({**record, "loss": round(loss, 6)})
                        window_tokens, window_start = 0, now
                        bar.set_postfix(
                            loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:,.0f}",
                        )  # fmt: skip
                    bar.update(1)
                    for callback in self.callbacks:
                        callback(self, record)
                    if self.val_data is not None and (
                        self.step % c.eval_interval == 0 or self.step == c.max_steps
                    ):
                        val_loss = self.evaluate()
                        self._log_line(loss, val_loss)
                        if self._after_eval(val_loss):
                            stopped = "early_stop"
                            break
                        window_start = time.perf_counter()  # keep eval out of tokens/s
                    elif self.val_data is None and self.step % c.eval_interval == 0:
                        self._log_line(loss, None)
                        self.save_checkpoint()
                    if stop.requested:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            stopped, signum = "interrupted", stop.signum
            self._save_after_interrupt(signum)
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.flush()
        saved_step = None if self.last_checkpoint is None else self._checkpoint_step
        if stopped == "max_steps" and self.val_data is None and saved_step != self.step:
            self.save_checkpoint()
        return TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            tokens_seen=self.tokens_seen,
            best_val_loss=self.best_val_loss,
            history=list(self.history),
            stopped=stopped,
            signal=signum,
        )

    def close(self, wait: bool = True) -> None:
        """Leave the process group this trainer joined (a no-op on one process).

        Call it once training is over and before the process exits: every rank waits for
        the others, then the group is torn down. Skipping it lets gloo's threads die with
        the interpreter, which can abort the process ("terminate called without an
        active exception"). After an error pass wait=False: the other ranks may never
        reach the barrier. A group the caller created is left to the caller.
        """
        if not self._owns_process_group:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()
        self._owns_process_group = False

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # `with Trainer(...) as t: t.fit()` closes on the way out; after an error it does
        # not wait for the other ranks, which may have died.
        self.close(wait=exc_type is None)


def train_model(
    model_config: GPTConfig,
    train_config: TrainConfig,
    train_data: np.ndarray,
    val_data: np.ndarray | None,
    *,
    run_dir: str | os.PathLike | None = None,
    **trainer_kwargs: Any,
) -> TrainResult:
    """Build a GPT (seeded with train_config.seed) and train it; see `Trainer`."""
    torch.manual_seed(train_config.seed)
    model = GPT(model_config)
    with Trainer(model, train_data, val_data, train_config, run_dir=run_dir, **trainer_kwargs) as t:
        return t.fit()
