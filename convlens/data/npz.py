"""Read MedMNIST-style .npz files (`train_images`, `train_labels`, ...), never unpickling.

Every 2-D MedMNIST v2 flavour: grey (N, H, W) or RGB (N, H, W, 3) uint8 images at 28, 64, 128 or
224 pixels; labels (N, 1) class indices, or (N, L) 0/1 columns for multi-label files such as
ChestMNIST (loaded as float32 (N, L) labels, one class name per column).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy

from convlens.data.dataset import Dataset, Split, class_indices, complete_splits
from convlens.data.files import open_regular
from convlens.data.names import class_name
from convlens.errors import DatasetFormatError

SPLITS = ("train", "val", "test")
DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data by more than ~1032:1


def load_npz(path: str | Path, *, seed: int = 0, val_fraction: float = 0.1) -> Dataset:
    """A Dataset from `<split>_images` uint8 (N,H,W[,C]) and `<split>_labels` (N[,1]) arrays."""
    path = Path(path)
    arrays = read_npz(path)
    splits: dict[str, Split] = {}
    for key in ("train_images", "train_labels"):
        if key not in arrays:
            raise DatasetFormatError(
                f"{path}: missing key {key!r} (the file has {', '.join(sorted(arrays)) or 'none'};"
                " MedMNIST files have train_images, train_labels, val_images, val_labels, "
                "test_images, test_labels)"
            )
    for name in SPLITS:
        x, y = arrays.get(f"{name}_images"), arrays.get(f"{name}_labels")
        if x is None and y is None and name != "train":
            continue
        splits[name] = _split(path, name, x, y)
    columns = {n: s.labels.shape[1] if s.labels.ndim == 2 else 1 for n, s in splits.items()}
    if len(set(columns.values())) > 1:
        raise DatasetFormatError(f"{path}: splits disagree on label columns {columns}")
    shapes = {name: tuple(s.images.shape[1:]) for name, s in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DatasetFormatError(f"{path}: splits hold images of different shapes {shapes}")
    classes = _classes(path, arrays.get("classes"), splits)
    notes: list[str] = []
    complete_splits(splits, val_fraction, seed, notes, missing_test="no test arrays in this file")
    return Dataset(
        name=str(path),
        classes=classes,
        train=splits["train"],
        val=splits["val"],
        test=splits.get("test"),
        source=str(path.resolve()),
        notes=notes,
    )


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array in an .npz, refusing pickled (object) arrays and sizes the file cannot hold."""
    path = Path(path)
    with open_regular(path) as f:
        return _read_arrays(path, f)


def _read_arrays(path: Path, f) -> dict[str, np.ndarray]:
    try:
        if f.read(4) != b"PK\x03\x04":
            raise DatasetFormatError(f"{path}: not an .npz file (no zip header)")
        f.seek(0)
        with np.load(f, allow_pickle=False) as npz:
            out = {}
            for member in npz.zip.namelist():
                if not member.endswith(".npy"):
                    raise DatasetFormatError(f"{path}: {member!r} is not a .npy array")
                key = member.removesuffix(".npy")
                _check_member(path, npz.zip, member)
                out[key] = npz[key]
            return out
    except DatasetFormatError:
        raise
    except Exception as e:  # untrusted bytes: zipfile, zlib and numpy raise many kinds
        raise DatasetFormatError(f"{path}: not a readable .npz file ({e!r})") from None


def _check_member(path: Path, archive: zipfile.ZipFile, member: str) -> None:
    """Parse a member's .npy header; refuse object dtypes and shapes larger than its bytes."""
    key = member.removesuffix(".npy")
    info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > DEFLATE_MAX_RATIO * (
        info.compress_size + 1
    ):  # the declared size caps what is inflated; more than deflate can give is a lie
        raise DatasetFormatError(
            f"{path}: key {key!r} declares {info.file_size} bytes in {info.compress_size} "
            "compressed bytes, more than deflate can expand"
        )
    with archive.open(info) as f:
        major, _ = npy.read_magic(f)
        read = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
        shape, _, dtype = read(f)
        have = info.file_size - f.tell()
    if dtype.hasobject:
        raise DatasetFormatError(f"{path}: key {key!r} holds pickled objects, which are refused")
    if dtype.itemsize == 0 or any(d < 0 for d in shape):  # prod() of these says nothing
        raise DatasetFormatError(f"{path}: key {key!r} says shape {shape} of {dtype}, not an array")
    need = math.prod(shape) * dtype.itemsize
    if need != have:
        raise DatasetFormatError(
            f"{path}: key {key!r} says shape {shape} ({need} bytes) but holds {have} bytes"
        )


def _split(path: Path, name: str, x: np.ndarray | None, y: np.ndarray | None) -> Split:
    for key, value in ((f"{name}_images", x), (f"{name}_labels", y)):
        if value is None:
            raise DatasetFormatError(f"{path}: missing key {key!r}")
    if x.dtype != np.uint8:
        raise DatasetFormatError(f"{path}: {name}_images must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    else:
        raise DatasetFormatError(
            f"{path}: {name}_images must be (N, H, W) or (N, H, W, 3), got {x.shape}"
        )
    if 0 in x.shape[2:]:
        raise DatasetFormatError(f"{path}: {name}_images are {x.shape[2]}x{x.shape[3]} pixels")
    if y.ndim == 2 and y.shape[1] > 1:
        return _multilabel_split(path, name, x, y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DatasetFormatError(
            f"{path}: {name}_labels must be integers (N,) or (N, 1), got {y.dtype} {y.shape}"
        )
    if len(y) != len(x):
        raise DatasetFormatError(f"{path}: {len(x)} {name}_images but {len(y)} {name}_labels")
    images = torch.from_numpy(np.ascontiguousarray(x))  # (N, C, H, W) uint8
    return Split(images, class_indices(y, f"{path}: {name}_labels"))


def _multilabel_split(path: Path, name: str, x: np.ndarray, y: np.ndarray) -> Split:
    """A split with (N, L) 0/1 labels (ChestMNIST's layout), as float32."""
    if len(y) != len(x):
        raise DatasetFormatError(f"{path}: {len(x)} {name}_images but {len(y)} {name}_labels")
    if y.dtype.kind not in "iub" or not np.isin(y, (0, 1)).all():
        raise DatasetFormatError(
            f"{path}: {name}_labels has {y.shape[1]} columns, so it is multi-label and must hold "
            "only 0 and 1"
        )
    images = torch.from_numpy(np.ascontiguousarray(x))  # (N, C, H, W) uint8
    return Split(images, torch.from_numpy(y.astype(np.float32)))  # (N, L)


def _classes(path: Path, names: np.ndarray | None, splits: dict[str, Split]) -> list[str]:
    if splits["train"].labels.ndim == 2:  # multi-label: one name per column
        k = splits["train"].labels.shape[1]
        if names is not None and len(names) != k:
            raise DatasetFormatError(f"{path}: {len(names)} class names for {k} label columns")
    else:
        k = max((int(s.labels.max()) + 1 for s in splits.values() if len(s)), default=0)
    if names is None:
        return [str(i) for i in range(k)]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DatasetFormatError(f"{path}: 'classes' must be a 1-D string array, got {names.dtype}")
    if len(names) < k:
        raise DatasetFormatError(f"{path}: {len(names)} class names but labels go up to {k - 1}")
    return [class_name(n if isinstance(n, bytes) else str(n)) for n in names.tolist()]
