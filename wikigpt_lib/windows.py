"""Windows of a token stream as (x, y) batches, y shifted by one: what a language model trains
and is evaluated on.

get_batch()             random (x, y) windows for training
windows_at()            the windows that start at given positions
epoch_window_starts()   every window once per epoch, in a shuffled order (a function of the step)
iter_eval_batches()     non-overlapping sequential windows for evaluation
TokenWindowDataset      the same windows as a torch Dataset
TokenWindows            a split as a batch source for the `Trainer` (see train.py)
as_batch_source()       token ids -> TokenWindows; other batch sources pass through
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor]  # x, y: (B, T) int64 token ids and their targets


def _check_sizes(data: np.ndarray, batch_size: int, block_size: int) -> None:
    if not isinstance(data, np.ndarray) or data.ndim != 1:
        raise TypeError("data must be a 1-D numpy array of token ids, as tokenize_split returns.")
    if batch_size < 1 or block_size < 1:
        raise ValueError(
            f"batch_size and block_size must be >= 1 (got {batch_size}, {block_size})."
        )
    if len(data) < block_size + 1:
        raise ValueError(
            f"The data has {len(data)} tokens, too few for one window of block_size={block_size} "
            "plus its shifted target: use a smaller block_size or more data."
        )


def get_batch(
    data: np.ndarray,
    batch_size: int,
    block_size: int,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows from a token array: x (B, T) and y (B, T), int64 on `device`,
    where y[:, t] is the token that follows x[:, t] in the text. Every start is equally
    likely; reproducible with a seeded (CPU) `generator`."""
    _check_sizes(data, batch_size, block_size)
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    return windows_at(data, starts, block_size, device=device)


def windows_at(
    data: np.ndarray,
    starts: torch.Tensor,
    block_size: int,
    *,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows that begin at `starts` (B,): x = data[s : s+T] and y = data[s+1 : s+T+1]
    for each start s, as int64 tensors (B, T) on `device`."""
    offsets = starts[:, None] + torch.arange(block_size + 1)  # (B, T+1)
    chunk = torch.from_numpy(data[offsets.numpy()].astype(np.int64))  # (B, T+1)
    x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()  # (B, T), (B, T)
    if torch.device(device).type == "cuda":  # pinned memory lets the copy overlap compute
        x, y = x.pin_memory(), y.pin_memory()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def epoch_window_starts(
    n_tokens: int, block_size: int, seed: int, first: int, count: int
) -> torch.Tensor:
    """Starts of training windows number `first` ... `first + count - 1` (int64, (count,)) in
    an endless stream of epochs over a split of `n_tokens` tokens.

    Epoch e cuts the split into W = (n_tokens - T) // T non-overlapping windows shifted by a
    random offset in [0, T), and visits them in a random order; offset and order come from
    (seed, e) alone. So every window is seen once per epoch (random starts with replacement
    miss about a third of them), each epoch sees different cuts, and the k-th window of the
    stream depends only on k: a resumed run continues exactly.
    """
    windows = (n_tokens - block_size) // block_size
    if windows < 1:
        raise ValueError(
            f"{n_tokens} tokens hold no window of block_size={block_size} plus its target."
        )
    flat = torch.arange(first, first + count)
    starts = torch.empty(count, dtype=torch.int64)
    for epoch in flat.div(windows, rounding_mode="floor").unique().tolist():
        offset, order = _epoch_order(n_tokens, block_size, seed, epoch)
        here = flat // windows == epoch
        starts[here] = offset + order[flat[here] % windows] * block_size
    return starts


@functools.lru_cache(maxsize=4)
def _epoch_order(n_tokens: int, block_size: int, seed: int, epoch: int) -> tuple[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    offset = int(torch.randint(block_size, (1,), generator=g))
    return offset, torch.randperm((n_tokens - block_size) // block_size, generator=g)


class TokenWindowDataset(torch.utils.data.Dataset):
    """Windows of `block_size` tokens and their targets shifted by one, every `stride` tokens
    (default: block_size, i.e. non-overlapping). The last partial window is dropped."""

    def __init__(self, data: np.ndarray, block_size: int, stride: int | None = None) -> None:
        _check_sizes(data, 1, block_size)
        self.data, self.block_size = data, block_size
        self.stride = block_size if stride is None else stride
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}.")

    def __len__(self) -> int:
        return (len(self.data) - 1 - self.block_size) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        s = i * self.stride
        chunk = torch.from_numpy(self.data[s : s + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]  # (T,), (T,)


def iter_eval_batches(
    data: np.ndarray, batch_size: int, block_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) int64 batches of shape (B, T) that cover the split in order with
    non-overlapping windows: window i is data[i*T : (i+1)*T] and its targets shifted by one.
    The last batch may hold fewer than `batch_size` windows; the < T + 1 tokens after the last
    whole window are left out (at most T tokens of a split: negligible for perplexity)."""
    _check_sizes(data, batch_size, block_size)
    n_windows = (len(data) - 1) // block_size
    for first in range(0, n_windows, batch_size):
        starts = torch.arange(first, min(first + batch_size, n_windows)) * block_size  # (B,)
        offsets = starts[:, None] + torch.arange(block_size + 1)  # (B, T+1)
        chunk = torch.from_numpy(data[offsets.numpy()].astype(np.int64))  # (B, T+1)
        yield chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


class TokenWindows:
    """A split's token ids as a batch source for the `Trainer`: training windows drawn as
    `config.sampling` says ("random" starts, or "epoch": each window once per epoch), and
    non-overlapping windows in order for evaluation.

    Every source of batches the Trainer takes has these two methods (chat's
    `ConversationBatches` is the other); `step_batches` must depend only on the step (and the
    generator, whose state checkpoints save), so that a resumed run draws the same batches.
    """

    def __init__(self, data: np.ndarray, block_size: int) -> None:
        _check_sizes(data, 1, block_size)
        self.data, self.block_size = data, block_size

    def __len__(self) -> int:
        return len(self.data)

    def step_batches(
        self, step: int, config: Any, rank: int, world_size: int, generator: torch.Generator
    ) -> list[Batch]:
        """This process's micro-batches for optimizer step `step`: grad_accum_steps of them,
        each (batch_size, T). Every process draws the same global set of window starts and
        takes its own slice, so N processes with batch B see what one with batch N*B would."""
        shape = (config.grad_accum_steps, world_size, config.batch_size)
        if config.sampling == "epoch":
            per_step = shape[0] * shape[1] * shape[2]
            flat = epoch_window_starts(
                len(self.data), self.block_size, config.seed, step * per_step, per_step
            )
            starts = flat.view(shape)[:, rank]  # (A, B)
        else:
            n = len(self.data) - self.block_size
            starts = torch.randint(n, shape, generator=generator)[:, rank]  # (A, B)
        return [windows_at(self.data, micro, self.block_size) for micro in starts]

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """The split in order, as non-overlapping windows (see `iter_eval_batches`)."""
        return iter_eval_batches(self.data, batch_size, self.block_size)


def as_batch_source(data: Any, block_size: int, name: str) -> Any:
    """`data` as a batch source: a 1-D array of token ids becomes `TokenWindows`; an object
    with `step_batches` and `eval_batches` is used as it is."""
    if data is None or (hasattr(data, "step_batches") and hasattr(data, "eval_batches")):
        return data
    if not isinstance(data, np.ndarray) or data.ndim != 1:
        raise TypeError(
            f"{name} must be a 1-D numpy array of token ids (as tokenize_split returns) or a "
            "batch source with step_batches() and eval_batches(), e.g. ConversationBatches."
        )
    if len(data) < block_size + 1:
        raise ValueError(
            f"{name} has {len(data)} tokens, fewer than one window of block_size {block_size} + 1."
        )
    return TokenWindows(data, block_size)
