"""Tasks by name: `register_task`, `task_class`, `list_tasks` (shaped like register_model).

A task's module registers its class when imported. The built-in tasks live with their
application and are imported on first use, by name: classify here, multilabel and anomaly in
convlens.medical, embed in convlens.faces. No torch here: config.py takes the task list from it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from convlens.errors import ConfigError, ModelError

BUILTIN = {  # task name -> the module that registers it
    "classify": "convlens.tasks.classify",
    "multilabel": "convlens.medical.multilabel",
    "anomaly": "convlens.medical.anomaly",
    "embed": "convlens.faces.embed",
}
_TASKS: dict[str, type] = {}


def register_task(name: str) -> Callable[[type], type]:
    """Register a Task subclass under `name` (its `name` attribute is set to it)."""

    def add(cls: type) -> type:
        if name in _TASKS:
            raise ModelError(f"task {name!r} is already registered")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return add


def list_tasks() -> list[str]:
    """Names of the built-in tasks and of every task registered since, in that order."""
    return [*BUILTIN, *(name for name in _TASKS if name not in BUILTIN)]


def task_class(name: str) -> Any:
    """The Task class registered as `name` (its module imported if it is a built-in one)."""
    if name not in _TASKS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _TASKS:
        raise ConfigError(f"setting 'task' must be one of {', '.join(list_tasks())}, not {name!r}")
    return _TASKS[name]


def make_task(cfg: Any) -> Any:
    """The task a TrainConfig asks for, ready for `prepare`."""
    return task_class(cfg.task)(cfg)
