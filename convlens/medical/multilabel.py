"""Multi-label disease classification (`--task multilabel`): one sigmoid output per label,
binary cross-entropy with per-label positive weights, per-label thresholds chosen on validation.

Data: a `path,labels[,split]` CSV (convlens.data.labelcsv) or a multi-label MedMNIST NPZ
(ChestMNIST's (N, 14) layout). Metrics: per-label ROC AUC and average precision, macro and
micro AUC, mAP, and each label's sensitivity/specificity at its own validation threshold.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.data import Dataset, Split
from convlens.errors import ConfigError, ConvlensError
from convlens.evaluation.detection import choose_threshold
from convlens.evaluation.medmnist import write_scores
from convlens.evaluation.plots import save_curves, save_label_rocs
from convlens.models.infer import layout, map_batches, tta_views
from convlens.runs.checks import Checker, validate_label_thresholds
from convlens.runs.meta import WeightsMeta
from convlens.tasks.base import Evaluation, LoadedRun, Task, check_outputs_are_classes
from convlens.tasks.loading import read_side_file
from convlens.tasks.registry import register_task

OLD_FILE = "thresholds.json"  # beside an older run's weights: each label's threshold
MAX_POS_WEIGHT = 100.0  # a label seen once in 10,000 images should not dominate the loss


@register_task("multilabel")
class MultilabelTask(Task):
    """L independent yes/no findings per image: sigmoid + BCE, scored by macro ROC AUC."""

    score = "val_auc"
    heatmaps = True
    onnx_output = "logits"
    onnx_activation = "sigmoid"

    def prepare(self, ds: Dataset) -> Dataset:
        """Check the labels are (N, L) 0/1; weight each label's positives by negatives/positives."""
        if not ds.multilabel:
            raise ConfigError(
                f"task multilabel needs multi-label data (a path,labels CSV or a multi-label NPZ "
                f"such as ChestMNIST); {ds.name} has one class per image"
            )
        y = ds.train.labels  # (N, L)
        positives = y.sum(0)
        self.pos_weight = ((len(y) - positives) / positives.clamp_min(1)).clamp(1.0, MAX_POS_WEIGHT)
        return ds

    def loss(self, model: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the logits (B, L), positives weighted per label."""
        self.pos_weight = self.pos_weight.to(out.device)  # once: a copy per step would sync
        return F.binary_cross_entropy_with_logits(
            out.float(), target.float(), pos_weight=self.pos_weight
        )

    def validate(self, model: nn.Module, split: Split, meta: dict, **kw: Any) -> dict:
        """{"val_loss": unweighted BCE, "val_auc": macro ROC AUC} on the validation split, one
        view per image (the run's test-time views run once, after training)."""
        scores = sigmoid_scores(model, split.images, {**meta, "tta": "none"}, **kw)
        loss = F.binary_cross_entropy(scores.clamp(1e-7, 1 - 1e-7), split.labels.float())
        aucs = [a for a in label_aucs(split.labels.numpy(), scores.numpy()) if a is not None]
        return {"val_loss": loss.item(), "val_auc": float(np.mean(aucs)) if aucs else 0.0}

    @classmethod
    def check_meta(cls, meta: WeightsMeta, check: Checker) -> None:
        """One output per label."""
        check_outputs_are_classes(meta, check)

    @classmethod
    def read_old_decisions(cls, meta: WeightsMeta, weights: Path) -> None:
        """The thresholds.json beside an older run's weights, checked."""
        path = weights.parent / OLD_FILE
        if meta.decisions.label_thresholds is not None or not path.is_file():
            return
        saved = read_side_file(path)
        thresholds = validate_label_thresholds(saved, meta.classes, path)
        meta.decisions.label_thresholds = {**saved, "thresholds": thresholds}

    @classmethod
    def evaluate(cls, run: LoadedRun, dataset: Dataset, split: str, write: bool) -> Evaluation:
        """Per-label and averaged metrics on `split`, thresholds chosen on the validation split.
        details: "labels" (N, L) and "scores" (N, L) of the split, for the report."""
        classes = run.meta.classes
        if not dataset.multilabel or list(dataset.classes) != list(classes):
            have = ", ".join(dataset.classes) if dataset.multilabel else "one class per image"
            raise ConvlensError(
                f"{run.weights} predicts the labels {', '.join(classes)}; data "
                f"{dataset.name} has {have}"
            )
        part = dataset.split(split)
        val_scores = cls.scores(run, dataset.val.images)
        # the run's own target sensitivity (evaluate's --target-sensitivity is for two classes)
        target = run.settings.get("target_sensitivity")
        points = label_thresholds(dataset.val.labels.numpy(), val_scores.numpy(), target)
        scores = cls.scores(run, part.images).numpy()
        metrics = {"task": cls.name, "data": dataset.name, "split": split,
                   "weights": str(run.weights)}  # fmt: skip
        metrics.update(multilabel_metrics(part.labels.numpy(), scores, classes, points))
        if write and run.folder is not None:
            _write(run, metrics, points, part, scores, dataset.name)
        return Evaluation(metrics, {"labels": part.labels.numpy(), "scores": scores})

    @classmethod
    def scores(cls, run: LoadedRun, images: torch.Tensor) -> torch.Tensor:
        """Per-label probabilities (N, L), test-time views averaged as in training."""
        return sigmoid_scores(run.net, images, run.meta, device=run.device)

    @classmethod
    def answer(cls, scores: torch.Tensor, meta: WeightsMeta, top_k: int) -> dict:
        """{"predictions": the top-k labels and every other positive one, each with its
        threshold and decision}; 0.5 for every label of a run without thresholds."""
        thresholds = meta.decisions.thresholds or [0.5] * len(meta.classes)
        return {"predictions": label_decisions(scores, meta.classes, thresholds, top_k)}

    @staticmethod
    def summary(metrics: dict) -> str:
        """One line: macro and micro AUC, mAP."""
        return (
            f"{metrics['split']}: macro AUC {metrics['macro_auc']:.4f}  micro AUC "
            f"{metrics['micro_auc']:.4f}  mAP {metrics['map']:.4f}  (n={metrics['n']}, "
            f"{len(metrics['per_label'])} labels)"
        )


@torch.no_grad()
def sigmoid_scores(
    model: nn.Module,
    images: torch.Tensor,
    meta: dict,
    *,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = True,
    batch_size: int = 500,
) -> torch.Tensor:
    """Per-label probabilities (N, L) float32 for uint8 images (N, C, H, W), TTA as trained."""

    def scores(x: torch.Tensor) -> torch.Tensor:  # (B, L), test-time views averaged
        views = tta_views(x, meta.get("tta", "none"), layout(channels_last))
        return sum(w * model(v).float().sigmoid() for v, w in views)

    norm = meta["normalize"]
    return map_batches(model, images, scores, mean=norm["mean"], std=norm["std"],
                       device=device, amp=amp, channels_last=channels_last,
                       batch_size=batch_size)  # fmt: skip


def label_aucs(labels: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """ROC AUC per label column (None where the split lacks positives or negatives)."""
    from sklearn.metrics import roc_auc_score

    y = labels > 0.5
    return [
        float(roc_auc_score(y[:, j], scores[:, j])) if 0 < y[:, j].sum() < len(y) else None
        for j in range(y.shape[1])
    ]


def label_thresholds(
    labels: np.ndarray, scores: np.ndarray, target_sensitivity: float | None
) -> list[dict]:
    """Each label's operating point on validation (0.5 where validation lacks a class)."""
    points = []
    for j in range(labels.shape[1]):
        try:
            points.append(choose_threshold(labels[:, j] > 0.5, scores[:, j], target_sensitivity))
        except ConvlensError:  # no positive (or negative) validation case for this label
            points.append({"threshold": 0.5, "method": "default", "chosen_on": "none"})
    return points


def multilabel_metrics(
    labels: np.ndarray, scores: np.ndarray, names: list[str], points: list[dict]
) -> dict:
    """Per-label AUC, AP, support, sensitivity and specificity at its threshold; macro and
    micro AUC; mAP; MedMNIST's ACC (per-label accuracy at 0.5, averaged)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = labels > 0.5  # (N, L)
    aucs = label_aucs(labels, scores)
    per_label = []
    for j, name in enumerate(names):
        pred = scores[:, j] >= points[j]["threshold"]
        pos, neg = y[:, j], ~y[:, j]
        per_label.append({
            "label": name,
            "auc": aucs[j],
            "ap": float(average_precision_score(pos, scores[:, j])) if pos.any() else None,
            "threshold": points[j]["threshold"],
            "sensitivity": float(pred[pos].mean()) if pos.any() else None,
            "specificity": float((~pred[neg]).mean()) if neg.any() else None,
            "support": int(pos.sum()),
        })  # fmt: skip
    aps = [p["ap"] for p in per_label if p["ap"] is not None]
    both = 0 < y.sum() < y.size
    return {
        "n": int(len(y)),
        "macro_auc": float(np.mean([a for a in aucs if a is not None] or [np.nan])),
        "micro_auc": float(roc_auc_score(y.ravel(), scores.ravel())) if both else float("nan"),
        "map": float(np.mean(aps)) if aps else float("nan"),
        "accuracy": float(((scores >= 0.5) == y).mean()),
        "per_label": per_label,
        "thresholds_chosen_on": "val",
    }


def _write(run: LoadedRun, metrics: dict, points: list[dict], part: Split, scores: np.ndarray,
           data: str) -> None:  # fmt: skip
    """metrics.json, the thresholds with the weights, curves.png, roc_labels.png and, for an
    .npz, a MedMNIST score file."""
    folder = run.folder
    folder.write_metrics(metrics)
    if rows := folder.read_results():
        save_curves(rows, folder.path / "curves.png")
    names = [p["label"] for p in metrics["per_label"]]
    save_label_rocs(part.labels.numpy(), scores, names, folder.path / "roc_labels.png")
    saved = {"labels": run.meta.classes, "thresholds": [p["threshold"] for p in points],
             "points": points, "chosen_on": "val"}  # fmt: skip
    decisions = dataclasses.replace(run.meta.decisions, label_thresholds=saved)
    if decisions != run.meta.decisions:  # chosen on the same val again: the file stays
        run.save_meta(run.meta.replace(decisions=decisions))
    if data.endswith(".npz"):
        write_scores(folder.path / "medmnist", data, metrics["split"], folder.name,
                     part.labels.numpy(), scores)  # fmt: skip


def label_decisions(
    probs: torch.Tensor, classes: list[str], thresholds: list[float], k: int
) -> list[dict]:
    """The k highest-scoring labels of one image's scores (L,) plus every other positive one,
    each with its threshold and decision (the torch and ONNX recognisers answer alike)."""
    order = probs.argsort(descending=True).tolist()
    rows = [
        {"label": classes[i], "index": i, "score": float(probs[i]),
         "threshold": thresholds[i], "positive": bool(probs[i] >= thresholds[i])}
        for i in order
    ]  # fmt: skip
    return [r for n, r in enumerate(rows) if n < k or r["positive"]]
