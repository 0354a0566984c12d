"""k-fold cross-validation: train+val cut into K stratified folds (seeded), the test split aside.

Fold I of K (1-based) is a Dataset whose test split is fold I held out, whose train split is the
other folds less a seeded, stratified validation share (which picks the best epoch and fits the
calibration, so the held-out fold decides nothing). The source's own test split is left out.
With groups (a label CSV's --group-by column: patients), no group is in two folds, nor in both
train and val.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from convlens.data.dataset import Dataset, Split, _rarest_label, hold_out_val
from convlens.errors import ConfigError


def pooled(ds: Dataset) -> Split:
    """train then val as one split: the images the folds cut."""
    parts = (ds.train, ds.val)
    groups = (
        None if any(p.groups is None for p in parts) else np.concatenate([p.groups for p in parts])
    )
    return Split(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), groups)


def fold_of(pool: Split, k: int, seed: int) -> np.ndarray:
    """(N,) the fold (0 to K-1) of each image of `pool`: scikit-learn's StratifiedKFold,
    shuffled with `seed` (multi-label: by each image's rarest label), or StratifiedGroupKFold
    where the split has groups (a label CSV's --group-by column): no group spans two folds."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels, groups = pool.labels, pool.groups
    y = labels.numpy() if labels.ndim == 1 else _rarest_label(labels.numpy())  # (N,)
    n, unit = (len(y), "images") if groups is None else (len(set(groups)), "groups")
    if n < k:
        raise ConfigError(f"setting 'folds': {k} folds need at least {k} {unit}; the data has {n}")
    if groups is None:
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y)
    else:
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, groups)
    out = np.empty(len(y), dtype=np.int64)
    with warnings.catch_warnings():  # a class rarer than K: it is missing from some folds
        warnings.simplefilter("ignore", UserWarning)
        for i, (_, held) in enumerate(splits):
            out[held] = i
    return out


def fold_dataset(ds: Dataset, k: int, fold: int, seed: int, val_fraction: float) -> Dataset:
    """Fold `fold` (1 to K) of `ds`: the fold held out as test, the rest as train and val."""
    pool = pooled(ds)
    where = fold_of(pool, k, seed)
    held = torch.from_numpy(np.flatnonzero(where == fold - 1))
    rest = torch.from_numpy(np.flatnonzero(where != fold - 1))
    train, val = _hold_out(pool.subset(rest), val_fraction, seed)
    note = (f"fold {fold} of {k} (seed {seed}): {len(held)} of the {len(pool)} train+val images "
            f"held out as the test split; {len(train)} train / {len(val)} val from the other "
            "folds; the source's test split is left out")  # fmt: skip
    return dataclasses.replace(ds, train=train, val=val, test=pool.subset(held),
                               notes=[*ds.notes, note])  # fmt: skip


def _hold_out(rest: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, val) of the other folds: a stratified val share, whole groups where there are
    groups (about `fraction` of them: one of round(1 / fraction) group folds)."""
    if rest.groups is None:
        train, val, _ = hold_out_val(rest, fraction, seed)
        return train, val
    groups = len(set(rest.groups))
    if groups < 2:
        raise ConfigError(f"setting 'folds': the other folds hold {groups} group: too few to "
                          "hold out a validation group")  # fmt: skip
    where = fold_of(rest, max(2, min(round(1 / fraction), groups)), seed)
    return (rest.subset(torch.from_numpy(np.flatnonzero(where != 0))),
            rest.subset(torch.from_numpy(np.flatnonzero(where == 0))))  # fmt: skip
