"""LoRA: fine-tuning through small low-rank adapters (Hu et al., 2021, arXiv:2106.09685).

Full fine-tuning updates every weight matrix W (out, in) of a pretrained model. LoRA freezes W
and learns only a low-rank change to it,

    W x  ->  W x + (alpha / r) · B (A x),     A: (r, in),  B: (out, r),  r << min(in, out),

so each adapted matrix trains r · (in + out) numbers instead of in · out. B starts at zero,
so a model with fresh adapters computes exactly what it computed before; A starts random
(as nn.Linear's default init, like Microsoft's reference `loralib`), so B's gradient is not
zero. After training, B A · alpha / r is added into W once (`merge_lora`): the merged model is
a plain GPT again, as fast as the original and exportable with `save_pretrained`.

add_lora(model)          wrap the attention and MLP projections in LoRALinear, freeze the rest
merge_lora(model)        fold the adapters into the weights, back to plain nn.Linear layers
merged_state_dict(model) the weights merge_lora would give, the model left as it is
count_parameters(model)  (trainable, total) parameters
lora_state_dict(model)   only the adapter weights (what a LoRA fine-tune has to store)
lora_settings(model)     the adapters' layers and settings as JSON, for checkpoints
restore_lora(model, s)   put adapters back from lora_settings (loading or resuming a run)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wikigpt_lib.checkpoint import register_extension

DEFAULT_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: y = x Wᵀ + b + s · (x Aᵀ) Bᵀ.

    Built from an existing layer, whose `weight` (out, in) and `bias` it keeps as its own
    (the same Parameter objects, frozen), so the state-dict names of the base weights do not
    change; the adapters add `lora_A` (r, in) and `lora_B` (out, r). s = alpha / r. Dropout
    (probability `dropout`) applies to the adapter's input only, in training mode.
    """

    def __init__(
        self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        _check_settings(r, alpha, dropout)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.weight = base.weight  # (out, in), frozen
        self.bias = base.bias  # (out,) or None, frozen
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **like))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **like))  # (out, r)
        # nn.Linear's own init for A; B = 0 makes the adapter a no-op until it trains.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out)."""
        frozen = F.linear(x, self.weight, self.bias)  # (..., out)
        # Two thin matmuls, (..., in) -> (..., r) -> (..., out): never form B A (out, in).
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return frozen + self.scaling * update

    def delta_weight(self) -> torch.Tensor:
        """The change the adapter makes to the weight, s · B A: (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function: weight W + s · B A, same bias."""
        like = {"device": self.weight.device, "dtype": self.weight.dtype}
        with torch.device("meta"):  # no throwaway random init: the weights are set below
            linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            merged = self.weight + self.delta_weight()
        linear.weight = nn.Parameter(merged.to(**like))
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone())
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, r={self.r}, alpha={self.alpha}"
        )


def _check_settings(r: int, alpha: float, dropout: float) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"LoRA alpha must be a positive number, got {alpha!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}.")


def _matches(name: str, target: str) -> bool:
    """Does module `name` (e.g. "transformer.h.3.attn.c_attn") end with `target` at a dot?"""
    return name == target or name.endswith("." + target)


def _find_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the nn.Linear modules that `targets` select; ValueError for a bad target."""
    if isinstance(targets, str):
        targets = (targets,)  # a single name, not its characters
    if not targets:
        raise ValueError("targets is empty: name at least one layer, e.g. 'attn.c_attn'.")
    modules = dict(model.named_modules())
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    chosen: list[str] = []
    for target in targets:
        hits = [n for n in modules if n and _matches(n, target)]
        wrong = [f"{n} ({type(modules[n]).__name__})" for n in hits if n not in linears]
        if wrong:
            raise ValueError(
                f"LoRA target {target!r} matches modules that are not nn.Linear: "
                f"{', '.join(wrong[:3])}. Target Linear layers only."
            )
        if not hits:
            suffixes = sorted({".".join(n.split(".")[-2:]) for n in linears})
            raise ValueError(
                f"LoRA target {target!r} matches no layer of this model. Its nn.Linear layers "
                f"end in: {', '.join(suffixes)}."
            )
        chosen += [n for n in hits if n not in chosen]
    return chosen


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
) -> nn.Module:
    """Put LoRA adapters (rank r, scale alpha / r) on the nn.Linear layers named by `targets`
    and freeze every other parameter. Returns the same model, changed in place.

    targets: name endings, matched at a dot ("attn.c_attn" selects transformer.h.N.attn.c_attn
    in every block). The default adapts all four projections of every block, as QLoRA
    (Dettmers et al., 2023) recommends; Hu et al. (2021) adapted only the attention. A target
    that matches nothing, or a module that is not nn.Linear, is a ValueError; so is a model
    that already has adapters.
    """
    _check_settings(r, alpha, dropout)
    _check_no_adapters(model)
    layers = {name: (r, alpha, dropout) for name in _find_targets(model, targets)}
    return _freeze_and_wrap(model, layers)


def _check_no_adapters(model: nn.Module) -> None:
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("this model already has LoRA adapters: merge_lora(model) first.")


def _freeze_and_wrap(model: nn.Module, layers: dict[str, tuple[int, float, float]]) -> nn.Module:
    """Freeze every parameter, then wrap each nn.Linear named in `layers` in a LoRALinear with
    its (r, alpha, dropout): afterwards only the adapters train."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name, (r, alpha, dropout) in layers.items():
        base = model.get_submodule(name)
        _replace(model, name, LoRALinear(base, r, alpha, dropout).train(base.training))
    return model


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where the submodule `name` (e.g. "transformer.h.0.attn.c_attn") was."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by the plain nn.Linear it computes (W + alpha / r · B A).

    Afterwards the model has no adapters and every parameter is trainable again, as before
    `add_lora`; it saves, exports and loads like any GPT. Returns the same model.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not names:
        raise ValueError("this model has no LoRA adapters to merge (see add_lora).")
    for name in names:
        adapter = model.get_submodule(name)
        _replace(model, name, adapter.merged().train(adapter.training))
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict `merge_lora` would leave, computed without changing `model`: each
    adapted layer's weight is W + alpha / r · B A, the adapters' own tensors are left out.
    (Exporting a LoRA model uses it, so the model keeps its adapters and can train on.)"""
    sd = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            del sd[f"{name}.lora_A"], sd[f"{name}.lora_B"]
            sd[f"{name}.weight"] = module.merged().weight.detach()
    return sd


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters; a tied (shared) matrix counts once."""
    params = list(model.parameters())  # parameters() yields a shared Parameter once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (`...lora_A`, `...lora_B`): all a LoRA fine-tune must keep
    besides the base model. Load them back with `model.load_state_dict(sd, strict=False)`
    into the same base model after `add_lora` with the same settings."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def lora_settings(model: nn.Module) -> dict[str, dict[str, Any]] | None:
    """{layer name: {"r", "alpha", "dropout"}} for every LoRALinear of `model`, or None when it
    has none. Checkpoints store this, so that a LoRA run can be loaded and resumed."""
    layers = {
        name: {"r": m.r, "alpha": m.alpha, "dropout": m.dropout.p}
        for name, m in model.named_modules()
        if isinstance(m, LoRALinear)
    }
    return layers or None


def restore_lora(model: nn.Module, settings: dict[str, dict[str, Any]]) -> nn.Module:
    """Put back the adapters that `lora_settings` described, on a model built like the one it
    came from (e.g. `GPT(config)`), freezing everything else as `add_lora` does; then load the
    saved weights into it. Returns the same model. ValueError for a layer it does not have."""
    _check_no_adapters(model)
    modules = dict(model.named_modules())
    wrong = [n for n in settings if not isinstance(modules.get(n), nn.Linear)]
    if wrong:
        raise ValueError(
            f"LoRA layers {wrong[:3]} are not nn.Linear layers of this model: the settings "
            "belong to a model of another architecture."
        )
    layers = {n: (int(s["r"]), float(s["alpha"]), float(s["dropout"])) for n, s in settings.items()}
    return _freeze_and_wrap(model, layers)


# Checkpoints record a LoRA model's adapters and rebuild them on load (see checkpoint.py).
register_extension("lora", lora_settings, restore_lora)
