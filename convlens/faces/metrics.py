"""Face metrics: verification (ROC, AUC, EER, TAR at a FAR, best threshold) from pair scores,
identification (rank-k) and open-set detection-and-identification rate from similarity matrices.

Scores are cosine similarities: higher means "same person". A pair is accepted when its score
is >= the threshold.
"""

from __future__ import annotations

import numpy as np

from convlens.errors import ConvlensError

FARS = (1e-2, 1e-3)  # false accept rates at which TAR is reported (the IJB and MegaFace habit)


def roc(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds): every operating point, far rising from 0 to 1."""
    from sklearn.metrics import roc_curve

    far, tar, thresholds = roc_curve(same.astype(int), scores, drop_intermediate=False)
    return far, tar, thresholds


def tar_at_far(far: np.ndarray, tar: np.ndarray, target: float) -> float:
    """The best true accept rate whose false accept rate is at most `target` (no interpolation)."""
    ok = far <= target
    return float(tar[ok].max()) if ok.any() else 0.0


def equal_error_rate(far: np.ndarray, tar: np.ndarray) -> float:
    """The rate where false accepts equal false rejects, interpolated between ROC points."""
    frr = 1.0 - tar
    diff = far - frr  # rises from <= 0 (far = 0) to >= 0 (far = 1)
    i = int(np.argmax(diff >= 0))
    if i == 0 or diff[i] == 0:
        return float((far[i] + frr[i]) / 2)
    w = -diff[i - 1] / (diff[i] - diff[i - 1])  # linear interpolation of the crossing
    return float(far[i - 1] + w * (far[i] - far[i - 1]))


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy): the accuracy-maximising threshold, midway between two scores."""
    same = same.astype(bool)
    u = np.unique(scores)  # sorted
    candidates = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-6]])
    order = np.argsort(scores, kind="stable")
    same_below = np.r_[0, np.cumsum(same[order])]  # matched pairs among the k lowest scores
    k = np.searchsorted(scores[order], candidates)  # pairs rejected at each candidate
    right = (k - same_below[k]) + (same.sum() - same_below[k])  # rejected mismatches + accepted
    acc = right / len(scores)
    i = int(np.argmax(acc))  # the lowest of equally good thresholds
    return float(candidates[i]), float(acc[i])


def accuracy(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Share of pairs judged right when a score >= threshold means "same"."""
    return float(((scores >= threshold) == same.astype(bool)).mean())


def verification_metrics(scores: np.ndarray, same: np.ndarray) -> dict:
    """AUC, EER, TAR at each of FARS, and the best accuracy with its threshold."""
    from sklearn.metrics import roc_auc_score

    same = same.astype(bool)
    far, tar, _ = roc(scores, same)
    threshold, best = best_threshold(scores, same)
    out = {
        "pairs": int(len(same)),
        "matched": int(same.sum()),
        "auc": float(roc_auc_score(same, scores)),
        "eer": equal_error_rate(far, tar),
    }
    out.update({f"tar@far={f:g}": tar_at_far(far, tar, f) for f in FARS})
    out.update({"best_accuracy": best, "best_threshold": threshold})
    return out


def sample_pairs(labels: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, ...]:
    """(i, j, same): n_pairs // 2 matched and n_pairs // 2 mismatched index pairs, seeded.

    Matched pairs come from identities with two or more images; i != j always.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    twice = np.flatnonzero(counts[labels] >= 2)  # images whose identity has a second image
    if len(twice) == 0 or len(counts[counts > 0]) < 2:
        raise ConvlensError(
            f"{len(labels)} images: verification pairs need two identities and an identity "
            "with two images (use more images per person, or a larger --val-fraction)"
        )
    half = n_pairs // 2
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    i_same = rng.choice(twice, half)
    j_same = np.array([_other(rng, by_class[labels[i]], i) for i in i_same], dtype=np.int64)
    i_diff = rng.integers(0, len(labels), half)
    j_diff = np.array([_other_class(rng, labels, labels[i]) for i in i_diff], dtype=np.int64)
    same = np.r_[np.ones(half, bool), np.zeros(half, bool)]
    return np.r_[i_same, i_diff], np.r_[j_same, j_diff], same


def _other(rng: np.random.Generator, members: np.ndarray, i: int) -> int:
    """A member of `members` other than i."""
    k = int(rng.integers(0, len(members) - 1))
    rest = members[members != i]
    return int(rest[k])


def _other_class(rng: np.random.Generator, labels: np.ndarray, c: int) -> int:
    """A random index whose label is not c."""
    while True:
        j = int(rng.integers(0, len(labels)))
        if labels[j] != c:
            return j


def per_identity(labels: np.ndarray, k: int, seed: int, identities=None) -> np.ndarray:
    """Indices of up to k seeded random images of each identity (default: all in `labels`)."""
    rng = np.random.default_rng(seed)
    identities = np.unique(labels) if identities is None else identities
    return np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c in identities])


def identity_scores(sim: np.ndarray, gallery_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores (P, I), identities (I,)): each probe's best similarity to each identity's images."""
    identities = np.unique(gallery_labels)
    scores = np.stack([sim[:, gallery_labels == c].max(1) for c in identities], axis=1)
    return scores, identities


def rank_k(
    sim: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray, ks=(1, 5)
) -> dict:
    """Closed-set identification: share of probes whose identity is among the k best."""
    scores, identities = identity_scores(sim, gallery_labels)  # (P, I)
    truth = scores[:, np.searchsorted(identities, probe_labels)].diagonal()  # (P,)
    rank = (scores > truth[:, None]).sum(1)  # 0 = first; ties count for the probe
    return {f"rank{k}": float((rank < k).mean()) for k in ks}


def dir_at_far(
    sim: np.ndarray,
    probe_labels: np.ndarray,
    gallery_labels: np.ndarray,
    known: np.ndarray,
    far: float,
) -> dict:
    """Open-set detection-and-identification rate at false-alarm rate `far`.

    The threshold is set so that at most a share `far` of unknown probes (`known` False) score
    above it against anyone in the gallery; DIR is the share of known probes whose best match
    is their own identity and clears that threshold.
    """
    scores, identities = identity_scores(sim, gallery_labels)  # (P, I)
    best = scores.max(1)
    unknown = np.sort(best[~known])[::-1]  # the unknowns' best scores, highest first
    allowed = int(np.floor(far * len(unknown)))  # false alarms permitted
    threshold = float(unknown[allowed]) if allowed < len(unknown) else -np.inf
    right = identities[scores.argmax(1)] == probe_labels
    hit = right & (best > threshold)
    return {
        "far": far,
        "threshold": threshold,
        "dir": float(hit[known].mean()),
        "false_alarm_rate": float((best[~known] > threshold).mean()),
    }
