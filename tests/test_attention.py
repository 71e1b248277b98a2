"""Tests of wikigpt_lib.attention: the written-out formula against PyTorch's fused kernel and
against a plain NumPy loop, the causal mask, and the multi-head module's two paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wikigpt_lib.attention import CausalSelfAttention, attention, causal_mask

SHAPES = [(1, 1, 1, 8), (2, 3, 5, 7), (2, 4, 16, 13), (3, 2, 33, 64), (1, 2, 64, 1)]


def numpy_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    """Independent reference: one query at a time, with explicit loops and float64."""
    *lead, t_q, d = q.shape
    t_k = k.shape[-2]
    out = np.zeros((*lead, t_q, v.shape[-1]))
    for idx in np.ndindex(*lead):
        for i in range(t_q):
            last = i + (t_k - t_q) if causal else t_k - 1  # last key query i may see
            scores = np.array([q[idx][i] @ k[idx][j] / math.sqrt(d) for j in range(last + 1)])
            w = np.exp(scores - scores.max())
            w /= w.sum()
            out[idx][i] = sum(w[j] * v[idx][j] for j in range(last + 1))
    return out


def rand_qkv(shape, t_k=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, H, T, d = shape
    t_k = T if t_k is None else t_k
    q = torch.randn(B, H, T, d, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, t_k, d, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, t_k, d, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [True, False])
def test_matches_sdpa_float64(shape, causal):
    q, k, v = rand_qkv(shape)
    ours = attention(q, k, v, causal=causal)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 2, 6, 5)])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_numpy_loop(shape, causal):
    q, k, v = rand_qkv(shape, seed=1)
    ours = attention(q, k, v, causal=causal)
    ref = numpy_attention(q.numpy(), k.numpy(), v.numpy(), causal)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_fewer_queries_than_keys_is_bottom_right_aligned():
    # 3 new queries after 4 cached keys: query i sees keys 0 .. 4 + i (what a KV cache needs).
    q, k, v = rand_qkv((2, 2, 3, 5), t_k=7, seed=2)
    ours = attention(q, k, v, causal=True)
    np.testing.assert_allclose(ours.numpy(), numpy_attention(q.numpy(), k.numpy(), v.numpy(), True))
    mask = causal_mask(3, 7)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_causal_mask_is_lower_triangle():
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(3, 3), expected)
    with pytest.raises(ValueError, match="at least as many keys"):
        causal_mask(4, 2)


@pytest.mark.parametrize("T", [1, 9])
def test_weights_rows_sum_to_one_and_future_is_zero(T):
    q, k, v = rand_qkv((2, 3, T, 4))
    out, w = attention(q, k, v, return_weights=True)
    assert w.shape == (2, 3, T, T)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, T, dtype=torch.float64))
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert (w[..., future] == 0).all()
    assert (w[..., ~future] > 0).all()
    torch.testing.assert_close(out, w @ v)
    if T == 1:
        torch.testing.assert_close(out, v)  # one position: it can only attend to itself


def test_dropout_only_in_training():
    q, k, v = rand_qkv((2, 2, 8, 4))
    a = attention(q, k, v, dropout_p=0.5, training=False)
    torch.testing.assert_close(a, attention(q, k, v))
    torch.manual_seed(0)
    b, w = attention(q, k, v, dropout_p=0.5, training=True, return_weights=True)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 8, dtype=torch.float64))  # pre-dropout


def test_bad_inputs_are_explained():
    q, k, v = rand_qkv((1, 1, 4, 8))
    with pytest.raises(ValueError, match="same head size"):
        attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="k and v"):
        attention(q, k, v[..., :3, :])
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, k, v, dropout_p=1.0)
    with pytest.raises(ValueError, match="same number of dimensions"):
        attention(q[0], k, v)


def make_module(n_embd=24, n_head=3, seed=0, **kwargs) -> CausalSelfAttention:
    torch.manual_seed(seed)
    m = CausalSelfAttention(n_embd, n_head, **kwargs).double().eval()
    with torch.no_grad():  # non-zero biases so that they are exercised
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("n_embd,n_head", [(24, 3), (10, 2), (8, 8), (16, 1)])
def test_module_fast_path_equals_written_out_path(n_embd, n_head):
    m = make_module(n_embd, n_head)
    x = torch.randn(2, 11, n_embd, dtype=torch.float64)
    fast = m(x)
    slow = m(x, store_weights=True)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    assert m.last_weights.shape == (2, n_head, 11, 11)
    m.store_weights = True  # the attribute works as well as the argument
    m.last_weights = None
    torch.testing.assert_close(m(x), fast, rtol=1e-12, atol=1e-12)
    assert m.last_weights is not None


def test_module_matches_per_head_reference():
    n_embd, n_head, T = 12, 3, 5
    m = make_module(n_embd, n_head)
    x = torch.randn(2, T, n_embd, dtype=torch.float64)
    W, b = m.c_attn.weight.detach().numpy(), m.c_attn.bias.detach().numpy()
    qkv = x.numpy() @ W.T + b  # (B, T, 3C)
    hs = n_embd // n_head
    heads = []
    for h in range(n_head):  # head h owns channels h*hs:(h+1)*hs of each of q, k and v
        q, k, v = (qkv[..., j * n_embd + h * hs : j * n_embd + (h + 1) * hs] for j in range(3))
        heads.append(numpy_attention(q, k, v, causal=True))
    y = np.concatenate(heads, axis=-1) @ m.c_proj.weight.detach().numpy().T
    y += m.c_proj.bias.detach().numpy()
    np.testing.assert_allclose(m(x).detach().numpy(), y, rtol=1e-10, atol=1e-12)


def test_module_is_causal():
    m = make_module()
    x = torch.randn(1, 10, 24, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(1, 4, 24, dtype=torch.float64)
    torch.testing.assert_close(m(x)[:, :6], m(x2)[:, :6], rtol=0, atol=1e-13)
    assert not torch.allclose(m(x)[:, 6:], m(x2)[:, 6:])


def test_module_layout_and_no_bias():
    m = CausalSelfAttention(32, 4, bias=False)
    assert m.c_attn.weight.shape == (96, 32) and m.c_proj.weight.shape == (32, 32)
    assert m.c_attn.bias is None and m.c_proj.bias is None


def test_module_rejects_indivisible_heads():
    with pytest.raises(ValueError, match=r"n_embd=30 .*n_head=4.*n_head=5"):
        CausalSelfAttention(30, 4)
