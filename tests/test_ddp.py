"""DistributedDataParallel on the CPU: 2 processes x batch B train exactly like 1 process x 2B.

The Trainer sees WORLD_SIZE=2 (set by torchrun), joins a gloo process group, wraps the model
in DDP and takes its rank's slice of the step's window starts; only rank 0 writes files.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers import TINY_BLOCK, make_tiny_model, make_train_config

from wikigpt_lib.checkpoint import load_checkpoint
from wikigpt_lib.metrics import read_metrics
from wikigpt_lib.train import TrainConfig, Trainer

T, B = TINY_BLOCK, 2
STEPS = 4

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import numpy as np
    import torch

    from wikigpt_lib.model import GPT, GPTConfig
    from wikigpt_lib.train import Trainer, TrainConfig

    folder = Path(sys.argv[1])
    spec = json.loads((folder / "spec.json").read_text())
    losses = []
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(spec["model"]))
    trainer = Trainer(
        model,
        np.load(folder / "train.npy"),
        np.load(folder / "val.npy"),
        TrainConfig.from_dict(spec["train"]),
        run_dir=folder / "ddp",
        callbacks=[lambda trainer, record: losses.append(record["loss"])],
    )
    with trainer:  # leaves the gloo group before exiting, as every torchrun script should
        result = trainer.fit()
    rank = os.environ["RANK"]
    (folder / f"losses_{rank}.json").write_text(json.dumps([losses, result.steps]))
    """
)


def tcfg(batch_size: int) -> TrainConfig:
    return make_train_config(
        max_steps=STEPS,
        batch_size=batch_size,
        eval_batches=None,  # the whole val split: batches of batch_size shared out by rank
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_with_double_batch(tmp_path, tiny_config, token_splits):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this PyTorch build has no torch.distributed gloo backend")
    train_ids, val_ids = token_splits
    np.save(tmp_path / "train.npy", train_ids)
    np.save(tmp_path / "val.npy", val_ids)
    spec = {"model": tiny_config.to_dict(), "train": tcfg(B).to_dict()}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "run_ddp.py").write_text(SCRIPT)

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the loopback: no network needed
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(tmp_path / "run_ddp.py"), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # the reference: one process, the same global batch (and the same seed-0 initial weights)
    losses = []
    single = Trainer(
        make_tiny_model(),
        train_ids,
        val_ids,
        tcfg(2 * B),
        run_dir=tmp_path / "single",
        callbacks=[lambda trainer, record: losses.append(record["loss"])],
    )
    assert single.fit().steps == STEPS

    ddp_losses, ddp_steps = json.loads((tmp_path / "losses_0.json").read_text())
    assert ddp_steps == STEPS and len(ddp_losses) == STEPS
    np.testing.assert_allclose(ddp_losses, losses, rtol=1e-5)
    rank1_losses, _ = json.loads((tmp_path / "losses_1.json").read_text())
    np.testing.assert_allclose(rank1_losses, losses, rtol=1e-5)  # every rank logs the mean

    ddp_ckpt = load_checkpoint(tmp_path / "ddp", "latest")
    single_ckpt = load_checkpoint(tmp_path / "single", "latest")
    assert ddp_ckpt.state["step"] == STEPS
    assert ddp_ckpt.state["tokens_seen"] == single_ckpt.state["tokens_seen"] == STEPS * 2 * B * T
    assert ddp_ckpt.model_state.keys() == single_ckpt.model_state.keys()
    assert not any(k.startswith("module.") for k in ddp_ckpt.model_state)  # DDP wrapper unwrapped
    for name, tensor in single_ckpt.model_state.items():
        # Adam makes rounding noise in near-zero gradients (the attention key bias) into
        # ~1e-5 differences; a wrong share of the batch would differ by ~lr = 1e-2.
        torch.testing.assert_close(ddp_ckpt.model_state[name], tensor, rtol=1e-5, atol=1e-4)

    val = lambda d: [r["loss"] for r in read_metrics(d) if r["split"] == "val"]  # noqa: E731
    np.testing.assert_allclose(val(tmp_path / "ddp"), val(tmp_path / "single"), rtol=1e-5)
    assert not list(tmp_path.glob("ddp/**/*rank*"))  # rank 1 wrote nothing of its own
