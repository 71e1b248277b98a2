"""course_model: load the course run when there is one, else train a seeded stand-in."""

from pathlib import Path

import pytest
import torch
from helpers import make_preset_model

from wikigpt_lib.checkpoint import save_checkpoint
from wikigpt_lib.course import course_model, will_load
from wikigpt_lib.data import load_corpus
from wikigpt_lib.device import QUICK_ENV
from wikigpt_lib.model import GPTConfig


@pytest.fixture(scope="module")
def sample():
    return load_corpus("sample")


@pytest.fixture
def course_run(tmp_path):
    model = make_preset_model(3)
    state = {"step": 1200, "tokens_seen": 2_457_600, "best_val_loss": 4.9651}
    save_checkpoint(tmp_path / "cpu", model=model, state=state, is_best=True)
    return tmp_path / "cpu", model


def test_an_existing_run_is_loaded(course_run, monkeypatch):
    monkeypatch.delenv(QUICK_ENV, raising=False)
    run_dir, saved = course_run
    assert will_load(run_dir) and not will_load(run_dir.parent / "missing")
    course = course_model(run_dir, device="cpu")
    assert course.from_checkpoint and not course.model.training
    assert (course.step, course.tokens_seen, course.best_val_loss) == (1200, 2_457_600, 4.9651)
    assert course.description == (
        f"the course model from {run_dir}: best checkpoint, step 1,200 (2.5M tokens seen), "
        "validation loss 4.965"
    )
    for (name, p), q in zip(
        course.model.state_dict().items(), saved.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_quick_mode_trains_a_tiny_stand_in_even_when_the_run_exists(
    course_run, monkeypatch, sample
):
    monkeypatch.setenv(QUICK_ENV, "1")
    assert not will_load(course_run[0])
    course = course_model(course_run[0], data=sample, device="cpu")
    assert not course.from_checkpoint and "quick mode" in course.description
    assert course.step == 30 and course.tokens_seen == 30 * 8 * 32
    assert course.model.config.n_layer == GPTConfig.preset("tiny").n_layer
    assert not course.model.training and course.best_val_loss < 9.0  # it learned something


def test_the_stand_in_is_seeded_and_takes_a_block_size(tmp_path, monkeypatch, sample):
    monkeypatch.setenv(QUICK_ENV, "1")
    a = course_model(tmp_path / "missing", data=sample, device="cpu", block_size=16)
    b = course_model(tmp_path / "missing", data=sample, device="cpu", block_size=16)
    assert a.model.config.block_size == 16 and a.tokens_seen == 30 * 8 * 16
    for (name, p), q in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_the_course_run_is_found_beside_or_above_the_notebooks(tmp_path):
    """Notebook 05's runs/course first, then the CLI's runs/cpu; from notebooks/ they are
    one folder up; with neither, the folder notebook 05 would write."""
    from wikigpt_lib.course import course_run_dir

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    assert course_run_dir(notebooks) == Path("..") / "runs" / "course"
    assert course_run_dir(tmp_path) == Path("runs") / "course"
    for name in ("cpu", "course"):  # the CLI's run alone, then both
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "latest.json").write_text("{}")
        expected = Path("..") / "runs" / name
        assert course_run_dir(notebooks) == expected
        assert course_run_dir(tmp_path) == Path("runs") / name
