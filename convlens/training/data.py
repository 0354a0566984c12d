"""A run's data: what training loads (with its channel stats and mirroring) and, for a finished
run, the same dataset split as that run split it."""

from __future__ import annotations

from pathlib import Path

from convlens.config import TrainConfig, cache_ram_bytes, make_config, mix_alphas
from convlens.data import Dataset, PhotoOptions, load_dataset
from convlens.data.augment import AugmentPlan, resolve_augment
from convlens.data.folds import fold_dataset
from convlens.data.photoset import split_stats, streamed
from convlens.data.preprocess import BackboneInput, Preprocess
from convlens.device import resolve_device
from convlens.errors import ConfigError, ConvlensError
from convlens.models.pretrained import BackboneDefaults
from convlens.runs.checks import INTERPOLATIONS
from convlens.runs.folder import Run
from convlens.runs.meta import WeightsMeta
from convlens.runs.weights import read_weights
from convlens.training.hooks import TrainingHooks
from convlens.training.progress import Progress


def load_data(
    cfg: TrainConfig,
    log: Progress,
    hooks: TrainingHooks | None = None,
    backbone: BackboneDefaults | None = None,
) -> tuple[Dataset, list[float], list[float], str]:
    """The task's dataset, its per-channel mean and std, and how training mirrors images;
    photos without --image-size take the `backbone` weights' input size and interpolation."""
    ds = load_dataset(
        cfg.data,
        data_dir=cfg.data_dir,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        strict=cfg.strict,
        image_size=cfg.image_size,
        workers=cfg.workers,
        photo=PhotoOptions(
            device=str(resolve_device(cfg.device)),
            pretrained=cfg.pretrained,
            cache_ram=cache_ram_bytes(cfg),
            workers=cfg.workers,
            preprocess=_resumed_preprocess(cfg),
            backbone=backbone_input(backbone),
        ),
        group_by=cfg.group_by,
    )
    ds = one_fold(ds, cfg)
    if streamed(ds.train) and ds.train.per_rank and cfg.class_weights == "auto":
        raise ConfigError("setting 'class_weights': auto needs each class's count, which is "
                          "not known before shards are read; use none")  # fmt: skip
    if hooks is not None:
        ds = hooks.prepare(ds)
    side = min(ds.image_size)
    if cfg.translate >= side:  # every shifted image would be blank, or nearly
        raise ConfigError(f"setting 'translate' must be below the image side ({side} pixels "
                          f"here), got {cfg.translate}")  # fmt: skip
    for note in ds.notes:
        log.note(note)
    plan = augment_plan(cfg, ds)
    if streamed(ds.train) or not plan.in_batches:  # else: the shifts and flips of before
        log.note(plan.reason)
    mix = batch_mix(cfg, ds, plan)  # refused here, before any epoch, where it cannot apply
    if mix is not None:
        log.note(f"--mix {cfg.mix}: each batch mixed (mixup alpha {mix[0]:g}, cutmix alpha "
                 f"{mix[1]:g}; 0: not drawn), soft targets in the loss")  # fmt: skip
    mean, std = split_stats(ds.train)  # of a sample of a streamed split
    hflip = cfg.hflip
    if hflip == "auto":  # airbench: every image mirrored on every other epoch
        hflip = "alternate" if ds.hflip else "off"
    if plan.policy == "none":  # nor a mirrored view at test time (tta auto)
        hflip = "off"
    return ds, mean, std, hflip


def backbone_input(defaults: BackboneDefaults | None) -> BackboneInput | None:
    """The photo input of pretrained weights' defaults, or None where they give no square crop
    of a resized photo (a small-image convlens run's; then the photo path's own choice stands:
    224 for pretrained weights)."""
    size, resize = (defaults.size, defaults.resize) if defaults else (None, None)
    if size is None or resize is None or size[0] != size[1] or resize < size[0]:
        return None
    side = size[0]
    how = defaults.interpolation if defaults.interpolation in INTERPOLATIONS else "bilinear"
    return BackboneInput(side, resize, how, defaults.source)


def _resumed_preprocess(cfg: TrainConfig) -> Preprocess | None:
    """A resumed photo run's own cut (its last weights'): resumed on another device, it must
    not choose another input size."""
    last = Run(cfg.run).last if cfg.resume and cfg.run else None
    if last is None or not last.is_file():
        return None
    meta = read_weights(last).meta
    return None if meta.preprocess is None else Preprocess.of(meta)


def augment_plan(cfg: TrainConfig, ds: Dataset) -> AugmentPlan:
    """What --augment means for this dataset (auto: by its image size and channels)."""
    plan = resolve_augment(cfg.augment, ds.image_size, ds.channels, photos=streamed(ds.train),
                           auto_augment=cfg.auto_augment)  # fmt: skip
    if cfg.auto_augment != "none" and (plan.policy != "photo" or plan.grey):
        raise ConfigError(f"setting 'auto_augment': {cfg.auto_augment} applies to colour photos "
                          f"under --augment photo; this run's augmentation is "
                          f"{'grey photo' if plan.grey else plan.policy}")  # fmt: skip
    return plan


# mixup / cutmix (issue 15)
def batch_mix(cfg: TrainConfig, ds: Dataset, plan: AugmentPlan) -> tuple[float, float, int] | None:
    """photo_loader's `mix` (mixup alpha, cutmix alpha, classes) for --mix, or None (none).

    Photo augmentation only: the small-image path's batches are cut in place (on the GPU where
    there is one), and a multi-label image's targets are not one class to mix.
    """
    if cfg.mix == "none":
        return None
    if ds.multilabel:
        raise ConfigError("setting 'mix': mixup and cutmix mix one class per image; this data is "
                          "multi-label")  # fmt: skip
    if plan.policy != "photo":
        raise ConfigError(f"setting 'mix': mixup and cutmix mix photo batches (--augment photo); "
                          f"this run augments with {plan.policy!r}")  # fmt: skip
    return (*mix_alphas(cfg), ds.num_classes)


def load_run_data(
    data: str | None,
    run_dir: Path | None,
    download: bool = True,
    meta: WeightsMeta | None = None,
) -> Dataset:
    """`data` (or, by default, the dataset the run in `run_dir` trained on), split as that run
    split it (its seed and val share), its images cut as the weights in `meta` were trained.

    The default comes from the run folder's own config.yaml, never from the weights header: a
    weights file is data, and must not choose what is read, written or downloaded (its
    checked `preprocess` only says how images are cut)."""
    run = Run(run_dir) if run_dir else None
    own = run is not None and run.is_run()
    cfg = make_config(run.config) if own else make_config()
    spec = data or (cfg.data if own else None)
    if not spec:
        raise ConvlensError("a weights file outside its run folder: pass --data")
    # a photo run's train split stays in its files: evaluation decodes only what it reads
    photo = None if meta is None else PhotoOptions(preprocess=Preprocess.of(meta), source="decode")
    ds = load_dataset(
        spec,
        data_dir=cfg.data_dir,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        image_size=cfg.image_size,
        download=download,
        photo=photo,
        group_by=cfg.group_by if own and not data else None,
    )
    return one_fold(ds, cfg) if own and not data else ds


# workflow (issue 18): a fold of --folds, the same for training and for the finished run
def one_fold(ds: Dataset, cfg: TrainConfig) -> Dataset:
    """The dataset, or its fold `cfg.fold` of `cfg.folds` (convlens.data.folds)."""
    if cfg.fold is None:
        return ds
    return fold_dataset(ds, cfg.folds, cfg.fold, cfg.seed, cfg.val_fraction)
