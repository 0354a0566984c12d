"""Score files in the MedMNIST evaluator's format, to compare a run with the published benchmark.

MedMNIST's `Evaluator` names a result file `{flag}{size}_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}
@{run}.csv` (size: blank for 28 pixels, `_64`, `_128`, `_224` otherwise) and writes one line per
image, no header: its index in the split, then the model's score for each class (softmax
probabilities; sigmoid scores for multi-label files). `medmnist.Evaluator.parse_and_evaluate`
reads these files back. AUC and ACC follow its getAUC/getACC: binary uses the last column's
score (ACC at > 0.5), multi-class averages one-vs-rest AUCs (ACC by argmax), multi-label averages
per-label AUC and per-label accuracy at 0.5.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from convlens.errors import ConvlensError

SIZES = {28: "", 64: "_64", 128: "_128", 224: "_224"}


def medmnist_task(labels: np.ndarray, n_scores: int) -> str:
    """MedMNIST's task name for these labels: binary-class, multi-class or multi-label."""
    if labels.ndim == 2 and labels.shape[1] > 1:
        return "multi-label, binary-class"
    return "binary-class" if n_scores == 2 else "multi-class"


def auc_acc(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """MedMNIST's (AUC, ACC) of scores (N, K) for labels (N,) or (N, L)."""
    from sklearn.metrics import roc_auc_score

    task = medmnist_task(labels, scores.shape[1])
    if task == "binary-class":
        y = labels.ravel()
        return float(roc_auc_score(y, scores[:, -1])), float(((scores[:, -1] > 0.5) == y).mean())
    if task == "multi-class":
        y = labels.ravel()
        aucs = [roc_auc_score(y == k, scores[:, k]) for k in range(scores.shape[1])]
        return float(np.mean(aucs)), float((scores.argmax(1) == y).mean())
    aucs = [roc_auc_score(labels[:, k], scores[:, k]) for k in range(labels.shape[1])]
    return float(np.mean(aucs)), float(((scores >= 0.5) == (labels > 0.5)).mean())


def flag_of(data: str) -> tuple[str, str]:
    """(flag, size suffix) from a data path: pneumoniamnist_64.npz -> ("pneumoniamnist", "_64")."""
    stem = Path(str(data)).stem.lower()
    m = re.fullmatch(r"(.+?)(_(?:64|128|224))?", stem)
    return m[1], m[2] or ""


def write_scores(
    folder: str | Path, data: str, split: str, run: str, labels: np.ndarray, scores: np.ndarray
) -> Path:
    """Write `{flag}{size}_{split}_[AUC]..._[ACC]...@{run}.csv` into `folder`; return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flag, size = flag_of(data)
    try:
        auc, acc = auc_acc(np.asarray(labels), np.asarray(scores))
    except ValueError:  # a class (or label) absent from the split: AUC is undefined
        auc = acc = float("nan")
    path = folder / f"{flag}{size}_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv"
    lines = [f"{i}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(scores)]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_scores(path: str | Path) -> tuple[dict, np.ndarray]:
    """The name's fields (flag, size, split, auc, acc, run) and the (N, K) scores by index."""
    path = Path(path)
    m = re.fullmatch(
        r"(?P<flag>[^_]+)(?P<size>_\d+)?_(?P<split>train|val|test)_\[AUC\](?P<auc>[\d.]+)"
        r"_\[ACC\](?P<acc>[\d.]+)@(?P<run>.+)\.csv",
        path.name,
    )
    if m is None:
        raise ConvlensError(f"{path}: not a MedMNIST score file name")
    table = np.loadtxt(path, delimiter=",", ndmin=2)  # (N, 1 + K): index, scores
    fields = {**m.groupdict(), "auc": float(m["auc"]), "acc": float(m["acc"])}
    return fields, table[np.argsort(table[:, 0]), 1:]
