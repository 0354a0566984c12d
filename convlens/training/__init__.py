"""Training: the epoch loop, optimisers and schedules, resume state, run folders, torchrun.

It imports no task: the caller (convlens.api.train) hands `fit` the task's training hooks
(convlens.training.hooks) and what to do once training ends.
"""

from __future__ import annotations

from pathlib import Path

from convlens.config import TrainConfig
from convlens.training import loop, numpy_loop
from convlens.training.hooks import Finish, TrainingHooks

__all__ = ["fit"]


def fit(cfg: TrainConfig, hooks: TrainingHooks, finish: Finish | None = None) -> Path:
    """Train as `cfg` says, on its engine; return the run folder (convlens.training.loop.fit)."""
    engine = numpy_loop if cfg.engine == "numpy" else loop
    return engine.fit(cfg, hooks, finish)
