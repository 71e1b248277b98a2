"""Shared test settings."""

import atexit
import os
import shutil
import tempfile

import torch

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
