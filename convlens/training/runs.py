"""Run folders: never overwritten (runs/train, runs/train2, ...), results.csv one row per epoch."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from convlens.errors import ConvlensError
from convlens.training.checkpoint import atomic_write_bytes

RESULT_COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds"]  # classify


def new_run_dir(
    requested: str | Path | None, base: str | Path = "runs", create: bool = True
) -> Path:
    """A fresh folder: `requested` (or runs/train), with 2, 3, ... appended if it is taken."""
    path = Path(requested) if requested else Path(base) / "train"
    candidate, n = path, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = path.with_name(f"{path.name}{n}")
    if create:
        candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def existing_run_dir(requested: str | Path | None) -> Path:
    """The folder of a run to resume; it must hold a saved state."""
    if not requested:
        raise ConvlensError("--resume needs --run DIR: the run folder to continue")
    path = Path(requested)
    if not (path / "config.yaml").is_file():
        raise ConvlensError(f"{path}: not a convlens run folder (no config.yaml) to resume")
    return path


def write_results(path: Path, rows: list[dict]) -> None:
    """Rewrite results.csv from the epoch rows (the training state holds the same rows)."""
    buf = io.StringIO()
    columns = list(rows[0]) if rows else RESULT_COLUMNS  # other tasks name their own score
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row[k]) for k in columns})
    atomic_write_bytes(path, buf.getvalue().encode())


def read_results(path: Path) -> list[dict]:
    """Rows of a results.csv as numbers."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _fmt(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"
