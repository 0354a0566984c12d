"""Read and write IDX files (the MNIST format), gzipped or not, checking header against data."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from convlens.data.dataset import Dataset, Split, class_indices, hold_out_val
from convlens.data.files import open_regular
from convlens.errors import DatasetFormatError

# type code (third byte of the magic number) -> big-endian dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),  # unsigned byte
    0x09: np.dtype(">i1"),  # signed byte
    0x0B: np.dtype(">i2"),  # short
    0x0C: np.dtype(">i4"),  # int
    0x0D: np.dtype(">f4"),  # float
    0x0E: np.dtype(">f8"),  # double
}
MAX_DIMS = 8  # more dimensions than this is not an IDX file anyone wrote
GZIP_MAX_RATIO = 1032  # deflate cannot expand data by more than ~1032:1
CHUNK = 1 << 20  # bytes read at a time from a gzip stream
MAX_BYTES = 1 << 40  # no IDX array is a terabyte


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (native byte order), after checking header against size."""
    path = Path(path)
    try:
        with open_regular(path) as raw:
            size = os.fstat(raw.fileno()).st_size
            gz = raw.read(2) == b"\x1f\x8b"  # gzip magic; IDX files start with 00 00
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            dtype, shape = _read_header(f, path)
            need = math.prod(shape) * dtype.itemsize
            if gz:  # the payload size is unknown until read; cap it with deflate's best ratio
                limit = size * GZIP_MAX_RATIO
                if need > limit:
                    have = f"at most {limit} bytes (a gzip of {size} bytes)"
                    raise _size_error(path, shape, need, have)
                data = _read_exactly(f, need, path, shape)
            else:
                have = size - 4 - 4 * len(shape)
                if have != need:
                    raise _size_error(path, shape, need, f"{have} bytes of data")
                data = bytearray(need)
                f.readinto(data)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetFormatError(f"{path}: cannot read ({e})") from None
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file (gzipped when the name ends in .gz)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None or not 1 <= array.ndim <= MAX_DIMS:
        raise DatasetFormatError(f"{path}: cannot store a {array.dtype} array of {array.ndim} dims")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    with gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb") as f:
        f.write(header + payload)


def read_idx_split(images_path: str | Path, labels_path: str | Path) -> Split:
    """A Split from an images file (N, H, W) and a labels file (N,) of non-negative integers."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8 or 0 in images.shape[1:]:
        raise DatasetFormatError(
            f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetFormatError(f"{labels_path}: expected non-negative integer labels (N,)")
    if len(labels) != len(images):
        raise DatasetFormatError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}"
        )
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, H, W) uint8
    return Split(x, class_indices(labels, f"{labels_path}: the file"))


def load_idx(
    pairs: dict[str, tuple[Path, Path]],
    *,
    name: str,
    classes: list[str] | None = None,
    hflip: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
) -> Dataset:
    """A Dataset from IDX (images, labels) pairs for "train" and optionally "test"; val held out."""
    train = read_idx_split(*pairs["train"])
    test = read_idx_split(*pairs["test"]) if "test" in pairs else None
    k = max((int(s.labels.max()) + 1 for s in (train, test) if s is not None and len(s)), default=0)
    if classes is None:
        classes = [str(i) for i in range(k)]
    elif k > len(classes):
        raise DatasetFormatError(
            f"{pairs['train'][1]}: label {k - 1} but only {len(classes)} classes"
        )
    train, val, note = hold_out_val(train, val_fraction, seed)
    notes = [note] if test else [note, "no test files found: final metrics use validation"]
    return Dataset(
        name=name,
        classes=classes,
        train=train,
        val=val,
        test=test,
        source=str(pairs["train"][0].parent.resolve()),
        hflip=hflip,
        notes=notes,
    )


def find_idx_prefix(prefix: str | Path) -> dict[str, tuple[Path, Path]] | None:
    """`/x/train` -> its pair, plus `/x/t10k` or `/x/test` as the test pair when those exist."""
    train = find_idx_pair(prefix)
    if train is None:
        return None
    prefix = str(prefix)
    if not prefix.endswith("train"):
        return {"train": train}
    stem = prefix.removesuffix("train")
    test = find_idx_pair(stem + "t10k") or find_idx_pair(stem + "test")
    return {"train": train, "test": test} if test else {"train": train}


def find_idx_pair(prefix: str | Path) -> tuple[Path, Path] | None:
    """`/x/train` -> (`/x/train-images-idx3-ubyte[.gz]`, `/x/train-labels-idx1-ubyte[.gz]`)."""
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        names = [f"{prefix}-{kind}", f"{prefix}-{kind}.gz", f"{prefix}.{kind}"]
        hit = next((Path(n) for n in names if _is_file_like(Path(n))), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def _is_file_like(path: Path) -> bool:
    """Whether `path` is there and not a folder: a FIFO is found, and read_idx says what it is."""
    return path.exists() and not path.is_dir()


def find_idx_folder(folder: str | Path) -> dict[str, tuple[Path, Path]] | None:
    """The train (and t10k or test) IDX pairs in a folder holding the standard MNIST files."""
    return find_idx_prefix(Path(folder) / "train")


def _read_header(f, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise DatasetFormatError(f"{path}: not an IDX file (bad magic number {magic.hex()!r})")
    dtype = IDX_DTYPES.get(magic[2])
    if dtype is None:
        raise DatasetFormatError(f"{path}: unknown IDX data type 0x{magic[2]:02X}")
    ndim = magic[3]
    if not 1 <= ndim <= MAX_DIMS:
        raise DatasetFormatError(f"{path}: IDX header says {ndim} dimensions (1 to {MAX_DIMS})")
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DatasetFormatError(f"{path}: IDX header is cut short")
    shape = struct.unpack(f">{ndim}I", dims)
    if math.prod(d for d in shape if d) * dtype.itemsize > MAX_BYTES:  # a 0 dim hides the rest
        raise DatasetFormatError(f"{path}: IDX header says shape {shape}, which is absurd")
    return dtype, shape


def _read_exactly(f, need: int, path: Path, shape: tuple[int, ...]) -> bytearray:
    """Read `need` bytes from a stream in chunks; error if it holds fewer or more."""
    data = bytearray()
    while len(data) <= need:
        chunk = f.read(min(CHUNK, need + 1 - len(data)))
        if not chunk:
            break
        data += chunk
    if len(data) != need:
        have = f"{len(data)} bytes of data" if len(data) < need else "more data than that"
        raise _size_error(path, shape, need, have)
    return data


def _size_error(path: Path, shape: tuple[int, ...], need: int, have: str) -> DatasetFormatError:
    if len(shape) == 3:
        what = f"{shape[0]} images of {shape[1]}x{shape[2]}"
    elif len(shape) == 1:
        what = f"{shape[0]} items"
    else:
        what = f"an array of shape {shape}"
    return DatasetFormatError(
        f"{path}: header says {what} ({need} bytes) but the file holds {have}"
    )
