"""The model a run trains: built from the registry for the task, initialised from data or from
--init, and the weights metadata saved with it."""

from __future__ import annotations

import torch
from torch import nn

from convlens.config import TrainConfig
from convlens.data import Dataset
from convlens.data.batches import normalize
from convlens.data.photoset import init_images, streamed
from convlens.errors import ConvlensError
from convlens.models import create_model
from convlens.runs.folder import resolve_weights
from convlens.runs.weights import read_safetensors
from convlens.training.hooks import TrainingHooks
from convlens.training.progress import Progress
from convlens.version import __version__


def weights_meta(
    cfg: TrainConfig,
    ds: Dataset,
    mean: list[float],
    std: list[float],
    hflip: str,
    task: TrainingHooks,
) -> dict:
    """What `predict` needs besides the weights: classes, input, normalisation, model, TTA."""
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


def build_model(
    cfg: TrainConfig,
    ds: Dataset,
    log: Progress,
    mean: list[float],
    std: list[float],
    task: TrainingHooks | None = None,
    meta: dict | None = None,
) -> nn.Module:
    """The task's model (a plain classifier without hooks), with weights from --init, or a
    data-based init where it has one."""
    kwargs = dict(cfg.model_args)
    if cfg.pretrained:
        kwargs["pretrained"] = True
    model = create_model(
        cfg.model,
        in_channels=ds.channels,
        num_classes=task.outputs(ds) if task else ds.num_classes,
        image_size=ds.image_size,
        **kwargs,
    )
    if not cfg.init and hasattr(model, "init_from_data"):  # e.g. fastnet's whitening layer
        model.init_from_data(normalize(init_images(ds.train), mean, std))
    if task is not None:
        model = task.wrap(model, meta or {})
    if cfg.init:
        log.note(init_from_file(model, cfg.init))
    return model


def init_from_file(model: nn.Module, path: str) -> str:
    """Copy every tensor whose name and shape match from a weights file; say what was kept."""
    tensors, _ = read_safetensors(resolve_weights(path))
    own = model.state_dict()
    taken = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
    if not taken:
        raise ConvlensError(f"--init {path}: no tensor matches this model's names and shapes")
    model.load_state_dict(taken, strict=False)
    skipped = sorted(set(own) - set(taken))
    more = f"; kept this model's own {', '.join(skipped)}" if skipped else ""
    return f"init: {len(taken)} of {len(own)} tensors loaded from {path}{more}"
