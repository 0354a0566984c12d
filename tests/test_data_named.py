"""Datasets by name: Fashion-MNIST from Debian's package, the bundled sets, the registry listing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.data import list_datasets, load_dataset, named
from convlens.errors import ConvlensError

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def data_isolated(tmp_path, monkeypatch) -> Path:
    """Hide ~/.cache and $CONVLENS_DATA: only tmp_path (and the system dir) hold data."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CONVLENS_DATA", raising=False)
    return tmp_path


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(), reason="no Debian copy")
def test_fashion_mnist_from_system_dir(data_isolated):
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.source == str(FASHION)
    assert len(ds.train) + len(ds.val) == 60000 and len(ds.val) == 6000
    assert len(ds.test) == 10000
    assert ds.image_size == (28, 28) and ds.channels == 1 and ds.hflip
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert torch.bincount(ds.val.labels).tolist() == [600] * 10  # stratified
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    assert ds.notes == [
        "no validation split: 10% of train (6000 images, seed 0) held out for validation"
    ]
    row = next(r for r in list_datasets() if r["name"] == "fashion-mnist")
    assert row["found"] == str(FASHION)


def test_missing_named_dataset_without_download(data_isolated, monkeypatch):
    monkeypatch.setattr(named, "SYSTEM_DIR", data_isolated / "system")
    with pytest.raises(ConvlensError, match="mnist not found .* downloads are off") as e:
        load_dataset("mnist", download=False)
    assert "\n" not in str(e.value)
    row = next(r for r in list_datasets() if r["name"] == "mnist")
    assert row["found"] is None and "cvdf-datasets" in row["obtain"]


def test_data_dir_is_searched_first(data_isolated):
    from convlens.data.idx import write_idx

    folder = data_isolated / "mine"
    folder.mkdir()
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", torch.zeros(n, 28, 28).byte().numpy())
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", (torch.arange(n) % 10).byte().numpy())
    ds = load_dataset("mnist", data_dir=str(folder), download=False)
    assert len(ds.test) == 10 and ds.source == str(folder) and not ds.hflip


def test_digits():
    ds = load_dataset("digits", seed=0)
    assert ds.classes == [str(i) for i in range(10)] and not ds.hflip
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1257, 270, 270)
    assert ds.image_size == (8, 8) and ds.train.images.max() == 255
    other = load_dataset("digits", seed=7)
    assert torch.equal(ds.test.images, other.test.images)  # fixed split, whatever the seed


def test_lfw_faces():
    ds = load_dataset("lfw-faces")
    assert ds.classes == ["non-face", "face"] and ds.hflip
    assert (len(ds.train), len(ds.val), len(ds.test)) == (450, 30, 30)
    assert torch.bincount(ds.test.labels).tolist() == [15, 15]  # LFW's own patches only
    assert torch.bincount(ds.val.labels).tolist() == [15, 15]
    assert torch.bincount(ds.train.labels).tolist() == [70 + 170, 70 + 140]  # + negatives, re-lit
    assert ds.image_size == (25, 25)
    assert torch.equal(load_dataset("lfw-faces").train.images, ds.train.images)  # seeded
    assert "170 seeded non-face crops" in ds.notes[-1]


def test_hard_negatives_never_come_from_the_held_out_photos_or_the_astronauts_face():
    from convlens.data import negatives

    assert not set(negatives.HELD_OUT_PHOTOS) & set(negatives.TRAIN_PHOTOS)
    assert "camera" not in negatives.TRAIN_PHOTOS  # the cameraman has a face
    rng = np.random.default_rng(0)
    marked = Image.new("L", (512, 512), 0)  # white where a training crop must not reach
    marked.paste(255, negatives._face_zone())
    marked.paste(255, negatives.ASTRONAUT_HELD_OUT)
    avoid = (negatives._face_zone(), negatives.ASTRONAUT_HELD_OUT)
    crops = negatives.random_crops(marked, 200, rng, avoid=avoid)
    assert crops.shape == (200, 1, 25, 25) and crops.max() == 0


def test_image_size_resizes_any_source():
    ds = load_dataset("digits", image_size=16)
    assert ds.image_size == (16, 16) and ds.test.images.shape[2:] == (16, 16)
    assert "resized from 8x8 to 16x16" in ds.notes[-1]


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ConvlensError) as e:
        load_dataset("cifar-11")
    msg = str(e.value)
    assert "'cifar-11'" in msg and "fashion-mnist, mnist, digits, lfw-faces" in msg
    assert "\n" not in msg
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ConvlensError, match="x.csv.*not an .npz"):
        load_dataset(str(tmp_path / "x.csv"))


def test_list_datasets_rows():
    rows = list_datasets()
    small = ["fashion-mnist", "mnist", "digits", "lfw-faces"]
    photos = [
        "fashion-scenes",
        "fashion-scenes-small",
        "fashion-scenes-mini",
        "imagenette-160",
        "imagenette-320",
    ]
    assert [r["name"] for r in rows] == [*small, *photos, "oxford-pets"]
    for r in rows:
        assert set(r) == {"name", "description", "found", "obtain"}
    assert rows[2]["found"].endswith("digits.csv.gz")
