"""Optimizers and learning-rate schedules for the training loop.

- `lr_at(step, cfg)`: warmup, then cosine, linear or warmup-stable-decay ("wsd") to min_lr.
- `param_groups`, `configure_optimizer`: AdamW with weight decay on matrices only, or
  `Muon` for the blocks' hidden matrices with AdamW for everything else.
- `Muon`: momentum, then the update's matrix replaced by its nearest semi-orthogonal matrix
  (all singular values ~1) by a Newton-Schulz iteration, written for fp32 so it runs fast on
  CPUs without bfloat16 units.

`cfg` is any object with the `TrainConfig` fields used here (lr, min_lr, warmup_steps,
max_steps, schedule, decay_frac, weight_decay, beta1, beta2, optimizer, muon_lr,
muon_momentum); the names of the schedules and optimizers come from `config`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from wikigpt_lib.config import OPTIMIZERS, SCHEDULES

__all__ = ["OPTIMIZERS", "SCHEDULES", "Muon", "configure_optimizer", "lr_at", "orthogonalize",
           "param_groups", "muon_param_groups", "set_lr"]  # fmt: skip


def lr_at(step: int, cfg: Any) -> float:
    """Learning rate for optimizer step `step` (0-based).

    A linear warmup to cfg.lr over cfg.warmup_steps, then a decay that reaches cfg.min_lr at
    cfg.max_steps and stays there:
    - "cosine": half a cosine wave from lr to min_lr;
    - "linear": a straight line from lr to min_lr;
    - "wsd" (warmup-stable-decay): lr held flat, then a straight line to min_lr over the
      last cfg.decay_frac of the steps.

    Warmup matters because Adam's second-moment estimates are poor for the first steps; big
    updates then can push a fresh model somewhere it never recovers from.
    """
    schedule = getattr(cfg, "schedule", "cosine")
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    if schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_frac * (cfg.max_steps - cfg.warmup_steps)))
        decay_start = cfg.max_steps - decay_steps
        if step < decay_start:
            return cfg.lr
        progress = (step - decay_start) / decay_steps  # 0 -> 1 over the decay
        return cfg.lr + progress * (cfg.min_lr - cfg.lr)
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)  # 0 -> 1
    if schedule == "linear":
        return cfg.lr + progress * (cfg.min_lr - cfg.lr)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weight matrices and embeddings (2-D) decay; biases and LayerNorm
    gains (1-D) do not: shrinking them toward 0 only fights the normalisation."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def muon_param_groups(model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """Muon for the hidden weight matrices (2-D parameters inside `model.transformer.h`, or
    any 2-D parameter but embeddings and the head when the model has no such attribute);
    AdamW for embeddings (and so the tied head), gains and biases.

    Embeddings are lookups, not linear maps of a hidden state, so orthogonalising their
    updates has no meaning; Keller Jordan's Muon keeps them (and the head) on AdamW.
    Each group carries `lr_scale`: its learning rate is `lr_at(step, cfg) * lr_scale`.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if p.dim() == 2 and _is_hidden(n)]
    hidden_ids = {id(p) for p in hidden}
    rest = [p for _, p in named if id(p) not in hidden_ids]
    scale = cfg.muon_lr / cfg.lr
    return [
        # weight_decay / scale: the matrices shrink by lr_at(step) * weight_decay per step,
        # as they would under AdamW, not by the ten-times-larger Muon rate.
        {"params": hidden, "use_muon": True, "lr_scale": scale,
         "weight_decay": cfg.weight_decay / scale, "momentum": cfg.muon_momentum},
        {"params": [p for p in rest if p.dim() >= 2], "use_muon": False, "lr_scale": 1.0,
         "weight_decay": cfg.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "use_muon": False, "lr_scale": 1.0,
         "weight_decay": 0.0},
    ]  # fmt: skip


def _is_hidden(name: str) -> bool:
    # Embeddings (wte, wpe, LoRA-free lookups) and the output head stay on AdamW.
    leaf = name.split(".")[-2] if "." in name else name
    return leaf not in ("wte", "wpe", "lm_head")


def configure_optimizer(
    model: nn.Module, cfg: Any, device_type: str = "cpu"
) -> torch.optim.Optimizer:
    """The optimizer cfg.optimizer names, at the learning rate of step 0.

    "adamw": `torch.optim.AdamW` over `param_groups`, with the fused kernel on CUDA.
    "muon": `Muon` over `muon_param_groups` (AdamW inside it for the non-matrix groups).
    """
    name = getattr(cfg, "optimizer", "adamw")
    if name == "muon":
        groups = muon_param_groups(model, cfg)
        for group in groups:
            group["lr"] = lr_at(0, cfg) * group["lr_scale"]
        return Muon(groups, betas=(cfg.beta1, cfg.beta2))
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=lr_at(0, cfg),
        betas=(cfg.beta1, cfg.beta2),
        fused=True if device_type == "cuda" else None,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to `lr` times its `lr_scale` (1 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# Coefficients of the quintic Newton-Schulz step of Keller Jordan's Muon (modded-nanogpt):
# chosen so that p(x) = a x + b x^3 + c x^5 pushes every singular value in (0, 1] quickly
# toward 1 (to roughly 0.7-1.2 after five steps), trading exactness for speed.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


@torch.no_grad()
def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with the singular vectors of `g` (R, C).

    Dividing by the Frobenius norm puts every singular value in (0, 1]; each step applies
    X <- a X + b (X Xᵀ) X + c (X Xᵀ)² X, which maps singular values s to p(s) and leaves the
    singular vectors alone. Works on the short side (Xᵀ for tall matrices), in g's dtype.
    """
    a, b, c = NS_COEFFS
    x = g / (g.norm() + eps)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # (C, R): X Xᵀ is then the smaller, (C, C)
    for _ in range(steps):
        gram = x @ x.T  # (r, r), r = short side
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon (MomentUm Orthogonalized by Newton-schulz) for groups with use_muon=True, AdamW
    for the others, in one optimizer so the Trainer, checkpoints and the gradient scaler see
    one object.

    Muon group, per matrix W (R, C): m <- μ m + (1 - μ) g; u = (1 - μ) g + μ m (Nesterov);
    W <- W (1 - lr·wd) - lr · sqrt(max(1, R/C)) · orthogonalize(u). The sqrt factor keeps the
    update's RMS comparable across shapes. Learning rates around 0.02-0.05 suit it, ten or
    more times AdamW's, since the orthogonalised update has a fixed size per direction.
    AdamW groups: the usual decoupled-weight-decay Adam with bias correction.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        ns_steps: int = 5,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, ns_steps=ns_steps, use_muon=False)  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups may hold only 2-D weight matrices.")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict[str, Any]) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mu)  # m <- mu m + (1 - mu) g
            update = p.grad.lerp(buf, mu)  # Nesterov: look one momentum step ahead
            ortho = orthogonalize(update, group["ns_steps"])
            scale = math.sqrt(max(1.0, p.size(0) / p.size(1)))
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(ortho.to(p.dtype), alpha=-lr * scale)

    def _adamw_group(self, group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = float(state["step"])
            m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
            if wd:
                p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
