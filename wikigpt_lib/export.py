"""Our `GPT` out to the Hugging Face format: config.json + model.safetensors in GPT-2's layout,
which `transformers.GPT2LMHeadModel.from_pretrained` loads with the same logits, and the
tokenizer in the format `transformers.AutoTokenizer` loads, with the same ids.

    model.save_pretrained("my-gpt")     (or save_pretrained(model, "my-gpt"))
    export_checkpoint("runs/cpu", "my-gpt")
                                        the best model of a training run, with a model card
                                        that says how it was trained (`wikigpt export`)

Linear weights become Conv1D weights (transposed), a model without biases gets zero biases
(the same function), the tied head is stored once, and LoRA adapters are merged into the
exported weights (the model itself keeps them). The inverse is `wikigpt_lib.pretrained`;
the tokenizer files are `wikigpt_lib.hf_tokenizer`'s, the README.md `wikigpt_lib.model_card`'s.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from wikigpt_lib.base import unwrap_model, write_atomic, write_json_atomic
from wikigpt_lib.checkpoint import Checkpoint, load_checkpoint
from wikigpt_lib.hf_tokenizer import (
    SPECIAL_TOKENS_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    chat_template_for,
    save_hf_tokenizer,
    variant_sizes,
)
from wikigpt_lib.hub import CONFIG_FILE, WEIGHTS_FILE
from wikigpt_lib.lora import lora_settings, merged_state_dict
from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.model_card import CARD_MARK, model_card
from wikigpt_lib.pretrained import CONV1D_SUFFIXES, expected_shapes
from wikigpt_lib.tokenizer import COURSE_TOKENIZER_FILE, TokenizerUnavailableError, get_tokenizer

_TOKENIZER_EOT = {"gpt2": 50256, "wikitext2": 8191}  # id of <|endoftext|>: the last token
GENERATION_CONFIG_FILE = "generation_config.json"
README_FILE = "README.md"
# The files that describe an export's tokenizer: an export writes those that fit its
# tokenizer and removes the others, left by an earlier export into the same folder.
TOKENIZER_FILES = (
    GENERATION_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE,
    COURSE_TOKENIZER_FILE,
)  # fmt: skip
EXPORT_FILES = (CONFIG_FILE, WEIGHTS_FILE, *TOKENIZER_FILES, README_FILE)  # all it may write


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
    eot = _TOKENIZER_EOT[_split_name(tokenizer)[0]] if tokenizer else None
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


def _split_name(name: str) -> tuple[str, str]:
    """("wikitext2", "-chat") for "wikitext2-chat"; ("wikitext2", "") for "course"."""
    for suffix in variant_sizes():
        if name.endswith(suffix):
            base, variant = name.removesuffix(suffix), suffix
            break
    else:
        base, variant = name, ""
    return ("wikitext2" if base == "course" else base), variant


def _tokenizer_name(tokenizer: str | None, config: GPTConfig) -> str | None:
    sizes = variant_sizes()
    if tokenizer == "auto":  # guess from the vocabulary size of the tokenizers we know
        known = {eot + 1: base for base, eot in _TOKENIZER_EOT.items()}
        for suffix, n in sizes.items():
            known.update({eot + 1 + n: base + suffix for base, eot in _TOKENIZER_EOT.items()})
        return known.get(config.vocab_size)
    if tokenizer is None:
        return None
    base, suffix = _split_name(tokenizer) if isinstance(tokenizer, str) else ("", "")
    if base not in _TOKENIZER_EOT:
        variants = "".join(f", each also with {s!r}" for s in sizes)
        raise ValueError(
            f"tokenizer must be 'auto', 'gpt2', 'wikitext2'{variants}, or None, not {tokenizer!r}."
        )
    name, n_tokens = base + suffix, _TOKENIZER_EOT[base] + 1 + sizes.get(suffix, 0)
    if config.vocab_size < n_tokens:
        raise ValueError(
            f"the {name} tokenizer has {n_tokens} tokens, more than this model's vocab_size "
            f"{config.vocab_size}."
        )
    return name


def _write_tokenizer(name: str, folder: Path, config: GPTConfig) -> bool:
    """The tokenizer files of an export and its generation_config.json; whether
    tokenizer.json could be written (GPT-2's tiktoken files may be missing: then a warning)."""
    base, suffix = _split_name(name)
    eot = _TOKENIZER_EOT[base]
    stops = list(range(eot, eot + 1 + variant_sizes().get(suffix, 0)))  # any special token
    generation = {"bos_token_id": eot, "eos_token_id": stops if len(stops) > 1 else eot,
                  "pad_token_id": eot}  # fmt: skip
    write_json_atomic(folder / GENERATION_CONFIG_FILE, generation)
    if base == "wikitext2":  # the ranks file, for wikigpt_lib.load_bpe and pretrained_tokenizer
        with resources.as_file(resources.files("wikigpt_lib") / "assets") as assets:
            shutil.copyfile(assets / COURSE_TOKENIZER_FILE, folder / COURSE_TOKENIZER_FILE)
    try:
        enc = get_tokenizer(name)
        save_hf_tokenizer(enc, folder, model_max_length=config.block_size)
    except (TokenizerUnavailableError, ImportError) as err:
        warnings.warn(
            f"the export in {folder} has the model but no {TOKENIZER_FILE}: the {name} "
            f"tokenizer could not be converted ({type(err).__name__}: {err}).",
            stacklevel=4,
        )
        return False
    return True


def _export(model: GPT, path: str | os.PathLike, tokenizer: str | None,
            checkpoint: Checkpoint | None) -> Path:  # fmt: skip
    model = unwrap_model(model)
    if not isinstance(model, GPT):
        raise TypeError(f"save_pretrained exports a wikigpt GPT, got {type(model).__name__}.")
    config = model.config
    tokenizer = _tokenizer_name(tokenizer, config)
    sd = merged_state_dict(model) if lora_settings(model) else model.state_dict()
    tensors = state_dict_to_hf({k: v for k, v in sd.items() if k != "lm_head.weight"}, config)
    hf_config = hf_config_dict(config, tokenizer, sd["transformer.wte.weight"].dtype)
    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, {"format": "pt"}))
    write_json_atomic(folder / CONFIG_FILE, hf_config)
    for name in TOKENIZER_FILES:  # an earlier export's: they may describe another tokenizer
        (folder / name).unlink(missing_ok=True)
    hf_tokenizer = tokenizer is not None and _write_tokenizer(tokenizer, folder, config)
    if checkpoint is not None or not _has_own_card(folder / README_FILE):
        n_params = sum(v.numel() for k, v in sd.items() if k != "lm_head.weight")  # tied: once
        card = model_card(
            config, n_params, tokenizer, hf_tokenizer=hf_tokenizer,
            chat=tokenizer is not None and chat_template_for(tokenizer) is not None,
            checkpoint=checkpoint,
        )  # fmt: skip
        write_atomic(folder / README_FILE, lambda tmp: Path(tmp).write_text(card, "utf-8"))
    return folder


def _has_own_card(path: Path) -> bool:
    """Is there a README.md that an export did not write (a card of the user's own)?"""
    try:
        return CARD_MARK not in path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return path.exists()


def save_pretrained(model: GPT, path: str | os.PathLike, *, tokenizer: str | None = "auto") -> Path:
    """Export `model` to `path` in the Hugging Face format; returns the folder.

    Writes config.json (see `hf_config_dict`) and model.safetensors (Conv1D layout, zero
    biases for a model without them, the tied head stored once), which
    `transformers.GPT2LMHeadModel.from_pretrained(path)` and `GPT.from_pretrained(path)` load
    with the same logits. A model with LoRA adapters is exported with the adapters merged
    into its weights (`lora.merged_state_dict`); the model itself is not changed.

    tokenizer: "wikitext2" (the course's), "gpt2", either with a registered variant's suffix
    ("wikitext2-chat": plus the chat role tokens), None, or "auto" (guessed from vocab_size:
    8192, 50257, 8196 = 8192 + 4 chat tokens, ...). For a named tokenizer the folder also gets
    tokenizer.json, tokenizer_config.json and special_tokens_map.json
    (`transformers.AutoTokenizer` gives the same ids; a chat tokenizer has its chat template),
    generation_config.json (generation stops at the special tokens) and, for the course
    tokenizer, its tiktoken ranks file. When GPT-2's tiktoken files are not available the
    export warns and has no tokenizer.json. Also writes a README.md model card if the folder
    has none.
    """
    return _export(model, path, tokenizer, None)


def export_checkpoint(
    path: str | os.PathLike, out: str | os.PathLike, *, which: str = "best"
) -> Path:
    """Export the best (or latest) model of a training run or checkpoint folder to `out`, as
    `save_pretrained` does, with the checkpoint's tokenizer and LoRA adapters merged, and a
    model card that states its data, training recipe and measured validation loss (only what
    the checkpoint records). Returns the folder; CheckpointError for a path that is not a
    usable checkpoint."""
    ckpt = load_checkpoint(path, which)
    model = ckpt.build_model()
    return _export(model, out, ckpt.tokenizer or "wikitext2", ckpt)


# Chapter 08 extends the model from above: `model.save_pretrained(path, tokenizer=...)`.
GPT.save_pretrained = save_pretrained
