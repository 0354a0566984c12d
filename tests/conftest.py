"""Test-wide settings."""

import os

# Tests run two at a time (pytest -n 2 --dist loadfile: a module fixture, often a trained run,
# is built once) on two cores: one torch thread per process, or the
# OpenMP threads of the two processes fight over the cores and each step slows down 100-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
