"""What the training loop asks of a task: a small protocol (convlens.tasks.base.Task has it).

Training imports no task: the caller hands it an object with these hooks. Without one, the
loop trains a plain classifier head (one output per class, the data as loaded, no wrapper).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from convlens.data import Dataset, Split


class TrainingHooks(Protocol):
    """The hooks, called in order: prepare, outputs and meta, wrap, then batch and loss per step
    and validate per epoch (see convlens.tasks.base.Task)."""

    name: str  # the task's name, saved in the weights metadata
    score: str  # the validation column that picks the best epoch (higher is better)
    gpu_batches: bool  # batches may be cut and augmented on the GPU

    def prepare(self, ds: Dataset) -> Dataset: ...

    def outputs(self, ds: Dataset) -> int: ...

    def meta(self, ds: Dataset) -> dict: ...

    def wrap(self, model: nn.Module, meta: Any) -> nn.Module: ...

    def batch(
        self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def loss(self, model: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def validate(self, model: nn.Module, split: Split, meta: dict, **kw: Any) -> dict: ...


class NumpyHooks(TrainingHooks, Protocol):
    """What the NumPy engine's loop asks besides: class weights and the validation scores of
    the probabilities its model computed."""

    class_weight: torch.Tensor | None

    def probability_scores(self, probs: torch.Tensor, labels: torch.Tensor) -> dict: ...


MakeHooks = Callable[[Any], TrainingHooks]  # the hooks of the task a (resolved) config asks for


class Finish(Protocol):
    """What runs once training ends, on the main process, while the run folder is still held:
    calibration, test evaluation and the report, from the layer above (convlens.api.train)."""

    def __call__(self, hooks: Any, run_dir: Path, ds: Dataset, log: Any) -> None: ...


class EpochEnd(Protocol):
    """What runs after each epoch's row is saved, on the main process: trackers and a sweep's
    pruning (convlens.api), which may stop the training by raising."""

    def __call__(self, cfg: Any, run_dir: Path, row: dict) -> None: ...
