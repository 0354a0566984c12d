"""MedMNIST-style .npz files: valid ones load, anything else is a DatasetFormatError naming it."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convlens.data import load_dataset
from convlens.data.npz import load_npz, read_npz
from convlens.errors import DatasetFormatError


def _arrays(rgb=False, n=(40, 10, 12), k=4):
    rng = np.random.default_rng(0)
    shape = (8, 9, 3) if rgb else (8, 9)
    out = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        out[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(count) % k).reshape(-1, 1)  # (N, 1) as MedMNIST
    return out


def test_grey_npz_loads(tmp_path):
    arrays = _arrays()
    np.savez_compressed(tmp_path / "m.npz", **arrays)
    ds = load_dataset(str(tmp_path / "m.npz"))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 10, 12)
    assert ds.train.images.shape == (40, 1, 8, 9) and ds.classes == ["0", "1", "2", "3"]
    assert ds.train.labels.dtype.is_floating_point is False and ds.train.labels.ndim == 1
    np.testing.assert_array_equal(ds.val.images[:, 0].numpy(), arrays["val_images"])
    assert ds.notes == []


def test_rgb_npz_with_class_names(tmp_path):
    arrays = _arrays(rgb=True)
    names = np.array(["adipose", "background", "debris", "lymphocytes"])
    np.savez(tmp_path / "m.npz", classes=names, **arrays)
    ds = load_npz(tmp_path / "m.npz")
    assert ds.train.images.shape == (40, 3, 8, 9) and ds.classes == list(names)
    np.testing.assert_array_equal(ds.test.images.permute(0, 2, 3, 1).numpy(), arrays["test_images"])


def test_missing_val_is_held_out_from_train_not_test(tmp_path):
    arrays = _arrays(n=(100, 10, 12))
    del arrays["val_images"], arrays["val_labels"]
    np.savez(tmp_path / "m.npz", **arrays)
    ds = load_npz(tmp_path / "m.npz", seed=1, val_fraction=0.2)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (80, 20, 12)
    assert "20 images, seed 1" in ds.notes[0]


def test_object_array_is_refused(tmp_path):
    arrays = _arrays()
    arrays["train_labels"] = np.array([{"evil": 1}] * 40, dtype=object)
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(DatasetFormatError, match="m.npz: key 'train_labels' holds pickled"):
        read_npz(tmp_path / "m.npz")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a.pop("train_labels"), "missing key 'train_labels'"),
        (lambda a: a.pop("test_images"), "missing key 'test_images'"),
        (lambda a: a.update(train_images=a["train_images"] / 255), "train_images must be uint8"),
        (lambda a: a.update(val_labels=a["val_labels"][:-1]), "10 val_images but 9 val_labels"),
        (lambda a: a.update(val_labels=a["val_labels"] * 0.5), "val_labels must be integers"),
        (lambda a: a.update(test_images=a["test_images"][:, None]), "test_images must be"),
        (lambda a: a.update(test_images=a["test_images"][:, :4]), "different shapes"),
        (lambda a: a.update(train_labels=np.zeros((40, 3), int)), "disagree on label columns"),
        (lambda a: a.update(train_labels=-a["train_labels"] - 1), "negative"),
        (lambda a: a.update(classes=np.array(["a", "b"])), "2 class names but labels go up to 3"),
    ],
)
def test_malformed_contents(tmp_path, change, match):
    arrays = _arrays()
    change(arrays)
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(DatasetFormatError, match=match) as e:
        load_npz(tmp_path / "m.npz")
    assert str(tmp_path / "m.npz") in str(e.value)


def test_not_a_zip_and_truncated(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DatasetFormatError, match="text.npz: not an .npz"):
        read_npz(tmp_path / "text.npz")
    np.savez(tmp_path / "m.npz", **_arrays())
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match="cut.npz"):
        read_npz(tmp_path / "cut.npz")


def test_header_claiming_more_than_the_member_holds(tmp_path):
    npy = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": (4_000_000_000_000,)}
    np.lib.format.write_array_header_1_0(npy, header)
    npy.write(bytes(4))  # 4 bytes where 4 TB are claimed
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as z:
        z.writestr("train_images.npy", npy.getvalue())
    with pytest.raises(DatasetFormatError, match="lie.npz: key 'train_images' says shape"):
        read_npz(tmp_path / "lie.npz")


def _read_or_format_error(path) -> None:
    try:
        result = read_npz(path)
    except DatasetFormatError:
        return
    assert isinstance(result, dict)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(tmp_path, data):
    (tmp_path / "f.npz").write_bytes(data)
    _read_or_format_error(tmp_path / "f.npz")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
)
def test_damaged_real_npz(tmp_path, cut, flips):
    buffer = io.BytesIO()
    np.savez(buffer, a=np.arange(30, dtype=np.int16), b=np.ones((2, 3), np.uint8))
    data = bytearray(buffer.getvalue())
    for at, value in flips:
        data[at % len(data)] = value
    (tmp_path / "f.npz").write_bytes(bytes(data[: max(cut, 4)]) if cut < len(data) else bytes(data))
    _read_or_format_error(tmp_path / "f.npz")
