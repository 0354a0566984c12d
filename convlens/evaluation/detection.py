"""Detection metrics of a two-class run: an operating threshold chosen on validation, then
sensitivity, specificity, PPV, NPV, F1, ROC AUC and PR AUC with percentile-bootstrap CIs.

A case is called positive when its score (the positive class's probability) is >= the threshold.
The bootstrap resamples cases with replacement (`n_boot` times, seeded) and reports the 2.5th and
97.5th percentiles of each metric; a resample without positives (or negatives) gives NaN for the
metrics that need them and is left out of those percentiles.
"""

from __future__ import annotations

import numpy as np

from convlens.errors import ConvlensError

METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc")
NEGATIVE_NAMES = ("normal", "healthy", "negative", "benign", "control", "absent", "no", "none")


def positive_index(classes: list[str]) -> int:
    """Which of two classes is the finding: not the one named normal/healthy/no..., else 1."""
    for i, name in enumerate(classes):
        words = name.lower().replace("-", "_").replace(" ", "_").split("_")
        if name.lower() in NEGATIVE_NAMES or words[0] in ("no", "non", "not"):
            return 1 - i
    return 1


def choose_threshold(
    labels: np.ndarray, scores: np.ndarray, target_sensitivity: float | None = None
) -> dict:
    """The operating point on validation: Youden's J (default) or the highest threshold whose
    sensitivity reaches `target_sensitivity`."""
    from sklearn.metrics import roc_curve

    y, s = _binary(labels, scores, "validation")
    fpr, tpr, thr = roc_curve(y, s)  # thr descending; thr[0] = inf (nothing called positive)
    if target_sensitivity is None:
        i = int(np.argmax(tpr - fpr))  # the first of equal maxima: the highest threshold
    else:
        if not 0 < target_sensitivity <= 1:
            raise ConvlensError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
        i = int(np.argmax(tpr >= target_sensitivity - 1e-12))
    threshold = float(thr[i]) if np.isfinite(thr[i]) else float(np.nextafter(s.max(), np.inf))
    return {
        "threshold": threshold,
        "method": "youden" if target_sensitivity is None else "target_sensitivity",
        "target_sensitivity": target_sensitivity,
        "chosen_on": "val",
        "val_sensitivity": float(tpr[i]),
        "val_specificity": float(1 - fpr[i]),
        "val_n": int(len(y)),
    }


def detection_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Each metric as {"value", "ci": [low, high]} at `threshold`, with counts and the CI setup."""
    y, s = _binary(labels, scores, "evaluated")
    point = weighted_metrics(y, s, threshold, np.ones((1, len(y))))
    boot = bootstrap(y, s, threshold, n_boot, seed)
    tail = 100 * (1 - confidence) / 2
    out: dict = {"threshold": threshold, "n": int(len(y)), "positives": int(y.sum())}
    pred = s >= threshold
    out["confusion"] = {
        "tp": int((pred & y).sum()),
        "fn": int((~pred & y).sum()),
        "fp": int((pred & ~y).sum()),
        "tn": int((~pred & ~y).sum()),
    }
    for name in METRICS:
        finite = boot[name][~np.isnan(boot[name])]  # resamples where the metric is defined
        low, high = np.percentile(finite, [tail, 100 - tail]) if len(finite) else (np.nan,) * 2
        out[name] = {"value": _num(point[name][0]), "ci": [_num(low), _num(high)]}
    out["bootstrap"] = {"resamples": n_boot, "seed": seed, "confidence": confidence}
    return out


def bootstrap(
    y: np.ndarray, s: np.ndarray, threshold: float, n_boot: int, seed: int, chunk: int = 200
) -> dict[str, np.ndarray]:
    """Every metric on `n_boot` case resamples: {name: (n_boot,)}; resamples as count weights."""
    rng = np.random.default_rng(seed)
    n = len(y)
    parts = []
    for start in range(0, n_boot, chunk):
        counts = rng.multinomial(n, np.full(n, 1 / n), size=min(chunk, n_boot - start))  # (b, N)
        parts.append(weighted_metrics(y, s, threshold, counts.astype(np.float64)))
    return {k: np.concatenate([p[k] for p in parts]) for k in METRICS}


def weighted_metrics(y: np.ndarray, s: np.ndarray, threshold: float, w: np.ndarray) -> dict:
    """Every metric for each row of case weights `w` (B, N): {name: (B,)}; NaN where undefined."""
    pred = s >= threshold
    tp, fn = w @ (y & pred), w @ (y & ~pred)  # (B,)
    fp, tn = w @ (~y & pred), w @ (~y & ~pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }
        out.update(_ranking(y, s, w))
    return out


def _ranking(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted ROC AUC (Mann-Whitney, ties count half) and average precision (sklearn's step
    sum), for each row of `w` (B, N) at once."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # tie groups, high->low
    pos = np.add.reduceat(w[:, order] * y_sorted, starts, axis=1)  # (B, G) positives per group
    neg = np.add.reduceat(w[:, order] * (1 - y_sorted), starts, axis=1)  # (B, G)
    n_pos, n_neg = pos.sum(1), neg.sum(1)  # (B,)
    neg_below = n_neg[:, None] - np.cumsum(neg, 1)  # negatives scored lower than group g
    auc = (pos * (neg_below + 0.5 * neg)).sum(1) / (n_pos * n_neg)
    tp, fp = np.cumsum(pos, 1), np.cumsum(neg, 1)  # called positive at group g's threshold
    precision = tp / np.maximum(tp + fp, 1e-300)
    ap = (pos / n_pos[:, None] * precision).sum(1)  # sum of recall steps x precision
    return {"roc_auc": auc, "pr_auc": ap}


def curves(labels: np.ndarray, scores: np.ndarray) -> dict:
    """ROC (fpr, tpr) and precision-recall points, from scikit-learn, for the figures."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    y, s = _binary(labels, scores, "evaluated")
    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}


def _binary(labels, scores, which: str) -> tuple[np.ndarray, np.ndarray]:
    """(bool (N,), float (N,)), refusing a split with only one class."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    if y.all() or not y.any():
        kind = "negative" if y.all() else "positive"
        raise ConvlensError(
            f"the {which} split has no {kind} cases ({len(y)} images): detection metrics and the "
            "operating threshold need both"
        )
    return y, s


def _num(x: float) -> float | None:
    """A float for JSON (None for NaN)."""
    return None if np.isnan(x) else float(x)


def detection_block(
    classes: list[str],
    val: tuple[np.ndarray, np.ndarray],
    evaluated: tuple[np.ndarray, np.ndarray],
    target_sensitivity: float | None = None,
) -> dict:
    """metrics.json's "detection" entry: the threshold chosen on `val` (labels, probs (N, 2)),
    applied to the `evaluated` split's (labels, probs)."""
    pos = positive_index(classes)
    val_y, val_p = val
    y, p = evaluated
    point = choose_threshold(val_y == pos, val_p[:, pos], target_sensitivity)
    block = {"positive_class": classes[pos], "operating_point": point}
    block.update(detection_metrics(y == pos, p[:, pos], point["threshold"]))
    return block
