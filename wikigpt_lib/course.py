"""The course model for the notebooks after training (06 generation, 07 evaluation, 09 chat).

Those notebooks study a model that has already been trained: the one notebook 05 trains into
`runs/course`, or the one `wikigpt train --preset cpu --out runs/cpu` trains. Where neither run
folder exists (a fresh clone, Colab) they must still run top to bottom, so `course_model`
trains a stand-in on the spot: in quick mode (`WIKIGPT_QUICK=1`, the test runs) a tiny model
for 30 steps, otherwise the `cpu-quick` preset, about a minute on a laptop, and says so.

    from wikigpt_lib.course import course_model, course_run_dir
    course = course_model(course_run_dir())
    model = course.model          # a GPT in eval mode
    print(course.description)     # where it came from, in words
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tiktoken
import torch

from wikigpt_lib.checkpoint import load_checkpoint
from wikigpt_lib.config import TrainConfig, train_preset
from wikigpt_lib.data import load_wikitext2, tokenize_split
from wikigpt_lib.device import is_quick, pick_device
from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.tokenizer import get_tokenizer
from wikigpt_lib.train import Trainer

if TYPE_CHECKING:
    from datasets import DatasetDict

# Where the course model is looked for: notebook 05's run first, then the CLI's.
COURSE_RUNS = (Path("runs") / "course", Path("runs") / "cpu")
DEFAULT_RUN_DIR = COURSE_RUNS[0]

# Quick mode trains for seconds: enough for every notebook cell to run, not to learn much.
QUICK_TRAIN = TrainConfig(
    max_steps=30, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=3,
    eval_interval=30, eval_batches=2, progress=False,
)  # fmt: skip


@dataclass
class CourseModel:
    """A trained model and where it came from."""

    model: GPT  # in eval mode, on the chosen device
    description: str  # one line for people, e.g. "the course model from runs/cpu: ..."
    from_checkpoint: bool  # True: loaded from the run folder; False: trained just now
    step: int  # optimizer steps it was trained for
    tokens_seen: int  # training tokens it was trained on
    best_val_loss: float | None  # the validation loss of the checkpoint (None if not measured)


def course_run_dir(start: str | os.PathLike | None = None) -> Path:
    """The run folder of the course model: `runs/course` (notebook 05 trains it there) or
    `runs/cpu` (`wikigpt train --preset cpu --out runs/cpu`), looked for in `start` (default:
    the current folder) and, as the notebooks run in `notebooks/` and `solutions/`, in its
    parent. Returned relative to `start`; when none exists, where notebook 05 would write."""
    start = Path.cwd() if start is None else Path(start)
    in_course_folder = start.resolve().name in ("notebooks", "solutions")
    root = Path("..") if in_course_folder else Path(".")
    for base in dict.fromkeys([Path("."), Path("..")]):
        for run in COURSE_RUNS:
            if (start / base / run / "latest.json").is_file():
                return base / run
    return root / COURSE_RUNS[0]


def will_load(run_dir: str | os.PathLike) -> bool:
    """Whether `course_model(run_dir)` loads that run (True) or trains a stand-in (False): it
    loads an existing run folder, except in quick mode, where the tests train a tiny model."""
    return Path(run_dir).is_dir() and not is_quick()


def course_model(
    run_dir: str | os.PathLike = DEFAULT_RUN_DIR,
    *,
    data: DatasetDict | None = None,
    tokenizer: tiktoken.Encoding | None = None,
    device: str | torch.device | None = None,
    block_size: int | None = None,
) -> CourseModel:
    """The best checkpoint of the course run in `run_dir`, or a model trained here instead.

    Outside quick mode, an existing `run_dir` is loaded (its best checkpoint). Otherwise a
    stand-in is trained on `data` (default: WikiText-2, or the built-in sample when it cannot
    be had) with `tokenizer` (default: the course tokenizer): the tiny preset for 30 steps in
    quick mode, the `cpu-quick` preset otherwise. `block_size` sets the stand-in's context
    length; a loaded checkpoint keeps its own. Training is seeded, so the stand-in is the same
    on every call. Returns a `CourseModel` whose model is in eval mode on `device` (default:
    the best available, see `pick_device`).
    """
    device = pick_device(device)
    run_dir = Path(run_dir)
    if will_load(run_dir):
        return _load_course_run(run_dir, device)
    if data is None:
        data = load_wikitext2(fallback="sample")
    tok = tokenizer if tokenizer is not None else get_tokenizer()
    if is_quick():
        model_config, train_config = GPTConfig.preset("tiny"), QUICK_TRAIN
        description = "a tiny model trained here for 30 steps (quick mode)"
    else:
        # a progress bar: this takes a minute or two, and a silent cell looks like a hang
        model_config, train_config = train_preset("cpu-quick", progress=True)
        description = (
            f"the cpu-quick preset, trained here because {run_dir} was not found: run "
            "notebook 05 (or `wikigpt train --preset cpu --out runs/cpu`) for the real one"
        )
    if block_size is not None:
        model_config = model_config.replace(block_size=block_size)
    torch.manual_seed(train_config.seed)
    model = GPT(model_config)
    train_ids, val_ids = tokenize_split(data["train"], tok), tokenize_split(data["validation"], tok)
    with Trainer(model, train_ids, val_ids, train_config.replace(device=str(device))) as trainer:
        result = trainer.fit()
    return CourseModel(
        model=model.to(device).eval(),
        description=description,
        from_checkpoint=False,
        step=result.steps,
        tokens_seen=result.tokens_seen,
        best_val_loss=result.best_val_loss,
    )


def _load_course_run(run_dir: Path, device: torch.device) -> CourseModel:
    ckpt = load_checkpoint(run_dir, "best", map_location=device)
    model = ckpt.build_model()
    step, tokens = int(ckpt.state.get("step", 0)), int(ckpt.state.get("tokens_seen", 0))
    val = ckpt.state.get("best_val_loss")
    description = (
        f"the course model from {run_dir}: best checkpoint, step {step:,} "
        f"({tokens / 1e6:.1f}M tokens seen)"
        + (f", validation loss {val:.3f}" if val is not None else "")
    )
    return CourseModel(
        model=model.to(device).eval(),
        description=description,
        from_checkpoint=True,
        step=step,
        tokens_seen=tokens,
        best_val_loss=val,
    )
