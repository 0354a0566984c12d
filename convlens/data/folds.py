"""k-fold cross-validation: train+val cut into K stratified folds (seeded), the test split aside.

Fold I of K (1-based) is a Dataset whose test split is fold I held out, whose train split is the
other folds less a seeded, stratified validation share (which picks the best epoch and fits the
calibration, so the held-out fold decides nothing). The source's own test split is left out.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from convlens.data.dataset import Dataset, Split, _rarest_label, hold_out_val
from convlens.errors import ConfigError


def pooled(ds: Dataset) -> Split:
    """train then val as one split: the images the folds cut."""
    return Split(torch.cat([ds.train.images, ds.val.images]),
                 torch.cat([ds.train.labels, ds.val.labels]))  # fmt: skip


def fold_of(labels: torch.Tensor, k: int, seed: int, groups: Sequence | None = None) -> np.ndarray:
    """(N,) the fold (0 to K-1) of each image: scikit-learn's StratifiedKFold, shuffled with
    `seed` (multi-label: by each image's rarest label), or StratifiedGroupKFold with `groups`
    (one per image) so that no group spans two folds."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = labels.numpy() if labels.ndim == 1 else _rarest_label(labels.numpy())  # (N,)
    n, unit = (len(y), "images") if groups is None else (len(set(groups)), "groups")
    if n < k:
        raise ConfigError(f"setting 'folds': {k} folds need at least {k} {unit}; the data has {n}")
    if groups is None:
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y)
    else:
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, np.asarray(groups))
    out = np.empty(len(y), dtype=np.int64)
    with warnings.catch_warnings():  # a class rarer than K: it is missing from some folds
        warnings.simplefilter("ignore", UserWarning)
        for i, (_, held) in enumerate(splits):
            out[held] = i
    return out


def fold_dataset(
    ds: Dataset, k: int, fold: int, seed: int, val_fraction: float, groups: Sequence | None = None
) -> Dataset:
    """Fold `fold` (1 to K) of `ds`: the fold held out as test, the rest as train and val."""
    pool = pooled(ds)
    where = fold_of(pool.labels, k, seed, groups)
    held = torch.from_numpy(np.flatnonzero(where == fold - 1))
    rest = torch.from_numpy(np.flatnonzero(where != fold - 1))
    train, val, _ = hold_out_val(pool.subset(rest), val_fraction, seed)
    note = (f"fold {fold} of {k} (seed {seed}): {len(held)} of the {len(pool)} train+val images "
            f"held out as the test split; {len(train)} train / {len(val)} val from the other "
            "folds; the source's test split is left out")  # fmt: skip
    return dataclasses.replace(ds, train=train, val=val, test=pool.subset(held),
                               notes=[*ds.notes, note])  # fmt: skip
