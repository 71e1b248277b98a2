"""Helpers every layer of the library shares: atomic file writes with ordinary permissions, and
the plain model inside DDP or torch.compile wrappers. Imports nothing from the library."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (POSIX; a no-op elsewhere)."""
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` gives a new file under the current umask (0644 under the usual 022);
    tempfile makes its files 0600 and folders 0700, which a run's files should not be."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode `mkdir` gives a new folder under the current umask (0755 under 022)."""
    return 0o777 & ~_umask()


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(temporary path) beside `path`, flush the file to disk, then rename it over
    `path`: readers see the old file or the whole new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes files private; these are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as indented JSON (plus a final newline) at `path`, written atomically."""
    text = json.dumps(obj, indent=2) + "\n"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DistributedDataParallel (`.module`) and torch.compile
    (`._orig_mod`) wrappers, in whatever order they were applied."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner
