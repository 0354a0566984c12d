"""Load a folder of class subfolders (optionally under train/, val/, test/) into uint8 tensors."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from convlens.data.cache import Decoded, load_or_decode
from convlens.data.dataset import Dataset, Split, complete_splits
from convlens.data.images import decode_image, is_colour, open_image, shown_size, to_tensor
from convlens.data.names import class_name
from convlens.errors import ConvlensError, DatasetFormatError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm"})
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_BAD_FRACTION = 0.01  # more unreadable files than this is an error, not a skip
MAX_AUTO_SIZE = 64  # cap on the median size picked when images differ in size
WORKERS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding

Item = tuple[str, int]  # (path, class index)
T = TypeVar("T")


def load_folder(
    root: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    strict: bool = False,
    image_size: int | None = None,
    workers: int = 0,
    cache: bool = True,
) -> Dataset:
    """A Dataset from `root/<class>/*` or `root/{train,val,test}/<class>/*`; bad files skipped.

    Decoded pixels are cached under `root/.convlens-cache/` (convlens.data.cache) and reused
    until a file changes; `workers` processes decode (0: threads of this process).
    """
    root = Path(root)
    notes: list[str] = []
    train_dir, shown, items = list_folder(root, notes)
    splits, bad, more = load_or_decode(
        root,
        items,
        {"image_size": image_size},
        lambda: _decode(root, items, strict=strict, image_size=image_size, workers=workers),
        strict=strict,
        enabled=cache,
    )
    notes += more
    for name, part in splits.items():
        missing = sorted(set(range(len(shown))) - set(part.labels.tolist()))
        if name == "train" and missing:
            raise DatasetFormatError(
                f"{train_dir}: class folder {shown[missing[0]]!r} holds no readable images"
            )
        if missing:
            notes.append(f"{name} split has no images of {', '.join(shown[i] for i in missing)}")
    complete_splits(splits, val_fraction, seed, notes, missing_test="no test/ folder")
    return Dataset(
        name=str(root),
        classes=shown,
        train=splits["train"],
        val=splits["val"],
        test=splits.get("test"),
        source=str(root.resolve()),
        notes=notes,
        bad_files=bad,
    )


def list_folder(root: Path, notes: list[str]) -> tuple[Path, list[str], dict[str, list[Item]]]:
    """(train folder, class names as shown, image files per split) of `root`; nothing is read."""
    layout = _layout(root, notes)  # {"train": dir, "val": dir?, "test": dir?}
    classes = _class_dirs(layout["train"])
    if not classes and _images_in(root):  # a plain folder of images (e.g. normal cases only)
        classes, items, ignored = [root.name], {"train": [(p, 0) for p in _images_in(root)]}, None
        notes.append(f"no class subfolders: every image is of one class, {root.name!r}")
    elif not classes:
        raise ConvlensError(
            f"{layout['train']}: no class subfolders (expected <class>/<image> inside)"
        )
    else:
        items, ignored = _list_files(layout, classes)
    if ignored:
        kinds = ", ".join(f"{ext or 'no extension'}: {n}" for ext, n in ignored.most_common())
        notes.append(f"ignored {sum(ignored.values())} files that are not images ({kinds})")
    return layout["train"], _shown(layout["train"], classes), items


def _decode(
    root: Path, items: dict[str, list[Item]], *, strict: bool, image_size: int | None, workers: int
) -> Decoded:
    """Decode every listed image to one size and channel count; unreadable files go to `bad`."""
    notes: list[str] = []
    total = sum(len(v) for v in items.values())
    bad: list[tuple[str, str]] = []
    headers = _map(_header, items, bad, strict)  # (H, W, colour) per file, nothing decoded yet
    shapes = [(h, w) for part in headers.values() for _, (h, w, _) in part]
    channels = 3 if any(c for part in headers.values() for _, (_, _, c) in part) else 1
    size = _pick_size(shapes, image_size, notes)
    readable = {split: [item for item, _ in part] for split, part in headers.items()}
    pixels_of = partial(_pixels, channels=channels, size=size)  # a function processes can take
    pixels = _map(pixels_of, readable, bad, strict, workers)
    if len(bad) > MAX_BAD_FRACTION * total:
        first = "; ".join(f"{p}: {why}" for p, why in bad[:3])
        raise DatasetFormatError(
            f"{root}: {len(bad)} of {total} image files are unreadable (over "
            f"{MAX_BAD_FRACTION:.0%}), e.g. {first}"
        )

    splits = {name: _stack(part, channels, size) for name, part in pixels.items()}
    return Decoded(splits, bad, notes)


def _pixels(path: str, *, channels: int, size: tuple[int, int]) -> np.ndarray:
    # NumPy, not torch: a process pool would pass each tensor through its own shared-memory file
    return to_tensor(decode_image(path), channels=channels, size=size).numpy()  # (C, H, W) uint8


def _layout(root: Path, notes: list[str]) -> dict[str, Path]:
    if not root.is_dir():
        raise ConvlensError(f"{root}: no such folder")
    found: dict[str, Path] = {}
    others = []
    for d in _subdirs(root):
        split = SPLIT_DIRS.get(d.name.lower())
        if split is None:
            others.append(d.name)
        elif split in found:
            raise ConvlensError(f"{root}: both {found[split].name}/ and {d.name}/; keep one")
        else:
            found[split] = d
    if not found:
        return {"train": root}
    if "train" not in found:
        raise ConvlensError(f"{root}: has {'/ and '.join(sorted(found))}/ but no train/ folder")
    if others:
        notes.append(f"ignored folders beside train/: {', '.join(others)}")
    return found


def _class_dirs(folder: Path) -> list[str]:
    return [d.name for d in _subdirs(folder)]


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not _hidden(d.name))


def _shown(folder: Path, names: list[str]) -> list[str]:
    """Class names as shown and stored: folder names made printable (convlens.data.names)."""
    shown = [class_name(n) for n in names]
    if len(set(shown)) < len(shown):
        twins = sorted(n for n in names if shown.count(class_name(n)) > 1)
        raise DatasetFormatError(
            f"{folder}: class folders {', '.join(map(ascii, twins))} show as the same name"
        )
    return shown


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _list_files(
    layout: dict[str, Path], classes: list[str]
) -> tuple[dict[str, list[Item]], Counter[str]]:
    """Image files per split, with labels; a count of skipped extensions."""
    items: dict[str, list[Item]] = {}
    ignored: Counter[str] = Counter()
    for split, folder in layout.items():
        names = _class_dirs(folder)
        extra = [n for n in names if n not in classes]
        if extra:
            raise DatasetFormatError(
                f"{folder}: class folder {extra[0]!r} is not in {layout['train']} "
                f"(classes there: {', '.join(classes)})"
            )
        items[split] = []
        for name in names:
            for path in _walk(folder / name):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    items[split].append((str(path), classes.index(name)))
                else:
                    ignored[path.suffix.lower()] += 1
        if not items[split]:
            raise ConvlensError(
                f"{folder}: no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
    return items, ignored


def _images_in(folder: Path) -> list[str]:
    """The image files directly inside `folder` (not in subfolders), sorted."""
    return sorted(  # not only regular files: a FIFO named x.png is listed as a bad file
        str(p) for p in folder.iterdir() if not p.is_dir() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _walk(folder: Path) -> list[Path]:
    """Every non-hidden file below `folder`, in sorted order."""
    out = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        out += [Path(top, f) for f in sorted(files) if not _hidden(f)]
    return out


def _header(path: str) -> tuple[int, int, bool]:
    img = open_image(path)
    width, height = shown_size(img, path)  # as decode_image will turn it
    return height, width, is_colour(img)


def _map(
    fn: Callable[[str], T],
    items: dict[str, list[Item]],
    bad: list[tuple[str, str]],
    strict: bool,
    workers: int = 0,
) -> dict[str, list[tuple[Item, T]]]:
    """Apply `fn` to every path on threads, or on `workers` processes; failures go to `bad`."""
    out: dict[str, list[tuple[Item, T]]] = {}
    pool = ProcessPoolExecutor(workers) if workers else ThreadPoolExecutor(WORKERS)
    with pool:
        for split, part in items.items():
            out[split] = []
            chunk = max(1, len(part) // (8 * max(workers, 1)))  # few round trips per process
            results = pool.map(partial(_safe, fn), part, chunksize=chunk)
            for item, (value, error) in zip(part, results, strict=True):
                if error is None:
                    out[split].append((item, value))
                elif strict:
                    pool.shutdown(cancel_futures=True)
                    raise error
                else:
                    bad.append((item[0], str(error).removeprefix(f"{item[0]}: ")))
    return out


def _safe(fn: Callable[[str], T], item: Item) -> tuple[T | None, DatasetFormatError | None]:
    """fn(path), or the DatasetFormatError it raised (returned: a process pool can carry it)."""
    try:
        return fn(item[0]), None
    except DatasetFormatError as e:
        return None, e


def _pick_size(
    shapes: list[tuple[int, int]], image_size: int | None, notes: list[str]
) -> tuple[int, int]:
    """(H, W): the requested size, else the one size all images share, else the capped median."""
    if image_size is not None:
        return image_size, image_size
    if not shapes:
        raise ConvlensError("no readable images")
    if len(set(shapes)) == 1:
        return shapes[0]
    h, w = np.median(np.array(shapes), axis=0).round().astype(int).tolist()
    size = min(h, MAX_AUTO_SIZE), min(w, MAX_AUTO_SIZE)
    notes.append(
        f"images come in {len(set(shapes))} sizes: all resized to {size[0]}x{size[1]} (median "
        f"height x width, at most {MAX_AUTO_SIZE}); set image_size to choose"
    )
    return size


def _stack(part: list[tuple[Item, np.ndarray]], channels: int, size: tuple[int, int]) -> Split:
    if not part:
        return Split(torch.zeros(0, channels, *size, dtype=torch.uint8), torch.zeros(0).long())
    images = torch.from_numpy(np.stack([x for _, x in part]))  # (N, C, H, W) uint8
    return Split(images, torch.tensor([label for (_, label), _ in part], dtype=torch.int64))
