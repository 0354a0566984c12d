"""`convlens train`: the training loop, then what runs after it: calibration on val, the test
evaluation, metrics.json, figures and report.html, and the final line."""

from __future__ import annotations

from pathlib import Path

from convlens.api.evaluate import evaluate_run
from convlens.config import TrainConfig
from convlens.data import Dataset
from convlens.device import resolve_device
from convlens.tasks import make_task
from convlens.tasks.base import Task
from convlens.training import loop, numpy_loop
from convlens.training.progress import Progress


def train(cfg: TrainConfig) -> Path:
    """Train as `cfg` says and evaluate the best weights; return the run folder."""
    engine = numpy_loop if cfg.engine == "numpy" else loop
    return engine.fit(cfg, make_task, after_training)


def after_training(task: Task, run_dir: Path, ds: Dataset, log: Progress) -> None:
    """Calibrate the best weights, evaluate them on the test split (writing the run's files,
    on the device it trained on) and print the final line."""
    note = task.calibrate(run_dir, ds)
    if note:
        log.note(note)
    device = str(resolve_device(task.cfg.device))  # where it trained: a GPU, if it did
    metrics = evaluate_run(run_dir, dataset=task.evaluation_data(ds), write=True, device=device)
    log.final(task.summary(metrics), run_dir)
