"""Tests of wikigpt_lib.optim: Muon's orthogonalisation and update, and its parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from wikigpt_lib.optim import Muon, configure_optimizer, orthogonalize, set_lr
from wikigpt_lib.train import TrainConfig


def spread_matrix(rows: int, cols: int, condition: float, seed: int = 0) -> torch.Tensor:
    """A random (rows, cols) matrix whose singular values run log-evenly from 1 to 1/condition."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, min(rows, cols), generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, min(rows, cols), generator=g))
    s = torch.logspace(0, -math.log10(condition), min(rows, cols))
    return u @ torch.diag(s) @ v.T


@pytest.mark.parametrize("shape", [(32, 32), (96, 32), (32, 128), (7, 300)])
def test_orthogonalize_gives_singular_values_near_one(shape):
    g = spread_matrix(*shape, condition=100.0)  # one direction 100x another, like a gradient
    s = torch.linalg.svdvals(orthogonalize(g))
    # Five quintic steps land every singular value in roughly [0.7, 1.2], not exactly 1
    # (the iteration trades exactness for speed), whatever the spread they started with.
    assert s.min() > 0.6 and s.max() < 1.25, s
    # The singular vectors are kept: the result points the way of g's polar factor U Vᵀ.
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar, ortho = u @ vh, orthogonalize(g)
    assert (ortho * polar).sum() / (ortho.norm() * polar.norm()) > 0.95


def test_orthogonalize_in_float64_matches_fp32():
    g = torch.randn(48, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        orthogonalize(g.float()).double(), orthogonalize(g), atol=1e-5, rtol=0
    )


def test_muon_groups_cover_every_parameter_once(tiny_model):
    model = tiny_model  # with biases: vectors inside the blocks, which must stay on AdamW
    cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1)
    opt = configure_optimizer(model, cfg)
    assert isinstance(opt, Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(names)  # each parameter exactly once
    muon = {names[id(p)] for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert muon and all(n.startswith("transformer.h.") for n in muon)
    assert "transformer.wte.weight" not in muon  # embeddings (and the tied head) stay on AdamW
    set_lr(opt, 1e-3)
    rates = {g["use_muon"]: g["lr"] for g in opt.param_groups}
    assert rates[True] == pytest.approx(0.02) and rates[False] == pytest.approx(1e-3)
    # The matrices decay as much per step as under AdamW: lr * wd of the AdamW rate.
    muon_group = next(g for g in opt.param_groups if g["use_muon"])
    assert muon_group["lr"] * muon_group["weight_decay"] == pytest.approx(1e-3 * 0.1)


def test_muon_update_is_orthogonal_and_sized_by_lr():
    w = torch.nn.Parameter(torch.zeros(64, 16))
    opt = Muon([{"params": [w], "use_muon": True}], lr=0.01, momentum=0.0)
    w.grad = spread_matrix(64, 16, condition=30.0, seed=2)
    opt.step()
    s = torch.linalg.svdvals(-w.detach() / (0.01 * math.sqrt(64 / 16)))
    assert s.min() > 0.6 and s.max() < 1.25


def test_muon_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours = Muon([{"params": [a], "use_muon": False, "weight_decay": 0.1}], lr=1e-2)
    ref = torch.optim.AdamW([b], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(5):
        g = torch.randn(5, 3, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(3))], "use_muon": True}])
