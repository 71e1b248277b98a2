"""Scaled dot-product attention, written out, and GPT-2's multi-head causal self-attention.

`attention` is the formula of notebook 03 spelled out step by step, softmax(q kᵀ / √d) v,
so a reader can see (and plot) every intermediate. `CausalSelfAttention` is the layer the
model uses: it runs PyTorch's fused `F.scaled_dot_product_attention` for speed and switches
to the written-out path only when asked to keep the attention weights for pictures.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(t_q: int, t_k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (t_q, t_k) mask, True where query i may look at key j.

    Queries are the *last* t_q positions of the t_k keys (bottom-right aligned), so query i
    sees keys 0 ... i + (t_k - t_q). With t_q == t_k this is the usual lower triangle; with
    t_q < t_k it is what a key/value cache needs (new tokens see every cached token).
    """
    if t_q > t_k:
        raise ValueError(
            f"causal attention needs at least as many keys as queries, got {t_q} queries "
            f"and {t_k} keys: the first {t_q - t_k} queries would have nothing to attend to."
        )
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> None:
    if not (q.dim() == k.dim() == v.dim()) or q.dim() < 2:
        raise ValueError(
            "q, k and v must have the same number of dimensions, at least 2 ((..., T, d); "
            f"usually (B, H, T, d)), got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}."
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same head size (last dimension) to be compared, got "
            f"q {tuple(q.shape)} and k {tuple(k.shape)}."
        )
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"k and v must agree on every dimension but the last (one value per key), got "
            f"k {tuple(k.shape)} and v {tuple(v.shape)}."
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}.")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    dropout_p: float = 0.0,
    training: bool = False,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, softmax(q kᵀ / √d) v, written out.

    q: (B, H, T_q, d), k: (B, H, T_k, d), v: (B, H, T_k, d_v); any leading dims work.
    `causal=True` hides future keys (-inf scores above the diagonal, bottom-right aligned
    when T_q < T_k, see `causal_mask`). Dropout on the weights applies only when
    `training` is True, as in `F.scaled_dot_product_attention`.
    Returns the output (B, H, T_q, d_v) and, with `return_weights=True`, also the attention
    weights (B, H, T_q, T_k) before dropout (each row sums to 1).
    """
    _check_qkv(q, k, v, dropout_p)
    scale = 1.0 / math.sqrt(q.size(-1))  # keeps score variance ~1 whatever the head size
    # (B, H, T_q, d) @ (B, H, d, T_k) -> (B, H, T_q, T_k): one score per (query, key) pair
    scores = (q @ k.transpose(-2, -1)) * scale
    if causal:
        allowed = causal_mask(q.size(-2), k.size(-2), device=q.device)  # (T_q, T_k)
        scores = scores.masked_fill(~allowed, float("-inf"))  # exp(-inf) = 0: no weight
    weights = torch.softmax(scores, dim=-1)  # (B, H, T_q, T_k), rows sum to 1
    dropped = F.dropout(weights, p=dropout_p) if (training and dropout_p > 0) else weights
    out = dropped @ v  # (B, H, T_q, T_k) @ (B, H, T_k, d_v) -> (B, H, T_q, d_v)
    return (out, weights) if return_weights else out


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, laid out as in GPT-2.

    `c_attn` (n_embd -> 3·n_embd) makes queries, keys and values in one matmul; `c_proj`
    (n_embd -> n_embd) mixes the heads back together. Both are `nn.Linear`, whose (out, in)
    weights are OpenAI's Conv1D weights transposed.

    Input and output: (B, T, n_embd). Set `store_weights=True` (on the module or per call)
    to run the written-out path and keep the last attention weights, (B, n_head, T, T), in
    `.last_weights`; otherwise the fused `F.scaled_dot_product_attention` runs.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        store_weights: bool = False,
    ) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(
                f"n_embd={n_embd} is not divisible by n_head={n_head}: every head gets "
                f"n_embd / n_head channels. Pick e.g. n_head={nearest_divisor(n_embd, n_head)}."
            )
        self.n_embd, self.n_head, self.dropout = n_embd, n_head, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.store_weights = store_weights
        self.last_weights: torch.Tensor | None = None

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs): each head attends on its own
        return x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        store_weights: bool | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x: (B, T, n_embd) -> (B, T, n_embd).

        With a `cache`, x holds the T newest tokens: their keys and values are stored in
        layer `layer` of the cache, and each new token attends to every cached token and to
        the new ones up to itself (the caller advances `cache.length` once every layer ran).
        """
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs)
        p = self.dropout if self.training else 0.0
        keep = self.store_weights if store_weights is None else store_weights
        if keep:
            y, w = attention(q, k, v, dropout_p=p, training=self.training, return_weights=True)
            self.last_weights = w.detach()  # (B, nh, T, past + T)
        elif past == 0:  # the usual causal attention
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        elif T == 1:  # one new token: it may see every position, no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            # SDPA's is_causal aligns the mask top-left when T_q < T_k; new tokens need it
            # bottom-right (each sees every cached token), which `causal_mask` gives.
            mask = causal_mask(T, k.size(2), device=x.device)  # (T, past + T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class KVCache:
    """Keys and values of every layer for the tokens seen so far, at positions 0 ... length-1.

    Why: attention is causal, so a token's keys and values depend only on the tokens before
    it and never change. Keeping them lets generation run only the newest token through the
    model instead of the whole context. `GPT.forward(idx, cache=cache)` fills and reads it.

    Buffers of `max_len` positions, (B, n_head, max_len, head_size) per layer, are allocated
    on first use and filled in place, so a step costs no copy of the whole cache.
    """

    def __init__(self, n_layer: int, max_len: int) -> None:
        self.max_len = max_len
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0  # positions filled (the same in every layer once a step is done)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at positions length ... length+T-1 of `layer`; return the
        keys and values of every position so far, (B, nh, length+T, hs) each."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(
                f"the cache holds {self.length} positions and {k.size(2)} more do not fit in "
                f"its {self.max_len}: reset it and start again."
            )
        if self.keys[layer] is None or self.keys[layer].shape[0] != k.shape[0]:
            B, nh, _, hs = k.shape
            self.keys[layer] = k.new_empty(B, nh, self.max_len, hs)
            self.values[layer] = v.new_empty(B, nh, self.max_len, hs)
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def reset(self) -> None:
        """Forget every position (the buffers are kept for reuse)."""
        self.length = 0


def nearest_divisor(n: int, near: int) -> int:
    """The divisor of n closest to `near` (used to suggest a valid head count)."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - near), -d))
