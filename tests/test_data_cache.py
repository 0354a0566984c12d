"""Folder datasets are decoded once into a memory-mapped uint8 cache, rebuilt when files change."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.data.cache import DIR_NAME
from convlens.data.folder import load_folder
from convlens.errors import DatasetFormatError

HOUR_AGO = time.time_ns() - 3600 * 10**9  # older than the cache's racy window


def _write(path: Path, value: int, when: int = HOUR_AGO) -> Path:
    """A 6x5 grey PNG whose pixels all hold `value`, with its mtime set to `when` (ns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (6, 5), value).save(path)
    os.utime(path, ns=(when, when))
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """train/{a,b}/ with 4 images each (pixel value = 10 * index + class) and a test/ split."""
    root = tmp_path / "data"
    for split, n in (("train", 4), ("test", 2)):
        for c, name in enumerate("ab"):
            for i in range(n):
                _write(
                    root / split / name / f"{i}.png", 10 * i + c + (100 if split == "test" else 0)
                )
    return root


def _values(ds, split="train") -> list[int]:
    """The one pixel value of each image of a split, in order."""
    return ds.split(split).images[:, 0, 0, 0].tolist()


def _manifest(root: Path) -> dict:
    return json.loads((root / DIR_NAME / "manifest.json").read_text())


def test_second_load_reads_the_cache_not_the_images(folder):
    first = load_folder(folder, val_fraction=0.25)
    assert (folder / DIR_NAME / "manifest.json").is_file()
    files = _manifest(folder)["listing"]["files"]
    assert sorted(files) == ["test", "train"] and len(files["train"]) == 8

    # Overwrite an image with bytes that are no image at all, keeping its size and mtime: a load
    # that decoded anything would skip it as a bad file; the cached load has its old pixels.
    victim = folder / "train" / "a" / "1.png"
    size, mtime = victim.stat().st_size, victim.stat().st_mtime_ns
    victim.write_bytes(b"x" * size)
    os.utime(victim, ns=(mtime, mtime))
    second = load_folder(folder, val_fraction=0.25)
    assert second.bad_files == [] and 10 in _values(second) + _values(second, "val")
    for name in ("train", "val", "test"):
        assert torch.equal(first.split(name).images, second.split(name).images)
        assert torch.equal(first.split(name).labels, second.split(name).labels)
    assert second.notes == first.notes

    # The arrays are memory-mapped from the cache's .npy files, not copies made by a decoder.
    cached = np.load(folder / DIR_NAME / _manifest(folder)["arrays"]["test"][0], allow_pickle=False)
    assert np.array_equal(cached, second.test.images.numpy())

    # The same bytes with a new mtime are noticed: decoded again, they are no image.
    os.utime(victim, ns=(mtime + 10**9, mtime + 10**9))
    with pytest.raises(DatasetFormatError, match=r"1\.png: not an image format"):
        load_folder(folder, val_fraction=0.25)


def test_changed_added_and_removed_files_rebuild_the_cache(folder):
    load_folder(folder)
    key = _manifest(folder)["arrays"]["train"][0]

    _write(folder / "train" / "b" / "0.png", 77, when=HOUR_AGO + 10**9)  # content and mtime
    ds = load_folder(folder, val_fraction=0.25)
    assert 77 in _values(ds) + _values(ds, "val") and 1 not in _values(ds) + _values(ds, "val")
    assert _manifest(folder)["arrays"]["train"][0] != key
    assert len(list((folder / DIR_NAME).glob("*.npy"))) == 4  # the old arrays were removed

    _write(folder / "test" / "a" / "9.png", 199)
    ds = load_folder(folder)
    assert len(ds.test) == 5 and 199 in _values(ds, "test")

    (folder / "test" / "b" / "0.png").unlink()
    ds = load_folder(folder)
    assert len(ds.test) == 4 and 101 not in _values(ds, "test")


def test_image_size_is_part_of_the_key(folder):
    assert load_folder(folder).image_size == (5, 6)
    assert load_folder(folder, image_size=4).image_size == (4, 4)
    assert load_folder(folder).image_size == (5, 6)


def test_fresh_files_are_not_cached(tmp_path):
    """A file written within the racy window might change again unseen: no cache yet."""
    root = tmp_path / "fresh"
    for name in "ab":
        _write(root / name / "0.png", 1)
        _write(root / name / "1.png", 2, when=time.time_ns())
    load_folder(root, val_fraction=0.5)
    assert not (root / DIR_NAME).exists()


def test_a_killed_build_leaves_no_usable_half(folder):
    """Arrays without a manifest (a build killed before its commit point) are not read."""
    load_folder(folder)
    manifest = folder / DIR_NAME / "manifest.json"
    manifest.unlink()
    (folder / DIR_NAME / "stray.npy").write_bytes(b"half a file")
    _write(folder / "train" / "a" / "0.png", 55, when=HOUR_AGO + 10**9)
    ds = load_folder(folder, val_fraction=0.25)
    assert 55 in _values(ds) + _values(ds, "val") and manifest.is_file()
    assert not (folder / DIR_NAME / "stray.npy").exists()


def test_two_worker_processes_decode_the_same_arrays(folder):
    threads = load_folder(folder, workers=0, cache=False)
    processes = load_folder(folder, workers=2, cache=False)
    assert not (folder / DIR_NAME).exists()
    for name in ("train", "val", "test"):
        assert torch.equal(threads.split(name).images, processes.split(name).images)
        assert torch.equal(threads.split(name).labels, processes.split(name).labels)


def test_read_only_folder_caches_in_the_user_cache(folder, tmp_path, monkeypatch):
    if os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for d in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        d.chmod(0o555)
    try:
        load_folder(folder)
        assert len(list((tmp_path / "xdg" / "convlens" / "folders").glob("*/manifest.json"))) == 1
    finally:
        for d in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
            d.chmod(0o755)


def test_bad_files_are_remembered_and_strict_decodes_again(tmp_path):
    """A skipped file is listed again from the cache; strict loading still stops at it."""
    root = tmp_path / "big"
    for i in range(120):  # 1 bad file in 121 is under the 1% that stops a load
        _write(root / "ab"[i % 2] / f"{i:03d}.png", i)
    bad = root / "a" / "zz.png"
    bad.write_bytes(b"not a picture")
    os.utime(bad, ns=(HOUR_AGO, HOUR_AGO))
    first = load_folder(root)
    assert [(Path(p).name, why) for p, why in first.bad_files] == [
        ("zz.png", "not an image format PIL can read")
    ]
    good = root / "b" / "001.png"  # made unreadable unseen (same size and mtime), as above:
    size, mtime = good.stat().st_size, good.stat().st_mtime_ns  # a decoding load now fails
    good.write_bytes(b"x" * size)
    os.utime(good, ns=(mtime, mtime))
    second = load_folder(root)
    assert second.bad_files == first.bad_files
    assert torch.equal(second.train.images, first.train.images)
    with pytest.raises(DatasetFormatError, match="not an image format"):
        load_folder(root, strict=True)  # strict: bad files in the cache mean decoding again
