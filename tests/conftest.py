"""Shared test settings."""

import torch

# The unit tests use tiny models, for which a second thread brings nothing, and OpenMP threads
# that spin-wait slow down tenfold when another process holds the other core.
torch.set_num_threads(1)
