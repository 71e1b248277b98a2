"""Where and how the course runs: device and precision choice, seeding, quick mode.

Everything that depends on the machine lives here, so notebooks and the training loop
ask one place instead of scattering `torch.cuda...` and `os.environ` lookups around.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

QUICK_ENV = "WIKIGPT_QUICK"


def is_quick() -> bool:
    """True when `WIKIGPT_QUICK` is set to a true value ("1", "true", "yes", "on").

    Quick mode shrinks every long computation in the notebooks (steps, sizes, data) so the
    whole course runs in minutes; the test suite turns it on in `notebooks/conftest.py`.
    """
    value = os.environ.get(QUICK_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{QUICK_ENV}={value!r} is not understood: use 1 (quick) or 0 (full).")


def quick(full: T, small: T) -> T:
    """Return `small` in quick mode and `full` otherwise: `steps = quick(5000, 50)`."""
    return small if is_quick() else full


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA); return a CPU generator with that seed.

    The returned generator is for code that wants its own random stream (batch sampling,
    say) that other code drawing random numbers cannot disturb.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Precision:
    """The device and the mixed-precision recipe to use on it."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32, no autocast
    use_grad_scaler: bool  # fp16 needs loss scaling; bf16 and fp32 do not

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self):
        """A context manager that runs the forward pass in this precision."""
        if self.autocast_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def pick_device(prefer: str | None = None) -> torch.device:
    """The best available device: cuda, then mps, then cpu (or `prefer` if given and present)."""
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for, but PyTorch sees no CUDA GPU.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("device='mps' was asked for, but this PyTorch has no MPS support.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def has_native_bf16(device: torch.device) -> bool:
    """True only where bf16 matrix multiplies run in hardware (CUDA compute capability >= 8.0).

    `torch.cuda.is_bf16_supported()` also says yes on older GPUs such as the T4, where bf16
    is emulated and much slower than fp16, so it is not the right question here.
    """
    if device.type != "cuda":
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def pick_precision(device: torch.device | str | None = None, name: str = "auto") -> Precision:
    """The mixed-precision recipe for `device` (None: `pick_device()`).

    name="auto" chooses: bf16 on Ampere and newer GPUs, fp16 + gradient scaler on older CUDA
    GPUs (T4, V100), fp32 on CPU and MPS. "fp32", "bf16" and "fp16" ask for one; fp16 needs
    a CUDA GPU. The one place the library decides precision (training, chat, the CLI).
    """
    device = pick_device() if device is None else torch.device(device)
    if name == "auto":
        if device.type != "cuda":
            return Precision(device, None, use_grad_scaler=False)
        name = "bf16" if has_native_bf16(device) else "fp16"
    if name == "fp32":
        return Precision(device, None, use_grad_scaler=False)
    if name == "bf16":
        return Precision(device, torch.bfloat16, use_grad_scaler=False)
    if name != "fp16":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {name!r}.")
    if device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA GPU; use 'auto' or 'fp32' on this device.")
    return Precision(device, torch.float16, use_grad_scaler=True)
