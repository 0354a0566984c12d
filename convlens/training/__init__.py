"""Training: the loop, optimisers and schedules, checkpoints and run folders."""

from __future__ import annotations

from typing import Any

__all__ = ["fit"]


def fit(cfg: Any):
    """Train as `cfg` says; return the run folder (see convlens.training.loop.fit)."""
    if cfg.engine == "numpy":
        from convlens.training.numpy_loop import fit as _fit
    else:
        from convlens.training.loop import fit as _fit

    return _fit(cfg)
