"""Classification metrics from predicted probabilities."""

from __future__ import annotations

import numpy as np
import torch


def classification_metrics(labels: torch.Tensor, probs: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, top-5, per-class precision/recall/F1/support, macro F1, calibration error (ECE)
    with its reliability bins, confusion matrix."""
    # scikit-learn loads when a run is measured, not when one only predicts
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y = labels.numpy()
    k = len(classes)
    pred = probs.argmax(1).numpy()
    reliability = reliability_bins(labels, probs)  # the ECE and the diagram share these bins
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
        "ece": ece_of_bins(reliability),
        "reliability": reliability,
        "n": int(len(y)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y, pred, labels=range(k)).tolist(),
    }


def reliability_bins(labels: torch.Tensor, probs: torch.Tensor, bins: int = 15) -> dict:
    """The numbers of a reliability diagram (Guo et al. 2017): the images grouped by confidence
    (their top probability) into `bins` equal-width bins, [0, 1/bins), ..., [1 - 1/bins, 1];
    per bin the mean confidence, the accuracy and the image count. "bins" holds the bins + 1
    edges; an empty bin's confidence and accuracy are None."""
    confidence, pred = probs.max(1)  # (N,), (N,)
    correct = (pred == labels).double()
    which = (confidence * bins).long().clamp(max=bins - 1)  # bin of each image, [0, bins)
    count = torch.bincount(which, minlength=bins).tolist()
    summed = torch.zeros(2, bins, dtype=torch.float64)  # confidence, right answers
    summed[0].index_add_(0, which, confidence.double())
    summed[1].index_add_(0, which, correct)
    mean = [[s / n if n else None for s, n in zip(row, count, strict=True)]
            for row in summed.tolist()]  # fmt: skip
    return {
        "bins": [i / bins for i in range(bins + 1)],
        "confidence": mean[0],
        "accuracy": mean[1],
        "count": count,
    }


def ece_of_bins(reliability: dict) -> float:
    """ECE from reliability_bins: each bin's |confidence - accuracy| weighted by its share of
    the images; 0 for a calibrated model (and for no images)."""
    count, conf, acc = (reliability[k] for k in ("count", "confidence", "accuracy"))
    n = sum(count)
    gaps = (c * abs(x - a) for c, x, a in zip(count, conf, acc, strict=True) if c)
    return sum(gaps) / n if n else 0.0


def expected_calibration_error(labels: torch.Tensor, probs: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): the gap between confidence and accuracy, averaged over 15 equal-width
    confidence bins weighted by their share of the images; 0 for a calibrated model."""
    return ece_of_bins(reliability_bins(labels, probs, bins))
