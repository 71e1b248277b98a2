"""Checkpoints: safetensors weights, JSON config and state, atomic writes, best and latest kept.

A run folder (`runs/NAME`) looks like this:

    latest.json            {"checkpoint": "checkpoints/step_000600"}
    best.json              {"checkpoint": "checkpoints/step_000400", "val_loss": 4.91}
    checkpoints/step_000600/
        model.safetensors  the weights (no pickle: safe to load from anyone)
        config.json        model and training configuration, tokenizer and data names
        state.json         step, tokens seen, best validation loss, ...
        trainer.pt         optimizer, gradient scaler and RNG states (tensors only, loaded
                           with weights_only=True)
    metrics.jsonl          one JSON record per log line (written by the trainer)

Why folders and pointers: a checkpoint folder is written under a temporary name and renamed
once complete, and a pointer file is replaced in one `os.replace`. Both are atomic on POSIX
and Windows, so a crash at any moment leaves `latest.json` pointing at a whole checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wikigpt_lib.base import (
    file_mode,
    folder_mode,
    fsync_dir,
    unwrap_model,
    write_json_atomic,
)
from wikigpt_lib.model import GPT, GPTConfig

FORMAT = "wikigpt-checkpoint"
VERSION = 1
TIED = ("lm_head.weight",)  # shares storage with transformer.wte.weight: stored once

MODEL_FILE, CONFIG_FILE, STATE_FILE, TRAINER_FILE = (
    "model.safetensors",
    "config.json",
    "state.json",
    "trainer.pt",
)


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint; the message says what is wrong and what to do."""


# Later chapters add layers to a GPT that a checkpoint must rebuild (LoRA adapters, chapter
# 08). They register here, so this module needs to know nothing of them:
#   key -> (describe(model) -> JSON-ready settings or None, restore(model, settings) -> model)
Describe = Callable[[torch.nn.Module], Any]
Restore = Callable[[torch.nn.Module, Any], torch.nn.Module]
_EXTENSIONS: dict[str, tuple[Describe, Restore]] = {}
_CONFIG_KEYS = ("format", "version", "model", "train", "tokenizer", "data")


def register_extension(key: str, describe: Describe, restore: Restore) -> None:
    """Let checkpoints save and rebuild an addition to the model: `describe(model)` returns
    its settings (stored in config.json under `key`) or None when the model has none;
    `restore(model, settings)` adds it to a freshly built GPT before the weights load."""
    if key in _CONFIG_KEYS:
        raise ValueError(f"{key!r} is a checkpoint config key of its own; choose another name.")
    _EXTENSIONS[key] = (describe, restore)


def _restore_extensions(model: torch.nn.Module, settings: dict[str, Any], source: Path) -> None:
    for key, value in settings.items():
        if key not in _EXTENSIONS:
            raise CheckpointError(
                f"{source} holds a model extended with {key!r}, which no loaded module "
                "provides: import wikigpt_lib (the package registers every extension)."
            )
        _EXTENSIONS[key][1](model, value)


@dataclass
class Checkpoint:
    """A loaded checkpoint. `model_state` holds the weights (tied ones included once)."""

    path: Path
    model_config: GPTConfig
    train_config: dict[str, Any]
    state: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    tokenizer: str
    data: str
    extensions: dict[str, Any] = field(default_factory=dict)  # e.g. {"lora": settings}

    @property
    def lora(self) -> dict[str, dict[str, Any]] | None:
        """The LoRA adapters' settings, if the model was saved with some (see lora.py)."""
        return self.extensions.get("lora")

    def build_model(self) -> GPT:
        """The GPT these weights belong to (with its LoRA adapters or other registered
        extensions, if it was saved with some), weights loaded, on the device the weights
        were loaded to, in eval mode."""
        device = next(iter(self.model_state.values())).device
        with device:  # created on the weights' device: no copy to and from the CPU
            model = GPT(self.model_config)
        _restore_extensions(model, self.extensions, self.path)
        load_weights_into(model, self.model_state, str(self.path))
        return model.eval()

    def trainer_state(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Optimizer, scaler and RNG states (for resuming), loaded without unpickling code."""
        path = self.path / TRAINER_FILE
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing: this checkpoint holds weights only and cannot be resumed; "
                "start a new run from it instead."
            )
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # truncated zip, foreign pickle, ...
            raise CheckpointError(
                f"{path} is truncated or corrupt ({type(err).__name__}: {err}); resume from an "
                "earlier checkpoint or start the run again."
            ) from err


# ----------------------------------------------------------------------------- writing


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a GPT (unwrapped from DDP / torch.compile), tied copies left out."""
    state = unwrap_model(model).state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in TIED}


def _new_folder_name(folder: Path, step: int) -> Path:
    name = f"step_{step:06d}"
    candidate, n = folder / name, 1
    while candidate.exists():  # the same step saved twice (e.g. eval, then Ctrl-C)
        candidate, n = folder / f"{name}.{n}", n + 1
    return candidate


def save_checkpoint(
    run_dir: str | os.PathLike,
    *,
    model: torch.nn.Module,
    model_config: GPTConfig | None = None,
    train_config: dict[str, Any] | None = None,
    state: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    tokenizer: str = "wikitext2",
    data: str = "",
    is_best: bool = False,
) -> Path:
    """Write a checkpoint of `model` into `run_dir/checkpoints/` and point `latest.json` (and
    `best.json` when `is_best`) at it. Returns the checkpoint folder.

    model_config: defaults to `model.config`; train_config: a TrainConfig or its dict.
    state: JSON-ready training state (must hold "step"); trainer_state: tensors and plain
    values for `torch.save` (optimizer, scaler, RNG states). Old checkpoints that neither
    pointer refers to any more are removed afterwards.
    """
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model": (model_config or unwrap_model(model).config).to_dict(),
        "train": train_config.to_dict() if hasattr(train_config, "to_dict") else train_config or {},
        "tokenizer": tokenizer,
        "data": data,
    }
    for key, (describe, _) in _EXTENSIONS.items():
        settings = describe(unwrap_model(model))
        if settings:  # e.g. an unmerged LoRA model: loading needs its adapters to rebuild it
            config[key] = settings
    final = _new_folder_name(folder, int(state["step"]))
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".tmp-{final.name}-"))
    try:
        save_file(model_state_for_saving(model), str(tmp / MODEL_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_FILE)
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(f, file_mode())
        os.chmod(tmp, folder_mode())  # mkdtemp makes folders private
        os.rename(tmp, final)
        fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    relative = final.relative_to(run_dir).as_posix()
    if is_best:
        write_json_atomic(
            run_dir / "best.json",
            {"checkpoint": relative, "step": state["step"], "val_loss": state.get("best_val_loss")},
        )
    write_json_atomic(run_dir / "latest.json", {"checkpoint": relative, "step": state["step"]})
    prune_checkpoints(run_dir)
    return final


def _pointer(run_dir: Path, name: str) -> Path | None:
    path = run_dir / name
    if not path.is_file():
        return None
    try:
        target = json.loads(path.read_text(encoding="utf-8"))["checkpoint"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is not a valid pointer file ({err}).") from err
    return run_dir / target


def prune_checkpoints(run_dir: str | os.PathLike) -> None:
    """Delete checkpoint folders that neither latest.json nor best.json points to, and the
    leftovers of writes that crashed half-way."""
    run_dir = Path(run_dir)
    pointers = (_pointer(run_dir, "latest.json"), _pointer(run_dir, "best.json"))
    keep = {p.resolve() for p in pointers if p is not None}
    for child in (run_dir / "checkpoints").iterdir():
        if child.is_dir() and child.resolve() not in keep:
            shutil.rmtree(child, ignore_errors=True)


# ----------------------------------------------------------------------------- reading


def is_run_dir(path: str | os.PathLike) -> bool:
    """True for a folder that holds a training run (it has a latest.json)."""
    return (Path(path) / "latest.json").is_file()


def resolve_checkpoint(path: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint folder that `path` means: a checkpoint folder itself, or in a run folder
    the best checkpoint (`which="best"`, falling back to latest if no evaluation ran yet) or
    the latest one (`which="latest"`)."""
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}.")
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}: the path does not exist. Give a run folder (as made by "
            "`wikigpt train --out FOLDER`) or one of its checkpoint folders."
        )
    if path.is_file():
        raise CheckpointError(
            f"{path} is a file, not a wikigpt checkpoint: a checkpoint is a folder (with "
            f"{MODEL_FILE} and {CONFIG_FILE}) inside a run folder; give the run folder."
        )
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return path
    if path.is_dir() and is_run_dir(path):
        target = (_pointer(path, "best.json") if which == "best" else None) or _pointer(
            path, "latest.json"
        )
        if not target.is_dir():
            raise CheckpointError(
                f"{path} points to {target}, which is missing: the run folder was edited by hand "
                "or copied in part."
            )
        return target
    raise CheckpointError(
        f"no checkpoint at {path}: expected a run folder (with latest.json) or a checkpoint "
        f"folder (with {MODEL_FILE} and {CONFIG_FILE}); {path} is neither, so it is not a "
        "wikigpt checkpoint."
    )


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(
            f"{folder / CONFIG_FILE} is not valid JSON ({err}): not a wikigpt checkpoint, or a "
            "damaged one."
        ) from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(
            f"{folder} is not a wikigpt checkpoint: its {CONFIG_FILE} lacks "
            f'"format": "{FORMAT}". For Hugging Face GPT-2 folders use GPT.from_pretrained.'
        )
    if config.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{folder} was written by a newer wikigpt_lib (checkpoint version "
            f"{config['version']} > {VERSION}): upgrade wikigpt_lib to load it."
        )
    return config


def _read_weights(folder: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    path = folder / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint folder is incomplete.")
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({err}); use an earlier checkpoint (the run "
            "folder's best.json or latest.json) or train again."
        ) from err


def load_checkpoint(
    path: str | os.PathLike, which: str = "latest", map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Read a checkpoint (a run folder or a checkpoint folder; see `resolve_checkpoint`)."""
    folder = resolve_checkpoint(path, which)
    config = _read_config(folder)
    try:
        model_config = GPTConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE} holds no valid model config: {err}") from err
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder / STATE_FILE} is missing or damaged ({err}).") from err
    return Checkpoint(
        path=folder,
        model_config=model_config,
        train_config=config.get("train", {}),
        state=state,
        model_state=_read_weights(folder, map_location),
        tokenizer=config.get("tokenizer", "wikitext2"),
        data=config.get("data", ""),
        extensions={k: v for k, v in config.items() if k not in _CONFIG_KEYS},
    )


def load_weights_into(model: GPT, weights: dict[str, torch.Tensor], source: str = "") -> None:
    """Copy `weights` into `model`, after checking that every name and shape fits."""
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in TIED}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(expected[k])}"
        for k in sorted(set(expected) & set(weights))
        if weights[k].shape != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = [f"wrong shape: {', '.join(wrong[:5])}"] if wrong else []
        parts += [f"missing: {', '.join(missing[:5])}"] if missing else []
        parts += [f"unexpected: {', '.join(unexpected[:5])}"] if unexpected else []
        raise CheckpointError(
            f"the checkpoint {source} does not fit this model ({'; '.join(parts)}). Build the "
            "model from the checkpoint's own config (load_model does) instead."
        )
    model.load_state_dict(weights, strict=False)  # strict=False only for the tied lm_head


def load_model(
    path: str | os.PathLike, which: str = "best", map_location: str | torch.device = "cpu"
) -> GPT:
    """A GPT rebuilt from a checkpoint's config and weights, in eval mode on `map_location`."""
    return load_checkpoint(path, which, map_location).build_model()


def load_model_and_tokenizer(
    path: str | os.PathLike, which: str = "best", map_location: str | torch.device = "cpu"
) -> tuple[GPT, Any, Checkpoint]:
    """For generating with a saved model: the GPT (eval mode, on `map_location`), the
    tokenizer its checkpoint names (a `tiktoken.Encoding`; "-chat" names included), and the
    `Checkpoint` itself. ValueError when the tokenizer has more ids than the model."""
    from wikigpt_lib.tokenizer import get_tokenizer

    ckpt = load_checkpoint(path, which, map_location)
    enc = get_tokenizer(ckpt.tokenizer or "wikitext2")
    if enc.n_vocab > ckpt.model_config.vocab_size:
        raise CheckpointError(
            f"{ckpt.path}: its tokenizer {enc.name!r} has {enc.n_vocab} ids but the model only "
            f"{ckpt.model_config.vocab_size}: the checkpoint's config is inconsistent."
        )
    return ckpt.build_model(), enc, ckpt
