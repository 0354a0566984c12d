"""Classification metrics from predicted probabilities."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def classification_metrics(labels: torch.Tensor, probs: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, top-5, per-class precision/recall/F1/support, macro F1, calibration error (ECE),
    confusion matrix."""
    y = labels.numpy()
    k = len(classes)
    pred = probs.argmax(1).numpy()
    top = probs.topk(min(5, k), dim=1).indices  # (N, 5)
    top5 = (top == labels[:, None]).any(1).float().mean().item()
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    per_class = [
        {"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
         "support": int(s[i])}
        for i, c in enumerate(classes)
    ]  # fmt: skip
    return {
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "top5": top5 if len(y) else 0.0,
        "macro_f1": float(np.mean(f)),
        "ece": expected_calibration_error(labels, probs),
        "n": int(len(y)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y, pred, labels=range(k)).tolist(),
    }


def expected_calibration_error(labels: torch.Tensor, probs: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): the gap between confidence and accuracy, averaged over 15 equal-width
    confidence bins weighted by their share of the images; 0 for a calibrated model."""
    if not len(labels):
        return 0.0
    confidence, pred = probs.max(1)  # (N,), (N,)
    correct = (pred == labels).float()
    which = (confidence * bins).long().clamp(max=bins - 1)  # bin of each image, [0, bins)
    gap = torch.zeros(bins).index_add_(0, which, confidence - correct)  # summed per bin
    return float(gap.abs().sum() / len(labels))
