"""Our `GPT` out to the Hugging Face format: config.json + model.safetensors in GPT-2's layout,
which `transformers.GPT2LMHeadModel.from_pretrained` loads with the same logits.

    model.save_pretrained("my-gpt")     (or save_pretrained(model, "my-gpt"))

Linear weights become Conv1D weights (transposed), a model without biases gets zero biases
(the same function), and the tied head is stored once. The inverse is `wikigpt_lib.pretrained`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from wikigpt_lib.base import unwrap_model, write_atomic, write_json_atomic
from wikigpt_lib.hub import CONFIG_FILE, WEIGHTS_FILE
from wikigpt_lib.lora import lora_settings
from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.pretrained import CONV1D_SUFFIXES, expected_shapes
from wikigpt_lib.tokenizer import COURSE_TOKENIZER_FILE

_TOKENIZER_EOT = {"gpt2": 50256, "wikitext2": 8191}  # id of <|endoftext|>: the last token


def state_dict_to_hf(sd: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """The inverse of `state_dict_from_hf`: `GPT` weights in `GPT2LMHeadModel`'s layout.

    Linear weights become Conv1D weights (transposed); a model without biases gets zero
    biases (exactly the same function); the tied `lm_head.weight` is left out (it is
    `transformer.wte.weight`, and safetensors refuses to store one tensor twice). CPU tensors.
    """
    expected = expected_shapes(config.replace(bias=True))
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise ValueError(f"unexpected key(s) {extra[:5]}: not parameters of a GPT({config}).")
    out: dict[str, torch.Tensor] = {}
    for key, shape in expected.items():
        if key == "lm_head.weight":
            continue
        value = sd.get(key)
        if value is None:
            if not key.endswith(".bias"):
                raise ValueError(f"the state dict lacks {key}.")
            value = torch.zeros(shape, dtype=sd["transformer.wte.weight"].dtype)  # no bias
        value = value.detach().cpu()
        if tuple(value.shape) != shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)}, expected {shape}.")
        if key.endswith(CONV1D_SUFFIXES):
            value = value.t()  # Linear (out, in) -> Conv1D (in, out)
        out[key] = value.contiguous()
    return out


def hf_config_dict(config: GPTConfig, tokenizer: str | None, dtype: torch.dtype) -> dict:
    """The config.json of an exported model: a `transformers.GPT2Config` for `config`, plus
    `wikigpt_tokenizer` (which tokenizer its ids come from) and `wikigpt_config` (our
    config, which also records bias=False)."""
    eot = _TOKENIZER_EOT.get(tokenizer or "")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new",  # GELU, tanh form: nn.GELU(approximate="tanh")
        "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default, which the model uses
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "wikigpt_tokenizer": tokenizer,
        "wikigpt_config": config.to_dict(),
    }


def _tokenizer_name(tokenizer: str | None, config: GPTConfig) -> str | None:
    if tokenizer == "auto":  # guess from the vocabulary size of the two tokenizers we know
        return {50257: "gpt2", 8192: "wikitext2"}.get(config.vocab_size)
    tokenizer = "wikitext2" if tokenizer == "course" else tokenizer
    if tokenizer is not None and tokenizer not in _TOKENIZER_EOT:
        raise ValueError(
            f"tokenizer must be 'auto', 'gpt2', 'wikitext2' or None, not {tokenizer!r}."
        )
    if tokenizer is not None and config.vocab_size <= _TOKENIZER_EOT[tokenizer]:
        raise ValueError(
            f"the {tokenizer} tokenizer has {_TOKENIZER_EOT[tokenizer] + 1} tokens, more than "
            f"this model's vocab_size {config.vocab_size}."
        )
    return tokenizer


def _model_card(config: GPTConfig, n_params: int, tokenizer: str | None) -> str:
    tok = {
        "gpt2": "OpenAI's GPT-2 tokenizer (`tiktoken.get_encoding('gpt2')`, or transformers' "
        "`GPT2TokenizerFast.from_pretrained('openai-community/gpt2')`).",
        "wikitext2": "the Wiki-GPT course tokenizer, a byte-level BPE of 8,192 tokens: "
        "`wikigpt_lib.get_tokenizer()`, or `wikigpt_lib.load_bpe('wikitext2_bpe_8192.tiktoken')` "
        "with the ranks file in this folder.",
    }.get(tokenizer or "", "not recorded: use the tokenizer the model was trained with.")
    return (
        "---\nlibrary_name: transformers\ntags: [gpt2, wikigpt]\n---\n\n"
        f"A GPT-2-architecture language model ({n_params:,} parameters: {config.n_layer} layers, "
        f"{config.n_head} heads, width {config.n_embd}, context {config.block_size}), exported "
        "by `wikigpt_lib`.\n\n"
        f"Tokenizer: {tok}\n\n"
        "Load it with `transformers.GPT2LMHeadModel.from_pretrained(folder)` or "
        "`wikigpt_lib.GPT.from_pretrained(folder)`.\n"
    )


def save_pretrained(model: GPT, path: str | os.PathLike, *, tokenizer: str | None = "auto") -> Path:
    """Export `model` to `path` in the Hugging Face format; returns the folder.

    Writes config.json (see `hf_config_dict`) and model.safetensors (Conv1D layout, zero
    biases for a model without them, the tied head stored once), which
    `transformers.GPT2LMHeadModel.from_pretrained(path)` and `GPT.from_pretrained(path)` load
    with the same logits. tokenizer: "gpt2", "wikitext2" (the course's; its ranks file is
    copied beside the weights), None, or "auto" (guessed from vocab_size). Also writes a short
    README.md model card if the folder has none. A model with LoRA adapters must be merged
    first (`wikigpt_lib.lora.merge_lora`).
    """
    model = unwrap_model(model)
    if not isinstance(model, GPT):
        raise TypeError(f"save_pretrained exports a wikigpt GPT, got {type(model).__name__}.")
    if lora_settings(model):
        raise ValueError(
            "this model has LoRA adapters, which GPT-2 checkpoints cannot hold: fold them into "
            "the weights with wikigpt_lib.lora.merge_lora(model) first."
        )
    sd = model.state_dict()
    config = model.config
    tokenizer = _tokenizer_name(tokenizer, config)
    tensors = state_dict_to_hf({k: v for k, v in sd.items() if k != "lm_head.weight"}, config)
    hf_config = hf_config_dict(config, tokenizer, sd["transformer.wte.weight"].dtype)
    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, {"format": "pt"}))
    write_json_atomic(folder / CONFIG_FILE, hf_config)
    if tokenizer == "wikitext2":
        with resources.as_file(resources.files("wikigpt_lib") / "assets") as assets:
            shutil.copyfile(assets / COURSE_TOKENIZER_FILE, folder / COURSE_TOKENIZER_FILE)
    if not (folder / "README.md").exists():
        card = _model_card(config, model.num_params(), tokenizer)
        (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


# Chapter 08 extends the model from above: `model.save_pretrained(path, tokenizer=...)`.
GPT.save_pretrained = save_pretrained
