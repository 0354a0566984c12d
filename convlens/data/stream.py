"""Training images that need not fit in memory: one split at storage size, then a DataLoader.

A split's images are kept at storage size (preprocess.storage_size: 256 px for a 224 model,
so random crops have room) in one of three places, chosen by `choose_storage` against a
memory budget (--cache-ram; default half of what the machine has free):

- "ram":    one uint8 (N, C, S, S) array, decoded once;
- "cache":  the same array as a .npy file beside the folder's cache (data/cache.py's folder and
  listing key, written atomically), read row by row with os.pread: the page cache holds it,
  not this process (touching a memory map would count every page read in the process's RSS);
- "decode": the files themselves, decoded on the fly by DataLoader worker processes.

Every source gives the same pixels (preprocess.Preprocess at storage size), so the same seed
gives the same batches from each (data/loader.py's photo_loader). A file that cannot be read
is skipped and listed with its reason (or stops the run with strict), never crashing a worker.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from convlens.data.cache import RACY_SECONDS, cache_dir, stamp
from convlens.data.dataset import stratified_split
from convlens.data.files import read_regular
from convlens.data.folder import MAX_BAD_FRACTION, list_folder
from convlens.data.images import decode_image
from convlens.data.jpeg import DECODERS, fast_photo
from convlens.data.preprocess import Preprocess, check_photo
from convlens.errors import ConvlensError, DatasetFormatError
from convlens.runs.atomic import atomic_write_bytes, temp_beside

Item = tuple[str, int]  # (path, class index)
SOURCES = ("auto", "ram", "cache", "decode")
RAM_SHARE = 0.5  # default --cache-ram: this share of the memory free now (model, workers, OS)
DISK_SHARE = 0.8  # a .npy cache may take this share of the free disk
BUILD_BATCH_BYTES = 4 << 20  # images decoded per round trip while building: 16, or 4 MiB
STREAM_DIR = "stream"  # under cache_dir(root): cache.py's own clean-up globs only its top level
FORMAT = 2  # 2: JPEGs decoded by data/jpeg.py, not PIL (within a grey level of 1's pixels)


class Stored(NamedTuple):
    """One split ready for photo_loader: its dataset, the files skipped and what was chosen."""

    dataset: TorchDataset  # items (uint8 (C, S, S), int label)
    bad: list[tuple[str, str]]  # (path, reason) found while building; "decode" finds them later
    kind: str  # "ram", "cache" or "decode"
    note: str  # one line for the user


class RamImages(TorchDataset):
    """Images in a uint8 (M, C, S, S) array; item i is row rows[i]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
        self.images, self.labels, self.rows = images, labels, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[self.rows[i]]), int(self.labels[i])


class NpyImages(TorchDataset):
    """Images in a uint8 (M, C, S, S) .npy file, read one row at a time; item i is rows[i]."""

    def __init__(self, path: str | Path, labels: np.ndarray, rows: np.ndarray) -> None:
        self.path, self.labels, self.rows = str(path), labels, rows
        self.shape, self.offset = npy_layout(self.path)
        self.row_bytes = int(np.prod(self.shape[1:]))
        # opened now: forked workers share it (pread has no file position), and a rebuild or
        # clean-up that replaces the file later cannot pull it away from this run
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._fd < 0:  # unpickled in a spawned worker
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        start = self.offset + int(self.rows[i]) * self.row_bytes
        x = np.empty(self.shape[1:], np.uint8)  # (C, S, S), read straight into it
        if os.preadv(self._fd, [x], start) != self.row_bytes:
            raise DatasetFormatError(f"{self.path}: cache file cut short at row {self.rows[i]}")
        return torch.from_numpy(x), int(self.labels[i])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": -1}  # a spawned worker opens its own

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)


class FileImages(TorchDataset):
    """The image files, decoded on each access; a bad file raises DatasetFormatError."""

    def __init__(self, items: list[Item], prep: Preprocess, decoder: str = "auto") -> None:
        self.items, self.prep, self.decoder = items, prep, decoder
        self.labels = np.array([label for _, label in items], np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        return load_stored(path, self.prep, self.decoder), label


def load_stored(path: str, prep: Preprocess, decoder: str = "auto") -> torch.Tensor:
    """uint8 (C, S, S) of one file at storage size, or DatasetFormatError naming it.

    A photo JPEG is decoded by data/jpeg.py's fast_photo (`decoder`: jpeg.DECODERS); anything
    it does not take is decoded by PIL, which names the reason a bad file is skipped.
    """
    if decoder not in DECODERS:
        raise ConvlensError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    data = read_regular(path)
    fast = fast_photo(data, path, prep, decoder)
    if fast is not None:
        return fast
    img = decode_image(data, name=path)  # capped, EXIF-rotated
    if not prep.legacy:
        check_photo(img.width, img.height, path)
    try:
        return prep.apply(img)
    except DatasetFormatError as e:  # to_mode's message does not name the file
        raise DatasetFormatError(f"{path}: {e}") from None


def storage_preprocess(prep: Preprocess) -> Preprocess:
    """How images are stored for a model preprocessed by `prep`: the square before the crop."""
    if prep.legacy:
        return prep  # small images are stored at the model's size
    side = (prep.resize, prep.resize)
    return Preprocess(side, prep.channels, prep.resize, prep.interpolation, prep.antialias)


def free_memory() -> int:
    """Bytes this process can still use: MemAvailable, under a cgroup v2 limit if one is set."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvail"))
    except (OSError, StopIteration, ValueError):
        pass
    if free is None:  # not Linux: the free pages (less than available: the page cache counts)
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(free, 0)


def default_cache_ram() -> int:
    """The --cache-ram default, bytes: RAM_SHARE of free_memory()."""
    return int(RAM_SHARE * free_memory())


def choose_storage(
    n_images: int, bytes_per_image: int, budget: int, *, disk_free: int | None = None
) -> tuple[str, str]:
    """("ram" | "cache" | "decode", a one-line note): RAM if it fits the budget, else disk."""
    need = n_images * bytes_per_image
    told = f"{n_images} images, {_gb(need)} decoded at storage size"
    if need <= budget:
        return "ram", f"{told}: held in memory (within --cache-ram {_gb(budget)})"
    if disk_free is None or need <= DISK_SHARE * disk_free:
        return "cache", f"{told}, over --cache-ram {_gb(budget)}: read from a .npy cache on disk"
    return "decode", (
        f"{told}, over --cache-ram {_gb(budget)} and {DISK_SHARE:.0%} of the free disk "
        f"({_gb(disk_free)}): decoded from the files every epoch"
    )


def open_split(
    items: list[Item],
    prep: Preprocess,
    *,
    root: str | Path,
    split: str = "train",
    cache_ram: int | None = None,
    source: str = "auto",
    workers: int = 0,
    strict: bool = False,
    max_bad: float = MAX_BAD_FRACTION,
) -> Stored:
    """`items` at storage size for a model preprocessed by `prep`, from where choose_storage says.

    `root` is the folder the items come from (where the .npy cache goes, data/cache.py's rule);
    `source` forces one of SOURCES; `workers` processes decode (0: this process). More bad
    files than `max_bad` of them is an error (load_folder's rule); "decode" finds them as it goes
    (photo_loader checks each epoch).
    """
    if source not in SOURCES:
        raise ConvlensError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if not items:
        raise ConvlensError(f"{root}: the {split} split holds no images")
    store = storage_preprocess(prep)
    c, (h, w) = store.channels, store.size
    budget = default_cache_ram() if cache_ram is None else cache_ram
    folder = cache_dir(Path(root)) / STREAM_DIR
    kind, note = choose_storage(len(items), c * h * w, budget, disk_free=_disk_free(folder))
    if source != "auto":
        kind, note = source, f"{len(items)} images, {_gb(len(items) * c * h * w)}: {source}"
    labels = np.array([label for _, label in items], np.int64)
    if kind == "decode":
        return Stored(FileImages(items, store), [], kind, f"{split}: {note}")
    if kind == "ram":
        images = np.zeros((len(items), c, h, w), np.uint8)
        rows, bad = decode_all(items, store, workers, strict, images.__setitem__)
        dataset: TorchDataset = RamImages(images, labels[rows], rows)
    else:
        try:
            dataset, bad = _npy_cache(Path(root), folder, items, store, split, workers, strict)
        except OSError as e:  # a full disk, a read-only home: the files are still there
            why = e.strerror or e
            note = f"{note}; but the cache cannot be written ({why}): decoded every epoch"
            return Stored(FileImages(items, store), [], "decode", f"{split}: {note}")
    check_bad(root, bad, len(items), max_bad)
    return Stored(dataset, bad, kind, f"{split}: {note}")


def _npy_cache(root, folder, items, store, split, workers, strict) -> tuple[NpyImages, list]:
    """The split's .npy cache: reused when its manifest matches the listing, else rebuilt."""
    started = time.time_ns()
    listing, key = stamp(root, {split: items}, {"stream": FORMAT, **store.to_dict()})
    array, manifest = folder / f"{split}-{key}.npy", folder / f"{split}-{key}.json"
    labels = np.array([label for _, label in items], np.int64)
    if folder.is_symlink():  # its old files are deleted below: no dataset may choose where
        raise OSError(f"{folder} is a symlink")
    try:
        saved = json.loads(read_regular(manifest))
        if not array.is_file():  # is_file stats: no FIFO is opened
            raise ValueError(f"{array}: not a cache file")
        if saved["listing"] == listing and npy_layout(array)[0] == (len(items), *_chw(store)):
            rows = np.array(saved["rows"], np.int64)
            bad = [(os.path.join(root, p), why) for p, why in saved["bad"]]
            return NpyImages(array, labels[rows], rows), bad
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or foreign: build it
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(array)
    try:
        with os.fdopen(fd, "wb") as f:
            shape = (len(items), *_chw(store))
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": shape}
            )
            rows, bad = decode_all(items, store, workers, strict, lambda i, x: f.write(x.numpy()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, array)
    finally:
        Path(tmp).unlink(missing_ok=True)
    newest = max((f[3] for f in listing["files"][split]), default=0)
    if newest < started - RACY_SECONDS * 1e9:  # cache.py's racy rule: newer files may change
        saved = {"listing": listing, "rows": rows.tolist(), "bad": _relative(root, bad)}
        atomic_write_bytes(manifest, json.dumps(saved).encode())
    for old in folder.glob(f"{split}-*"):
        if key not in old.name:
            old.unlink(missing_ok=True)
    return NpyImages(array, labels[rows], rows), bad


def decode_all(
    items: list[Item],
    store: Preprocess,
    workers: int,
    strict: bool,
    put: Any,
    decoder: str = "auto",
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode every item as `store` says, in order, calling put(i, uint8 (C, H, W)) (zeros for a
    bad file); (rows of the good ones, (path, reason) of the bad). `decoder`: load_stored's."""
    c, (h, w) = store.channels, store.size
    blank = torch.zeros(c, h, w, dtype=torch.uint8)
    loader = DataLoader(
        SkipBad(FileImages(items, store, decoder)),
        batch_size=max(1, min(16, BUILD_BATCH_BYTES // blank.numel())),
        num_workers=workers,
        collate_fn=list,
        generator=torch.Generator(),  # workers' seeds: not from the global RNG
    )
    rows, bad, i = [], [], 0
    for batch in loader:
        for x, _, wrong in batch:
            if wrong is not None:
                if strict:
                    raise DatasetFormatError(f"{wrong[0]}: {wrong[1]}")
                bad.append(wrong)
            else:
                rows.append(i)
            put(i, blank if x is None else x)
            i += 1
    return np.array(rows, np.int64), bad


class SkipBad(TorchDataset):
    """Items (x, label, None), or (None, label, (path, reason)) for a file that fails."""

    def __init__(self, base: TorchDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple:
        try:
            x, y = self.base[i]
            return x, y, None
        except DatasetFormatError as e:
            path = self.base.items[i][0] if isinstance(self.base, FileImages) else f"item {i}"
            return None, -1, (path, str(e).removeprefix(f"{path}: "))


def folder_items(
    root: str | Path, *, seed: int = 0, val_fraction: float = 0.1
) -> tuple[list[str], dict[str, list[Item]], list[str]]:
    """(class names, items per split, notes) of a class-folder tree, listed as load_folder does.

    Nothing is decoded. Without a val/ folder, a seeded stratified val_fraction of train is
    held out (dataset.stratified_split, as load_folder does after decoding).
    """
    notes: list[str] = []
    _, classes, items = list_folder(Path(root), notes)
    if "val" not in items:
        labels = torch.tensor([y for _, y in items["train"]], dtype=torch.int64)
        rest, val = stratified_split(labels, [val_fraction], seed)
        train = items["train"]
        items["train"], items["val"] = [train[i] for i in rest], [train[i] for i in val]
        notes.append(f"no validation split: {val_fraction:.0%} of train held out (seed {seed})")
    return classes, items, notes


def npy_layout(path: str | Path) -> tuple[tuple[int, ...], int]:
    """(shape, data offset) of a C-ordered uint8 .npy file, or ValueError."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0}.get(version)
        if read is None:
            raise ValueError(f"{path}: .npy format {version} is not the one written here")
        shape, fortran, dtype = read(f)
        if fortran or dtype != np.uint8 or len(shape) != 4:
            raise ValueError(f"{path}: not a C-ordered uint8 (N, C, H, W) array")
        return tuple(shape), f.tell()


def check_bad(root: Any, bad: list, total: int, max_bad: float = MAX_BAD_FRACTION) -> None:
    """DatasetFormatError when more than `max_bad` of `total` files were unreadable."""
    if len(bad) > max_bad * total:
        first = "; ".join(f"{p}: {why}" for p, why in bad[:3])
        raise DatasetFormatError(
            f"{root}: {len(bad)} of {total} image files are unreadable (over "
            f"{max_bad:.0%}), e.g. {first}"
        )


def _chw(store: Preprocess) -> tuple[int, int, int]:
    return store.channels, *store.size


def _relative(root: Path, bad: list) -> list:
    return [(os.path.relpath(p, root), why) for p, why in bad]


def _disk_free(folder: Path) -> int | None:
    for p in (folder, *folder.parents):
        if p.exists():
            return shutil.disk_usage(p).free
    return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
