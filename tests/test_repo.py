"""The repository's own rules about notebooks: each .ipynb is the only source of its notebook
(no jupytext pairs: a second copy nothing keeps in step drifts, as dev/drafts did), and the
committed notebooks carry no volatile metadata (what tools/run_notebooks.py strips)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import nbformat
import pytest
from helpers import load_tool

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".ipynb_checkpoints", "node_modules"}
# jupytext's own configuration files, which pair notebooks without touching them
JUPYTEXT_CONFIGS = {"jupytext.toml", ".jupytext", ".jupytext.toml", ".jupytext.yml",
                    ".jupytext.yaml", ".jupytext.json", ".jupytext.py"}  # fmt: skip
# A jupytext header: a front-matter block at the very top (`# ---` in a script, `---` in
# markdown) that names jupytext.
HEADER = re.compile(r"\A(?:#|//)? ?---\s*\n(?:.*\n){0,40}?(?:#|//)?\s*jupytext:", re.MULTILINE)


def repo_files() -> list[Path]:
    """The clone's files: tracked and untracked, minus what git ignores (.venv, runs/...);
    without git, a walk that skips the virtual environment and caches."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        files = [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        files = []
        for folder, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith("_cache")]
            files += [Path(folder) / n for n in names]
    return [f for f in files if f.is_file() and not SKIP_DIRS & set(f.relative_to(ROOT).parts)]


FILES = repo_files()
NOTEBOOKS = sorted(f for f in FILES if f.suffix == ".ipynb")


def test_the_notebooks_are_found():
    names = {f.relative_to(ROOT).as_posix() for f in NOTEBOOKS}
    assert {"notebooks/01_tokenization.ipynb", "solutions/09_chat_solutions.ipynb"} <= names


def test_no_jupytext_paired_sources():
    """Edit the .ipynb itself (README, Contributing); jupytext pairs are not used."""
    paired = []
    for f in FILES:
        rel = f.relative_to(ROOT).as_posix()
        if f.name in JUPYTEXT_CONFIGS:
            paired.append(f"{rel}: a jupytext configuration file")
        elif f.suffix in (".py", ".md") and HEADER.match(f.read_text(errors="replace")[:4000]):
            paired.append(f"{rel}: a jupytext header")
        elif f.suffix == ".ipynb" and "jupytext" in json.loads(f.read_text())["metadata"]:
            paired.append(f"{rel}: a 'jupytext' key in the notebook's metadata")
    pyproject = (ROOT / "pyproject.toml").read_text()
    if re.search(r"^\[tool\.jupytext", pyproject, re.MULTILINE):
        paired.append("pyproject.toml: a [tool.jupytext] section")
    assert not paired, "jupytext pairs found; the .ipynb files are the only sources:\n" + "\n".join(
        paired
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_notebook_has_no_volatile_metadata(path):
    """What tools/run_notebooks.py strips is absent: `--clean-only` would change nothing."""
    nb = nbformat.read(path, as_version=4)
    cleaned = copy.deepcopy(nb)
    load_tool("run_notebooks").clean(cleaned)
    assert nb.metadata == cleaned.metadata, (
        f"run `python tools/run_notebooks.py --clean-only {path.relative_to(ROOT)}`"
    )
    for i, (cell, kept) in enumerate(zip(nb.cells, cleaned.cells, strict=True)):
        assert cell == kept, (
            f"cell {i} has volatile metadata; run "
            f"`python tools/run_notebooks.py --clean-only {path.relative_to(ROOT)}`"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_notebook_is_under_250_kb(path):
    """Small enough to open quickly on GitHub and in Colab (figures at 80 dpi, 256 colours)."""
    size = path.stat().st_size
    assert size < 250_000, f"{path.name} is {size:,} bytes: shrink its figures or outputs"


def test_small_png_keeps_the_picture_and_is_idempotent():
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    fig, ax = plt.subplots(figsize=(4, 2), dpi=80)
    ax.plot(np.sin(np.linspace(0, 20, 400)), label="a sine")
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", transparent=True)
    plt.close(fig)
    original = base64.b64encode(buffer.getvalue()).decode()
    small = load_tool("run_notebooks").small_png(original)
    assert len(small) < len(original)
    before = Image.open(io.BytesIO(base64.b64decode(original)))
    after = Image.open(io.BytesIO(base64.b64decode(small)))
    assert after.mode == "P" and after.size == before.size
    # transparent parts become white, not black
    assert after.convert("RGB").getpixel((0, 0)) == (255, 255, 255)
    assert load_tool("run_notebooks").small_png(small) == small
