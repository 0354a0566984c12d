"""IDX files: round trips, strict header checks, arbitrary bytes, IDX prefixes as datasets."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convlens.data import load_dataset
from convlens.data.idx import IDX_DTYPES, read_idx, write_idx
from convlens.errors import DatasetFormatError


@pytest.mark.parametrize("code", sorted(IDX_DTYPES))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_every_dtype(tmp_path, code, suffix):
    dtype = IDX_DTYPES[code].newbyteorder("=")
    rng = np.random.default_rng(code)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, array)
    raw = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    assert raw[:4] == bytes([0, 0, code, 3])  # the magic number names the type and rank
    back = read_idx(path)
    assert back.dtype == dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_big_endian_on_disk(tmp_path):
    write_idx(tmp_path / "x", np.array([1, 258], dtype=np.int16))
    assert (
        tmp_path / "x"
    ).read_bytes() == b"\x00\x00\x0b\x01" + b"\x00\x00\x00\x02\x00\x01\x01\x02"


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_header_says_more_than_the_file_holds(tmp_path, suffix):
    path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    data = _header(0x08, (60000, 28, 28)) + bytes(1200)
    path.write_bytes(gzip.compress(data) if suffix else data)
    with pytest.raises(DatasetFormatError) as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and "60000 images of 28x28" in msg
    if not suffix:
        assert "1200 bytes" in msg


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_extra_bytes_after_the_data(tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    data = _header(0x08, (10,)) + bytes(11)
    path.write_bytes(gzip.compress(data) if suffix else data)
    with pytest.raises(DatasetFormatError, match="header says 10 items"):
        read_idx(path)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX data type 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00", "cut short"),
        (b"", "bad magic"),
    ],
)
def test_bad_headers(tmp_path, data, match):
    path = tmp_path / "bad-idx"
    path.write_bytes(data)
    with pytest.raises(DatasetFormatError, match=match) as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_absurd_dims_are_refused_without_allocating(tmp_path, suffix):
    path = tmp_path / f"huge{suffix}"
    data = _header(0x0E, (2**32 - 1,) * 4) + bytes(64)  # ~2.7e39 bytes claimed
    path.write_bytes(gzip.compress(data) if suffix else data)
    with pytest.raises(DatasetFormatError, match="header says"):
        read_idx(path)


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    write_idx(tmp_path / "plain.gz", np.arange(3, dtype=np.uint8))  # gzipped, as named
    (tmp_path / "raw.gz").write_bytes(gzip.decompress((tmp_path / "plain.gz").read_bytes()))
    (tmp_path / "packed").write_bytes((tmp_path / "plain.gz").read_bytes())
    for name in ("plain.gz", "raw.gz", "packed"):
        assert read_idx(tmp_path / name).tolist() == [0, 1, 2]


def test_truncated_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(_header(0x08, (1000,)) + bytes(range(250)) * 4)[:-20])
    with pytest.raises(DatasetFormatError, match="x.gz"):
        read_idx(path)


def _read_or_format_error(path) -> None:
    try:
        result = read_idx(path)
    except DatasetFormatError:
        return
    assert isinstance(result, np.ndarray)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "fuzz"
    path.write_bytes(data)
    _read_or_format_error(path)
    gz = tmp_path / "fuzz.gz"
    gz.write_bytes(data)
    _read_or_format_error(gz)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    code=st.sampled_from([*IDX_DTYPES, 0x00, 0x0A, 0xFF]),
    dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 4), min_size=0, max_size=9),
    payload=st.binary(max_size=100),
    gz=st.booleans(),
)
def test_plausible_headers_with_arbitrary_payload(tmp_path, code, dims, payload, gz):
    data = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload
    path = tmp_path / ("f.gz" if gz else "f")
    path.write_bytes(gzip.compress(data) if gz else data)
    _read_or_format_error(path)


def _mnist_like(folder, n_train=50, n_test=20, gz=True):
    """Write the four standard files of a tiny MNIST-shaped dataset with 5 classes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 5).astype(np.uint8)
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 6, 7), np.uint8)
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


def test_idx_prefix_is_a_dataset(tmp_path):
    _mnist_like(tmp_path / "d", gz=False)
    ds = load_dataset(str(tmp_path / "d" / "train"), seed=3)
    assert ds.classes == ["0", "1", "2", "3", "4"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (45, 5, 20)  # t10k found beside train
    assert ds.image_size == (6, 7) and ds.channels == 1
    assert "5 images, seed 3" in ds.notes[0]


def test_folder_of_idx_files_is_a_dataset(tmp_path):
    _mnist_like(tmp_path / "d")
    ds = load_dataset(str(tmp_path / "d"))
    assert len(ds.train) + len(ds.val) == 50 and len(ds.test) == 20
    assert ds.train.images.dtype.is_floating_point is False


def test_label_count_must_match_image_count(tmp_path):
    write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((4, 2, 2), np.uint8))
    write_idx(tmp_path / "x-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DatasetFormatError, match="3 labels for 4 images"):
        load_dataset(str(tmp_path / "x"))
