"""The process a training run lives in: which GPU and process group it joins (DDP under
torchrun), and the stop signals it turns into a clean stop. Knows nothing of models."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch

# Ctrl-C; `kill`, `timeout`, Colab, Slurm and Kubernetes (before SIGKILL); a closed terminal.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def dist_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def join_process_group(prefer: str | None, local_rank: int) -> tuple[torch.device, bool]:
    """For a DDP run: join torchrun's process group (NCCL on GPUs, gloo on CPUs) unless the
    caller already did, and pick this process's device. Returns (device, whether this call
    created the group, so that `leave_process_group` should end it)."""
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and prefer in (None, "cuda")
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), created
    return torch.device("cpu"), created


def leave_process_group(wait: bool) -> None:
    """Wait for every rank (unless wait=False, after an error), then end the process group."""
    import torch.distributed as dist

    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place (gloo has no AVG: divide afterwards)."""
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class StopRequest:
    """Turns the first SIGINT, SIGTERM or SIGHUP into a request that the loop honours between
    steps (so a step is never half done when the checkpoint is written); a second one
    interrupts at once. `signum` is the first signal received (None: none)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: keep the default behaviour
                break
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
