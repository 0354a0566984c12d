"""Open-set rejection for classifiers (`--reject msp|energy|mahalanobis`): a score of how much an
image looks like the training classes, and "unknown" below a threshold chosen on validation.

Scores, higher = more like the training classes:
- msp: the maximum softmax probability of the calibrated logits (Hendrycks & Gimpel 2017);
- energy: minus the free energy, T * logsumexp(logits / T) at the run's calibration temperature
  T (Liu et al. 2020); the folded network gives logits / T, so this is T * logsumexp(output);
- mahalanobis: minus the squared Mahalanobis distance of the penultimate features to the nearest
  class mean, the classes' Gaussians sharing one covariance (Lee et al. 2018), fitted on training
  images; the means and precision are buffers of the network (`openset_means`, `_precision`),
  saved with its weights, so every engine that runs the weights file has them.
The threshold keeps `reject_tpr` of the validation images (all in-distribution); it is saved in
the weights header as "openset" (WeightsMeta.decisions.openset). With test-time views, an image's
score is the views' scores averaged with their weights, as its probabilities are. A run's scores
are then (N, K + 1): the K probabilities, then the open-set score, for every engine.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.evaluation.gaussians import fit_tied, squared_distance
from convlens.models.infer import map_batches, tta_views
from convlens.reference.losses import softmax
from convlens.reference.model import normalize
from convlens.reference.model import tta_views as numpy_views
from convlens.runs.checks import Checker
from convlens.runs.meta import WeightsMeta

SCORES = ("msp", "energy", "mahalanobis")  # --reject's choices besides off
FIT_IMAGES = 10_000  # training images the class Gaussians are fitted on, at most (a seeded pick)
BUFFERS = ("openset_means", "openset_precision")  # (K, D) and (D, D) on the network


def temperature(meta: WeightsMeta) -> float:
    """The calibration temperature folded into the weights (1 when uncalibrated)."""
    cal = meta.calibration or {}
    return float(cal.get("temperature", 1.0))


class OpenSetNet(nn.Module):
    """Normalised images (B, C, H, W) -> (logits (B, K), open-set score (B,)): the ONNX export,
    and what the torch engine runs for each view."""

    def __init__(self, net: nn.Module, score: str, temperature: float = 1.0) -> None:
        super().__init__()
        self.net, self.score, self.temperature = net, score, temperature

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.score == "mahalanobis":
            body = self.net.forward_features(x)
            feats = self.net.forward_head(body, pre_logits=True).float()  # (B, D)
            logits = self.net.forward_head(body).float()
            return logits, -nearest_distance(feats, *(getattr(self.net, b) for b in BUFFERS))
        logits = self.net(x).float()  # (B, K)
        if self.score == "msp":
            return logits, logits.softmax(1).amax(1)
        return logits, self.temperature * torch.logsumexp(logits, 1)


def nearest_distance(feats: torch.Tensor, means: torch.Tensor, precision: torch.Tensor):
    """Squared Mahalanobis distance (B,) of features (B, D) to the nearest class mean (K, D),
    expanded (f - m)' P (f - m) = f'Pf - 2 f'Pm + m'Pm: no (B, K, D) tensor for many classes.
    Both are first moved by the means' centre: smaller terms cancel less in float32."""
    centre = means.mean(0)
    feats, means = feats - centre, means - centre
    cross = (feats @ precision) @ means.T  # (B, K)
    own, theirs = squared_distance(feats, precision), squared_distance(means, precision)
    d2 = own[:, None] - 2 * cross + theirs  # (B, K)
    return d2.amin(1).clamp_min(0)


# --- fitting and choosing -------------------------------------------------------------------
def attach(net: nn.Module, score: str | None, classes: int) -> nn.Module:
    """The network with the buffers a mahalanobis score keeps (zeros until fitted), else none."""
    for name in BUFFERS:
        if hasattr(net, name):
            delattr(net, name)
    if score == "mahalanobis":
        d = net.num_features
        net.register_buffer(BUFFERS[0], torch.zeros(classes, d))
        net.register_buffer(BUFFERS[1], torch.zeros(d, d))
    return net


def fit_gaussians(run: Any, images: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
    """Fit the class means and shared precision of the network's penultimate features on up to
    FIT_IMAGES training images (a seeded pick), into its buffers."""
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:FIT_IMAGES]
    net, norm = run.net, run.meta.normalize

    def feats(x: torch.Tensor) -> torch.Tensor:  # (B, D), the image as it is (no views)
        return net.forward_head(net.forward_features(x), pre_logits=True)

    f = map_batches(net, images[pick], feats, mean=norm.mean, std=norm.std, device=run.device)
    means, precision = fit_tied(f, labels[pick], len(run.meta.classes))
    for name, value in zip(BUFFERS, (means, precision), strict=True):
        getattr(net, name).copy_(value)


def torch_scores(run: Any, images: torch.Tensor, score: str) -> torch.Tensor:
    """(N, K + 1): probabilities, then the open-set score, each averaged over the run's views."""
    if score == "mahalanobis" and not hasattr(run.net, "forward_features"):  # a traced archive
        raise ConvlensError(f"{run.weights}: a mahalanobis open-set score needs the network's "
                            "features: predict from the weights or the ONNX export")  # fmt: skip
    model, norm = OpenSetNet(run.net, score, temperature(run.meta)), run.meta.normalize

    def both(x: torch.Tensor) -> torch.Tensor:
        out = 0
        for v, w in tta_views(x, run.meta.tta):
            logits, s = model(v)
            out = out + w * torch.cat([logits.softmax(1), s[:, None]], 1)
        return out

    return map_batches(run.net, images, both, mean=norm.mean, std=norm.std, device=run.device)


def numpy_scores(model: Any, images: np.ndarray, meta: WeightsMeta, batch: int = 500):
    """(N, K + 1) as torch_scores gives, from the NumPy reference engine (msp and energy)."""
    score, t, norm = meta.decisions.openset["score"], temperature(meta), meta.normalize
    out = []
    for i in range(0, len(images), batch):
        x = normalize(images[i : i + batch], norm.mean, norm.std).astype(np.float32)
        total = 0
        for v, w in numpy_views(x, meta.tta):
            logits = model.forward(v).astype(np.float64)  # (B, K)
            p = softmax(logits)
            top = logits.max(1)  # logsumexp without overflow
            lse = top + np.log(np.exp(logits - top[:, None]).sum(1))
            s = p.max(1) if score == "msp" else t * lse
            total = total + w * np.concatenate([p, s[:, None]], 1)
        out.append(total)
    k = len(meta.classes) + 1
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, k), np.float32)


def choose(val_scores: torch.Tensor, score: str, tpr: float) -> dict:
    """The threshold keeping at least `tpr` of the validation images (score >= threshold)."""
    if not 0 < tpr <= 1:
        raise ConvlensError(f"setting 'reject_tpr' must be in (0, 1], got {tpr}")
    if len(val_scores) == 0:
        raise ConvlensError("open-set rejection needs validation images to choose a threshold")
    ranked = val_scores.double().sort(descending=True).values
    threshold = float(ranked[math.ceil(tpr * len(ranked)) - 1])
    return {
        "score": score,
        "threshold": threshold,
        "target_tpr": tpr,
        "val_tpr": float((val_scores >= threshold).double().mean()),
        "chosen_on": f"{len(val_scores)} validation images",
    }


# --- answering ------------------------------------------------------------------------------
def split(scores: torch.Tensor, meta: WeightsMeta) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(probabilities (..., K), open-set scores (...) or None) of a run's scores."""
    if meta.decisions.openset is None:
        return scores, None
    k = len(meta.classes)
    return scores[..., :k], scores[..., k]


def fields(score: float, point: dict) -> dict:
    """{"unknown", "openset": {"score", "value", "threshold"}} of one image's open-set score."""
    return {
        "unknown": bool(score < point["threshold"]),
        "openset": {"score": point["score"], "value": score, "threshold": point["threshold"]},
    }


def block(scores: torch.Tensor, right: torch.Tensor, point: dict) -> dict:
    """metrics["openset"]: the point, and on the evaluated split the share kept and the accuracy
    of the images kept (`right`: each image's top-1 is its label)."""
    kept = scores >= point["threshold"]
    accuracy = float(right[kept].float().mean()) if kept.any() else None
    return {**point, "kept": float(kept.float().mean()), "accuracy_kept": accuracy}


def line(block: dict) -> str:
    """metrics["openset"] for the console."""
    return (f"known at {block['score']} >= {block['threshold']:.4g} (val TPR "
            f"{block['val_tpr']:.3f}): {block['kept']:.1%} kept")  # fmt: skip


def check_point(meta: WeightsMeta, check: Checker) -> None:
    """The header's "openset": a known score and a finite threshold."""
    point = meta.decisions.openset
    if point is None:
        return
    check.kind(point, dict, "openset", "a JSON object")
    check.choice(point.get("score"), SCORES, "openset.score")
    check.number(point.get("threshold"), "openset.threshold")
