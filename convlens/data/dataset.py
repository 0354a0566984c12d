"""The in-memory dataset every source is turned into: uint8 NCHW tensors, labels, class names."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from convlens.errors import ConvlensError, DatasetFormatError

MAX_CLASSES = 100_000  # a label past this is a corrupt file, not a dataset (ImageNet-21k: 21,841)


@dataclass
class Split:
    """One split held in memory."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64 class indices, or (N, L) float32 0/1 for multi-label
    groups: np.ndarray | None = None  # (N,) str: a label CSV's --group-by column (patients)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        groups = None if self.groups is None else self.groups[index.numpy()]
        return Split(self.images[index], self.labels[index], groups)


@dataclass
class Dataset:
    """A labelled image dataset with train/val/test splits, ready to batch."""

    name: str  # "fashion-mnist", or the path the user gave
    classes: list[str]  # class names, index = label
    train: Split
    val: Split  # always present: a seeded split of train when the source has none
    test: Split | None  # None when the source has no test split
    source: str = ""  # where the files were found, for `convlens datasets` and the run config
    hflip: bool = False  # a mirrored image keeps its class (clothes: yes; digits: no)
    notes: list[str] = field(default_factory=list)  # things the user should be told
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), skipped

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        """Whether each image carries a 0/1 vector of labels (N, L) instead of one class."""
        return self.train.labels.ndim == 2

    def split(self, name: str) -> Split:
        """Return the split called `name` (train, val or test)."""
        part = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if part is None:
            raise ConvlensError(f"dataset {self.name} has no {name!r} split")
        return part


def class_indices(labels: np.ndarray, where: str) -> torch.Tensor:
    """int64 labels (N,) from an integer array, or DatasetFormatError unless 0 <= y < MAX_CLASSES.

    Checked in the file's own dtype: a uint64 label would wrap negative as int64.
    """
    if labels.dtype.kind not in "iu":
        raise DatasetFormatError(f"{where} holds {labels.dtype} labels, not integers")
    for value in (labels.min(), labels.max()) if len(labels) else ():
        if not 0 <= value < MAX_CLASSES:
            what = f"a negative label ({value})" if value < 0 else f"label {value}"
            raise DatasetFormatError(
                f"{where} holds {what}; class indices go from 0 to {MAX_CLASSES - 1}"
            )
    return torch.from_numpy(labels.astype(np.int64))


def stratified_split(labels: torch.Tensor, fractions: list[float], seed: int) -> list[torch.Tensor]:
    """Split indices class by class into [rest, one part per fraction], seeded; each sorted.

    Multi-label (N, L) labels are stratified by each image's rarest label (or "none").
    """
    import numpy as np

    y = labels.numpy() if labels.ndim == 1 else _rarest_label(labels.numpy())  # (N,)
    counts = np.bincount(y, minlength=1)  # (K,)
    quotas = [_quota(counts, f) for f in fractions]  # each (K,)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in range(len(counts)):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for p, q in enumerate(quotas, start=1):
            take = min(int(q[c]), max(len(idx) - 1 - start, 0))  # keep one of each class in rest
            parts[p].append(idx[start : start + take])
            start += take
        parts[0].append(idx[start:])
    return [torch.from_numpy(np.sort(np.concatenate(p))).long() for p in parts]


def _rarest_label(labels):
    """Per row of 0/1 labels (N, L): the index of its rarest positive label, or L if none."""
    import numpy as np

    on = labels > 0.5
    freq = np.where(on, on.sum(0), np.inf)  # (N, L): how common each of the row's labels is
    return np.where(on.any(1), freq.argmin(1), labels.shape[1])


def _quota(counts, fraction: float):
    """Per-class counts summing to round(N * fraction), by largest remainder."""
    import numpy as np

    raw = counts * fraction
    q = np.floor(raw).astype(np.int64)
    short = int(round(counts.sum() * fraction)) - int(q.sum())
    q[np.argsort(-(raw - q), kind="stable")[:short]] += 1
    return q


def hold_out_val(train: Split, fraction: float, seed: int) -> tuple[Split, Split, str]:
    """Hold out a seeded, stratified `fraction` of train as validation; returns a note saying so."""
    if not 0 < fraction < 1:
        raise ConvlensError(f"val_fraction must be between 0 and 1, got {fraction}")
    rest, val = stratified_split(train.labels, [fraction], seed)
    if len(val) == 0:
        raise ConvlensError(
            f"only {len(train)} training images: too few to hold out {fraction:.0%} for validation"
        )
    note = (
        f"no validation split: {fraction * 100:g}% of train ({len(val)} images, seed {seed}) "
        "held out for validation"
    )
    return train.subset(rest), train.subset(val), note


def complete_splits(
    splits: dict[str, Split], val_fraction: float, seed: int, notes: list[str], missing_test: str
) -> None:
    """Hold out a seeded validation share of train if `splits` has no val; note a missing test."""
    if "val" not in splits:
        splits["train"], splits["val"], note = hold_out_val(splits["train"], val_fraction, seed)
        notes.append(note)
    if "test" not in splits:
        notes.append(f"{missing_test}: there is no test split; final metrics use validation")
