"""OpenAI's GPT-2 in this library's `GPT`: loading Hugging Face checkpoints.

    GPT.from_pretrained("gpt2")         GPT-2 124M (also gpt2-medium, gpt2-large, gpt2-xl), any
                                        hub id "owner/name", or a local folder

Exporting ours (`model.save_pretrained`) is `wikigpt_lib.export`.

OpenAI's GPT-2 stores its projections as `Conv1D` modules, whose weights are (in, out), the
transpose of `nn.Linear`'s (out, in). Everything else already matches: our `GPT` uses the
same parameter names as `transformers.GPT2LMHeadModel`.

Finding the files (a local folder, the huggingface_hub cache, or a download that fails fast
offline) is `wikigpt_lib.hub`'s job; its public names (`fetch_pretrained`,
`PretrainedUnavailableError`, `HUB_IDS`, ...) are importable from here too. Only safetensors
files are read, never pickles (`pytorch_model.bin`): unpickling a file can run any code its
author put in it. When the files cannot be had (offline, unknown name, a folder without them)
the error is a `PretrainedUnavailableError` that says what was tried and how to fix it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

# Finding the files is wikigpt_lib.hub's job. Its public names are also imported from here
# (`from wikigpt_lib.pretrained import fetch_pretrained`); `X as X` marks the ones this module
# does not use itself as re-exports.
from wikigpt_lib.hub import CONFIG_FILE, HUB_IDS, INDEX_FILE, WEIGHTS_FILE, fetch_pretrained
from wikigpt_lib.hub import PretrainedUnavailableError as PretrainedUnavailableError
from wikigpt_lib.model import GPT, GPTConfig

# Conv1D weights (in, out) that become nn.Linear weights (out, in).
CONV1D_SUFFIXES = (
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


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
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
    expected = expected_shapes(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(CONV1D_SUFFIXES):
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


# ----------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object (a model config).")
    return data


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors file(s), on CPU."""
    if (folder / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        files = sorted(set(_read_json(folder / INDEX_FILE)["weight_map"].values()))
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            sd.update(load_file(str(folder / name)))
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{folder / name} is truncated or not a safetensors file ({err}); download or "
                "export it again."
            ) from err
    return sd


def _bias_keys(sd: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k in sd if k.endswith(".bias") and not k.endswith(_BUFFER_SUFFIXES)]


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    dropout: float | None = None,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> GPT:
    """A `GPT` with the weights of a Hugging Face GPT-2 checkpoint (see `fetch_pretrained` for
    what `name_or_path` may be), in eval mode, float32, on `device`.

    dropout: None keeps the checkpoint's (GPT-2: 0.1); 0.0 for deterministic fine-tuning.
    A folder written by `save_pretrained` from a model without biases (the course presets)
    loads as such when its biases are still all zero. Raises PretrainedUnavailableError when
    the files cannot be had, ValueError when they do not describe a GPT-2 (which tensor,
    expected vs found shape).
    """
    folder = fetch_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    hf_config = _read_json(folder / CONFIG_FILE)
    model_type = hf_config.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(
            f"{folder} holds a {model_type!r} model; only GPT-2 checkpoints (model_type "
            "'gpt2') fit this library's GPT."
        )
    config = config_from_hf(hf_config, dropout=dropout)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in _read_weights(folder).items()}
    ours = hf_config.get("wikigpt_config") or {}
    biases = set(_bias_keys(sd))
    if ours.get("bias") is False and not any(sd[k].any() for k in biases):
        sd = {k: v for k, v in sd.items() if k not in biases}
        config = config.replace(bias=False)
    try:
        converted = state_dict_from_hf(sd, config)
    except ValueError as err:
        raise ValueError(f"the weights in {folder} do not fit its {CONFIG_FILE}: {err}") from err
    with torch.device("meta"):  # no random init of weights that are replaced right away
        model = GPT(config)
    model.load_state_dict(converted, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign=True made two Parameters: re-tie
    return model.to(device).eval()


def pretrained_tokenizer(name_or_path: str | os.PathLike, **fetch_kwargs: Any):
    """The tokenizer (a `tiktoken.Encoding`) that a pretrained model's token ids come from:
    GPT-2's for OpenAI's models and GPT-2 checkpoints (vocab 50,257), the one named by the
    `wikigpt_tokenizer` key of an exported model's config.json otherwise (the course
    tokenizer is read from the ranks file beside the weights when there is one; a variant
    such as "wikitext2-chat" is built by `get_tokenizer`)."""
    from wikigpt_lib.tokenizer import COURSE_TOKENIZER_FILE, get_tokenizer, load_bpe

    if str(name_or_path) in HUB_IDS and not Path(name_or_path).is_dir():
        return get_tokenizer("gpt2")
    folder = fetch_pretrained(name_or_path, **fetch_kwargs)
    hf_config = _read_json(folder / CONFIG_FILE)
    name = hf_config.get("wikigpt_tokenizer")
    if (
        name is None
        and "wikigpt_tokenizer" not in hf_config
        and hf_config.get("vocab_size") == 50257
    ):
        name = "gpt2"  # a GPT-2 checkpoint from elsewhere
    if name == "wikitext2":
        ranks = folder / COURSE_TOKENIZER_FILE
        return load_bpe(ranks) if ranks.is_file() else get_tokenizer("wikitext2")
    if isinstance(name, str):
        try:
            return get_tokenizer(name)
        except ValueError as err:
            raise ValueError(f"{folder / CONFIG_FILE} names the tokenizer {name!r}: {err}") from err
    raise ValueError(
        f"{folder / CONFIG_FILE} does not say which tokenizer the model uses; load the one it "
        "was trained with yourself."
    )


def _from_pretrained(cls: type[GPT], name_or_path: str | os.PathLike, **kwargs: Any) -> GPT:
    """GPT-2 weights from the Hugging Face hub or a local folder, in eval mode:
    `GPT.from_pretrained("gpt2")` (also gpt2-medium, gpt2-large, gpt2-xl, any hub id
    "owner/name", or a folder with config.json + model.safetensors). Keyword arguments
    (dropout, device, revision, cache_dir) go to `wikigpt_lib.pretrained.load_pretrained`;
    raises `PretrainedUnavailableError` within seconds when the files can't be had."""
    return load_pretrained(name_or_path, **kwargs)


# Chapter 08 extends the model from above: the model module knows nothing of GPT-2's files.
GPT.from_pretrained = classmethod(_from_pretrained)
