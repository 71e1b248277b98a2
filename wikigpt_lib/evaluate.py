"""Perplexity done right: token and word-level perplexity, bits per byte, sliding windows.

evaluate_perplexity()   a model on a token sequence: loss, token ppl, word ppl, bits per byte
evaluate_split()        the same on rows of text, counting the words and bytes for you
score_windows()         the windows that `evaluate_perplexity` runs and what each one scores

Why three units: token perplexity depends on the tokenizer (a tokenizer with longer tokens
has fewer, harder ones), so models with different tokenizers can only be compared per word
or per byte. The total loss of the text in nats is the same whatever we divide it by:

    word ppl = exp(total nats / n_words)      (what the WikiText-2 literature reports)
    bits per byte = total nats / ln 2 / n_bytes of the UTF-8 text

The n-gram baselines in the same word-level units are in `wikigpt_lib.ngram`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from wikigpt_lib.base import unwrap_model
from wikigpt_lib.data import tokenize_split
from wikigpt_lib.metrics import loss_sums
from wikigpt_lib.model import IGNORE_INDEX
from wikigpt_lib.text import as_rows, count_words


def score_windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int]]:
    """The windows that score a sequence of `n_tokens` tokens, as (start, n_scored) pairs.

    A window at `start` feeds tokens start ... start+block_size-1 to the model, which
    predicts tokens start+1 ... start+block_size; it scores the last `n_scored` of them.
    Windows start every `stride` tokens. The first window scores all its predictions
    (tokens 1 ... block_size); each later one only its last `stride`, the tokens no window
    before it reached, so each of them sees at least block_size - stride tokens of context.
    The last window is moved back to end at the last token (it then scores fewer, and they
    see more context). Token 0 is never scored: nothing comes before it. So every token
    1 ... n_tokens-1 is scored exactly once.
    """
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score one prediction, got {n_tokens}.")
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be in [1, block_size={block_size}], got {stride}.")
    last = n_tokens - 1  # the last token, the last one to predict
    block_size = min(block_size, last)  # a short text: one window over all of it
    windows = [(0, block_size)]
    scored = block_size  # tokens 1 ... scored are scored
    while scored < last:
        start = min(len(windows) * stride, last - block_size)
        windows.append((start, start + block_size - scored))
        scored = start + block_size
    return windows


def _as_ids(ids: Any) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        tensor = ids
    else:
        array = np.asarray(ids)
        if array.dtype.kind not in "iu":
            raise TypeError(f"ids must hold integer token ids, got dtype {array.dtype}.")
        tensor = torch.from_numpy(array.astype(np.int64))
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.dim() != 1:
        raise TypeError(
            f"ids must be a 1-D sequence of integer token ids, got {tensor.dtype} with shape "
            f"{tuple(tensor.shape)}."
        )
    return tensor.long()


def _window_batches(
    ids: torch.Tensor, windows: list[tuple[int, int]], T: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The windows as (x, y) batches (B, T); targets a window does not score are IGNORE_INDEX,
    so `loss_sums` adds up exactly the tokens that `score_windows` assigns to it."""
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        starts = torch.tensor([s for s, _ in batch])  # (B,)
        chunk = ids[starts[:, None] + torch.arange(T + 1)]  # (B, T+1)
        x, y = chunk[:, :-1], chunk[:, 1:].clone()  # (B, T): y[:, t] follows x[:, t]
        n_scored = torch.tensor([n for _, n in batch])  # (B,)
        y[torch.arange(T) < T - n_scored[:, None]] = IGNORE_INDEX  # keep the last n of each
        yield x, y


def evaluate_perplexity(
    model: nn.Module,
    ids: Any,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    n_words: int | None = None,
    n_bytes: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a token sequence `ids` (1-D: numpy array, list or tensor) with `model`.

    block_size: window length (default and maximum: the model's context).
    stride: None or block_size for non-overlapping windows; smaller for sliding windows, in
        which every window after the first scores only its last `stride` tokens, so each of
        them sees at least block_size - stride tokens of context (see `score_windows`).
        Smaller strides give lower, fairer numbers and cost block_size / stride times more.
    batch_size: windows per forward pass; the logits take batch_size x block_size x vocab
        floats (16 x 128 x 8,192: 67 MB; for GPT-2, 16 x 1024 x 50,257: 3.3 GB, so use ~2).
    n_words, n_bytes: the size of the text in words (`wikigpt_lib.data.count_words`) and in
        UTF-8 bytes, for word-level perplexity and bits per byte (None if not given).
    progress: show a progress bar over the batches (tqdm).

    Token 0 has no context, so it is not scored: the loss covers tokens 1 ... N-1
    (`n_tokens` = N-1). Word perplexity and bits per byte divide the total loss of those
    tokens by the words and bytes of the whole text; the one unscored token changes them by
    about 1/N (negligible on a WikiText-2 split).

    Returns a dict: loss (mean nats per scored token), token_ppl, word_ppl, bits_per_byte,
    n_tokens, total_nats, n_words, n_bytes, block_size, stride. Runs the model in eval
    mode and sets it back afterwards.
    """
    ids = _as_ids(ids)
    context = unwrap_model(model).config.block_size
    T = context if block_size is None else block_size
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= context:
        raise ValueError(f"block_size must be an integer in [1, {context}] (the model's context).")
    stride = T if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= T:
        raise ValueError(f"stride must be an integer in [1, block_size={T}], got {stride!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    for name, value in (("n_words", n_words), ("n_bytes", n_bytes)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive count (or None), got {value}.")
    windows = score_windows(len(ids), T, stride)
    T = min(T, len(ids) - 1)  # score_windows shortens the window for a short text the same way
    batches = _window_batches(ids, windows, T, batch_size)
    n_batches = math.ceil(len(windows) / batch_size)
    batches = tqdm(batches, total=n_batches, disable=not progress, unit="batch", desc="evaluating")
    total, _ = loss_sums(model, batches)
    n_tokens = len(ids) - 1
    loss = total / n_tokens
    return {
        "loss": loss,
        "token_ppl": math.exp(loss),
        "word_ppl": math.exp(total / n_words) if n_words else None,
        "bits_per_byte": total / math.log(2) / n_bytes if n_bytes else None,
        "n_tokens": n_tokens,
        "total_nats": total,
        "n_words": n_words,
        "n_bytes": n_bytes,
        "block_size": T,
        "stride": min(stride, T),
    }


def evaluate_split(
    model: nn.Module,
    rows: Iterable[str],
    tokenizer,
    *,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    use_cache: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """`evaluate_perplexity` on rows of text (a list of str, or a Dataset with a `text`
    column, e.g. `load_wikitext2()["test"]`), tokenized with `tokenizer` as in training
    (`tokenize_split`: rows joined as they are, cached unless use_cache=False). Counts the
    words (`count_words`) and the UTF-8 bytes of the joined rows for word perplexity and
    bits per byte."""
    rows = as_rows(rows)
    ids = tokenize_split(rows, tokenizer, use_cache=use_cache)
    return evaluate_perplexity(
        model,
        ids,
        block_size=block_size,
        stride=stride,
        batch_size=batch_size,
        n_words=count_words(rows),
        n_bytes=sum(len(row.encode("utf-8")) for row in rows),
        progress=progress,
    )
