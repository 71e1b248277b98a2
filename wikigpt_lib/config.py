"""What to build and how to train it: `GPTConfig` (a model's shape), `TrainConfig` (a training
run's settings), and every named preset of both, in one place.

    GPTConfig.preset("cpu")                      # the course model's shape
    model_cfg, train_cfg = train_preset("cpu")   # the shape and the recipe that trains it

Plain frozen dataclasses: they validate their fields and turn into JSON-ready dicts and back,
which is how checkpoints store them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from wikigpt_lib.attention import nearest_divisor

SCHEDULES = ("cosine", "linear", "wsd")  # how the learning rate decays (optim.lr_at)
OPTIMIZERS = ("adamw", "muon")  # optim.configure_optimizer
SAMPLINGS = ("random", "epoch")  # how training windows are drawn (windows.TokenWindows)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # device.pick_precision

# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT. The defaults are the course's CPU model (`GPTConfig.preset("cpu")`).

    vocab_size: number of token ids; block_size: longest sequence (number of positions);
    n_layer: blocks; n_head: attention heads per block; n_embd: width of the residual
    stream; dropout: probability used by every dropout layer; bias: biases in the Linear
    layers and LayerNorms (False: no biases anywhere).
    """

    vocab_size: int = 8192
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 2
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}.")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: each head "
                f"gets n_embd / n_head channels. Use e.g. n_head="
                f"{nearest_divisor(self.n_embd, self.n_head)} or n_embd="
                f"{self.n_head * max(1, round(self.n_embd / self.n_head))}."
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ValueError(f"GPTConfig.dropout must be a number in [0, 1), got {self.dropout!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}.")
        if not isinstance(self.bias, bool):
            raise ValueError(f"GPTConfig.bias must be True or False, got {self.bias!r}.")

    @classmethod
    def presets(cls) -> list[str]:
        """Names accepted by `GPTConfig.preset`."""
        return list(MODEL_PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named configuration, optionally changed: `GPTConfig.preset("gpt2", dropout=0.1)`.

        tiny: for tests. cpu: the course model trained on a 2-core CPU in 15 minutes.
        gpu: the course model for a GPU. gpt2, gpt2-medium, gpt2-large, gpt2-xl: OpenAI's.
        """
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}.")
        return cls.from_dict({**MODEL_PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Inverse of `to_dict`; missing keys take the defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown GPTConfig field(s) {unknown}; the fields are {sorted(known)}."
            )
        return cls(**d)

    def replace(self, **changes: Any) -> GPTConfig:
        """A copy with some fields changed (validated like a new config)."""
        return replace(self, **changes)


_COURSE_SHAPE = {"vocab_size": 8192, "dropout": 0.0, "bias": False}
_GPT2 = {"vocab_size": 50257, "block_size": 1024, "dropout": 0.0, "bias": True}
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {**_COURSE_SHAPE, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
    # Width 128 rather than 256: on a 2-core CPU the narrower model sees 2.3 epochs in 15
    # minutes instead of one and ends far better (benchmarks/results/train_cpu.md, the ladder).
    "cpu": {**_COURSE_SHAPE, "block_size": 128, "n_layer": 4, "n_head": 2, "n_embd": 128},
    # A GPU sees WikiText-2 many times: dropout 0.2 against overfitting (not yet measured).
    "gpu": {
        **_COURSE_SHAPE,
        "block_size": 256,
        "n_layer": 6,
        "n_head": 6,
        "n_embd": 384,
        "dropout": 0.2,
    },
    "gpt2": {**_GPT2, "n_layer": 12, "n_head": 12, "n_embd": 768},
    "gpt2-medium": {**_GPT2, "n_layer": 24, "n_head": 16, "n_embd": 1024},
    "gpt2-large": {**_GPT2, "n_layer": 36, "n_head": 20, "n_embd": 1280},
    "gpt2-xl": {**_GPT2, "n_layer": 48, "n_head": 25, "n_embd": 1600},
}


# ----------------------------------------------------------------------------- training


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
