"""Experiment trackers a run logs to besides results.csv (`--log tensorboard,mlflow`).

    scalars.py          a metrics document flattened to named numbers
    to_tensorboard.py   event files in RUN/tensorboard: per-epoch scalars, figures, hparams
    to_mlflow.py        an MLflow run: params, per-epoch metrics, weights, report, exports

Each tracker's library is imported when a run uses it (the `track` extra installs both).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

from convlens.config import TrainConfig, trackers
from convlens.errors import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # tracker -> the package it needs


class Tracker(Protocol):
    """One tracker of one run: started before its first epoch is logged."""

    def epoch(self, row: dict) -> None: ...

    def finish(self, metrics: dict) -> None: ...

    def close(self, status: str) -> None: ...


def check_installed(cfg: TrainConfig) -> None:
    """Refuse, before training starts, a tracker whose package is not installed."""
    for name in trackers(cfg):
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(f"--log {name} needs the {PACKAGES[name]} package: "
                              "pip install 'convlens[track]'")  # fmt: skip


class Tracking:
    """The trackers `cfg.log` names for one training: opened at its first epoch's end (the run
    folder is known then), given each epoch's row and the final metrics, closed at the end."""

    def __init__(self, cfg: TrainConfig) -> None:
        check_installed(cfg)
        self.names = trackers(cfg)
        self.open: list[Tracker] | None = None

    def __call__(self, cfg: Any, run_dir: Path, row: dict) -> None:
        """training.hooks.EpochEnd: log one epoch's row."""
        for tracker in self._start(cfg, run_dir):
            tracker.epoch(row)

    def finish(self, cfg: Any, run_dir: Path, metrics: dict) -> None:
        """Log the evaluation's metrics, figures and files; the trackers end their runs."""
        for tracker in self._start(cfg, run_dir):
            tracker.finish(metrics)
        self.close("FINISHED")

    def close(self, status: str) -> None:
        for tracker in self.open or []:
            tracker.close(status)
        self.open = []

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self.open:  # training stopped: by an error, a pruning sweep, or Ctrl-C
            self.close("KILLED" if kind is not None and not issubclass(kind, Exception)
                       else "FAILED")  # fmt: skip

    def _start(self, cfg: Any, run_dir: Path) -> list[Tracker]:
        if self.open is None:
            self.open = [_open(name, cfg, Path(run_dir)) for name in self.names]
        return self.open


def _open(name: str, cfg: Any, run_dir: Path) -> Tracker:
    if name == "tensorboard":
        from convlens.track.to_tensorboard import TensorBoardTracker

        return TensorBoardTracker(cfg, run_dir)
    from convlens.track.to_mlflow import MlflowTracker

    return MlflowTracker(cfg, run_dir)


def log_export(run_dir: str | Path, exported: str | Path) -> bool:
    """Add an exported model (ONNX, TorchScript) to the MLflow run of `run_dir`, if it has one."""
    from convlens.track.to_mlflow import add_artifact

    return add_artifact(Path(run_dir), Path(exported))
