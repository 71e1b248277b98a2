"""Device and precision choice, seeding and quick mode."""

import pytest
import torch

from wikigpt_lib import device as dev


@pytest.mark.parametrize(
    "value, expected",
    [("", False), ("0", False), ("no", False), ("1", True), ("true", True), ("ON", True)],
)
def test_quick_mode_values(monkeypatch, value, expected):
    monkeypatch.setenv("WIKIGPT_QUICK", value)
    assert dev.is_quick() is expected
    assert dev.quick(1000, 10) == (10 if expected else 1000)


def test_quick_mode_unset_is_full(monkeypatch):
    monkeypatch.delenv("WIKIGPT_QUICK", raising=False)
    assert dev.quick("full", "small") == "full"


def test_quick_mode_rejects_garbage(monkeypatch):
    monkeypatch.setenv("WIKIGPT_QUICK", "maybe")
    with pytest.raises(ValueError, match="WIKIGPT_QUICK"):
        dev.is_quick()


def test_seed_everything_repeats_all_streams():
    import random

    import numpy as np

    def draw():
        g = dev.seed_everything(123)
        return (
            random.random(),
            np.random.rand(),
            torch.rand(3).tolist(),
            torch.rand(2, generator=g).tolist(),
        )

    assert draw() == draw()


def test_cpu_runs_in_fp32():
    p = dev.pick_precision("cpu")
    assert p.device.type == "cpu" and p.autocast_dtype is None and not p.use_grad_scaler
    assert p.name == "fp32"
    with p.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize(
    "capability, dtype, scaler",
    [
        ((7, 5), torch.float16, True),  # T4: bf16 only emulated, so fp16 with loss scaling
        ((7, 0), torch.float16, True),  # V100
        ((8, 0), torch.bfloat16, False),  # A100
        ((9, 0), torch.bfloat16, False),  # H100
    ],
)
def test_cuda_precision_follows_compute_capability(monkeypatch, capability, dtype, scaler):
    # Even where torch claims bf16 support (it counts emulation), only capability >= 8.0 gets bf16.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    p = dev.pick_precision(torch.device("cuda"))
    assert p.autocast_dtype == dtype and p.use_grad_scaler is scaler


def test_asking_for_a_missing_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        dev.pick_device("cuda")


@pytest.mark.parametrize(
    "name, dtype, scaler",
    [("fp32", None, False), ("bf16", torch.bfloat16, False), ("fp16", torch.float16, True)],
)
def test_named_precisions_on_cuda(monkeypatch, name, dtype, scaler):
    """The one precision picker: a name asked for is what the Trainer and chat get."""
    p = dev.pick_precision(torch.device("cuda"), name)
    assert p.autocast_dtype == dtype and p.use_grad_scaler is scaler and p.name == name


def test_named_precision_errors():
    assert dev.pick_precision("cpu", "bf16").autocast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16' needs a CUDA GPU"):
        dev.pick_precision("cpu", "fp16")
    with pytest.raises(ValueError, match="must be auto, fp32, bf16 or fp16"):
        dev.pick_precision("cpu", "fp8")
