"""A run's data: what training loads (with its channel stats and mirroring) and, for a finished
run, the same dataset split as that run split it."""

from __future__ import annotations

from pathlib import Path

from convlens.config import TrainConfig, make_config
from convlens.data import Dataset, load_dataset
from convlens.data.batches import channel_stats
from convlens.data.folds import fold_dataset
from convlens.errors import ConfigError, ConvlensError
from convlens.runs.folder import Run
from convlens.training.hooks import TrainingHooks
from convlens.training.progress import Progress


def load_data(
    cfg: TrainConfig, log: Progress, hooks: TrainingHooks | None = None
) -> tuple[Dataset, list[float], list[float], str]:
    """The task's dataset, its per-channel mean and std, and how training mirrors images."""
    ds = load_dataset(
        cfg.data,
        data_dir=cfg.data_dir,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        strict=cfg.strict,
        image_size=cfg.image_size,
        workers=cfg.workers,
        group_by=cfg.group_by,
    )
    ds = one_fold(ds, cfg)
    if hooks is not None:
        ds = hooks.prepare(ds)
    side = min(ds.image_size)
    if cfg.translate >= side:  # every shifted image would be blank, or nearly
        raise ConfigError(f"setting 'translate' must be below the image side ({side} pixels "
                          f"here), got {cfg.translate}")  # fmt: skip
    for note in ds.notes:
        log.note(note)
    mean, std = channel_stats(ds.train)
    hflip = cfg.hflip
    if hflip == "auto":  # airbench: every image mirrored on every other epoch
        hflip = "alternate" if ds.hflip else "off"
    return ds, mean, std, hflip


def load_run_data(data: str | None, run_dir: Path | None, download: bool = True) -> Dataset:
    """`data` (or, by default, the dataset the run in `run_dir` trained on), split as that run
    split it (its seed and val share).

    The default comes from the run folder's own config.yaml, never from the weights header: a
    weights file is data, and must not choose what is read, written or downloaded."""
    run = Run(run_dir) if run_dir else None
    own = run is not None and run.is_run()
    cfg = make_config(run.config) if own else make_config()
    spec = data or (cfg.data if own else None)
    if not spec:
        raise ConvlensError("a weights file outside its run folder: pass --data")
    ds = load_dataset(
        spec,
        data_dir=cfg.data_dir,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        image_size=cfg.image_size,
        download=download,
        group_by=cfg.group_by if own and not data else None,
    )
    return one_fold(ds, cfg) if own and not data else ds


# workflow (issue 18): a fold of --folds, the same for training and for the finished run
def one_fold(ds: Dataset, cfg: TrainConfig) -> Dataset:
    """The dataset, or its fold `cfg.fold` of `cfg.folds` (convlens.data.folds)."""
    if cfg.fold is None:
        return ds
    return fold_dataset(ds, cfg.folds, cfg.fold, cfg.seed, cfg.val_fraction)
