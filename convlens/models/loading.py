"""Rebuild a trained model from its weights file: the metadata says which model and how."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from convlens.errors import ModelError
from convlens.models.registry import create_model
from convlens.runs.checks import one_line
from convlens.runs.folder import resolve_weights
from convlens.runs.weights import load_weights
from convlens.training.tasks import task_class


def load_model(run: str | Path) -> tuple[nn.Module, dict, Path]:
    """(model in eval mode, metadata, weights path) for a run folder or weights file."""
    path = resolve_weights(run)
    tensors, meta = load_weights(path)  # metadata validated, weights finite
    check_fit(tensors, meta, path)
    model = build_model(meta, path)
    model.load_state_dict(tensors)
    return model.eval(), meta, path


def check_fit(tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
    """Refuse weights whose names or shapes differ from the model their metadata describes.

    The model is built on the meta device first: no memory is taken, so metadata declaring a
    huge model (an MLP over 4096x4096 inputs) is refused before anything is allocated, and the
    real model is never larger than the file that fits it.
    """
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build_model(meta, path).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    if want == have:
        return
    name = meta["model"]["name"]
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        more = len(missing) + len(extra) - 1
        what += f" and {more} more names" if more else ""
    else:
        k = next(k for k in want if want[k] != have[k])
        what = f"{k!r} is {list(have[k])} in the file, {list(want[k])} in the model"
    raise ModelError(f"{path}: weights do not fit model {name!r} ({what})")


def build_model(meta: dict, path: Path) -> nn.Module:
    """The (task-wrapped) model that validated metadata describes, untrained; errors name path."""
    spec, size = meta["model"], meta["input"]
    args = {k: v for k, v in spec.get("args", {}).items() if k != "pretrained"}
    if spec["name"] == "fastnet" and "pools" not in args and _made_before(meta, (0, 2)):
        args["pools"] = [True, True, True]  # fastnet pooled three times at any size until 0.2
    try:
        model = create_model(
            spec["name"],
            in_channels=size["channels"],
            num_classes=meta.get("outputs", len(meta["classes"])),
            image_size=(size["height"], size["width"]),
            **args,
        )
        return task_class(meta.get("task", "classify")).wrap(model, meta)
    except ModelError as e:  # unknown model, unknown keyword
        raise ModelError(f"{path}: {e}") from None
    except Exception as e:  # the args come from the file: whatever the model refuses them with
        raise ModelError(f"{path}: metadata field 'model.args' does not fit model "
                         f"{spec['name']!r} ({one_line(e)})") from None  # fmt: skip


def _made_before(meta: dict, version: tuple[int, int]) -> bool:
    """Whether the weights were saved by a convlens older than (major, minor); unknown: yes."""
    found = re.match(r"(\d+)\.(\d+)", meta.get("versions", {}).get("convlens", ""))
    return found is None or (int(found[1]), int(found[2])) < version
