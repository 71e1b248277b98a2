"""Convert Hugging Face GPT-2 models and weights into this library's `GPT`.

OpenAI's GPT-2 stores its projections as `Conv1D` modules, whose weights are (in, out), the
transpose of `nn.Linear`'s (out, in). Everything else already matches: our `GPT` uses the
same parameter names as `transformers.GPT2LMHeadModel`. This module only converts what it is
given; it never touches the network (a later chapter adds downloading).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from wikigpt_lib.model import GPT, GPTConfig

# Conv1D weights (in, out) that become nn.Linear weights (out, in).
_CONV1D_SUFFIXES = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# Buffers some transformers versions keep in the state dict: the causal mask, not weights.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # tanh approximations of GELU


def _get(hf_config: Any, name: str, default: Any = None) -> Any:
    if isinstance(hf_config, Mapping):
        return hf_config.get(name, default)
    return getattr(hf_config, name, default)


def config_from_hf(hf_config: Any, dropout: float | None = None) -> GPTConfig:
    """A `GPTConfig` from a `transformers.GPT2Config` (or its `to_dict()`).

    `dropout=None` takes GPT-2's residual dropout (`resid_pdrop`); pass 0.0 for inference.
    Raises ValueError for GPT-2 variants this model cannot represent.
    """
    n_embd = _get(hf_config, "n_embd")
    problems = []
    act = _get(hf_config, "activation_function", "gelu_new")
    if act not in _TANH_GELU:
        problems.append(f"activation_function={act!r} (this model uses GELU, tanh form)")
    n_inner = _get(hf_config, "n_inner")
    if n_inner is not None and n_inner != 4 * n_embd:
        problems.append(f"n_inner={n_inner} (this model's MLP is 4 * n_embd = {4 * n_embd})")
    eps = _get(hf_config, "layer_norm_epsilon", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon={eps} (this model uses 1e-5)")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if _get(hf_config, flag, False):
            problems.append(f"{flag}=True")
    if not _get(hf_config, "scale_attn_weights", True):
        problems.append("scale_attn_weights=False (this model always scales by 1/sqrt(d))")
    if not _get(hf_config, "tie_word_embeddings", True):
        problems.append("tie_word_embeddings=False (this model ties lm_head to wte)")
    if problems:
        raise ValueError("this GPT-2 config cannot be converted: " + "; ".join(problems) + ".")
    if dropout is None:
        dropout = float(_get(hf_config, "resid_pdrop", 0.0))
    return GPTConfig(
        vocab_size=_get(hf_config, "vocab_size"),
        block_size=_get(hf_config, "n_positions"),
        n_layer=_get(hf_config, "n_layer"),
        n_head=_get(hf_config, "n_head"),
        n_embd=n_embd,
        dropout=dropout,
        bias=True,  # GPT-2 has biases everywhere
    )


def _expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a `GPT(config)`, computed without building it."""
    with torch.device("meta"):
        model = GPT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def state_dict_from_hf(
    hf_state_dict: Mapping[str, torch.Tensor], config: GPTConfig | None = None
) -> dict[str, torch.Tensor]:
    """Map a `GPT2LMHeadModel` (or `GPT2Model`) state dict onto `GPT`'s parameter names.

    Transposes the Conv1D weights, drops the attention-mask buffers, and points
    `lm_head.weight` at the token embeddings (tied). `config` defaults to the shape read off
    the weights (biases assumed, as in GPT-2). Every shape is checked; missing or unexpected
    keys raise a ValueError naming them. The result loads with `GPT.load_state_dict`.
    """
    sd: dict[str, torch.Tensor] = {}
    for key, value in hf_state_dict.items():
        if key.endswith(_BUFFER_SUFFIXES):
            continue
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key  # GPT2Model has no "transformer." prefix
        sd[key] = value
    if "transformer.wte.weight" not in sd:
        raise ValueError(
            "no 'transformer.wte.weight' in the state dict: is this a GPT-2 state dict? "
            f"First keys: {list(hf_state_dict)[:5]}."
        )
    wte = sd["transformer.wte.weight"]
    head = sd.pop("lm_head.weight", None)
    if head is not None and (head.shape != wte.shape or not torch.equal(head, wte)):
        raise ValueError(
            "lm_head.weight differs from transformer.wte.weight, but this model ties them; "
            "an untied fine-tuned head cannot be loaded."
        )
    if config is None:
        config = _config_from_weights(sd)
    expected = _expected_shapes(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(_CONV1D_SUFFIXES):
            value = value.t().contiguous()  # Conv1D (in, out) -> Linear (out, in)
        if key not in expected:
            raise ValueError(f"unexpected key {key!r}: not a parameter of GPT({config}).")
        if tuple(value.shape) != expected[key]:
            raise ValueError(
                f"{key}: shape {tuple(value.shape)} (after transposing Conv1D weights) does "
                f"not match the model's {expected[key]}."
            )
        out[key] = value
    out["lm_head.weight"] = out["transformer.wte.weight"]  # tied
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ValueError(f"the state dict lacks {len(missing)} parameter(s): {missing[:6]}...")
    return out


def _config_from_weights(sd: Mapping[str, torch.Tensor]) -> GPTConfig:
    vocab_size, n_embd = sd["transformer.wte.weight"].shape
    n_layer = len({k.split(".")[2] for k in sd if k.startswith("transformer.h.")})
    # The head count is not in the weights, and no shape depends on it: n_head=1 is only
    # used to check shapes, the converted tensors are the same for any head count.
    return GPTConfig(
        vocab_size=vocab_size,
        block_size=sd["transformer.wpe.weight"].shape[0],
        n_layer=n_layer,
        n_head=1,
        n_embd=n_embd,
        bias=True,
    )


def gpt_from_hf_model(hf_model: Any, dropout: float | None = None) -> GPT:
    """A `GPT` with the weights of a `transformers.GPT2LMHeadModel`, on CPU in float32.

    The result is in the same train/eval mode as `hf_model`. Works offline: it copies an
    existing model, it does not download one.
    """
    config = config_from_hf(hf_model.config, dropout=dropout)
    hf_sd = {k: v.detach().to("cpu", torch.float32) for k, v in hf_model.state_dict().items()}
    model = GPT(config)
    model.load_state_dict(state_dict_from_hf(hf_sd, config))
    return model.train(hf_model.training)
