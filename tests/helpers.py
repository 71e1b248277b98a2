"""Builders the tests share: the tiny test models, a short TrainConfig, token data, callbacks.

conftest.py hands out the common cases as fixtures (`tiny_config`, `tiny_model`,
`tiny_preset_model`, `tiny_train_config`, `token_splits`, `sample_tokens`); a test that
needs a variant, or several fresh copies, calls these functions instead:

    from helpers import make_tiny_model
    model = make_tiny_model(seed=1, dropout=0.2)
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.train import TrainConfig

TINY_VOCAB, TINY_BLOCK = 64, 16  # vocabulary and block size of the tiny test model

_TINY_CONFIG = {
    "vocab_size": TINY_VOCAB,
    "block_size": TINY_BLOCK,
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "bias": True,
}

_TRAIN_CONFIG = {
    "max_steps": 4,
    "batch_size": 4,
    "lr": 1e-2,
    "min_lr": 1e-3,
    "warmup_steps": 1,
    "eval_interval": 2,
    "eval_batches": 2,
    "log_interval": 1,
    "seed": 0,
    "device": "cpu",
    "precision": "fp32",
    "progress": False,
}


def make_tiny_config(**overrides) -> GPTConfig:
    """The tiny test GPT (28,032 parameters): 64 ids, 16 positions, 2 layers of 2 heads,
    width 32, with biases (so that bias handling is exercised); `overrides` change fields."""
    return GPTConfig(**{**_TINY_CONFIG, **overrides})


def make_tiny_model(seed: int = 0, **overrides) -> GPT:
    """A GPT of `make_tiny_config(**overrides)`, initialised under torch.manual_seed(seed);
    in training mode, as built."""
    torch.manual_seed(seed)
    return GPT(make_tiny_config(**overrides))


def make_preset_model(seed: int = 0, **overrides) -> GPT:
    """A GPT of the library's `tiny` preset (the course tokenizer's 8192 ids, 32 positions),
    initialised under torch.manual_seed(seed); in training mode, as built."""
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny", **overrides))


def make_train_config(**overrides) -> TrainConfig:
    """A short, quiet, deterministic TrainConfig: 4 steps of 4 windows on the CPU in fp32, seed
    0, peak rate 1e-2 after 1 warmup step, evaluation (of 2 batches) and checkpoint every 2
    steps, a record every step, no progress bar; the default weight decay."""
    return TrainConfig(**{**_TRAIN_CONFIG, **overrides})


def random_tokens(n: int, seed: int = 0, vocab: int = TINY_VOCAB) -> np.ndarray:
    """`n` uniformly random token ids below `vocab`, as uint16 (what the data pipeline gives)."""
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


def counting_tokens(n: int, stride: int = 1, vocab: int = TINY_VOCAB) -> np.ndarray:
    """A stream a model learns in a few steps: each token is the previous one + stride."""
    return ((np.arange(n) * stride) % vocab).astype(np.uint16)


def interrupt_at(step: int):
    """A Trainer callback that simulates Ctrl-C right after optimizer step `step`."""

    def callback(trainer, record: dict) -> None:
        if record["step"] == step:
            raise KeyboardInterrupt

    return callback


def pointer(run_dir, name: str) -> dict:
    """The contents of a run folder's `latest.json` or `best.json`."""
    return json.loads((run_dir / f"{name}.json").read_text())


@functools.cache
def load_tool(name: str):
    """A script of tools/ as a module (tools/ is not a package), e.g. load_tool("run_notebooks")."""
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
