"""Rebuild a trained model from its weights file: the metadata says which model and how."""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from convlens.errors import ModelError
from convlens.models.registry import create_model
from convlens.training.checkpoint import load_weights, resolve_weights
from convlens.training.tasks import task_class


def load_model(run: str | Path) -> tuple[nn.Module, dict, Path]:
    """(model in eval mode, metadata, weights path) for a run folder or weights file."""
    path = resolve_weights(run)
    tensors, meta = load_weights(path)
    spec, size = meta["model"], meta["input"]
    args = {k: v for k, v in spec.get("args", {}).items() if k != "pretrained"}
    if spec["name"] == "fastnet" and "pools" not in args and _made_before(meta, (0, 2)):
        args["pools"] = [True, True, True]  # fastnet pooled three times at any size until 0.2
    model = create_model(
        spec["name"],
        in_channels=size["channels"],
        num_classes=meta.get("outputs", len(meta["classes"])),
        image_size=(size["height"], size["width"]),
        **args,
    )
    model = task_class(meta.get("task", "classify")).wrap(model, meta)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise ModelError(f"{path}: weights do not fit model {spec['name']!r} ({first})") from None
    return model.eval(), meta, path


def _made_before(meta: dict, version: tuple[int, int]) -> bool:
    """Whether the weights were saved by a convlens older than (major, minor); unknown: yes."""
    found = re.match(r"(\d+)\.(\d+)", meta.get("versions", {}).get("convlens", ""))
    return found is None or (int(found[1]), int(found[2])) < version
