"""The model a run trains: built from the registry for the task, initialised from data or from
--init, and the weights metadata saved with it."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from convlens.config import TrainConfig
from convlens.data import Dataset
from convlens.data.batches import normalize
from convlens.data.photoset import init_images, streamed
from convlens.errors import ConvlensError
from convlens.models import create_model
from convlens.training.hooks import TrainingHooks
from convlens.training.mapping import map_onto
from convlens.training.progress import Progress
from convlens.training.start import StartWeights, start_weights
from convlens.version import __version__


def weights_meta(
    cfg: TrainConfig,
    ds: Dataset,
    mean: list[float],
    std: list[float],
    hflip: str,
    task: TrainingHooks,
    start: StartWeights | None = None,
) -> dict:
    """What `predict` needs besides the weights: classes, input, normalisation, model, TTA.
    Weights to start from bring their own normalisation (`start.defaults`), else the data's
    `mean` and `std` are used."""
    if start is not None and start.defaults is not None:
        mean, std = start.defaults.normalize(ds.channels)
    tta = cfg.tta
    if tta == "auto":  # mirrored views help only a model that was trained on mirrored images
        tta = "flip-shift" if hflip != "off" else "none"
    return {
        "task": task.name,
        "classes": ds.classes,
        "outputs": task.outputs(ds),
        "input": {"channels": ds.channels, "height": ds.image_size[0], "width": ds.image_size[1]},
        **preprocess_meta(ds),
        "normalize": {"mean": mean, "std": std},
        "tta": tta,
        "model": {"name": cfg.model, "args": cfg.model_args},
        "data": cfg.data,
        "versions": {"convlens": __version__, "torch": torch.__version__},
        **task.meta(ds),
    }


def preprocess_meta(ds: Dataset) -> dict:
    """{"preprocess": how a photo run cuts its images}; {} for images squashed to the input."""
    return {"preprocess": ds.train.prep.to_dict()} if streamed(ds.train) else {}


# fastnet on photos (issue 15): the stem at stride 2 (models/fastnet.py). On fashion-scenes,
# 96 px at stride 2 matched 64 px at stride 1 epoch for epoch (val 69.5% / 70.7% after 5, test
# 63.8% / 64.4%) in 76% of the time (175 s / 230 s; BENCHMARKS.md, "The photo recipe retuned")
PHOTO_STEM_STRIDE = 2


def resolve_stem(cfg: TrainConfig, ds: Dataset) -> tuple[TrainConfig, str | None]:
    """`cfg` with fastnet's stem_stride 2 for photos (a streamed split) where not given, and a
    line saying so; the model_args in config.yaml and the weights record it."""
    if cfg.model != "fastnet" or not streamed(ds.train) or "stem_stride" in cfg.model_args:
        return cfg, None
    args = {**cfg.model_args, "stem_stride": PHOTO_STEM_STRIDE}
    note = (f"fastnet: whitening stem at stride {PHOTO_STEM_STRIDE} for photos (its 2x2 patches "
            "side by side; --model-arg stem_stride=1 overlaps them)")  # fmt: skip
    return dataclasses.replace(cfg, model_args=args), note


def build_model(
    cfg: TrainConfig,
    ds: Dataset,
    log: Progress,
    mean: list[float],
    std: list[float],
    task: TrainingHooks | None = None,
    meta: dict | None = None,
    start: StartWeights | None = None,
) -> nn.Module:
    """The task's model (a plain classifier without hooks), with the weights of --init (read
    here unless `start` holds them already), or a data-based init where it has one."""
    kwargs = dict(cfg.model_args)
    if cfg.pretrained:
        kwargs["pretrained"] = True
    net = create_model(
        cfg.model,
        in_channels=ds.channels,
        num_classes=task.outputs(ds) if task else ds.num_classes,
        image_size=ds.image_size,
        **kwargs,
    )
    if hasattr(net, "init_from_data"):  # e.g. fastnet's whitening layer; a file's own replaces it
        net.init_from_data(normalize(init_images(ds.train), mean, std))
    model = task.wrap(net, meta or {}) if task is not None else net
    if cfg.init:
        log.note(init_from_file(model, net, start or start_weights(cfg), ds.classes))
    if start is not None and start.defaults is not None:
        log.note(start.defaults.describe())
    return model


def init_from_file(
    model: nn.Module, net: nn.Module, start: StartWeights, classes: list[str]
) -> str:
    """Copy the file's tensors that fit `model` (the task's wrapper around the registry model
    `net`); say what was kept. A convlens run's head is left out when it was trained for other
    classes: its rows are those classes' (a torchvision or timm head is kept where it fits)."""
    meta = start.meta
    per_class = meta is not None and meta.n_outputs == len(meta.classes)
    other_classes = per_class and meta.classes != list(classes)
    mapped = map_onto(model, net, start.tensors or {}, keep_head=not other_classes)
    if not mapped.tensors:
        raise ConvlensError(f"--init {start.path}: no tensor matches this model's names and shapes")
    model.load_state_dict(mapped.tensors, strict=False)
    note = mapped.describe(len(model.state_dict()), start.path)
    if other_classes and mapped.head:
        note += " (the file's was trained for other classes)"
    return note
