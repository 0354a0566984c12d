"""Run: a run folder and its files, each named here once.

    RUN/config.yaml         every resolved setting          RUN/results.csv   a row per epoch
    RUN/metrics.json        the final test metrics          RUN/report.html   the report
    RUN/weights/best.safetensors, last.safetensors          RUN/state/        resume state
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from convlens.errors import ModelError
from convlens.runs.atomic import atomic_write_bytes

RESULT_COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds"]  # classify


class Run:
    """A run folder (it may not exist yet, or hold only some of its files)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @classmethod
    def of_weights(cls, weights: str | Path) -> Run | None:
        """The run folder a weights file sits in (RUN/weights/NAME), None for a loose file."""
        weights = Path(weights)
        return cls(weights.parent.parent) if weights.parent.name == "weights" else None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def results(self) -> Path:
        return self.path / "results.csv"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def weights_dir(self) -> Path:
        return self.path / "weights"

    @property
    def best(self) -> Path:
        return self.weights_dir / "best.safetensors"

    @property
    def last(self) -> Path:
        return self.weights_dir / "last.safetensors"

    @property
    def state(self) -> Path:
        return self.path / "state" / "last.safetensors"

    def is_run(self) -> bool:
        """Whether training wrote this folder (it holds a config.yaml)."""
        return self.config.is_file()

    def settings(self) -> dict:
        """config.yaml as a mapping ({} when the folder has none)."""
        return (yaml.safe_load(self.config.read_text()) or {}) if self.is_run() else {}

    def read_results(self) -> list[dict]:
        """Rows of results.csv as numbers ([] when there is none)."""
        if not self.results.is_file():
            return []
        with open(self.results, newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]

    def write_results(self, rows: list[dict]) -> None:
        """Rewrite results.csv from the epoch rows (the training state holds the same rows)."""
        buf = io.StringIO()
        columns = list(rows[0]) if rows else RESULT_COLUMNS  # other tasks name their own score
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row[k]) for k in columns})
        atomic_write_bytes(self.results, buf.getvalue().encode())

    def write_metrics(self, metrics: dict) -> None:
        """Write metrics.json."""
        self.metrics.write_text(json.dumps(metrics, indent=2) + "\n")


def resolve_weights(run: str | Path) -> Path:
    """RUN is a run folder (its best weights, else its last) or a weights file."""
    path = Path(run)
    if path.is_dir():
        folder = Run(path)
        for weights in (folder.best, folder.last):
            if weights.is_file():
                return weights
        raise ModelError(f"{path}: no weights/best.safetensors in this folder (not a convlens run?)")
    if path.is_file():
        return path
    raise ModelError(f"{path}: no such run folder or weights file")


def _fmt(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"
