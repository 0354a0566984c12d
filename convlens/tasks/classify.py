"""`classify`: single-label classification, K softmax outputs, cross-entropy, accuracy.

Two-class runs add the clinical view (convlens.tasks.detection): a threshold chosen on
validation, detection metrics with CIs, and a flag in every answer.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data import Dataset, Split
from convlens.device import resolve_device
from convlens.errors import ConfigError, ConvlensError
from convlens.evaluation.calibration import calibrate
from convlens.evaluation.medmnist import write_scores
from convlens.evaluation.metrics import classification_metrics
from convlens.evaluation.plots import save_confusion_matrix, save_curves, save_reliability
from convlens.models.infer import predict_proba
from convlens.runs.checks import Checker
from convlens.runs.meta import WeightsMeta
from convlens.runs.weights import save_weights
from convlens.tasks import openset
from convlens.tasks.base import (
    Evaluation,
    LoadedRun,
    Task,
    check_outputs_are_classes,
    top_predictions,
)
from convlens.tasks.detection import add_detection, flag, read_old_operating_point
from convlens.tasks.loading import load_model
from convlens.tasks.registry import register_task


@register_task("classify")
class ClassifyTask(Task):
    """K classes, one per image: softmax + cross-entropy, scored by validation accuracy."""

    engines = ("torch", "numpy")
    explains = True
    heatmaps = True
    onnx_output = "logits"
    onnx_activation = "softmax"
    serves_onnx = True
    rejects_unknown = True  # open-set rejection (issue 19): --reject msp|energy|mahalanobis
    mixes = True  # --mix mixup|cutmix|both: F.cross_entropy takes the soft targets as they are

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.class_weight: torch.Tensor | None = None

    # --- training hooks -------------------------------------------------------------------------
    def prepare(self, ds: Dataset) -> Dataset:
        """Refuse data a classifier cannot learn; inverse-frequency class weights if asked."""
        single_label(ds)
        if self.cfg.class_weights == "auto":  # inverse class frequency, 1 when balanced
            counts = torch.bincount(ds.train.labels, minlength=ds.num_classes).float()
            self.class_weight = counts.sum() / (ds.num_classes * counts.clamp_min(1))
        return ds

    def loss(self, model: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the model's outputs `out` (B, K) on `target`: class indices (B,), or
        float (B, K) class probabilities from --mix (soft-target cross-entropy)."""
        if self.class_weight is not None:  # moved once: a copy per step would wait for a GPU
            self.class_weight = self.class_weight.to(out.device)
        return F.cross_entropy(
            out.float(), target, weight=self.class_weight, label_smoothing=self.cfg.label_smoothing
        )

    def validate(self, model: nn.Module, split: Split, meta: dict, **kw: Any) -> dict:
        """{"val_loss", "val_acc"} on the validation split; kw: device, amp, channels_last."""
        return softmax_validation(model, split, meta, **kw)

    def probability_scores(self, probs: torch.Tensor, labels: torch.Tensor) -> dict:
        """{"val_loss", "val_acc"} of probabilities another engine computed (the NumPy one)."""
        return classify_scores(probs, labels)

    # --- after training -------------------------------------------------------------------------
    def calibrate(self, run_dir: Path, ds: Dataset) -> str | None:
        """Fit the softmax temperature of the best weights on val and fold it into them
        (convlens.evaluation.calibration); a note for the console, or None."""
        if self.cfg.calibrate == "none":
            return None
        return calibrate_run(run_dir, ds, device=str(resolve_device(self.cfg.device)))

    @classmethod
    def wrap(cls, model: nn.Module, meta: Any) -> nn.Module:
        """The model, holding a mahalanobis open-set score's class Gaussians as buffers."""
        point = meta.get("openset")  # meta: a dict while training, else WeightsMeta
        return openset.attach(model, point and point.get("score"), len(meta["classes"]))

    @classmethod
    def check_meta(cls, meta: WeightsMeta, check: Checker) -> None:
        """One output per class; an open-set threshold, if any, of a known score."""
        check_outputs_are_classes(meta, check)
        openset.check_point(meta, check)

    @classmethod
    def read_old_decisions(cls, meta: WeightsMeta, weights: Path) -> None:
        """A two-class run's threshold.json (older runs)."""
        read_old_operating_point(meta, weights)

    @classmethod
    def evaluate(cls, run: LoadedRun, dataset: Dataset, split: str, write: bool) -> Evaluation:
        """Accuracy, top-5, per-class metrics, confusion matrix, calibration error; two-class
        runs add detection metrics at a threshold chosen on val. details: "split" (the evaluated
        Split) and "probs" (N, K), for the report's most confident mistakes."""
        part = dataset.split(split)
        check_compatible(run.meta, dataset, run.weights)
        if write:
            choose_openset(run, dataset)
        probs, unknown_scores = openset.split(cls.scores(run, part.images), run.meta)
        metrics = {"data": dataset.name, "split": split, "weights": str(run.weights)}
        metrics.update(classification_metrics(part.labels, probs, run.meta.classes))
        if run.meta.calibration is not None:  # the temperature folded into the weights
            metrics["calibration"] = run.meta.calibration
        if unknown_scores is not None:  # open-set rejection: what the val threshold keeps here
            right = probs.argmax(1) == part.labels
            metrics["openset"] = openset.block(unknown_scores, right, run.meta.decisions.openset)
        if len(run.meta.classes) == 2:  # a finding or not: the clinical view, threshold from val
            val_probs = openset.split(cls.scores(run, dataset.val.images), run.meta)[0]
            add_detection(metrics, run, dataset.val, val_probs, part, probs, write=write)
        if write and run.folder is not None:
            _write_outputs(run, metrics, part, probs)
            if dataset.name.endswith(".npz"):  # MedMNIST: a score file its evaluator reads
                write_scores(run.folder.path / "medmnist", dataset.name, split, run.folder.name,
                             part.labels.numpy(), probs.numpy())  # fmt: skip
        return Evaluation(metrics, {"split": part, "probs": probs})

    @staticmethod
    def summary(metrics: dict) -> str:
        """Accuracy, top-5 and macro F1 (and what an open-set threshold keeps), one line."""
        line = (
            f"{metrics['split']}: accuracy {metrics['accuracy']:.4f}  top5 {metrics['top5']:.4f}"
            f"  macro_f1 {metrics['macro_f1']:.4f}  (n={metrics['n']})"
        )
        return line + (f"; {openset.line(metrics['openset'])}" if "openset" in metrics else "")

    # --- predicting -----------------------------------------------------------------------------
    @classmethod
    def scores(cls, run: LoadedRun, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, K), test-time views averaged as in training; a run with an
        open-set threshold adds its score (N, K + 1) (convlens.tasks.openset)."""
        if (point := run.meta.decisions.openset) is not None:
            return openset.torch_scores(run, images, point["score"])
        norm = run.meta.normalize
        return predict_proba(run.net, images, mean=norm.mean, std=norm.std, tta=run.meta.tta,
                             device=run.device)  # fmt: skip

    @classmethod
    def answer(cls, scores: torch.Tensor, meta: WeightsMeta, top_k: int) -> dict:
        """{"predictions": top-k {"label", "index", "score"}}; a two-class run with an operating
        point adds its {"positive_score", "flag"}, one with an open-set threshold {"unknown",
        "openset": {"score", "value", "threshold"}}."""
        scores, unknown_score = openset.split(scores, meta)
        fields: dict = {"predictions": top_predictions(scores, meta.classes, top_k)}
        if unknown_score is not None:
            fields.update(openset.fields(float(unknown_score), meta.decisions.openset))
        point = meta.decisions.operating_point
        if point is not None and len(meta.classes) == 2:
            fields.update(flag(fields["predictions"], point))
        return fields

    @classmethod
    def onnx_graph(cls, meta: WeightsMeta) -> dict[str, tuple[int, ...]]:
        """The logits (N, K); a run with an open-set threshold adds "openset_score" (N,)."""
        graph = {"logits": (len(meta.classes),)}
        return graph if meta.decisions.openset is None else {**graph, "openset_score": ()}

    @classmethod
    def onnx_module(cls, run: LoadedRun) -> nn.Module:
        """The network, or with an open-set threshold the network and its score (its class
        Gaussians become constants): the threshold is in the graph's metadata."""
        point = run.meta.decisions.openset
        if point is None:
            return run.net
        return openset.OpenSetNet(run.net, point["score"], openset.temperature(run.meta))


def calibrate_run(run_dir: Path, ds: Dataset, device: str = "cpu") -> str:
    """Calibrate a run's best weights in place (rewriting weights/best.safetensors with the
    temperature in its metadata) on the device it trained on; the note for the console."""
    model, meta, path = load_model(run_dir)
    if meta.calibration is not None:  # a resumed run killed after calibrating: never fold T twice
        return f"calibration: {path} already holds its temperature"
    entry, note = calibrate(model.to(device), meta, ds, device)
    if entry:
        save_weights(path, model.state_dict(), meta.replace(calibration=entry))
    return note


def choose_openset(run: LoadedRun, ds: Dataset) -> None:
    """Choose the open-set threshold the run's `reject` setting asks for on val (fitting the
    class Gaussians on train for mahalanobis) and save it with the weights; off: leave them."""
    score = run.setting("reject")
    if score in (None, "off"):
        return
    if score not in openset.SCORES:
        raise ConfigError(f"setting 'reject' must be one of {', '.join(openset.SCORES)}, off; "
                          f"not {score!r}")  # fmt: skip
    tpr = run.setting("reject_tpr") or 0.95
    openset.attach(run.net, score, len(run.meta.classes)).to(run.device)
    if score == "mahalanobis":
        openset.fit_gaussians(run, ds.train.images, ds.train.labels, run.setting("seed") or 0)
    val = openset.torch_scores(run, ds.val.images, score)[:, -1]
    point = openset.choose(val, score, tpr)
    decisions = dataclasses.replace(run.meta.decisions, openset=point)
    run.save_meta(run.meta.replace(decisions=decisions))


def single_label(ds: Dataset) -> None:
    """Refuse data whose images carry several labels, or only one class."""
    if ds.multilabel:  # cross-entropy would read 0/1 rows as soft labels
        raise ConfigError(f"{ds.name} is multi-label: train it with --task multilabel")
    if ds.num_classes < 2:  # e.g. a plain folder of images: normal cases for --task anomaly
        raise ConfigError(f"{ds.name} has one class ({ds.classes[0]}): a classifier needs two")


def softmax_validation(model: nn.Module, split: Split, meta: dict, **kw: Any) -> dict:
    """{"val_loss", "val_acc"} of a softmax classifier on `split`, one view per image: the run's
    test-time views (6 cost as much as 6 validations) run once, on the best weights."""
    norm = meta["normalize"]
    probs = predict_proba(model, split.images, mean=norm["mean"], std=norm["std"], **kw)
    return classify_scores(probs, split.labels)


def classify_scores(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Validation loss (NLL of the probabilities) and accuracy."""
    return {
        "val_loss": F.nll_loss(probs.clamp_min(1e-12).log(), labels).item(),
        "val_acc": (probs.argmax(1) == labels).float().mean().item(),
    }


def check_compatible(meta: WeightsMeta, ds: Dataset, weights: Path) -> None:
    """Refuse data whose classes or image shape differ from what the weights expect."""
    if len(meta.classes) != ds.num_classes:
        raise ConvlensError(
            f"class-count mismatch: {weights} predicts {len(meta.classes)} classes, "
            f"data {ds.name} has {ds.num_classes}"
        )
    if list(meta.classes) != list(ds.classes):
        raise ConvlensError(f"class names differ between {weights} and data {ds.name}")
    have = (ds.channels, *ds.image_size)
    if meta.input.shape != have:
        raise ConvlensError(f"{weights} expects images of {meta.input.shape}, data {ds.name} "
                            f"has {have}")  # fmt: skip


def _write_outputs(run: LoadedRun, metrics: dict, part: Split, probs: torch.Tensor) -> None:
    """metrics.json, confusion_matrix.csv and .png, curves.png, reliability.png."""
    folder = run.folder
    folder.write_metrics(metrics)
    cm = metrics["confusion_matrix"]
    classes = [c["class"] for c in metrics["per_class"]]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true \\ predicted", *classes])
    writer.writerows([c, *row] for c, row in zip(classes, cm, strict=True))
    (folder.path / "confusion_matrix.csv").write_text(buf.getvalue())
    save_confusion_matrix(cm, classes, folder.path / "confusion_matrix.png")
    if rows := folder.read_results():
        save_curves(rows, folder.path / "curves.png")
    # the evaluated split's predictions: the same bins as metrics' ECE
    save_reliability(part.labels, probs, folder.path / "reliability.png")
