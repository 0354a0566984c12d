"""Softmax and cross-entropy: logits become class probabilities, and a loss to minimise."""

from __future__ import annotations

import numpy as np


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log of softmax over the last axis, computed without overflow."""
    z = z - z.max(-1, keepdims=True)  # softmax is unchanged by a shift; now exp(z) <= 1
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    """Class probabilities: exp(z_k) / sum_j exp(z_j), each row sums to 1."""
    return np.exp(log_softmax(z))


class CrossEntropyLoss:
    """-log p(true class), averaged over the batch; as torch's F.cross_entropy.

    With label smoothing eps the target is (1 - eps) on the true class plus eps/K on every
    class; with class weights w each target row is scaled by w and the mean divides by the
    summed weights of the true classes (torch's convention).
    """

    def __init__(self, label_smoothing: float = 0.0, weight: np.ndarray | None = None) -> None:
        self.eps, self.weight = label_smoothing, weight

    def forward(self, logits: np.ndarray, y: np.ndarray) -> float:
        b, k = logits.shape  # logits (B, K), y (B,) class indices
        t = np.full((b, k), self.eps / k, dtype=logits.dtype)  # target distribution (B, K)
        t[np.arange(b), y] += 1 - self.eps
        norm = float(b)
        if self.weight is not None:
            t *= self.weight  # (B, K) * (K,)
            norm = float(self.weight[y].sum())
        logp = log_softmax(logits)  # (B, K)
        self.cache = np.exp(logp), t, norm
        return float(-(t * logp).sum() / norm)

    def backward(self) -> np.ndarray:
        p, t, norm = self.cache
        # L = -sum_k t_k log p_k and d log p_k / d z_j = [k = j] - p_j, so
        # dL/dz = p * sum_k t_k - t: the fused, stable gradient `p - y` (sum_k t_k = 1 unweighted)
        return (p * t.sum(1, keepdims=True) - t) / norm  # (B, K)

    __call__ = forward
