"""What users do to `wikigpt train` and friends: signals, closed pipes, kill -9, bad arguments.

Each case runs the real command in a subprocess (`python -m wikigpt_lib`) on the built-in
sample corpus, checks its message and exit status, and then checks the run folder: nothing
lost, and the run resumes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wikigpt_lib.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

# A small, fast run: about 20 ms a step on one thread.
RUN = ["--preset", "cpu-quick", "--data", "sample", "--batch-size", "2", "--eval-batches", "1"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("WIKIGPT_DATA_DIR", None)  # bad-data cases must not find the real data
    e.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", WIKIGPT_QUICK="0")
    return e


def wikigpt(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wikigpt_lib", *args],
        env=env(),
        start_new_session=True,  # signals reach only this process, not pytest
        **kwargs,
    )


def finished(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wikigpt_lib", *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until metrics.jsonl records a train step >= `step`."""
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before the signal"
        if metrics.is_file():
            steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x]
            if steps and max(steps) >= step:
                return
        time.sleep(0.05)
    raise TimeoutError(f"no step {step} within {timeout} s")


def assert_resumes(run: Path, max_steps: int) -> None:
    result = finished("train", "--resume", "--out", str(run), "--no-progress",
                      "--max-steps", str(max_steps))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout or "starting the run over" in result.stdout
    assert load_checkpoint(run, "latest").state["step"] == max_steps


SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_saves_a_checkpoint_and_exits_with_its_code(tmp_path, sig):
    run = tmp_path / "run"
    step = random.Random(int(sig)).randint(3, 12)
    proc = wikigpt("train", "--out", str(run), *RUN, "--max-steps", "400", "--no-progress",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_step(run, step, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"{signal.Signals(sig).name} at step" in out and "checkpoint saved" in out
    assert "Traceback" not in err
    saved = load_checkpoint(run, "latest").state["step"]
    assert saved >= step
    assert "best.json" not in out or (run / "best.json").is_file()  # lists only what exists
    assert_resumes(run, saved + 3)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_with_a_closed_pipe(tmp_path, sig):
    """`wikigpt train ... | tee log`, then Ctrl-C: tee dies first, and every later write of
    the run goes to a closed pipe. The checkpoint must still be written."""
    run = tmp_path / "run"
    proc = wikigpt("train", "--out", str(run), *RUN, "--max-steps", "400",
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    wait_for_step(run, 5, proc)
    proc.stdout.close()  # the reader goes away, as tee does
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig
    saved = load_checkpoint(run, "latest").state["step"]
    assert saved >= 5
    assert_resumes(run, saved + 2)


def test_second_signal_during_the_save_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = wikigpt("train", "--out", str(run), *RUN, "--max-steps", "400", "--no-progress",
                   "--eval-interval", "5", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    wait_for_step(run, 12, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # at once: lands during the step or the save
    proc.wait(timeout=60)
    assert proc.returncode in (130, 1), proc.stderr.read()
    saved = load_checkpoint(run, "latest")  # whichever it is, it loads
    assert saved.state["step"] >= 10
    assert_resumes(run, saved.state["step"] + 2)


def test_kill_9_during_checkpoint_writes_leaves_a_loadable_run(tmp_path):
    """A checkpoint every step, so a kill at a random moment usually lands in a write."""
    run = tmp_path / "run"
    rng = random.Random(0)
    for attempt in range(3):
        args = ["train", "--out", str(run), "--no-progress", "--eval-interval", "1"]
        args += ["--resume"] if attempt else [*RUN, "--max-steps", "400"]
        proc = wikigpt(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = load_checkpoint(run, "latest").state["step"] if attempt else 0
        wait_for_step(run, first + 3, proc)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait(timeout=30)
        latest = load_checkpoint(run, "latest")  # never half written
        assert latest.state["step"] >= first
        leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
        assert len(leftovers) <= 1  # at most the write that was killed
    assert_resumes(run, load_checkpoint(run, "latest").state["step"] + 2)


def test_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    run = tmp_path / "run"
    proc = wikigpt("train", "--out", str(run), *RUN, "--max-steps", "400", "--no-progress",
                   "--eval-interval", "1000", stdout=subprocess.DEVNULL)  # fmt: skip
    wait_for_step(run, 2, proc)
    proc.kill()
    proc.wait(timeout=30)
    assert not (run / "latest.json").exists()
    plain = finished("train", "--out", str(run), *RUN)
    assert plain.returncode == 2 and "pass --resume" in plain.stderr
    result = finished("train", "--resume", "--out", str(run), "--no-progress",
                      "--max-steps", "4", "--eval-interval", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "stopped before its first checkpoint: starting the run over" in result.stdout
    ckpt = load_checkpoint(run, "latest")
    assert ckpt.state["step"] == 4 and ckpt.data == "sample"  # the first run's choices


def test_files_and_folders_get_ordinary_permissions(tmp_path):
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        result = finished("train", "--out", str(run), *RUN, "--max-steps", "2", "--no-progress")
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    for path in run.rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_no_progress_logs_a_line_per_evaluation(tmp_path):
    result = finished("train", "--out", str(tmp_path / "r"), *RUN, "--max-steps", "6",
                      "--eval-interval", "2", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [x for x in result.stdout.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["2/6", "4/6", "6/6"]
    assert all("val loss" in x for x in lines)


BAD_ARGUMENTS = {
    "max-steps 0": (["train", "--out", "{tmp}/r", "--max-steps", "0"], "--max-steps must be"),
    "negative lr": (["train", "--out", "{tmp}/r", "--lr", "-1"], "--lr must be a positive"),
    "no data": (["train", "--out", "{tmp}/r", "--data", "{tmp}/nowhere"], "unknown data"),
    "resume nothing": (["train", "--resume", "--out", "{tmp}/none"], "holds no run to continue"),
    "empty prompt": (["generate", "--checkpoint", "{tmp}/r", "--prompt", " "], "--prompt is empty"),
    "missing checkpoint": (["generate", "--checkpoint", "{tmp}/none", "--prompt", "A"], "{tmp}/none"),
    "eval missing checkpoint": (["eval", "--checkpoint", "{tmp}/none"], "{tmp}/none"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_are_named_before_any_data_is_loaded(tmp_path, case):
    args, expected = BAD_ARGUMENTS[case]
    result = finished(*(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert expected.format(tmp=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr and "data:" not in result.stdout
    assert "TrainConfig" not in result.stderr  # the flag's name, not the library's


def test_missing_wikitext_names_the_flag_and_the_variable(tmp_path, monkeypatch):
    from wikigpt_lib import data
    from wikigpt_lib.cli import main

    monkeypatch.delenv("WIKIGPT_DATA_DIR", raising=False)
    monkeypatch.setenv("WIKIGPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["train", "--out", str(tmp_path / "r"), "--max-steps", "2"]) == 2
    text = err.getvalue()
    assert "--data sample" in text and "WIKIGPT_DATA_DIR" in text
    assert "fallback=" not in text and "data_dir=" not in text


def test_long_prompt_warning_shows_no_source_line(tmp_path):
    run = tmp_path / "r"
    assert finished("train", "--out", str(run), *RUN, "--max-steps", "2").returncode == 0
    result = finished("generate", "--checkpoint", str(run), "--prompt", "word " * 200,
                      "--max-new-tokens", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wikigpt: warning:" in result.stderr
    assert "warnings.warn" not in result.stderr and ".py:" not in result.stderr
