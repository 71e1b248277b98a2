"""The machine a benchmark ran on: the facts every result file records, and one line of them.

    from benchmarks.machine import machine_facts, machine_line
    result["machine"] = machine_facts(device)   # in the JSON
    f"Machine: {machine_line(result['machine'])}."  # in the markdown

The keys are those the benchmarks recorded before they shared this module, so older result
files compare key by key; machine_line also reads those older records, which lack some keys.
"""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import metadata
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor(), else
    "unknown"."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(distribution: str) -> str | None:
    """The installed version of a distribution, without importing it; None if not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_facts(device: torch.device | str | None = None) -> dict:
    """Facts about this machine and software, for a benchmark's result file.

    platform, python, cpu_model, cpu_cores (os.cpu_count()), torch (its version),
    torch_threads (torch.get_num_threads() now: call this where the benchmark's threads are
    set), transformers and tiktoken (versions; None when not installed), and gpu (the CUDA
    device's name) only when `device` is a CUDA device.
    """
    facts = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": _version("transformers"),
        "tiktoken": _version("tiktoken"),
    }
    if device is not None and torch.device(device).type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return facts


def machine_line(facts: dict) -> str:
    """The facts as one line of markdown, e.g. "AMD EPYC, 2 cores, Linux-6.1-x86_64, Python
    3.11.7, torch 2.13.0+cpu (2 threads), transformers 5.25.0, tiktoken 0.14.0"; a GPU comes
    first. Facts that are missing (older result files) or None are left out."""
    cpu = f"{facts.get('cpu_model') or 'unknown CPU'}"
    if facts.get("cpu_cores"):
        cpu += f", {facts['cpu_cores']} cores"
    parts = [f"{facts['gpu']} (host: {cpu})" if facts.get("gpu") else cpu]
    if facts.get("platform"):
        parts.append(facts["platform"])
    if facts.get("python"):
        parts.append(f"Python {facts['python']}")
    if facts.get("torch"):
        threads = facts.get("torch_threads")
        parts.append(f"torch {facts['torch']}" + (f" ({threads} threads)" if threads else ""))
    parts += [f"{name} {facts[name]}" for name in ("transformers", "tiktoken") if facts.get(name)]
    return ", ".join(parts)
