"""A folder dataset's decoded pixels, stored once as uint8 .npy files and memory-mapped after.

Where: `<folder>/.convlens-cache/`, beside the images, so the cache goes when the folder goes
and one folder is never decoded twice under two names (the loader skips hidden folders). When the
folder is read-only: `$XDG_CACHE_HOME/convlens/folders/<hash of its absolute path>/` (default
`~/.cache`).

What: `manifest.json` (every image's path, label, size in bytes and mtime in ns; the settings
and versions that shape the pixels; the build's notes and bad files) and, per split,
`<split>-images-<key>.npy` (N, C, H, W) uint8 and `<split>-labels-<key>.npy` (N,) int64.

Reused while the listing and settings equal the manifest's; any added, removed or changed file
(size or mtime) rebuilds it. A file rewritten in place with the same size and the same mtime goes
unnoticed, as with make and rsync; so does a file written less than RACY_SECONDS before the build
started (the cache is then not written at all, git's "racy clean" rule).

Written atomically: each array goes to a temporary file renamed into place, then the manifest
the same way; the manifest names its arrays, so a killed build leaves the old cache or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from convlens.data.dataset import Split
from convlens.data.files import read_regular
from convlens.runs.atomic import temp_beside
from convlens.version import __version__

FORMAT = 1
DIR_NAME = ".convlens-cache"
RACY_SECONDS = 2.0  # file clocks tick in 1-10 ms (FAT: 2 s); newer files may change unseen

Item = tuple[str, int]  # (path, class index)


class Decoded(NamedTuple):
    """What decoding a folder gives: its splits, the files skipped and notes for the user."""

    splits: dict[str, Split]
    bad: list[tuple[str, str]]
    notes: list[str]


def load_or_decode(
    root: Path,
    items: dict[str, list[Item]],
    settings: dict,
    decode: Callable[[], Decoded],
    *,
    strict: bool = False,
    enabled: bool = True,
) -> Decoded:
    """The cached pixels of `items` when nothing changed since they were cached, else `decode()`."""
    if not enabled:
        return decode()
    started = time.time_ns()
    listing = _listing(root, items, settings)
    folder = cache_dir(root)
    hit = _read(root, folder, listing)
    if hit is not None and not (strict and hit.bad):  # strict: decode again to raise on them
        return hit
    decoded = decode()
    newest = max((f[3] for part in listing["files"].values() for f in part), default=0)
    if newest < started - RACY_SECONDS * 1e9:
        _write(root, folder, listing, decoded)
    return decoded


def cache_dir(root: Path) -> Path:
    """`root/.convlens-cache`, or a per-folder one in the user's cache when root is read-only.

    A `.convlens-cache` that is a symlink is not followed: old arrays are deleted in the cache
    folder, and a dataset must not choose which folder that is.
    """
    if os.access(root, os.W_OK) and not (root / DIR_NAME).is_symlink():
        return root / DIR_NAME
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return base / "convlens" / "folders" / digest


def _listing(root: Path, items: dict[str, list[Item]], settings: dict) -> dict:
    """What the pixels depend on: files (path, label, bytes, mtime ns), settings, versions."""
    import PIL

    files = {}
    for split, part in items.items():
        files[split] = []
        for path, label in part:
            try:
                size, mtime = (st := os.stat(path)).st_size, st.st_mtime_ns
            except OSError:  # a dangling symlink: decoding lists it as a bad file
                size, mtime = -1, 0
            files[split].append([os.path.relpath(path, root), label, size, mtime])
    versions = {"convlens": __version__, "pillow": PIL.__version__}
    return {"format": FORMAT, "settings": settings, "versions": versions, "files": files}


def stamp(root: Path, items: dict[str, list[Item]], settings: dict) -> tuple[dict, str]:
    """What pixels made from `items` depend on (a manifest's listing), and its short key."""
    listing = _listing(root, items, settings)
    return listing, _key(listing)


def _key(listing: dict) -> str:
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16]


def _read(root: Path, folder: Path, listing: dict) -> Decoded | None:
    """The cached Decoded when the manifest matches `listing` and its arrays are intact."""
    try:
        manifest = json.loads(read_regular(folder / "manifest.json"))
        if manifest.get("listing") != listing:
            return None
        splits = {}
        for split, (images_file, labels_file) in manifest["arrays"].items():
            # mmap_mode="c": pages come from the file on first touch, never decoded again;
            # copy-on-write gives torch a writable array and leaves the file as it is.
            images = np.load(_member(folder, images_file), mmap_mode="c", allow_pickle=False)
            labels = np.load(_member(folder, labels_file), allow_pickle=False)
            if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
                return None
            splits[split] = Split(torch.from_numpy(images), torch.from_numpy(labels).long())
    except (OSError, ValueError, KeyError, TypeError):  # DatasetFormatError is a ValueError
        return None  # missing, half-deleted or foreign: decode again
    bad = [(os.path.join(root, rel), why) for rel, why in manifest["bad"]]
    return Decoded(splits, bad, manifest["notes"])


def _member(folder: Path, name: str) -> Path:
    """A file the manifest names: a plain name inside `folder`, and a regular file."""
    path = folder / name
    if Path(name).name != name or not path.is_file():  # is_file stats: no FIFO is opened
        raise ValueError(f"{path}: not a cache file")
    return path


def _write(root: Path, folder: Path, listing: dict, decoded: Decoded) -> None:
    """Save the arrays, then the manifest that names them (the commit point); drop older ones."""
    key = _key(listing)
    arrays = {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for split, part in decoded.splits.items():
            arrays[split] = (f"{split}-images-{key}.npy", f"{split}-labels-{key}.npy")
            _atomic(folder / arrays[split][0], part.images.numpy())
            _atomic(folder / arrays[split][1], part.labels.numpy())
        bad = [(os.path.relpath(p, root), why) for p, why in decoded.bad]
        manifest = {"listing": listing, "arrays": arrays, "notes": decoded.notes, "bad": bad}
        _atomic(folder / "manifest.json", json.dumps(manifest).encode())
    except OSError:
        return  # a cache only saves time: a full disk or a read-only home must not stop a run
    for old in folder.glob("*.npy"):
        if key not in old.name:
            old.unlink(missing_ok=True)


def _atomic(path: Path, data: np.ndarray | bytes) -> None:
    """Write bytes, or an array as .npy, to a temporary file; fsync; rename it over `path`.

    (runs.atomic.atomic_write_bytes wants the whole file as bytes in memory; a dataset-sized
    array should not be copied for that.)
    """
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                np.save(f, data, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
