"""Rebuild a trained model from its weights file: the metadata says which task, model and how.

The file is read once and its header checked once: the common fields by convlens.runs, the
task's own by the task (`task_of`), the tensors' names and shapes against the model they
describe before anything is allocated (`check_fit`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.data.files import read_regular
from convlens.errors import ConvlensError, ModelError
from convlens.models.registry import create_model
from convlens.runs.checks import Checker, one_line
from convlens.runs.folder import Run, resolve_weights
from convlens.runs.meta import WeightsMeta
from convlens.runs.weights import WeightsFile, read_weights
from convlens.tasks.base import LoadedRun, Task
from convlens.tasks.registry import list_tasks, task_class


def task_of(meta: WeightsMeta, source: str | Path) -> type[Task]:
    """The registered task `meta` was trained for, once it has checked its own fields and read
    any decision file an older run wrote beside `source`."""
    check = Checker(source)
    check.choice(meta.task, tuple(list_tasks()), "task")
    task = task_class(meta.task)
    task.check_meta(meta, check)
    task.read_old_decisions(meta, Path(source))
    return task


def read_run_weights(run: str | Path) -> WeightsFile:
    """The weights file of a run folder (or the file itself), read once, its header checked:
    the common fields, then the task's own."""
    f = read_weights(resolve_weights(run))  # common fields checked, weights finite
    task_of(f.meta, f.path)
    return f


def load_checked(run: str | Path) -> WeightsFile:
    """The weights file of a run folder (or the file itself), read once, every check passed."""
    f = read_run_weights(run)
    check_fit(f.tensors, f.meta, f.path)
    return f


def load_model(run: str | Path) -> tuple[nn.Module, WeightsMeta, Path]:
    """(model in eval mode, metadata, weights path) for a run folder or weights file."""
    f = load_checked(run)
    return _built(f), f.meta, f.path


def _built(f: WeightsFile) -> nn.Module:
    model = build_model(f.meta, f.path)
    model.load_state_dict(f.tensors)
    return model.eval()


def load_run(
    run: str | Path | WeightsFile, device: torch.device | str = "cpu", **overrides: Any
) -> LoadedRun:
    """A LoadedRun of a run folder or weights file (or one read already, read_run_weights);
    `overrides` replace run settings."""
    f = run if isinstance(run, WeightsFile) else read_run_weights(run)
    check_fit(f.tensors, f.meta, f.path)
    device = torch.device(device)
    folder = Run.of_weights(f.path)
    settings = folder.settings() if folder else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    net = _built(f).to(device)
    return LoadedRun(net, f.meta, f.path, folder, device, settings, given, f.digest)


def check_fit(tensors: dict[str, torch.Tensor], meta: WeightsMeta, path: Path) -> None:
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
    name = meta.model.name
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        more = len(missing) + len(extra) - 1
        what += f" and {more} more names" if more else ""
    else:
        k = next(k for k in want if want[k] != have[k])
        what = f"{k!r} is {list(have[k])} in the file, {list(want[k])} in the model"
    raise ModelError(f"{path}: weights do not fit model {name!r} ({what})")


def build_model(meta: WeightsMeta, path: Path) -> nn.Module:
    """The (task-wrapped) model that validated metadata describes, untrained; errors name path."""
    name, size = meta.model.name, meta.input
    args = {k: v for k, v in meta.model.args.items() if k != "pretrained"}
    if name == "fastnet" and "pools" not in args and _made_before(meta, (0, 2)):
        args["pools"] = [True, True, True]  # fastnet pooled three times at any size until 0.2
    try:
        model = create_model(
            name,
            in_channels=size.channels,
            num_classes=meta.n_outputs,
            image_size=size.size,
            **args,
        )
        return task_class(meta.task).wrap(model, meta)
    except ModelError as e:  # unknown model, unknown keyword
        raise ModelError(f"{path}: {e}") from None
    except Exception as e:  # the args come from the file: whatever the model refuses them with
        raise ModelError(f"{path}: metadata field 'model.args' does not fit model "
                         f"{name!r} ({one_line(e)})") from None  # fmt: skip


def _made_before(meta: WeightsMeta, version: tuple[int, int]) -> bool:
    """Whether the weights were saved by a convlens older than (major, minor); unknown: yes."""
    found = re.match(r"(\d+)\.(\d+)", meta.versions.get("convlens", ""))
    return found is None or (int(found[1]), int(found[2])) < version


def read_side_file(path: Path) -> object:
    """A small JSON side file of a run (a regular file), or one line saying why not."""
    try:
        return json.loads(read_regular(path, limit=1 << 24))
    except (ValueError, RecursionError):
        raise ConvlensError(f"{path}: not valid JSON") from None
