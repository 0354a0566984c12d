"""What a run learns: the hooks the training loop, evaluation, loading and predict call.

`classify` (softmax + cross-entropy over class labels) is the default and is written here; the
other tasks live with their application and are imported only when a run asks for them:
`multilabel` and `anomaly` in convlens.medical, `embed` in convlens.faces.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data import Dataset, Split
from convlens.errors import ConfigError
from convlens.models.infer import predict_proba

TASKS = {
    "classify": "convlens.training.tasks:Classify",
    "multilabel": "convlens.medical.multilabel:MultilabelTask",
    "anomaly": "convlens.medical.anomaly:AnomalyTask",
    "embed": "convlens.faces.embed:EmbedTask",
}


def task_class(name: str) -> type[Classify]:
    """The Task class registered as `name`."""
    if name not in TASKS:
        raise ConfigError(f"setting 'task' must be one of {', '.join(TASKS)}, not {name!r}")
    module, attr = TASKS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def make_task(cfg: Any) -> Classify:
    """The task a TrainConfig asks for, ready for `prepare`."""
    return task_class(cfg.task)(cfg)


class Classify:
    """Single-label classification: K softmax outputs, cross-entropy, accuracy on validation.

    A subclass overrides what differs. The training loop calls, in order: `prepare` (once, on the
    loaded dataset), `outputs` and `meta` (to build the model and its weights metadata), `wrap`,
    then per step `batch` and `loss`, per epoch `validate`, and at the end `finish`.
    """

    name = "classify"
    score = "val_acc"  # the validation column that picks the best epoch (higher is better)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.class_weight: torch.Tensor | None = None

    # --- set-up ------------------------------------------------------------------------------
    def prepare(self, ds: Dataset) -> Dataset:
        """The dataset to train on (a subclass may select or relabel); before channel stats."""
        if ds.multilabel:  # cross-entropy would read 0/1 rows as soft labels
            raise ConfigError(f"{ds.name} is multi-label: train it with --task multilabel")
        if ds.num_classes < 2:  # e.g. a plain folder of images: normal cases for --task anomaly
            raise ConfigError(f"{ds.name} has one class ({ds.classes[0]}): a classifier needs two")
        if self.cfg.class_weights == "auto":  # inverse class frequency, 1 when balanced
            counts = torch.bincount(ds.train.labels, minlength=ds.num_classes).float()
            self.class_weight = counts.sum() / (ds.num_classes * counts.clamp_min(1))
        return ds

    def outputs(self, ds: Dataset) -> int:
        """How many numbers the model's last layer gives."""
        return ds.num_classes

    def meta(self, ds: Dataset) -> dict:
        """Entries added to the weights metadata (what loading and predict need)."""
        return {}

    @classmethod
    def wrap(cls, model: nn.Module, meta: dict) -> nn.Module:
        """The module to train and save around the registry model (also used when loading)."""
        return model

    # --- training ----------------------------------------------------------------------------
    def batch(
        self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A task-specific change to each uint8 batch (B, C, H, W) and its targets."""
        return images, labels

    def loss(self, model: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The scalar loss of the model's outputs `out` (B, K) on `target`."""
        if self.class_weight is not None:  # moved once: a copy per step would wait for a GPU
            self.class_weight = self.class_weight.to(out.device)
        return F.cross_entropy(
            out.float(), target, weight=self.class_weight, label_smoothing=self.cfg.label_smoothing
        )

    def validate(self, model: nn.Module, split: Split, meta: dict, **kw: Any) -> dict:
        """{"val_loss", <score>} on the validation split; kw: device, amp, channels_last."""
        probs = predict_proba(
            model,
            split.images,
            mean=meta["normalize"]["mean"],
            std=meta["normalize"]["std"],
            tta=meta["tta"],
            **kw,
        )
        return classify_scores(probs, split.labels)

    def calibrate(self, run_dir: Path, ds: Dataset) -> str | None:
        """Before `finish`: fit the softmax temperature of a classifier's best weights on val
        (convlens.evaluation.calibration); a note for the console, or None."""
        if self.name != "classify" or self.cfg.calibrate == "none":  # others' outputs differ
            return None
        from convlens.evaluation.calibration import calibrate_run

        return calibrate_run(run_dir, ds, device=self.device())

    def finish(self, run_dir: Path, ds: Dataset) -> dict:
        """Evaluate the best weights on the test split; write metrics.json and figures."""
        from convlens.evaluation import evaluate_run

        return evaluate_run(run_dir, dataset=ds, write=True, device=self.device())

    def device(self) -> str:
        """Where the run's own evaluation runs: where it trained (a GPU, if it did)."""
        from convlens.device import resolve_device

        return str(resolve_device(self.cfg.device))

    # --- after training (subclasses other than classify implement these two) ----------------
    @classmethod
    def evaluate(
        cls,
        model: nn.Module,
        meta: dict,
        weights: Path,
        run_dir: Path | None,
        dataset: Dataset,
        *,
        split: str,
        write: bool,
        device: str,
    ) -> dict:
        """Metrics of `model` on `split` of `dataset` (and, with write, the run's files)."""
        raise NotImplementedError  # classify is evaluated by convlens.evaluation itself

    @classmethod
    def recogniser(cls, run: str | Path, *, device: str) -> Any:
        """The convlens.predict.Recogniser subclass instance that predicts for this task (torch)."""
        raise NotImplementedError  # classify uses convlens.predict.Recogniser itself

    @staticmethod
    def summary(metrics: dict) -> str:
        """One line of the final metrics for the console."""
        return (
            f"{metrics['split']}: accuracy {metrics['accuracy']:.4f}  top5 {metrics['top5']:.4f}"
            f"  macro_f1 {metrics['macro_f1']:.4f}  (n={metrics['n']})"
        )


def classify_scores(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Validation loss (NLL of the probabilities) and accuracy."""
    return {
        "val_loss": F.nll_loss(probs.clamp_min(1e-12).log(), labels).item(),
        "val_acc": (probs.argmax(1) == labels).float().mean().item(),
    }
