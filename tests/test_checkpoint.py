"""Tests of wikigpt_lib.checkpoint: the run folder layout, atomic saves, loading, and errors."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import (
    TINY_BLOCK,
    TINY_VOCAB,
    make_tiny_config,
    make_tiny_model,
    make_train_config,
    pointer,
)

from wikigpt_lib import checkpoint as ckpt_mod
from wikigpt_lib.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)
from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.train import Trainer

V, T = TINY_VOCAB, TINY_BLOCK
FILES = {"model.safetensors", "config.json", "state.json", "trainer.pt"}


def all_of(*words: str) -> str:
    """A regex that matches a text containing every one of `words`, in any order."""
    return "(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words)


def latest_folder(run_dir):
    return run_dir / pointer(run_dir, "latest")["checkpoint"]


def save(run_dir, model, step: int, *, is_best: bool, val_loss: float | None = 5.0):
    state = {
        "step": step,
        "tokens_seen": step * 64,
        "best_val_loss": val_loss,
        "evals_without_improvement": 0,
        "elapsed_s": 1.5,
    }
    trainer_state = {"rng": torch.get_rng_state(), "note": torch.arange(3)}
    return save_checkpoint(
        run_dir,
        model=model,
        model_config=make_tiny_config(),
        train_config=make_train_config().to_dict(),
        state=state,
        trainer_state=trainer_state,
        tokenizer="wikitext2",
        data="random",
        is_best=is_best,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, token_splits, tiny_train_config):
    """A finished 4-step run (checkpoints at steps 2 and 4) and its final model."""
    run = tmp_path_factory.mktemp("trained") / "run"
    trainer = Trainer(make_tiny_model(), *token_splits, tiny_train_config, run_dir=run)
    trainer.fit()
    return run, trainer.model


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained run that a test may damage."""
    return shutil.copytree(trained[0], tmp_path / "run")


# --- layout and round trip -------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path, tiny_config, tiny_train_config):
    model = make_tiny_model()
    folder = save(tmp_path, model, 10, is_best=True)
    assert folder == tmp_path / "checkpoints" / "step_000010"
    assert {p.name for p in folder.iterdir()} == FILES
    config = json.loads((folder / "config.json").read_text())
    assert (config["format"], config["version"]) == ("wikigpt-checkpoint", 1)
    assert config["model"] == tiny_config.to_dict()
    assert config["train"] == tiny_train_config.to_dict()
    assert (config["tokenizer"], config["data"]) == ("wikitext2", "random")
    assert json.loads((folder / "state.json").read_text())["step"] == 10

    ckpt = load_checkpoint(tmp_path)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.path == folder
    assert ckpt.model_config == tiny_config
    assert ckpt.train_config == tiny_train_config.to_dict()
    assert ckpt.state["step"] == 10 and ckpt.state["tokens_seen"] == 640
    assert (ckpt.tokenizer, ckpt.data) == ("wikitext2", "random")
    for name, tensor in model.state_dict().items():
        if name in ckpt.model_state:
            assert torch.equal(ckpt.model_state[name], tensor), name
    trainer_state = ckpt.trainer_state  # may be loaded lazily, by calling it
    trainer_state = trainer_state() if callable(trainer_state) else trainer_state
    assert torch.equal(trainer_state["note"], torch.arange(3))
    assert load_checkpoint(folder).state == ckpt.state  # a checkpoint folder works too


def test_pointers_and_pruning(tmp_path):
    model = make_tiny_model()
    save(tmp_path, model, 10, is_best=True, val_loss=5.0)
    save(tmp_path, model, 20, is_best=False, val_loss=5.0)
    assert pointer(tmp_path, "latest")["checkpoint"].endswith("step_000020")
    assert pointer(tmp_path, "best")["checkpoint"].endswith("step_000010")
    assert pointer(tmp_path, "best")["val_loss"] == pytest.approx(5.0)
    assert resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoints" / "step_000020"
    assert resolve_checkpoint(tmp_path, "best") == tmp_path / "checkpoints" / "step_000010"
    assert resolve_checkpoint(tmp_path / "checkpoints" / "step_000010") == (
        tmp_path / "checkpoints" / "step_000010"
    )
    assert load_checkpoint(tmp_path, "best").state["step"] == 10

    save(tmp_path, model, 30, is_best=True, val_loss=4.0)  # 10 and 20 are no longer referenced
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000030"]
    assert pointer(tmp_path, "best")["val_loss"] == pytest.approx(4.0)
    assert {p.name for p in tmp_path.iterdir()} == {"latest.json", "best.json", "checkpoints"}


def test_load_model_matches_trained_model(trained, tiny_config):
    run, trained_model = trained
    model = load_model(run, which="latest")
    assert isinstance(model, GPT) and not model.training
    assert model.config == tiny_config
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(0))
    was_training = trained_model.training
    trained_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], trained_model(idx)[0], rtol=0, atol=0)
    trained_model.train(was_training)
    assert isinstance(load_model(run), GPT)  # which="best" by default


def test_resolve_rejects_unknown_which(trained):
    with pytest.raises(ValueError, match="which"):
        resolve_checkpoint(trained[0], "newest")


# --- crashes while saving --------------------------------------------------------------------


def _crash_partway(obj, f, *args, **kwargs):
    """A writer that writes a few bytes where the real one would, then 'crashes'."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as out:
            out.write(b"\x00partial")
    raise OSError("simulated crash while writing")


def _crash(*args, **kwargs):
    raise OSError("simulated crash while renaming")


def _patch_writers(monkeypatch, point: str) -> None:
    """Make one way of writing files fail, wherever wikigpt_lib.checkpoint looks it up."""
    if point == "torch.save":
        targets = [(torch, "save", torch.save)]
    elif point == "safetensors":
        targets = [
            (safetensors.torch, n, getattr(safetensors.torch, n))
            for n in ("save_file", "save_model")
        ]
    elif point == "os.replace":
        targets = [(os, "replace", os.replace), (os, "rename", os.rename)]
    else:
        raise AssertionError(point)
    fake = _crash if point == "os.replace" else _crash_partway
    for module, name, real in targets:
        monkeypatch.setattr(module, name, fake)
        for attr, value in vars(ckpt_mod).items():  # `from safetensors.torch import save_file`
            if value is real:
                monkeypatch.setattr(ckpt_mod, attr, fake)


@pytest.mark.parametrize("point", ["safetensors", "torch.save", "os.replace"])
def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch, point):
    model = make_tiny_model()
    save(tmp_path, model, 10, is_best=True)
    with monkeypatch.context() as m:
        _patch_writers(m, point)
        with pytest.raises(OSError, match="simulated crash"):
            save(tmp_path, model, 20, is_best=True)

    assert pointer(tmp_path, "latest")["checkpoint"].endswith("step_000010")
    assert pointer(tmp_path, "best")["checkpoint"].endswith("step_000010")
    assert load_checkpoint(tmp_path).state["step"] == 10
    assert load_checkpoint(tmp_path, "best").state["step"] == 10
    assert isinstance(load_model(tmp_path), GPT)
    # a half-written step_000020 must not look like a checkpoint
    partial = tmp_path / "checkpoints" / "step_000020"
    if partial.exists():
        with pytest.raises(CheckpointError):
            load_checkpoint(partial)
    # and the next save works despite the leftovers
    save(tmp_path, model, 20, is_best=True)
    assert load_checkpoint(tmp_path).state["step"] == 20


def test_crash_during_training_checkpoint(tmp_path, monkeypatch, token_splits, tiny_train_config):
    """A crash writing the step-4 checkpoint leaves step 2's in place; resume continues."""
    armed = []

    def arm(trainer, record):
        if record["step"] == 3:
            armed.append(True)
            _patch_writers(monkeypatch, "torch.save")

    run = tmp_path / "run"
    trainer = Trainer(
        make_tiny_model(), *token_splits, tiny_train_config, run_dir=run, callbacks=[arm]
    )
    with pytest.raises(OSError, match="simulated crash"):
        trainer.fit()
    assert armed
    monkeypatch.undo()
    assert load_checkpoint(run).state["step"] == 2
    assert pointer(run, "latest")["checkpoint"].endswith("step_000002")
    resumed = Trainer.resume(run, *token_splits)
    assert resumed.step == 2
    assert resumed.fit().steps == 4
    assert load_checkpoint(run).state["step"] == 4


# --- damaged and foreign files -----------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 8, 0.5])
def test_truncated_safetensors(run_copy, keep):
    weights = latest_folder(run_copy) / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: int(keep * len(raw)) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError, match=all_of("model.safetensors", "truncated or corrupt")):
        load_checkpoint(run_copy)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(run_copy, which="latest")


def test_random_bytes_safetensors(run_copy):
    weights = latest_folder(run_copy) / "model.safetensors"
    weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))
    with pytest.raises(CheckpointError, match=all_of("model.safetensors", "truncated or corrupt")):
        load_checkpoint(run_copy)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(
        CheckpointError, match=all_of("no checkpoint at", "no_such_run", "run folder")
    ):
        load_checkpoint(missing)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_model(missing)


def test_empty_folder(tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(
        CheckpointError,
        match=r"(?s)empty_run.*(no checkpoint at|not a wikigpt)|"
        r"(no checkpoint at|not a wikigpt).*empty_run",
    ):
        load_checkpoint(empty)


@pytest.mark.parametrize("kind", ["random bytes", "torch .pt"])
def test_foreign_file(tmp_path, kind):
    path = tmp_path / "weights.pt"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(1000))
    else:
        torch.save(make_tiny_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="not a wikigpt checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a wikigpt checkpoint"):
        load_model(path)


def test_foreign_folder_without_format_marker(trained, tmp_path):
    """A Hugging Face-style folder: model.safetensors and a config.json of another kind."""
    folder = tmp_path / "hf_model"
    folder.mkdir()
    shutil.copy(latest_folder(trained[0]) / "model.safetensors", folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(CheckpointError, match="not a wikigpt checkpoint"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="not a wikigpt checkpoint"):
        load_model(folder)


def test_pointer_to_missing_folder(run_copy):
    folder = latest_folder(run_copy)
    shutil.rmtree(folder)
    with pytest.raises(CheckpointError, match=folder.name):
        load_checkpoint(run_copy, "latest")


@pytest.mark.parametrize(
    "change,bad,good",
    [
        ({"block_size": 32}, "transformer.wpe.weight", "transformer.wte.weight"),
        ({"vocab_size": 128}, "transformer.wte.weight", "transformer.wpe.weight"),
    ],
)
def test_shapes_that_do_not_fit(run_copy, change, bad, good):
    folder = latest_folder(run_copy)
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=re.escape(bad)) as info:
        load_model(folder)
    assert good not in str(info.value)  # only the tensors that do not fit are listed


def test_load_model_and_tokenizer(tmp_path, tiny_preset_model):
    model = tiny_preset_model
    ckpt_mod.save_checkpoint(tmp_path / "run", model=model, state={"step": 1}, is_best=True)
    loaded, enc, ckpt = ckpt_mod.load_model_and_tokenizer(tmp_path / "run")
    assert enc.n_vocab == model.config.vocab_size == 8192 and ckpt.path.name == "step_000001"
    for (name, p), q in zip(loaded.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # a config whose tokenizer has more ids than the model has rows: a clear error, no IndexError
    small = GPT(GPTConfig.preset("tiny", vocab_size=64))
    ckpt_mod.save_checkpoint(tmp_path / "small", model=small, state={"step": 1}, is_best=True)
    with pytest.raises(ckpt_mod.CheckpointError, match="has 8192 ids but the model only 64"):
        ckpt_mod.load_model_and_tokenizer(tmp_path / "small")


def test_extensions_register_from_above_and_unknown_ones_are_refused(tmp_path):
    """The checkpoint module knows nothing of LoRA: lora.py registers itself, and a config
    key that no module registered is a clear error, never silently dropped."""
    from wikigpt_lib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    assert "lora" in ckpt_mod._EXTENSIONS
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    folder = save_checkpoint(tmp_path, model=model, state={"step": 1})
    config = json.loads((folder / "config.json").read_text())
    assert "lora" not in config  # a model without adapters records none
    config["adapters-from-the-future"] = {"r": 4}
    (folder / "config.json").write_text(json.dumps(config))
    ckpt = load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="extended with 'adapters-from-the-future'"):
        ckpt.build_model()
    with pytest.raises(ValueError, match="config key of its own"):
        ckpt_mod.register_extension("model", lambda m: None, lambda m, s: m)
