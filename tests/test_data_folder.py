"""Image folders and the shared image path: bad files, layouts, channels, sizes, seeded splits."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.data import hold_out_val, load_dataset
from convlens.data.dataset import Split
from convlens.data.images import decode_image, to_tensor
from convlens.errors import ConvlensError, DatasetFormatError


def _png(path: Path, value: int = 0, size=(6, 5), mode="L") -> Path:
    """An image whose pixels all hold `value` (so a test can tell which file it came from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, colour).save(path)
    return path


def _bomb_png() -> bytes:
    """A real 1-bit PNG of 10000x10000 (100 megapixels) that compresses to a few kB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    w = h = 10_000
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    rows = (b"\x00" + bytes((w + 7) // 8)) * h  # filter byte + packed bits, per row
    idat = zlib.compress(rows, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


BAD = {
    "empty.png": (b"", "empty file (0 bytes)"),
    "truncated.jpg": (_truncated_jpeg(), "corrupt or truncated image"),
    "text.png": (b"this is not a picture\n", "not an image format PIL can read"),
    "bomb.png": (_bomb_png(), "image is 10000x10000 pixels, over the 64-megapixel limit"),
}


@pytest.fixture(scope="module")
def data_bad_folder(tmp_path_factory) -> Path:
    """400 good images in 2 classes, 4 kinds of bad file (1% of 404), and some clutter."""
    root = tmp_path_factory.mktemp("bad") / "imgs"
    for i in range(400):
        _png(root / ("cat" if i % 2 else "dog") / f"{i:03d}.png", value=i % 2)
    for name, (data, _) in BAD.items():
        (root / "cat" / name).write_bytes(data)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "labels.csv").write_text("a,b")
    (root / "dog" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".hidden").mkdir()
    _png(root / ".hidden" / "x.png")
    return root


def test_bad_files_are_skipped_and_listed(data_bad_folder):
    ds = load_dataset(str(data_bad_folder))
    assert ds.classes == ["cat", "dog"]  # .hidden is not a class
    assert len(ds.train) + len(ds.val) == 400 and ds.test is None
    reasons = {Path(p).name: why for p, why in ds.bad_files}
    assert set(reasons) == set(BAD)
    for name, (_, why) in BAD.items():
        assert why in reasons[name], (name, reasons[name])
    assert any("ignored 2 files that are not images" in n for n in ds.notes)
    assert any("no test/ folder" in n for n in ds.notes)


def test_strict_raises_on_the_first_bad_file(data_bad_folder):
    with pytest.raises(DatasetFormatError) as e:
        load_dataset(str(data_bad_folder), strict=True)
    assert str(data_bad_folder / "cat") in str(e.value)


def test_bad_file_errors_name_the_file():
    for name, (data, why) in BAD.items():
        with pytest.raises(DatasetFormatError) as e:
            decode_image(data, name=name)
        assert str(e.value).startswith(f"{name}: ") and why in str(e.value)


def test_more_than_one_percent_bad_is_an_error(tmp_path):
    for i in range(20):
        _png(tmp_path / "a" / f"{i}.png")
    (tmp_path / "a" / "zz.png").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match=r"1 of 21 image files are unreadable .*zz.png"):
        load_dataset(str(tmp_path))


def test_train_val_test_layout(tmp_path):
    for split, n in (("train", 6), ("valid", 3), ("test", 4)):
        for c, value in (("cat", 10), ("dog", 20)):
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.png", value=value)
    ds = load_dataset(str(tmp_path))
    assert ds.classes == ["cat", "dog"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 6, 8)
    for split in (ds.train, ds.val, ds.test):  # each label matches the pixels of its file
        assert torch.equal(split.images[:, 0, 0, 0], torch.where(split.labels == 0, 10, 20).byte())
    assert not any("validation" in n for n in ds.notes)


def test_extra_class_in_val_is_named(tmp_path):
    _png(tmp_path / "train" / "cat" / "0.png")
    _png(tmp_path / "val" / "cat" / "0.png")
    _png(tmp_path / "val" / "cow" / "0.png")
    with pytest.raises(DatasetFormatError, match="class folder 'cow'"):
        load_dataset(str(tmp_path))


def test_empty_and_missing_folders_name_the_path(tmp_path):
    with pytest.raises(ConvlensError, match=str(tmp_path)):
        load_dataset(str(tmp_path))  # no class subfolders
    (tmp_path / "cat").mkdir()
    with pytest.raises(ConvlensError, match="no images"):
        load_dataset(str(tmp_path))
    with pytest.raises(ConvlensError, match="nowhere"):
        load_dataset(str(tmp_path / "nowhere"))


def test_colour_sizes_and_image_size(tmp_path):
    _png(tmp_path / "a" / "0.png", size=(10, 20))
    _png(tmp_path / "a" / "1.png", size=(30, 40), mode="RGB")
    _png(tmp_path / "b" / "0.png", size=(100, 100))
    _png(tmp_path / "b" / "1.png", size=(12, 14))
    ds = load_dataset(str(tmp_path), val_fraction=0.5)
    assert ds.channels == 3  # one colour image makes the dataset RGB
    assert ds.image_size == (30, 21)  # median of heights 20 40 100 14, of widths 10 30 100 12
    assert any("resized to 30x21" in n for n in ds.notes)
    ds = load_dataset(str(tmp_path), val_fraction=0.5, image_size=16)
    assert ds.image_size == (16, 16)


def test_seeded_split_is_deterministic_and_stratified():
    labels = torch.tensor([0] * 700 + [1] * 200 + [2] * 100)
    split = Split(torch.arange(1000, dtype=torch.uint8).view(-1, 1, 1, 1), labels)
    train, val, note = hold_out_val(split, 0.1, seed=5)
    again, val_again, _ = hold_out_val(split, 0.1, seed=5)
    other = hold_out_val(split, 0.1, seed=6)[1]
    assert torch.equal(val.images, val_again.images) and torch.equal(train.images, again.images)
    assert not torch.equal(val.images, other.images)
    assert torch.bincount(val.labels).tolist() == [70, 20, 10]  # same class mix as train
    assert len(train) == 900
    assert note == "no validation split: 10% of train (100 images, seed 5) held out for validation"


def test_folder_split_follows_seed(tmp_path):
    for i in range(40):
        _png(tmp_path / ("a" if i < 30 else "b") / f"{i:02d}.png", value=i)
    first = load_dataset(str(tmp_path), seed=1, val_fraction=0.25)
    second = load_dataset(str(tmp_path), seed=1, val_fraction=0.25)
    assert torch.equal(first.val.images, second.val.images)
    assert torch.bincount(first.val.labels).tolist() == [8, 2]  # 25% of 30 is 7.5, of 10 is 2.5


def test_to_tensor_modes():
    grey16 = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert grey16.mode.startswith("I")
    assert to_tensor(grey16, channels=1).tolist() == [[[0, 100, 255]]]
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert to_tensor(rgba, channels=3)[:, 0, 0].tolist() == [10, 20, 30]
    palette = Image.new("P", (3, 3), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.info["transparency"] = 0
    assert to_tensor(palette, channels=3)[:, 0, 0].tolist() == [200, 100, 50]
    assert to_tensor(Image.new("1", (4, 2), 1), channels=1).unique().tolist() == [255]
    cmyk = to_tensor(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), channels=3)
    assert cmyk[:, 0, 0].tolist() == [255, 0, 0]
    grey = to_tensor(Image.new("L", (5, 4), 77), channels=3)
    assert grey.shape == (3, 4, 5) and grey.unique().tolist() == [77]


def test_resize_is_antialiased():
    stripes = np.zeros((64, 64), np.uint8)
    stripes[:, ::2] = 255  # 1-pixel stripes: a sampling resize would keep 0s and 255s
    x = to_tensor(Image.fromarray(stripes), channels=1, size=(8, 16))
    assert x.shape == (1, 8, 16)
    assert 100 < x.float().mean() < 155 and x.min() > 60 and x.max() < 195


def test_decode_image_from_bytes_and_path(tmp_path):
    path = _png(tmp_path / "x.png", value=9)
    from_path = to_tensor(decode_image(path), channels=1)
    from_bytes = to_tensor(decode_image(path.read_bytes()), channels=1)
    assert torch.equal(from_path, from_bytes) and from_path.unique().tolist() == [9]


def test_a_plain_folder_of_images_is_one_class_and_a_classifier_refuses_it(tmp_path):
    normal = tmp_path / "normal"
    normal.mkdir()
    for i in range(20):
        Image.fromarray(np.full((8, 8), i * 10, np.uint8)).save(normal / f"{i}.png")
    ds = load_dataset(str(normal))
    assert ds.classes == ["normal"] and len(ds.train) + len(ds.val) == 20
    assert any("one class" in n for n in ds.notes)
    from convlens.config import make_config
    from convlens.tasks.classify import ClassifyTask as Classify

    with pytest.raises(ConvlensError, match="one class"):
        Classify(make_config(None, {"data": str(normal)})).prepare(ds)
