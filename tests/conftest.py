"""Shared test settings and fixtures (the builders behind them are in helpers.py)."""

import atexit
import os
import shutil
import socket
import tempfile

import numpy as np
import pytest
import torch
from helpers import (
    TINY_VOCAB,
    make_preset_model,
    make_tiny_config,
    make_tiny_model,
    make_train_config,
)

from wikigpt_lib.data import tokenize_split
from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.sample_corpus import sample_wikitext
from wikigpt_lib.tokenizer import get_tokenizer
from wikigpt_lib.train import TrainConfig

# The unit tests use tiny models, for which a second thread brings nothing, and OpenMP threads
# that spin-wait slow down tenfold when another process holds the other core.
torch.set_num_threads(1)

# Hypothesis keeps its files (example database, caches of constants and Unicode tables) in
# ./.hypothesis unless told otherwise: a test run would leave that folder in the clone. They go
# to a temporary folder, removed at exit, and the example database is off (nothing is replayed
# from earlier runs: a failure prints its falsifying example, which an @example can pin).
# A HYPOTHESIS_STORAGE_DIRECTORY set by the caller is kept; Hypothesis reads the variable at
# its first file access, which comes after this conftest is imported.
if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
    _hypothesis_dir = tempfile.mkdtemp(prefix="wikigpt-hypothesis-")
    atexit.register(shutil.rmtree, _hypothesis_dir, ignore_errors=True)
    os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = _hypothesis_dir
try:
    from hypothesis import settings
except ImportError:  # only the property tests need it, and they import it themselves
    pass
else:
    settings.register_profile("wikigpt", database=None)
    settings.load_profile("wikigpt")


@pytest.fixture(scope="session")
def tiny_config() -> GPTConfig:
    """The tiny test GPT's config: 64 ids, 16 positions, 2 layers, 2 heads, width 32, biases."""
    return make_tiny_config()


@pytest.fixture
def tiny_model() -> GPT:
    """A fresh tiny test GPT (`tiny_config`), initialised under seed 0, in eval mode."""
    return make_tiny_model().eval()


@pytest.fixture
def tiny_preset_model() -> GPT:
    """A fresh GPT of the `tiny` preset (the course tokenizer's 8192 ids, 32 positions),
    initialised under seed 0, in eval mode: for tests that encode text or save checkpoints."""
    return make_preset_model().eval()


@pytest.fixture(scope="session")
def tiny_train_config() -> TrainConfig:
    """`make_train_config()`: 4 quiet, seeded fp32 CPU steps, evaluations every 2 steps."""
    return make_train_config()


@pytest.fixture(scope="session")
def token_splits() -> tuple[np.ndarray, np.ndarray]:
    """Random (train, val) token ids for the tiny model: 4,000 and 1,000 ids below 64, from
    one generator seeded 0. Shared by the session: do not modify them."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, TINY_VOCAB, 4000).astype(np.uint16)
    return train, rng.integers(0, TINY_VOCAB, 1000).astype(np.uint16)


@pytest.fixture(scope="session")
def sample_tokens(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """The built-in sample corpus's (train, valid) splits in the course tokenizer's ids.
    Shared by the session: do not modify them."""
    rows, enc = sample_wikitext(), get_tokenizer()
    cache = tmp_path_factory.mktemp("token_cache")
    return (
        tokenize_split(rows["train"], enc, cache_dir=cache),
        tokenize_split(rows["valid"], enc, cache_dir=cache),
    )


@pytest.fixture
def no_network(monkeypatch):
    """Fail any test that tries to open a connection (the tests must pass offline)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
