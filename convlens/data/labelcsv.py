"""Read a multi-label image list: a CSV of `path,labels[,split]`, labels separated by `;`.

```
path,labels,split
images/0001.png,effusion;nodule,train
images/0002.png,,val          <- no finding: an empty label list
```
Paths are relative to the CSV's folder. `split` (train, val or valid or validation, test) is
optional; without it every row is training data and validation is held out (seeded). Labels
become float32 (N, L) 0/1 columns, one per label name, in sorted order.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from convlens.data.dataset import MAX_CLASSES, Dataset, Split, complete_splits
from convlens.data.files import open_regular, read_regular
from convlens.data.folder import SPLIT_DIRS, _decode
from convlens.data.names import class_name
from convlens.errors import DatasetFormatError

MAX_LABEL_CELLS = 1 << 27  # rows x labels of the 0/1 table: 512 MiB of float32


def load_label_csv(
    path: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    strict: bool = False,
    image_size: int | None = None,
    group_by: str | None = None,
) -> Dataset:
    """A multi-label Dataset from a `path,labels[,split]` CSV; unreadable images are skipped.
    `group_by` names a column whose value each image's Split.groups entry keeps (k-fold)."""
    path = Path(path)
    rows = read_rows(path, group_by)
    classes = sorted({name for _, names, _, _ in rows for name in names})
    if not classes:
        raise DatasetFormatError(f"{path}: no row names a label")
    if len(classes) > MAX_CLASSES or len(rows) * len(classes) > MAX_LABEL_CELLS:
        raise DatasetFormatError(
            f"{path}: {len(rows)} rows x {len(classes)} labels is over the "
            f"{MAX_LABEL_CELLS}-cell limit of a label table"
        )
    items: dict[str, list[tuple[str, int]]] = {}
    for i, (file, _, split, _) in enumerate(rows):  # the row number stands in for the label
        items.setdefault(split, []).append((str(path.parent / file), i))
    if "train" not in items:
        raise DatasetFormatError(f"{path}: no row is in the train split")
    column = {name: j for j, name in enumerate(classes)}
    vectors = torch.zeros(len(rows), len(classes))  # (rows, L) 0/1
    for i, (_, names, _, _) in enumerate(rows):
        vectors[i, [column[n] for n in names]] = 1.0
    decoded = _decode(path, items, strict=strict, image_size=image_size, workers=0)
    groups = np.array([g for *_, g in rows], dtype=object) if group_by else None  # (rows,)
    splits = {k: Split(s.images, vectors[s.labels], None if groups is None else
                       groups[s.labels.numpy()]) for k, s in decoded.splits.items()}  # fmt: skip
    notes = list(decoded.notes)
    complete_splits(splits, val_fraction, seed, notes, missing_test="no test rows in the CSV")
    return Dataset(
        name=str(path),
        classes=classes,
        train=splits["train"],
        val=splits["val"],
        test=splits.get("test"),
        source=str(path.resolve()),
        notes=notes,
        bad_files=decoded.bad,
    )


def is_label_csv(path: Path) -> bool:
    """Whether a file starts with the `path,labels` header."""
    with open_regular(path) as f:
        head = f.read(64).decode("utf-8-sig", errors="replace").lower().replace(" ", "")
    return head.startswith("path,labels")


def read_rows(path: Path, group_by: str | None = None) -> list[tuple[str, list[str], str, str]]:
    """(file, label names, split, the `group_by` column or "") per row; errors name the file
    and the line."""
    data = read_regular(path)
    try:
        lines = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetFormatError(f"{path}: not a readable CSV file ({e})") from None
    if not lines or [c.strip().lower() for c in lines[0][:2]] != ["path", "labels"]:
        raise DatasetFormatError(f"{path}: the first line must be the header path,labels[,split]")
    has_split = len(lines[0]) > 2 and lines[0][2].strip().lower() == "split"
    header = [c.strip().lower() for c in lines[0]]
    if group_by is not None and group_by.strip().lower() not in header:
        raise DatasetFormatError(f"{path}: no column {group_by!r} to group by (the header is "
                                 f"{','.join(lines[0])})")  # fmt: skip
    at = header.index(group_by.strip().lower()) if group_by is not None else None
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in line):
            continue
        if len(line) < 2 + has_split:
            raise DatasetFormatError(f"{path}: line {number} has {len(line)} fields")
        split = SPLIT_DIRS.get(line[2].strip().lower()) if has_split else "train"
        if split is None:
            raise DatasetFormatError(
                f"{path}: line {number}: split {line[2]!r} is not train, val or test"
            )
        names = sorted({class_name(n.strip()) for n in line[1].split(";") if n.strip()})
        group = ""
        if at is not None:
            group = line[at].strip() if at < len(line) else ""
            if not group:
                raise DatasetFormatError(f"{path}: line {number}: no {group_by} to group by")
        rows.append((line[0].strip(), names, split, group))
    if not rows:
        raise DatasetFormatError(f"{path}: no rows after the header")
    return rows
