"""`convlens train`: the training loop, then what runs after it: calibration on val, the test
evaluation, metrics.json, figures and report.html, the trackers (--log), and the final line."""

from __future__ import annotations

from pathlib import Path

from convlens.api.evaluate import evaluate_run
from convlens.api.folds import is_folds, train_folds
from convlens.config import TrainConfig
from convlens.data import Dataset
from convlens.device import resolve_device
from convlens.tasks import make_task
from convlens.tasks.base import Task
from convlens.track import Tracking
from convlens.training import loop, numpy_loop
from convlens.training.hooks import EpochEnd
from convlens.training.progress import Progress


def train(cfg: TrainConfig, epoch_end: EpochEnd | None = None, evaluate: bool = True) -> Path:
    """Train as `cfg` says and evaluate the best weights; return the run folder. `epoch_end`
    runs after each epoch, after the trackers (a sweep prunes there); evaluate=False skips
    calibration, the test split and the report (a sweep's trials)."""
    if is_folds(cfg):  # every fold, then their summary
        return train_folds(cfg, train)
    engine = numpy_loop if cfg.engine == "numpy" else loop
    with Tracking(cfg) as tracking:

        def finish(task: Task, run_dir: Path, ds: Dataset, log: Progress) -> None:
            metrics = after_training(task, run_dir, ds, log) if evaluate else {}
            tracking.finish(task.cfg, run_dir, metrics)

        def each_epoch(cfg: TrainConfig, run_dir: Path, row: dict) -> None:
            tracking(cfg, run_dir, row)
            if epoch_end is not None:
                epoch_end(cfg, run_dir, row)

        return engine.fit(cfg, make_task, finish, each_epoch)


def after_training(task: Task, run_dir: Path, ds: Dataset, log: Progress) -> dict:
    """Calibrate the best weights, evaluate them on the test split (writing the run's files,
    on the device it trained on) and print the final line; the metrics."""
    note = task.calibrate(run_dir, ds)
    if note:
        log.note(note)
    device = str(resolve_device(task.cfg.device))  # where it trained: a GPU, if it did
    metrics = evaluate_run(run_dir, dataset=task.evaluation_data(ds), write=True, device=device)
    log.final(task.summary(metrics), run_dir)
    return metrics
