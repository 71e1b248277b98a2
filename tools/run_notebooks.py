"""Execute the course notebooks in place, on the real data, and strip volatile metadata.

The committed notebooks keep the outputs of a full (not quick) run on the real WikiText-2, so a
reader sees real results on GitHub, and nbval compares later runs against them.

    WIKIGPT_DATA_DIR=../shared/data/wikitext-2 TIKTOKEN_CACHE_DIR=../shared/data/tiktoken-cache \\
        python tools/run_notebooks.py notebooks/01_tokenization.ipynb solutions/01_*.ipynb

`--clean-only` strips metadata without executing; `--no-write` runs and times a notebook but
leaves the file as it is. `--sample` runs a copy instead, without
the real data (the built-in sample corpus, as on an offline machine), and leaves the file as
it is. Each run's total time and its time to first result (the end of the first code cell
that shows something) are printed and, with `--times FILE`, appended to FILE as JSON lines.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image

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
            if "image/png" in out.get("data", {}):
                out["data"]["image/png"] = small_png(out["data"]["image/png"])


def small_png(b64: str) -> str:
    """A figure's PNG (base64) as a 256-colour image on white, if that is smaller.

    Plots have few colours, but their anti-aliased edges make full-colour PNGs large; a palette
    halves most figures with no visible change and keeps each notebook under 250 KB. An image
    that already has a palette is left alone, so cleaning twice changes nothing.
    """
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    if image.mode == "P":
        return b64
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))  # transparent parts: the white they show on
    buffer = io.BytesIO()
    flat.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buffer, "png", optimize=True)
    smaller = base64.b64encode(buffer.getvalue()).decode()
    return smaller if len(smaller) < len(b64) else b64


def _is_widget(output: nbformat.NotebookNode) -> bool:
    return "application/vnd.jupyter.widget-view+json" in output.get("data", {})


def first_result_seconds(nb: nbformat.NotebookNode, start: float) -> float | None:
    """Seconds from `start` to the end of the first code cell with a visible output."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.get("outputs"):
            reply = cell.metadata.get("execution", {}).get("shell.execute_reply")
            if reply:
                return dt.datetime.fromisoformat(reply.replace("Z", "+00:00")).timestamp() - start
    return None


# --sample: as on a fresh offline machine. A full run (no quick mode), without the real data
# or GPT-2's tokenizer files, and the Hugging Face hub offline.
SAMPLE_UNSET = ("WIKIGPT_QUICK", "WIKIGPT_DATA_DIR", "TIKTOKEN_CACHE_DIR")
SAMPLE_SET = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@contextlib.contextmanager
def kernel_environment(sample: bool) -> Iterator[None]:
    """The environment a kernel started inside inherits: the offline one with `sample`."""
    if not sample:
        yield
        return
    saved = {k: os.environ.get(k) for k in (*SAMPLE_UNSET, *SAMPLE_SET)}
    for k in SAMPLE_UNSET:
        os.environ.pop(k, None)
    os.environ.update(SAMPLE_SET)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(
    path: Path, timeout: int, sample: bool = False
) -> tuple[nbformat.NotebookNode, float, float | None]:
    """Run the notebook at `path` top to bottom in a kernel started in its folder, offline on
    the sample corpus with `sample`. Returns the executed notebook (not written anywhere), its
    run time and its time to first result, in seconds. A failing cell raises nbclient's
    CellExecutionError, which carries the cell's traceback."""
    nb = nbformat.read(path, as_version=4)
    start = time.time()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=True,
    )
    with kernel_environment(sample):
        client.execute()
    return nb, time.time() - start, first_result_seconds(nb, start)


def run(
    path: Path, timeout: int, sample: bool = False, times: Path | None = None, write: bool = True
) -> None:
    """Execute `path` and store it cleaned (unless `sample` or not `write`); print, and with
    `times` record, its run time, time to first result and size."""
    if not sample and os.environ.get("WIKIGPT_QUICK", "0") not in ("", "0"):
        sys.exit("Unset WIKIGPT_QUICK: committed outputs come from a full run.")
    nb, seconds, first = execute(path, timeout, sample)
    clean(nb)
    text = nbformat.writes(nb) + "\n"  # as nbformat.write stores it
    if write and not sample:
        path.write_text(text, encoding="utf-8")
    size = len(text.encode())
    data = "the built-in sample corpus" if sample else "WikiText-2"
    print(f"{path}: ran in {seconds:.0f} s on {data}, first result after {first or 0:.1f} s, "
          f"{size / 1e3:.0f} KB")  # fmt: skip
    if size > 250_000:
        print(f"  warning: {path} is over 250 KB; shrink its figures or outputs")
    if times is not None:
        record = {
            "notebook": str(path), "data": "sample" if sample else "wikitext-2",
            "seconds": round(seconds, 1), "first_result_s": first and round(first, 1),
            "kb": round(size / 1e3), "threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "date": dt.date.today().isoformat(),
        }  # fmt: skip
        with times.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--clean-only", action="store_true")
    parser.add_argument("--sample", action="store_true", help="run a copy on the sample corpus")
    parser.add_argument("--times", type=Path, help="append each run's timings to this file")
    parser.add_argument("--no-write", action="store_true", help="time a run, keep the file")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    if not (args.clean_only or args.sample) and "WIKIGPT_DATA_DIR" not in os.environ:
        sys.exit("Set WIKIGPT_DATA_DIR to the real WikiText-2 files first.")
    for path in args.paths:
        if args.clean_only:
            nb = nbformat.read(path, as_version=4)
            clean(nb)
            nbformat.write(nb, path)
        else:
            run(path, args.timeout, args.sample, args.times, write=not args.no_write)


if __name__ == "__main__":
    main()
