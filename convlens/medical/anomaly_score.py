"""Anomaly scores of a GEOM transformation classifier: raw scores, Mahalanobis fit, calibration.

Raw scores grow with abnormality:
- geom: minus the mean over the 72 transformations of log p(right transformation), the simple
  variant of Golan & El-Yaniv's score: a normal image's transformations are easy to name.
- mahalanobis: the mean over transformations k of the squared Mahalanobis distance of the
  penultimate features of transformation k of the image to their mean on normal training
  images, with one covariance shared by all k (Lee et al. 2018's tied covariance; GOAD, Bergman
  & Hoshen 2020, scores distances to per-transformation centres in a similar way).
`calibrate` picks a threshold and a spread on validation; `to_unit` maps raw scores to [0, 1] as
sigmoid((raw - threshold) / spread), so the flag threshold sits at 0.5.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from convlens.evaluation.detection import choose_threshold
from convlens.evaluation.gaussians import fit_tied, squared_distance
from convlens.medical import geom
from convlens.training.optim import param_groups

QUANTILE = 0.95  # without anomalies in val: flag what scores above 95% of normal val images
SCORE_NAMES = {
    "geom": "GEOM",
    "mahalanobis": "Mahalanobis",
    "patchcore": "PatchCore",
    "padim": "PaDiM",
}  # raw score name -> shown name


class AnomalyNet(nn.Module):
    """The registry model (72 outputs) plus the Mahalanobis statistics scoring needs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        d = net.num_features
        self.register_buffer("centers", torch.zeros(geom.COUNT, d))  # (72, D) mean features
        self.register_buffer("precision", torch.zeros(d, d))  # (D, D) inverse shared covariance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transformation logits (B, 72)."""
        return self.net(x)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features (B, D) and logits (B, 72) from one pass through the body."""
        body = self.net.forward_features(x)
        return self.net.forward_head(body, pre_logits=True), self.net.forward_head(body)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The wrapped model's optimiser groups (fastnet's), else the default ones."""
        return param_groups(self.net, weight_decay)


def raw_scores(model: AnomalyNet, images: torch.Tensor, meta: dict, **kw: Any) -> dict:
    """{"geom": (N,), and for a mahalanobis run "mahalanobis": (N,)} raw scores of uint8 images."""
    maha = meta["method"] == "mahalanobis"
    logp, feats = geom.score_pass(model, images, meta, features=maha, **kw)
    out = {"geom": -logp.mean(1)}  # (N,)
    if maha:
        out["mahalanobis"] = mahalanobis(feats, model.centers, model.precision)
    return out


def mahalanobis(feats: torch.Tensor, centers: torch.Tensor, precision: torch.Tensor):
    """Mean over transformations of squared Mahalanobis distances: (N, 72, D) -> (N,)."""
    return squared_distance(feats - centers.float(), precision.float()).mean(1)  # (N, 72) -> (N,)


@torch.no_grad()
def fit_mahalanobis(model: AnomalyNet, images: torch.Tensor, meta: dict, **kw: Any) -> None:
    """Set the per-transformation means and the shared precision from normal training images."""
    _, feats = geom.score_pass(model, images, meta, features=True, **kw)  # (n, 72, D)
    n, count, d = feats.shape
    groups = torch.arange(count).repeat(n)  # each image's transformations in order
    centers, precision = fit_tied(feats.reshape(-1, d), groups, count)
    model.centers.copy_(centers)
    model.precision.copy_(precision)


def calibrate(normal: torch.Tensor, anomalous: torch.Tensor, sensitivity: float | None) -> dict:
    """Threshold and spread from validation raw scores, with the rule that chose them."""
    spread = float(normal.std()) if len(normal) > 1 else 1.0
    spread = spread if math.isfinite(spread) and spread > 0 else 1.0
    if len(anomalous) == 0:
        threshold = float(torch.quantile(normal.double(), QUANTILE))
        return {
            "threshold": threshold,
            "spread": spread,
            "rule": f"{QUANTILE:.0%} quantile of {len(normal)} normal validation scores",
        }
    labels = torch.cat([torch.zeros(len(normal)), torch.ones(len(anomalous))]).bool().numpy()
    point = choose_threshold(labels, torch.cat([normal, anomalous]).numpy(), sensitivity)
    rule = "Youden's J" if sensitivity is None else f"sensitivity {sensitivity:g}"
    return {
        "threshold": point["threshold"],
        "spread": spread,
        "rule": f"{rule} on {len(normal)} normal and {len(anomalous)} anomalous validation images",
        "val_sensitivity": point["val_sensitivity"],
        "val_specificity": point["val_specificity"],
    }


def to_unit(raw: torch.Tensor, calibration: dict) -> torch.Tensor:
    """Scores in [0, 1], 0.5 at the threshold; higher = more anomalous."""
    return torch.sigmoid((raw.double() - calibration["threshold"]) / calibration["spread"]).float()
