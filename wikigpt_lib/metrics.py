"""How well a model predicts a stream of tokens, and the records a training run keeps.

loss_sums()      the one function that scores batches: total loss in nats and the number of
                 targets, used by training, evaluation, chat fine-tuning and the benchmarks
evaluate_loss()  mean loss over non-overlapping windows of a token array
RunLog           where a run's records go: metrics.jsonl, and TensorBoard if asked for
read_metrics()   a run folder's metrics.jsonl as a list of records
plot_losses()    train and validation loss against step
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wikigpt_lib.base import write_atomic
from wikigpt_lib.device import Precision
from wikigpt_lib.model import IGNORE_INDEX
from wikigpt_lib.windows import iter_eval_batches


@torch.no_grad()
def loss_sums(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    precision: Precision | None = None,
) -> tuple[float, int]:
    """(sum of the token losses in nats, number of tokens scored) over `batches` of x, y
    (B, T), in eval mode (set back afterwards). Targets equal to IGNORE_INDEX (padding,
    masked prompts, positions a sliding window does not score) are not counted.

    The model needs only `model(x) -> (logits, _)` with logits (B, T, V); the log-softmax
    runs in fp32 at least and the sum is taken in float64, so long splits add up exactly.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    total, count = 0.0, 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with autocast:
                logits, _ = model(x)  # (B, T, V)
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()  # the log-softmax in fp32 at least
            nll = F.cross_entropy(
                logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                reduction="none",
            )  # (B*T,): 0 where ignored  # fmt: skip
            total += nll.double().sum().item()
            count += int((y != IGNORE_INDEX).sum())
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
        batches = (b for _, b in zip(range(max_batches), batches, strict=False))
    total, count = loss_sums(model, batches, precision)
    return total / count


class RunLog:
    """A run's records, one JSON line each, appended to `run_dir/metrics.jsonl` and, with
    tensorboard=True, written as TensorBoard scalars under `run_dir/tensorboard`. With
    run_dir=None (no run folder, or not the main process) nothing is written."""

    def __init__(self, run_dir: Path | None, tensorboard: bool = False) -> None:
        self.run_dir, self.tensorboard = run_dir, tensorboard
        self._writer = None

    def open(self, step: int) -> None:
        """Create the run folder and the TensorBoard writer (events after `step` replaced)."""
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.tensorboard and self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError(
                    "tensorboard=True needs the tensorboard package: pip install tensorboard"
                ) from err
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=step)

    def write(self, record: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            self._writer.add_scalar(f"loss/{record['split']}", record["loss"], record["step"])
            if "lr" in record:
                self._writer.add_scalar("lr", record["lr"], record["step"])
                self._writer.add_scalar("tokens_per_s", record["tokens_per_s"], record["step"])

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def restore(self, step: int) -> list[dict[str, Any]]:
        """The records up to `step` (a resumed run's checkpoint); later ones, of steps that
        will be redone, are dropped from metrics.jsonl too."""
        if self.run_dir is None or not (self.run_dir / "metrics.jsonl").is_file():
            return []
        path = self.run_dir / "metrics.jsonl"
        kept = [r for r in read_metrics(self.run_dir) if r["step"] <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return kept


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
