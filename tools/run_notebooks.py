"""Execute the course notebooks in place, on the real data, and strip volatile metadata.

The committed notebooks keep the outputs of a full (not quick) run on the real WikiText-2, so a
reader sees real results on GitHub, and nbval compares later runs against them.

    WIKIGPT_DATA_DIR=../shared/data/wikitext-2 TIKTOKEN_CACHE_DIR=../shared/data/tiktoken-cache \\
        python tools/run_notebooks.py notebooks/01_tokenization.ipynb solutions/01_*.ipynb

`--clean-only` strips metadata without executing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

# Only these notebook-level metadata keys are kept; everything else (widget state, versions,
# timings) changes from machine to machine and would make every run a diff.
KEEP_NB_METADATA = {"kernelspec", "language_info", "colab"}
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
KEEP_CELL_METADATA = {"tags", "id"}


def clean(nb: nbformat.NotebookNode) -> None:
    """Strip volatile metadata in place and check the notebook ran top to bottom."""
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_NB_METADATA}
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
        if cell.cell_type != "code":
            continue
        # Widget outputs (tqdm's progress bars in a notebook) are dropped: their state is not
        # kept, and their text fallback is their first frame ("0%"), which would mislead.
        cell.outputs = [o for o in cell.get("outputs", []) if not _is_widget(o)]
        for out in cell.outputs:
            out.get("metadata", {}).pop("execution", None)


def _is_widget(output: nbformat.NotebookNode) -> bool:
    return "application/vnd.jupyter.widget-view+json" in output.get("data", {})


def run(path: Path, timeout: int) -> None:
    nb = nbformat.read(path, as_version=4)
    if os.environ.get("WIKIGPT_QUICK", "0") not in ("", "0"):
        sys.exit("Unset WIKIGPT_QUICK: committed outputs come from a full run.")
    start = time.time()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
    )
    client.execute()
    clean(nb)
    nbformat.write(nb, path)
    size = path.stat().st_size
    print(f"{path}: ran in {time.time() - start:.0f} s, {size / 1e3:.0f} KB")
    if size > 2_000_000:
        print(f"  warning: {path} is over 2 MB; shrink its figures or outputs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--clean-only", action="store_true")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    if not args.clean_only and "WIKIGPT_DATA_DIR" not in os.environ:
        sys.exit("Set WIKIGPT_DATA_DIR to the real WikiText-2 files first.")
    for path in args.paths:
        if args.clean_only:
            nb = nbformat.read(path, as_version=4)
            clean(nb)
            nbformat.write(nb, path)
        else:
            run(path, args.timeout)


if __name__ == "__main__":
    main()
