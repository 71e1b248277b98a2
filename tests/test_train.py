"""Tests of wikigpt_lib.train: TrainConfig, the schedule, the optimizer, and the Trainer loop.

Everything runs on the CPU in fp32 with models of a few thousand parameters, so each test
takes about a second. Steps are counted from 1: the record of the k-th optimizer step has
"step": k, and its checkpoint is `checkpoints/step_{k:06d}`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported anywhere: no display in tests

import numpy as np
import pytest
import torch
from helpers import (
    TINY_BLOCK,
    TINY_VOCAB,
    counting_tokens,
    interrupt_at,
    make_preset_model,
    make_tiny_config,
    make_tiny_model,
    make_train_config,
    pointer,
    random_tokens,
)

from wikigpt_lib.checkpoint import load_checkpoint
from wikigpt_lib.config import TRAIN_PRESETS
from wikigpt_lib.data import iter_eval_batches
from wikigpt_lib.metrics import evaluate_loss, plot_losses, read_metrics
from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.train import (
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    TrainResult,
    configure_optimizer,
    lr_at,
    train_model,
    train_preset,
)

V, T = TINY_VOCAB, TINY_BLOCK  # vocabulary and block size of the tiny test model


def tcfg(**overrides) -> TrainConfig:
    """make_train_config() with this file's longer run: 8 steps (2 of warmup), an evaluation
    every 4, and no weight decay."""
    base = {"max_steps": 8, "warmup_steps": 2, "eval_interval": 4, "weight_decay": 0.0}
    return make_train_config(**{**base, **overrides})


class Recorder:
    """A callback that keeps every step record."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def __call__(self, trainer, record: dict) -> None:
        self.records.append(dict(record))

    @property
    def losses(self) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in self.records]


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return random_tokens(6000, seed=0)


@pytest.fixture(scope="module")
def val_tokens() -> np.ndarray:
    return random_tokens(2000, seed=1)


# --- TrainConfig and presets -------------------------------------------------------------------


def test_train_config_round_trip_and_replace():
    cfg = tcfg(patience=3, eval_batches=None)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    changed = cfg.replace(lr=5e-3)
    assert changed.lr == 5e-3 and cfg.lr == 1e-2 and changed.max_steps == cfg.max_steps
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"lr": -1e-3}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"precision": "fp8"}, "precision"),
        ({"grad_accum_steps": 0}, "grad_accum_steps"),
        ({"max_steps": -1}, "max_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        tcfg(**kwargs)


def test_train_presets():
    assert {"cpu-quick", "cpu", "t4", "a100", "h100"} <= set(TRAIN_PRESETS)
    for name in TRAIN_PRESETS:
        model_cfg, train_cfg = train_preset(name)
        assert isinstance(model_cfg, GPTConfig) and isinstance(train_cfg, TrainConfig), name
    with pytest.raises(ValueError, match="cpu-quick"):  # the message lists the choices
        train_preset("tpu-pod")


# --- schedule and optimizer ------------------------------------------------------------------


def test_lr_warmup_is_linear_and_peaks_at_warmup_end():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4)  # (0 + 1) / 10 * lr: small, not 0
    for step in range(10):
        assert lr_at(step, cfg) == pytest.approx((step + 1) / 10 * 1e-3)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert max(lr_at(s, cfg) for s in range(101)) == pytest.approx(1e-3)


def test_lr_cosine_decays_to_min_lr():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    decay = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))  # never rises
    assert lr_at(55, cfg) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))  # half way: the mean
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    assert lr_at(150, cfg) == pytest.approx(1e-4)  # stays at the floor afterwards


def test_lr_without_warmup_starts_at_peak():
    assert lr_at(0, TrainConfig(max_steps=10, warmup_steps=0, lr=1e-3)) == pytest.approx(1e-3)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_schedules_hit_their_endpoints(schedule):
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-3, min_lr=0.0, schedule=schedule)
    rates = [lr_at(s, cfg) for s in range(120)]
    assert rates[9] == pytest.approx(1e-3)  # warmup ends at the peak
    assert max(rates) == pytest.approx(1e-3)
    assert rates[100] == rates[119] == 0.0  # the floor at max_steps, and after
    assert rates[99] > 0
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))  # never rises


def test_linear_and_wsd_shapes():
    linear = TrainConfig(max_steps=110, warmup_steps=10, lr=1.0, min_lr=0.0, schedule="linear")
    assert lr_at(60, linear) == pytest.approx(0.5)  # half way down the line
    wsd = linear.replace(schedule="wsd", decay_frac=0.2)  # flat to step 90, then down to 0
    assert [lr_at(s, wsd) for s in (10, 50, 89)] == [1.0, 1.0, 1.0]
    assert lr_at(90, wsd) == pytest.approx(1.0)
    assert lr_at(100, wsd) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="decay_frac"):
        TrainConfig(decay_frac=0.0)


def test_weight_decay_groups():
    model = make_tiny_model()  # bias=True: biases and LayerNorm gains and biases
    cfg = tcfg(weight_decay=0.1)
    opt = configure_optimizer(model, cfg, "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    assert len(opt.param_groups) == 2
    seen = [id(p) for group in opt.param_groups for p in group["params"]]
    assert len(seen) == len(set(seen))  # no parameter twice (the tied head counts once)
    assert set(seen) == {id(p) for p in model.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        assert group["betas"] == (cfg.beta1, cfg.beta2)
        for p in group["params"]:
            expected = cfg.weight_decay if p.dim() >= 2 else 0.0
            assert group["weight_decay"] == expected, names[id(p)]
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "transformer.h.0.attn.c_attn.weight" in decayed
    assert not any(n.endswith(".bias") or ".ln_" in n for n in decayed)


# --- evaluate_loss ---------------------------------------------------------------------------


def test_evaluate_loss_is_token_mean_and_keeps_mode(val_tokens):
    model = make_tiny_model(dropout=0.3).train()
    data = val_tokens[: 7 * T + 1]  # 7 windows: batches of 3, 3 and 1
    got = evaluate_loss(model, data, T, batch_size=3)
    assert model.training  # put back in training mode
    model.eval()
    with torch.no_grad():
        losses = [(model(x, y)[1].item(), y.numel()) for x, y in iter_eval_batches(data, 3, T)]
    expected = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    assert got == pytest.approx(expected, rel=1e-5)
    first = evaluate_loss(model, data, T, batch_size=3, max_batches=1)
    assert first == pytest.approx(losses[0][0], rel=1e-5)
    assert not model.training  # an eval-mode model stays in eval mode


# --- the training loop -----------------------------------------------------------------------


def test_tiny_batch_overfits(tmp_path, monkeypatch, tiny_config):
    """One 16-token window (the only one in the data) is learnt by heart."""
    monkeypatch.chdir(tmp_path)
    window = random_tokens(T + 1)
    cfg = tcfg(max_steps=60, warmup_steps=5)
    result = train_model(tiny_config, cfg, window, None)
    assert isinstance(result, TrainResult)
    assert result.run_dir is None and not list(tmp_path.iterdir())  # nothing written
    assert (result.steps, result.stopped) == (60, "max_steps")
    assert result.tokens_seen == 60 * cfg.batch_size * T
    losses = [r["loss"] for r in result.history if r["split"] == "train"]
    assert len(losses) == 60
    assert losses[0] > 3.5  # about log(64) = 4.16 at the start
    assert losses[-1] < 0.5 and losses[-1] < 0.1 * losses[0], losses[-1]


def test_train_is_deterministic(tokens, tiny_config):
    """train_model() seeds the model init and the batches with cfg.seed."""
    a = train_model(tiny_config, tcfg(max_steps=4), tokens, None)
    b = train_model(tiny_config, tcfg(max_steps=4), tokens, None)
    c = train_model(tiny_config, tcfg(max_steps=4, seed=1), tokens, None)
    loss = lambda r: [x["loss"] for x in r.history if x["split"] == "train"]  # noqa: E731
    assert loss(a) == loss(b)
    assert loss(a) != loss(c)


def test_loss_falls_on_sample_corpus(sample_tokens):
    train_ids, val_ids = sample_tokens
    model = make_preset_model()  # the course tokenizer's 8192 ids, block 32
    cfg = tcfg(max_steps=30, batch_size=8, warmup_steps=3, eval_interval=30, eval_batches=4)
    trainer = Trainer(model, train_ids, val_ids, cfg)
    val_before = trainer.evaluate()
    assert val_before == pytest.approx(math.log(8192), abs=0.3)
    result = trainer.fit()
    losses = [r["loss"] for r in result.history if r["split"] == "train"]
    assert np.mean(losses[-5:]) < losses[0] - 2.0, losses
    assert result.best_val_loss < val_before - 2.0
    assert trainer.evaluate() == pytest.approx(result.best_val_loss, rel=1e-5)


def capture_grads(trainer: Trainer) -> list[list[torch.Tensor]]:
    """The gradients the optimizer sees at each of its steps (after clipping)."""
    grads, real_step = [], trainer.optimizer.step

    def step(*args, **kwargs):
        grads.append([p.grad.clone() for p in trainer.model.parameters()])
        return real_step(*args, **kwargs)

    trainer.optimizer.step = step
    return grads


def test_grad_accumulation_equals_bigger_batch(tokens):
    accum = Trainer(make_tiny_model(), tokens, None, tcfg(batch_size=2, grad_accum_steps=2))
    whole = Trainer(make_tiny_model(), tokens, None, tcfg(batch_size=4, grad_accum_steps=1))
    grads_accum, grads_whole = capture_grads(accum), capture_grads(whole)
    start = [p.detach().clone() for p in accum.model.parameters()]
    for _ in range(3):
        assert accum.train_step() == pytest.approx(whole.train_step(), rel=1e-5)
    assert accum.step == whole.step == 3
    names = [n for n, _ in accum.model.named_parameters()]
    for name, a, b in zip(names, grads_accum[0], grads_whole[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")
    params = zip(names, start, accum.model.parameters(), whole.model.parameters(), strict=True)
    for name, p0, p, q in params:
        # Adam makes rounding noise in near-zero gradients (the attention key bias) into
        # ~1e-5 differences; different batches would differ by ~lr = 1e-2.
        torch.testing.assert_close(p, q, rtol=0, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
        assert not torch.equal(p, p0), name  # the steps did change the weights


RESUME_SETTINGS = [
    {},
    {"optimizer": "muon", "schedule": "linear", "min_lr": 0.0},
    {"optimizer": "adamw", "schedule": "wsd", "sampling": "epoch"},
    {"optimizer": "muon", "schedule": "wsd", "decay_frac": 0.5, "sampling": "epoch"},
]


@pytest.mark.parametrize("settings", RESUME_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_resume_equals_uninterrupted_run(tmp_path, tokens, val_tokens, settings):
    """Ctrl-C at step 5, then resume: losses and weights are those of a run never stopped,
    with every optimizer, schedule and sampling."""
    cfg = tcfg(
        max_steps=8, eval_interval=3, batch_size=2, grad_accum_steps=2, weight_decay=0.1,
        **settings,
    )  # fmt: skip

    rec_a = Recorder()
    trainer_a = Trainer(
        make_tiny_model(dropout=0.2),
        tokens,
        val_tokens,
        cfg,
        run_dir=tmp_path / "a",
        callbacks=[rec_a],
    )
    assert trainer_a.fit().stopped == "max_steps"

    rec_b = Recorder()
    trainer_b = Trainer(
        make_tiny_model(dropout=0.2),
        tokens,
        val_tokens,
        cfg,
        run_dir=tmp_path / "b",
        callbacks=[rec_b, interrupt_at(5)],
    )
    stopped = trainer_b.fit()
    assert (stopped.stopped, stopped.steps) == ("interrupted", 5)
    assert load_checkpoint(tmp_path / "b", "latest").state["step"] == 5  # saved on Ctrl-C

    resumed = Trainer.resume(tmp_path / "b", tokens, val_tokens, callbacks=[rec_b])
    assert resumed.step == 5
    result = resumed.fit()
    assert (result.stopped, result.steps) == ("max_steps", 8)

    assert [s for s, _ in rec_a.losses] == list(range(1, 9))
    assert rec_b.losses == rec_a.losses  # bit for bit, not approximately
    weights_a, weights_b = trainer_a.model.state_dict(), resumed.model.state_dict()
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    val = lambda d: {r["step"]: r["loss"] for r in read_metrics(d) if r["split"] == "val"}  # noqa: E731
    val_a, val_b = val(tmp_path / "a"), val(tmp_path / "b")
    assert val_a and all(val_b.get(step) == loss for step, loss in val_a.items())


def test_with_block_closes_and_skips_the_barrier_after_an_error(tokens, monkeypatch):
    waits = []
    monkeypatch.setattr(Trainer, "close", lambda self, wait=True: waits.append(wait))
    with Trainer(make_tiny_model(), tokens, None, tcfg(max_steps=1)) as trainer:
        assert trainer.fit().steps == 1
    with (
        pytest.raises(RuntimeError, match="boom"),
        Trainer(make_tiny_model(), tokens, None, tcfg()),
    ):
        raise RuntimeError("boom")
    assert waits == [True, False]  # a rank that failed must not wait for its peers


def test_ctrl_c_without_run_dir_returns(tokens):
    result = Trainer(make_tiny_model(), tokens, None, tcfg(), callbacks=[interrupt_at(2)]).fit()
    assert (result.stopped, result.steps, result.run_dir) == ("interrupted", 2, None)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_guard_keeps_last_good_checkpoint(tmp_path, tokens, val_tokens, bad):
    """Weights poisoned after step 3 -> step 4's loss is not finite -> stop, keep step 2."""

    def poison(trainer, record):
        if record["step"] == 3:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(bad)

    # log_interval 10 > max_steps: the guard must look at every step, not just logged ones
    cfg = tcfg(max_steps=8, eval_interval=2, log_interval=10)
    run = tmp_path / "run"
    trainer = Trainer(make_tiny_model(), tokens, val_tokens, cfg, run_dir=run, callbacks=[poison])
    with pytest.raises(TrainingDivergedError) as info:
        trainer.fit()
    message = str(info.value)
    assert re.search(r"step\W{0,3}4\b", message), message
    assert "step_000002" in message, message  # the last good checkpoint
    assert isinstance(info.value, RuntimeError)
    assert pointer(run, "latest")["checkpoint"].endswith("step_000002")
    ckpt = load_checkpoint(run, "latest")
    assert ckpt.state["step"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt.model_state.values())
    assert not (run / "checkpoints" / "step_000004").exists()


def test_early_stopping(tmp_path, val_tokens):
    """Train on a counting stream, validate on random tokens: val loss only rises."""
    cfg = tcfg(max_steps=200, eval_interval=2, patience=2, warmup_steps=1)
    trainer = Trainer(
        make_tiny_model(), counting_tokens(4000), val_tokens, cfg, run_dir=tmp_path / "r"
    )
    result = trainer.fit()
    assert result.stopped == "early_stop"
    assert result.steps < 20
    val = [r["loss"] for r in result.history if r["split"] == "val"]
    best = int(np.argmin(val))
    assert len(val) - 1 - best == 2  # stopped at the patience-th eval without improvement
    assert result.best_val_loss == pytest.approx(min(val), abs=1e-4)
    state = load_checkpoint(tmp_path / "r", "latest").state
    assert state["evals_without_improvement"] == 2
    assert state["step"] == result.steps


def test_metrics_file_and_plot(tmp_path, tokens, val_tokens):
    import matplotlib.pyplot as plt

    cfg = tcfg(max_steps=8, log_interval=2, eval_interval=4)
    result = Trainer(make_tiny_model(), tokens, val_tokens, cfg, run_dir=tmp_path / "r").fit()
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert read_metrics(tmp_path / "r") == records == result.history
    train_recs = [r for r in records if r["split"] == "train"]
    val_recs = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train_recs] == [2, 4, 6, 8]
    assert [r["step"] for r in val_recs] == [4, 8]
    for r in train_recs:
        assert {"step", "split", "loss", "lr", "tokens_per_s", "elapsed_s"} <= r.keys()
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, cfg), rel=1e-3)
    for r in val_recs:
        assert {"step", "split", "loss", "ppl", "elapsed_s"} <= r.keys()
        assert r["ppl"] == pytest.approx(math.exp(r["loss"]), rel=1e-3)

    ax = plot_losses(tmp_path / "r")
    assert isinstance(ax, matplotlib.axes.Axes)
    assert len(ax.get_lines()) >= 2  # train and val curves
    fig, given = plt.subplots()
    assert plot_losses(result.history, ax=given) is given
    plt.close("all")


def test_run_folder_keeps_only_latest_and_best(tmp_path, val_tokens):
    """Val loss rises after the first eval, so best (step 2) and latest (step 12) differ."""
    run = tmp_path / "r"
    cfg = tcfg(max_steps=12, eval_interval=2, warmup_steps=1)
    result = Trainer(make_tiny_model(), counting_tokens(4000), val_tokens, cfg, run_dir=run).fit()
    latest, best = pointer(run, "latest"), pointer(run, "best")
    assert latest["checkpoint"].endswith("step_000012")
    val = [r["loss"] for r in result.history if r["split"] == "val"]
    assert best["val_loss"] == pytest.approx(min(val), abs=1e-4)
    assert best["checkpoint"] != latest["checkpoint"]
    kept = {p.name for p in (run / "checkpoints").iterdir()}
    assert kept == {run.joinpath(latest["checkpoint"]).name, run.joinpath(best["checkpoint"]).name}
    assert {p.name for p in run.iterdir()} <= {
        "latest.json",
        "best.json",
        "checkpoints",
        "metrics.jsonl",
    }
    for name in kept:
        files = {p.name for p in (run / "checkpoints" / name).iterdir()}
        assert files == {"model.safetensors", "config.json", "state.json", "trainer.pt"}, name
    best_state = load_checkpoint(run, "best").state
    assert best_state["best_val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert load_checkpoint(run, "latest").state["best_val_loss"] == best_state["best_val_loss"]


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="needs 2 CPU cores to compare 2 threads with 1"
)
def test_resume_with_another_thread_count_stays_bit_exact(tmp_path):
    """The cause of a resumed run that differed in the 7th digit: CPU kernels split their sums
    across threads, so a process with another thread count rounds differently. The Trainer
    records the count and resumes with it."""
    # wider and longer than the tiny model: big enough sums for the thread split to matter
    model_cfg = make_tiny_config(vocab_size=512, block_size=64, n_embd=64, bias=False)
    data = random_tokens(20_000, vocab=512)
    cfg = tcfg(max_steps=6, batch_size=16, eval_interval=100, lr=1e-3, min_lr=1e-4)
    before, threads = torch.get_num_threads(), 2

    def run(n_threads: int, **kwargs) -> Trainer:
        torch.set_num_threads(n_threads)
        torch.manual_seed(0)
        trainer = Trainer(GPT(model_cfg), data, None, cfg, **kwargs)
        trainer.fit()
        return trainer

    try:
        whole = run(threads)
        other = run(1)
        # The cause, reproduced: the same run on one thread ends with other weights.
        assert any(
            not torch.equal(a, b)
            for a, b in zip(whole.model.parameters(), other.model.parameters(), strict=True)
        )
        run(threads, run_dir=tmp_path / "r", callbacks=[interrupt_at(3)])
        torch.set_num_threads(1)  # a new process, on a machine that gives it one thread
        with pytest.warns(UserWarning, match=f"trained with {threads} CPU threads"):
            resumed = Trainer.resume(tmp_path / "r", data, None)
        assert torch.get_num_threads() == threads
        resumed.fit()
        for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
            assert torch.equal(a, b)
    finally:
        torch.set_num_threads(before)
