"""A training run's life, shared by both engines (convlens.training.numpy_loop runs the NumPy
one): its folder claimed and written, the state it reaches after each epoch (RunState), the
epoch's batches, the checks that stop it, the weights and results saved at each epoch's end."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.config import TrainConfig, save_config
from convlens.data import Dataset
from convlens.data.augment import AugmentPlan
from convlens.data.badfiles import write_bad_files
from convlens.data.batches import iterate_batches
from convlens.data.loader import photo_loader
from convlens.data.photoset import streamed
from convlens.data.stream import RamImages
from convlens.errors import ConfigError, TrainingError
from convlens.runs.folder import Run
from convlens.runs.lock import claim_new_run_dir, claim_run_dir_to_resume
from convlens.runs.weights import save_weights
from convlens.training import distributed
from convlens.training.data import augment_plan, batch_mix
from convlens.training.ema import Lookahead
from convlens.training.progress import Progress
from convlens.training.resume import RunState, resumed_config


@contextlib.contextmanager
def resolve_run(cfg: TrainConfig) -> Iterator[tuple[TrainConfig, Path]]:
    """The config to train with and its run folder (a fresh one, or the one to resume), which
    this training holds until the block ends. torchrun's other ranks hold nothing and make
    nothing: rank 0 holds the folder for them all."""
    claim = claim_run_dir_to_resume if cfg.resume else claim_new_run_dir
    if distributed.launched_rank() != 0:
        claim = _unclaimed
    with claim(cfg.run) as run_dir:
        if cfg.resume:
            yield resumed_config(run_dir, cfg), run_dir
        else:
            yield dataclasses.replace(cfg, run=str(run_dir)), run_dir


@contextlib.contextmanager
def _unclaimed(requested: str | None) -> Iterator[Path]:
    yield Path(requested) if requested else Path("runs") / "train"


def open_run(cfg: TrainConfig, run_dir: Path, ds: Dataset, log: Progress) -> None:
    """Write config.yaml (of a fresh run) and bad_files.csv into the held run folder, once the
    model is built."""
    if not cfg.resume:
        save_config(cfg, Run(run_dir).config)
    if ds.bad_files:
        write_bad_files(run_dir / "bad_files.csv", ds.bad_files)
        log.note(f"{len(ds.bad_files)} unreadable image(s) skipped, listed in bad_files.csv")


# fastnet's recipe: small images in memory, and photos on a GPU (not measured there)
BATCH, LR = 512, 0.75
# Photos from scratch on a CPU: 10,000 images of fashion-scenes give 512 only 19 steps an epoch;
# at 64 (and 0.25, near 0.75 x sqrt(64 / 512)) six epochs reached 70.6% test accuracy against
# 62.2% at 512, in 234 s against 320 s (batch 64 is also faster per image on a 2-core CPU;
# BENCHMARKS.md, "The photo recipe retuned")
PHOTO_CPU_BATCH, PHOTO_CPU_LR = 64, 0.25


def resolve_batch(
    cfg: TrainConfig, ds: Dataset, device: torch.device
) -> tuple[TrainConfig, str | None]:
    """`cfg` with batch_size and lr chosen where left out (None): 64 and 0.25 for photos (a
    streamed split) on a CPU when batch_size is left out, else 512 and 0.75 (an lr left out
    beside a given batch_size: 0.75); and a line saying so where photos chose. config.yaml
    records the result."""
    photo_cpu = streamed(ds.train) and device.type == "cpu" and cfg.batch_size is None
    batch, lr = (PHOTO_CPU_BATCH, PHOTO_CPU_LR) if photo_cpu else (BATCH, LR)
    batch = batch if cfg.batch_size is None else cfg.batch_size
    lr = lr if cfg.lr is None else cfg.lr
    note = f"batch {batch}, lr {lr:g}: photos on a CPU (--batch-size, --lr choose)"
    return dataclasses.replace(cfg, batch_size=batch, lr=lr), note if photo_cpu else None


def epoch_steps(cfg: TrainConfig, n_train: int) -> tuple[bool, int, int]:
    """(drop_last, steps per epoch, total steps) for `n_train` training images."""
    drop_last = n_train > cfg.batch_size  # keep BatchNorm away from a tiny last batch
    steps_per_epoch = n_train // cfg.batch_size if drop_last else 1
    return drop_last, steps_per_epoch, steps_per_epoch * cfg.epochs


def step_of(epoch: int, i: int, steps_per_epoch: int) -> int:
    """The schedule's step for batch i of `epoch`: a rank reading its own shards may end on a
    few more (short) batches than steps_per_epoch, which keep the epoch's last step's lr."""
    return epoch * steps_per_epoch + min(i, steps_per_epoch - 1)


def lookahead(cfg: TrainConfig, steps_per_epoch: int) -> Lookahead | None:
    """The weight average (or None), updated at least once an epoch: each epoch ends on the
    average, so one not updated in a short epoch (8x8 digits: 2 steps) would undo its training."""
    if not cfg.ema:
        return None
    return Lookahead(cfg.ema, cfg.ema_start, min(cfg.ema_every, steps_per_epoch))


class TrainBatches:
    """Each epoch's (uint8 images, labels) batches: cut from the split in memory with today's
    shifts and flips (small images, --augment light), or from data/loader.py's photo_loader (a
    streamed photo split, or --augment photo) with the augmentation seeded per sample."""

    def __init__(
        self, cfg: TrainConfig, ds: Dataset, hflip: str, drop_last: bool, world: int = 1
    ) -> None:
        self.cfg, self.ds, self.hflip, self.drop_last = cfg, ds, hflip, drop_last
        plan = augment_plan(cfg, ds)
        self.loader: Any = None  # set_epoch, iterate, .bad
        self.per_rank = streamed(ds.train) and ds.train.per_rank  # shards: each rank its own
        if streamed(ds.train) or plan.policy == "photo":
            self.loader = _photo_loader(cfg, ds, plan, hflip != "off", drop_last, world)
        elif plan.policy == "none":
            self.cfg = dataclasses.replace(cfg, translate=0)
            self.hflip = "off"

    @property
    def in_memory(self) -> bool:
        """Whether batches are cut from ds.train as it is (which may then move to a GPU)."""
        return self.loader is None

    @property
    def bad(self) -> list[tuple[str, str]]:
        """(path, reason) of the training files photo_loader skipped so far."""
        return [] if self.loader is None else self.loader.bad

    def __call__(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if self.loader is None:
            return epoch_batches(self.cfg, self.ds, epoch, self.hflip, self.drop_last)
        self.loader.set_epoch(epoch)
        return self.loader


def _photo_loader(
    cfg: TrainConfig, ds: Dataset, plan: AugmentPlan, hflip: bool, drop_last: bool, world: int
) -> Any:
    """The streamed split's own loader (photo_loader, or its shards' with each rank's share of
    the batch), or photo_loader over the split in memory (--augment photo)."""
    if ds.multilabel:
        raise ConfigError("setting 'augment': photo augmentation takes one class per image; "
                          "use light or none for multi-label data")  # fmt: skip
    from convlens.data.transforms import train_transform  # torchvision: photo runs only

    resize = ds.train.prep.resize if streamed(ds.train) else None  # a backbone's may differ
    transform = train_transform(plan.policy, ds.image_size[0], ds.channels, hflip, grey=plan.grey,
                                resize=resize, auto_augment=cfg.auto_augment)  # fmt: skip
    mix = batch_mix(cfg, ds, plan)
    if streamed(ds.train):
        size = cfg.batch_size // world if ds.train.per_rank else cfg.batch_size
        # Shards: each rank keeps its short batches, so every sample is read once an epoch.
        return ds.train.loader(transform, size, workers=cfg.workers, seed=cfg.seed,
                               drop_last=drop_last and not ds.train.per_rank, strict=cfg.strict,
                               mix=mix)  # fmt: skip
    n = len(ds.train)
    source = RamImages(ds.train.images.numpy(), ds.train.labels.numpy(), np.arange(n))
    return photo_loader(source, transform, cfg.batch_size, cfg.workers, cfg.seed, 0, drop_last,
                        strict=cfg.strict, mix=mix)  # fmt: skip


def note_bad_files(run_dir: Path, ds: Dataset, found: list[tuple[str, str]], log: Progress) -> None:
    """Add the training files skipped while streaming to ds.bad_files and bad_files.csv."""
    known = {path for path, _ in ds.bad_files}
    new = [(path, why) for path, why in found if path not in known]
    if new:
        ds.bad_files += new
        write_bad_files(run_dir / "bad_files.csv", ds.bad_files)
        log.note(f"{len(new)} unreadable training image(s) skipped, listed in bad_files.csv")


def epoch_batches(cfg: TrainConfig, ds: Dataset, epoch: int, hflip: str, drop_last: bool):
    """One epoch's (uint8 images, labels) batches, order and augmentation seeded by the epoch."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    flips: bool | torch.Tensor = hflip == "random"
    if hflip == "alternate":  # a fixed coin per image, inverted on odd epochs
        coins = torch.rand(len(ds.train), generator=torch.Generator().manual_seed(cfg.seed))
        flips = (coins < 0.5) ^ (epoch % 2 == 1)  # (N,) bool
    return iterate_batches(
        ds.train,
        cfg.batch_size,
        shuffle=True,
        generator=gen,
        translate=cfg.translate,
        hflip=flips,
        drop_last=drop_last,
    )


def check_loss(value: float, epoch: int, step: int | None, state: RunState, run_dir: Path) -> None:
    """Stop on a non-finite loss (of a step, or the epoch's mean), saying what weights exist."""
    if not math.isfinite(value):
        where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else "")
        raise TrainingError(
            f"{where}: loss is {value}; training stopped; {saved_weights(state, run_dir)}; "
            "try a lower --lr"
        )


def saved_weights(state: RunState, run_dir: Path) -> str:
    """What the run folder holds after the epochs in `state`, for a stopped run's message."""
    last = state.epoch
    if not last:
        return "no epoch ended with finite scores, so no weights were saved"
    kept = f"the weights of epoch {last} (last.safetensors"
    best = state.best_epoch if state.best_known else last  # saved before best_epoch was: not said
    if best is None:
        kept += "; no epoch had a finite score, so no best.safetensors"
    elif best != last:
        kept += f") and of epoch {best}, the best (best.safetensors"
    return f"{kept}) are intact in {run_dir / 'weights'}"


def end_epoch(
    run_dir: Path,
    state: RunState,
    weights: dict[str, torch.Tensor],
    meta: dict,
    scores: dict,
    score: str,
    *,
    epoch: int,
    train_loss: float,
    lr: float,
    seconds: float,
    write: bool = True,
) -> dict:
    """Record the epoch's validation `scores`; save last (and best by `score`) weights. Weights
    whose validation loss is not finite have overflowed: training stops, saving nothing."""
    if not math.isfinite(scores["val_loss"]):
        raise TrainingError(
            f"epoch {epoch}: validation loss is {scores['val_loss']} (the weights overflowed); "
            f"training stopped; {saved_weights(state, run_dir)}; try a lower --lr"
        )
    prev = state.rows[-1]["seconds"] if state.rows else 0.0
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": scores["val_loss"],
        score: scores[score],
        "lr": lr,
        "seconds": prev + seconds,  # cumulative training time, evaluation excluded
    }
    state.rows.append(row)
    improved = math.isfinite(row[score]) and row[score] > state.best_score  # never a non-finite
    if improved:
        state.best_score, state.best_epoch, state.stale = row[score], epoch, 0
        state.best_known = True
    else:
        state.stale += 1
    if write:  # with torchrun, rank 0 alone writes
        run = Run(run_dir)
        save_weights(run.last, weights, meta)
        if improved:
            save_weights(run.best, weights, meta)
        run.write_results(state.rows)
    state.epoch = epoch
    return row


def early_stop(cfg: TrainConfig, state: RunState, log: Progress) -> bool:
    """Whether --patience epochs passed without a better validation score (and say so)."""
    if cfg.patience and state.stale >= cfg.patience:
        log.note(f"early stop: no val improvement in {cfg.patience} epochs")
        return True
    return False
