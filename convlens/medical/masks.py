"""Localisation metrics of anomaly maps against ground-truth masks: pixel AUROC and PRO.

PRO (per-region overlap; Bergmann et al., MVTec AD, IJCV 2021): at a threshold, the overlap of
a ground-truth region is the share of its pixels whose map value reaches the threshold; PRO is
the mean overlap over all regions (each connected component of each image's mask, 8-connected,
as MVTec's evaluation labels them), so a small defect counts as much as a large one. The curve
of PRO against the false-positive rate over all normal pixels (of every image) is integrated up
to FPR 0.3 and divided by 0.3: 1 is perfect. Every distinct map value is a threshold (exact).
"""

from __future__ import annotations

import numpy as np

from convlens.errors import ConvlensError

FPR_LIMIT = 0.3  # MVTec AD's integration limit


def image_auroc(anomalous: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of image scores (N,) with anomalous images (N,) bool as positives."""
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(anomalous).astype(bool).ravel(), np.asarray(scores, np.float64).ravel()
    _both(y, "images")
    return float(roc_auc_score(y, s))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """ROC AUC over all pixels: masks (N, H, W) bool (anomalous pixels) against maps (N, H, W)."""
    from sklearn.metrics import roc_auc_score

    y, s = _pixels(masks, maps)
    return float(roc_auc_score(y.ravel(), s.ravel()))


def regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels (N, H, W) int: 0 outside the masks, 1..R a connected region (8-connected, each
    image on its own), and R."""
    from scipy.ndimage import label

    out = np.zeros(masks.shape, np.int64)
    count = 0
    for i, mask in enumerate(np.asarray(masks, bool)):
        lab, n = label(mask, structure=np.ones((3, 3), int))
        out[i] = np.where(lab > 0, lab + count, 0)
        count += n
    return out, count


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at every distinct map value from the highest down, from (0, 0) to (1, 1)."""
    y, s = _pixels(masks, maps)
    lab, count = regions(y)
    lab, s = lab.ravel(), s.ravel()
    sizes = np.bincount(lab, minlength=count + 1)  # sizes[0]: normal pixels
    order = np.argsort(-s, kind="stable")
    lab, s = lab[order], s[order]
    fp = np.cumsum(lab == 0) / sizes[0]  # FPR once every pixel up to here is flagged
    share = np.where(lab > 0, 1.0 / (count * sizes[lab].clip(1)), 0.0)  # its region's 1/size / R
    pro = np.cumsum(share)
    last = np.r_[s[1:] != s[:-1], True]  # a threshold flags every pixel of its value at once
    return np.r_[0.0, fp[last]], np.r_[0.0, np.minimum(pro[last], 1.0)]


def pro_auc(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = FPR_LIMIT) -> float:
    """Area under the PRO curve up to `fpr_limit`, divided by it (MVTec AD's AU-PRO)."""
    if not 0 < fpr_limit <= 1:
        raise ConvlensError(f"PRO: fpr_limit {fpr_limit} must be in (0, 1]")
    fpr, pro = pro_curve(masks, maps)
    end = np.searchsorted(fpr, fpr_limit, side="right")  # points with fpr <= limit: fpr[:end]
    x, y = fpr[:end], pro[:end]
    if end < len(fpr) and x[-1] < fpr_limit:  # the curve at the limit, on the segment across it
        t = (fpr_limit - fpr[end - 1]) / (fpr[end] - fpr[end - 1])
        x, y = np.r_[x, fpr_limit], np.r_[y, pro[end - 1] + t * (pro[end] - pro[end - 1])]
    return float(np.trapezoid(y, x) / fpr_limit)


def _pixels(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bool (N, H, W), float64 (N, H, W)), refusing mismatched shapes or a single class."""
    y, s = np.asarray(masks).astype(bool), np.asarray(maps, np.float64)
    if y.ndim == 2 and s.ndim == 2:  # one image
        y, s = y[None], s[None]
    if y.shape != s.shape or y.ndim != 3:
        raise ConvlensError(f"masks {y.shape} and maps {s.shape} must both be (N, H, W)")
    if not np.isfinite(s).all():
        raise ConvlensError("anomaly maps hold NaN or infinite values")
    _both(y, "pixels")
    return y, s


def _both(y: np.ndarray, what: str) -> None:
    """Refuse labels without both classes: the metrics compare anomalous against normal."""
    if y.all() or not y.any():
        kind = "normal" if y.all() else "anomalous"
        raise ConvlensError(f"no {kind} {what} among {y.size}: AUROC and PRO need both")
