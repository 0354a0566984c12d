"""The Task base class: what a run learns, and everything after training that depends on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from convlens.data import Dataset, Split
from convlens.runs.checks import Checker
from convlens.runs.folder import Run
from convlens.runs.meta import WeightsMeta
from convlens.runs.weights import save_weights
from convlens.tasks.registry import task_class


@dataclass
class Evaluation:
    """What `evaluate` measured on a split: its metrics (metrics.json) and, in `details`, the
    task's own arrays that its report draws from (documented by each task's evaluate)."""

    metrics: dict
    details: dict = field(default_factory=dict)


@dataclass
class LoadedRun:
    """A trained model ready to evaluate or predict with: the network (eval mode, on `device`),
    its metadata and weights file, the run folder holding them (None for a loose file), that
    run's settings (its config.yaml; {} for a loose file) and those the caller overrides."""

    net: nn.Module
    meta: WeightsMeta
    weights: Path
    folder: Run | None
    device: torch.device
    settings: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. evaluate's flags
    digest: str = ""  # of the weights file as loaded (convlens.runs.weights.WeightsFile)

    def setting(self, name: str) -> Any:
        """A setting as the caller gives it, else as the run was trained with (None)."""
        return self.overrides.get(name, self.settings.get(name))

    @property
    def task(self) -> type[Task]:
        """The task its weights were trained for."""
        return task_class(self.meta.task)

    def save_meta(self, meta: WeightsMeta) -> None:
        """Rewrite the weights file with new metadata (the same tensors), atomically."""
        save_weights(self.weights, self.net.state_dict(), meta)
        self.meta = meta


class Task:
    """A task: training hooks, then calibration, evaluation and answers for its trained runs.

    The training loop calls, in order: `prepare` (once, on the loaded dataset), `outputs` and
    `meta` (to build the model and its weights metadata), `wrap`, then per step `batch` and
    `loss`, per epoch `validate`. After training the caller runs `calibrate` and `evaluate` on
    `evaluation_data`. Predicting: `scores` (the torch engine's scores of uint8 images) and
    `answer` (one image's scores turned into the task's answer, the same for every engine).
    What a task can do is data on its class (the capabilities below): no caller checks a name.
    """

    name: ClassVar[str] = ""  # set by register_task
    score: ClassVar[str] = "val_acc"  # the validation column that picks the best epoch (higher)
    recipe: ClassVar[dict[str, Any]] = {}  # settings it starts from, over the model's recipe

    # --- capabilities ---------------------------------------------------------------------------
    engines: ClassVar[tuple[str, ...]] = ("torch",)  # the engines that predict its runs' weights
    gpu_batches: ClassVar[bool] = True  # batches may be cut and augmented on the GPU
    explains: ClassVar[bool] = False  # `convlens explain` reads its outputs as class scores
    heatmaps: ClassVar[bool] = False  # a Grad-CAM of the top output shows the evidence for it
    verification: ClassVar[bool] = False  # compares two faces (/verify, `convlens verify`)
    onnx_output: ClassVar[str | None] = None  # the exported graph's output name, if it exports
    onnx_activation: ClassVar[str | None] = None  # softmax | sigmoid | none of the graph's output
    onnx_refusal: ClassVar[str] = "no ONNX graph gives its answers"  # why it does not export
    serves_onnx: ClassVar[bool] = False  # `serve --engine auto` predicts through an ONNX export
    recogniser: ClassVar[type | None] = None  # its runs load as this Recogniser subclass
    rejects_unknown: ClassVar[bool] = False  # open-set rejection: --reject answers "unknown"
    mixes: ClassVar[bool] = False  # --mix: its loss takes mixup/cutmix's soft (B, K) targets

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    # --- training hooks -------------------------------------------------------------------------
    def prepare(self, ds: Dataset) -> Dataset:
        """The dataset to train on (a subclass may select or relabel); before channel stats."""
        return ds

    def outputs(self, ds: Dataset) -> int:
        """How many numbers the model's last layer gives."""
        return ds.num_classes

    def meta(self, ds: Dataset) -> dict:
        """Entries added to the weights metadata (what loading and predict need)."""
        return {}

    @classmethod
    def wrap(cls, model: nn.Module, meta: WeightsMeta) -> nn.Module:
        """The module to train and save around the registry model (also used when loading)."""
        return model

    def batch(
        self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A task-specific change to each uint8 batch (B, C, H, W) and its targets."""
        return images, labels

    def loss(self, model: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The scalar loss of the model's outputs `out` on `target`."""
        raise NotImplementedError

    def validate(self, model: nn.Module, split: Split, meta: dict, **kw: Any) -> dict:
        """{"val_loss", <score>} on the validation split; kw: device, amp, channels_last."""
        raise NotImplementedError

    # --- after training -------------------------------------------------------------------------
    def calibrate(self, run_dir: Path, ds: Dataset) -> str | None:
        """Fit what the best weights decide with on train/val (saved with them); a note for
        the console, or None."""
        return None

    def evaluation_data(self, ds: Dataset) -> Dataset:
        """The dataset the finished run is evaluated on (the one it trained on)."""
        return ds

    @classmethod
    def check_meta(cls, meta: WeightsMeta, check: Checker) -> None:
        """Check the task's own metadata fields (the common ones are checked already)."""

    @classmethod
    def check_predictable(cls, meta: WeightsMeta, source: Path) -> None:
        """Refuse weights its answers cannot come from (an unfinished run's, say)."""

    @classmethod
    def read_old_decisions(cls, meta: WeightsMeta, weights: Path) -> None:
        """Fill meta.decisions from the side files older runs wrote beside their weights."""

    @classmethod
    def evaluate(cls, run: LoadedRun, dataset: Dataset, split: str, write: bool) -> Evaluation:
        """Metrics of `run` on `split` of `dataset` (and, with write, the run folder's files)."""
        raise NotImplementedError

    @staticmethod
    def summary(metrics: dict) -> str:
        """One line of the final metrics for the console."""
        raise NotImplementedError

    # --- predicting -----------------------------------------------------------------------------
    @classmethod
    def scores(cls, run: LoadedRun, images: torch.Tensor) -> torch.Tensor:
        """The torch engine's scores (N, ...) of preprocessed uint8 images (N, C, H, W)."""
        raise NotImplementedError

    @classmethod
    def answer(cls, scores: torch.Tensor, meta: WeightsMeta, top_k: int) -> dict:
        """One image's answer from its scores, as the fields of a predict row or reply."""
        raise NotImplementedError

    @classmethod
    def graph_width(cls, meta: WeightsMeta) -> int:
        """The numbers an exported graph gives per image: one per class."""
        return len(meta.classes)

    @classmethod
    def onnx_graph(cls, meta: WeightsMeta) -> dict[str, tuple[int, ...]]:
        """The exported graph's outputs for these weights, name -> one image's shape (several
        are joined, each flattened, into the task's scores); empty when they do not export."""
        return {cls.onnx_output: (cls.graph_width(meta),)} if cls.onnx_output else {}

    @classmethod
    def onnx_module(cls, run: LoadedRun) -> nn.Module:
        """What an export writes: normalised images (N, C, H, W) in, onnx_graph's outputs out."""
        return run.net

    @classmethod
    def shown_threshold(cls, meta: WeightsMeta) -> float | None:
        """The threshold its answers are decided at, for serve's /model (None: none shown)."""
        return None


def top_predictions(scores: torch.Tensor, names: list[str], k: int) -> list[dict]:
    """The k highest of one image's scores (K,) as {"label", "index", "score"}, highest first."""
    values, idx = scores.topk(min(k, len(names)))
    return [
        {"label": names[i], "index": int(i), "score": float(s)}
        for s, i in zip(values.tolist(), idx.tolist(), strict=True)
    ]


def check_outputs_are_classes(meta: WeightsMeta, check: Checker) -> None:
    """A task with one output per class: 'outputs', when given, is the number of classes."""
    if meta.outputs is not None and meta.outputs != len(meta.classes):
        check.fail("outputs", f"is {meta.outputs}, but 'classes' holds {len(meta.classes)} names")
