"""Gaussians with one shared covariance (Lee et al. 2018's tied covariance) and the squared
Mahalanobis distances to them: the anomaly runs' feature score (per GEOM transformation) and the
classifiers' open-set score (per class) both fit and measure with these."""

from __future__ import annotations

import torch

RIDGE = 1e-3  # added to the covariance's diagonal, as a share of its mean variance (few images)


@torch.no_grad()
def fit_tied(
    feats: torch.Tensor, groups: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(means (G, D), precision (D, D)) float32 of features (M, D) in groups (M,) 0..count-1:
    each group's mean, and the inverse of the covariance of every feature about its group's mean,
    in float64 with a small ridge so that it inverts."""
    x = feats.double()
    sums = torch.zeros(count, x.shape[1], dtype=x.dtype).index_add_(0, groups, x)
    sizes = torch.bincount(groups, minlength=count).clamp_min(1).to(x.dtype)
    means = sums / sizes[:, None]  # (G, D)
    resid = x - means[groups]  # (M, D)
    cov = resid.T @ resid / max(1, len(resid) - 1)  # (D, D)
    shrink = RIDGE * cov.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(len(cov), dtype=cov.dtype)
    return means.float(), torch.linalg.inv(cov + shrink * eye).float()


def squared_distance(delta: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """delta^T P delta over the last dimension: (..., D) -> (...)."""
    return ((delta @ precision.to(delta.dtype)) * delta).sum(-1)
