"""Fuzzing the data parsers: mutated IDX pairs, NPZ files (bytes and .npy headers), label CSVs
and DICOM files (bytes and element values) go to the public loaders. Only ConvlensError
subclasses may escape, and the process's peak memory may grow by at most MEMORY_MB per test.

CONVLENS_FUZZ_EXAMPLES sets the examples per test (default 300) for a longer run; run with -s to
see how each category ended (loaded, or which error; CONVLENS_FUZZ_REASONS=1: which message)."""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import struct
import uuid
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from convlens.data import load_dataset
from convlens.data.idx import write_idx
from convlens.data.images import decode_image, to_tensor
from convlens.data.labelcsv import load_label_csv
from convlens.data.npz import load_npz
from convlens.errors import ConvlensError
from tests.helpers import peak_rss_mb, reset_peak_rss
from tests.test_data_hardening import _dicom, _save, deflated_dicom, rle_dicom

pytestmark = pytest.mark.filterwarnings(  # pydicom and numpy warn about what they read
    "ignore::UserWarning", "ignore::RuntimeWarning", "ignore::DeprecationWarning"
)
EXAMPLES = int(os.environ.get("CONVLENS_FUZZ_EXAMPLES", "300"))
REASONS = bool(os.environ.get("CONVLENS_FUZZ_REASONS"))  # also tally the error messages
MEMORY_MB = 256  # growth of the peak resident set over one test's examples
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
OUTCOMES: dict[str, Counter] = defaultdict(Counter)  # category -> outcome -> cases
GROWTH: dict[str, float] = {}  # test -> growth of the peak resident set, MB
INTERESTING = [0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF,
               0x80000000, 0xFFFFFFFF]  # fmt: skip


@pytest.fixture(autouse=True)
def bounded_memory(request):
    """Fail a test whose examples raised the peak memory by MEMORY_MB or more."""
    start = reset_peak_rss()
    yield
    grew = peak_rss_mb() - start
    GROWTH[request.node.name] = grew
    assert grew < MEMORY_MB


@pytest.fixture(scope="module", autouse=True)
def report():
    """Print the cases per category and how they ended (seen with pytest -s)."""
    yield
    for category, outcomes in sorted(OUTCOMES.items()):
        ended = ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
        print(f"\nfuzz {category}: {sum(outcomes.values())} cases: {ended}")
    grew = ", ".join(f"{name} {mb:.0f}" for name, mb in GROWTH.items())
    print(f"\nfuzz peak memory growth (MB, limit {MEMORY_MB}): {grew}")


def attempt(category: str, load) -> None:
    """Run `load()`; a ConvlensError is an answer, anything else fails the test."""
    try:
        load()
        OUTCOMES[category]["loaded"] += 1
    except ConvlensError as e:
        OUTCOMES[category][type(e).__name__] += 1
        if REASONS:  # the message without its file name, digits folded
            OUTCOMES[f"{category} reasons"][re.sub(r"\d+", "N", str(e).split(": ", 1)[-1])] += 1


@st.composite
def mutated(draw, seed: bytes, hot: int = 64, start: int = 0) -> bytes:
    """`seed` after 1-4 random edits, half of them in its `hot` bytes from `start` (the header)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        first = min(start, max(n - 1, 0))
        last = max(min(n, start + hot) - 1, first)
        where = st.integers(first, last) | st.integers(0, max(n - 1, 0))
        pos = draw(where)
        kind = draw(st.sampled_from(["byte", "int", "insert", "delete", "truncate"]))
        if kind == "byte" and n:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "int":  # a boundary value over a length, a count or a dimension
            fmt = draw(st.sampled_from(["<I", ">I", "<H", ">H"]))
            value = draw(st.sampled_from(INTERESTING)) & (0xFFFF if "H" in fmt else 0xFFFFFFFF)
            packed = struct.pack(fmt, value)
            data[pos : pos + len(packed)] = packed
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            del data[pos:]
    return bytes(data)


def _fresh(tmp_path: Path) -> Path:
    folder = tmp_path / uuid.uuid4().hex[:12]
    folder.mkdir()
    return folder


# ---- IDX: an images/labels pair, plain or gzipped ----


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of a uint8 or int32 array (what write_idx writes, in memory)."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


IDX_IMAGES = _idx_bytes(np.arange(20 * 4 * 4, dtype=np.uint8).reshape(20, 4, 4))
IDX_LABELS = [_idx_bytes((np.arange(20) % 2).astype(t)) for t in (np.uint8, np.int32)]


@FUZZ
@given(
    images=mutated(IDX_IMAGES, hot=16) | st.just(IDX_IMAGES),
    labels=st.sampled_from(IDX_LABELS).flatmap(lambda seed: mutated(seed, hot=16)),
    gz=st.booleans(),
)
def test_fuzz_idx_pairs(tmp_path, images, labels, gz):
    folder = _fresh(tmp_path)
    suffix, pack = (".gz", gzip.compress) if gz else ("", bytes)
    (folder / f"train-images-idx3-ubyte{suffix}").write_bytes(pack(images))
    (folder / f"train-labels-idx1-ubyte{suffix}").write_bytes(pack(labels))
    attempt("idx", lambda: load_dataset(str(folder / "train")))


def test_the_idx_seeds_are_what_write_idx_writes(tmp_path):
    write_idx(tmp_path / "x", (np.arange(20) % 2).astype(np.int32))
    assert (tmp_path / "x").read_bytes() == IDX_LABELS[1]


# ---- NPZ: bytes of a real file, and hand-made .npy headers inside a zip ----


def _npz(arrays: dict[str, np.ndarray], compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


ARRAYS = {
    "train_images": np.arange(20 * 4 * 4, dtype=np.uint8).reshape(20, 4, 4),
    "train_labels": (np.arange(20) % 3).reshape(-1, 1),
    "test_images": np.zeros((6, 4, 4), np.uint8),
    "test_labels": np.arange(6) % 3,
    "classes": np.array(["a", "b", "c"]),
}
NPZ_SEEDS = [_npz(ARRAYS, False), _npz(ARRAYS, True)]


@FUZZ
@given(data=st.sampled_from(NPZ_SEEDS).flatmap(lambda seed: mutated(seed, hot=200)))
def test_fuzz_npz_bytes(tmp_path, data):
    path = _fresh(tmp_path) / "m.npz"
    path.write_bytes(data)
    attempt("npz-bytes", lambda: load_npz(path))


DESCRS = ["|u1", "<i4", "<u8", ">i8", "<i2", "<f4", "|b1", "|O", "<U4", "|S3", "<c8", "|V8",
          "<M8[s]", "u1", "bogus", "[('a', '<i4')]", "<u1"]  # fmt: skip
DIMS = st.integers(0, 6) | st.sampled_from([-1, 20, 2**31, 2**63, 10**12])
KEYS = ["train_images", "train_labels", "val_images", "val_labels", "test_images",
        "test_labels", "classes", "extra"]  # fmt: skip


def _npy(header: str, version: int, payload: bytes) -> bytes:
    """A .npy file: magic, version, header length, the header padded to 64 bytes, the data."""
    text = header.encode("latin-1", "replace")
    width = 2 if version == 1 else 4
    pad = -(10 + width - 2 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    size = struct.pack("<H" if width == 2 else "<I", len(text) & (0xFFFF if width == 2 else ~0))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + payload


@st.composite
def npy_member(draw) -> tuple[str, bytes]:
    descr = draw(st.sampled_from(DESCRS))
    shape = tuple(draw(st.lists(DIMS, max_size=5)))
    header = repr({"descr": descr, "fortran_order": draw(st.booleans()), "shape": shape})
    if draw(st.booleans()):
        header = draw(mutated(header.encode(), hot=80)).decode("latin-1")
    try:
        need = math.prod(shape) * np.dtype(descr).itemsize
    except (TypeError, ValueError):
        need = -1
    exact = 0 <= need <= 4096 and draw(st.booleans())
    payload = bytes(need) if exact else draw(st.binary(max_size=300))
    name = draw(st.sampled_from(KEYS)) + draw(st.sampled_from([".npy"] * 6 + ["", ".txt"]))
    return name, _npy(header, draw(st.sampled_from([1, 2, 3, 9])), payload)


@FUZZ
@given(
    members=st.lists(npy_member(), min_size=1, max_size=3),
    keep=st.lists(st.sampled_from(sorted(ARRAYS)), unique=True),
    compression=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
)
@example(  # found here: (N, 0) labels were an IndexError
    members=[("train_labels.npy", _npy(repr({"descr": "|u1", "fortran_order": False,
                                             "shape": (0, 0)}), 1, b""))],
    keep=["classes", "train_images"],
    compression=zipfile.ZIP_STORED,
)  # fmt: skip
def test_fuzz_npz_headers(tmp_path, members, keep, compression):
    path = _fresh(tmp_path) / "m.npz"
    with zipfile.ZipFile(path, "w", compression) as z:
        for key in keep:  # real arrays, so that loading gets past the first check
            buf = io.BytesIO()
            np.save(buf, ARRAYS[key])
            z.writestr(f"{key}.npy", buf.getvalue())
        for name, data in members:
            if name not in z.namelist():
                z.writestr(name, data)
    attempt("npz-headers", lambda: load_npz(path))


# ---- label CSVs: rows naming good, broken, special and absent files ----


@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory) -> Path:
    """Images a fuzzed CSV can name: good ones, a corrupt one, a FIFO and a /dev/zero link."""
    root = tmp_path_factory.mktemp("csv-fuzz")
    (root / "img").mkdir()
    for i in range(12):
        Image.new("L", (4, 4), 20 * i).save(root / "img" / f"{i}.png")
    (root / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    os.mkfifo(root / "img" / "pipe.png")
    (root / "img" / "zero.png").symlink_to("/dev/zero")
    return root


GOOD = [f"img/{i}.png" for i in range(12)]
PATHS = GOOD + ["img/bad.png", "img/pipe.png", "img/zero.png", "missing.png", "../outside.png",
                "/dev/zero", "img", "", "img/0.png\x00x"]  # fmt: skip
SPLITS = ["train", "train", "val", "test", "valid", "validation", "TEST ", "bogus", ""]
HEADERS = (
    ["path,labels"] * 3
    + ["path,labels,split"] * 3
    + ["PATH, Labels ,Split", "\ufeffpath,labels", "path", "labels,path", ""]
)


@st.composite
def label_rows(draw) -> bytes:
    header = draw(st.sampled_from(HEADERS))
    names = st.sampled_from(["a", "b", "c", " a ", ";"]) | st.text(max_size=6)
    clean = draw(st.booleans())  # every row a good image: the labels and splits get parsed
    row = st.tuples(
        st.sampled_from(GOOD) if clean else st.sampled_from(PATHS) | st.text(max_size=12),
        st.lists(names, max_size=3).map(";".join),
        st.sampled_from(SPLITS) | st.text(max_size=4),
    )
    rows = draw(st.lists(row, max_size=30))
    buf = io.StringIO()
    writer = csv.writer(buf)
    buf.write(header + "\n")
    for path, labels, split in rows:
        writer.writerow([path, labels, split][: draw(st.sampled_from([3, 3, 3, 2, 1]))])
    data = buf.getvalue().encode("utf-8", "surrogatepass")
    return draw(st.just(data) | mutated(data, hot=200, start=len(header) + 1))


@FUZZ
@given(data=label_rows())
@example(data=b"path,labels\n\x00mg/0.png,a,train\n")  # found here: a NUL was a ValueError
def test_fuzz_label_csvs(csv_folder, data):
    path = csv_folder / f"{uuid.uuid4().hex[:12]}.csv"
    path.write_bytes(data)
    try:
        attempt("label-csv", lambda: load_label_csv(path, val_fraction=0.5))
    finally:
        path.unlink()


# ---- DICOM: bytes of real files, and element values written by pydicom ----


def _grey16(**elements) -> bytes:
    ds = _dicom(3, 5, BitsAllocated=16, BitsStored=12, HighBit=11, PixelRepresentation=1,
                **elements)  # fmt: skip
    ds.PixelData = (np.arange(15, dtype=np.int16) * 97 - 500).tobytes()
    return _save(ds)


def _rgb() -> bytes:
    ds = _dicom(3, 5, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0)
    ds.PixelData = bytes(range(45))
    return _save(ds)


DICOM_SEEDS = [
    _grey16(RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400),
    _grey16(PhotometricInterpretation="MONOCHROME1"),
    _rgb(),
    deflated_dicom(6, 7, pixels=bytes(range(42))),
    rle_dicom(6, 130, value=90),
]


def _decode(data: bytes) -> None:
    img = decode_image(data, name="fuzz.dcm")
    to_tensor(img, channels=1)
    to_tensor(img, channels=3, size=(4, 4))


@FUZZ
@given(data=st.sampled_from(DICOM_SEEDS).flatmap(lambda seed: mutated(seed, 400, start=132)))
def test_fuzz_dicom_bytes(data):
    attempt("dicom-bytes", lambda: _decode(data))


SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian, RLELossless, JPEGBaseline8Bit]  # fmt: skip
SIDE = st.integers(1, 40) | st.integers(1, 40) | st.sampled_from([0, 256, 4096, 8000, 9000, 65535])
DECIMAL = st.sampled_from(["1", "0", "-1", "2.5", "nan", "inf", "-inf", "1e308", "1e-300", ""])
GARBAGE = st.sampled_from([b"abc", b"1\\2", b"\xff\xfe", b"--", b"1e999", b"  "])
MARKER = "1234567.01"  # a DS of 10 characters, replaced by garbage pydicom would not write


@st.composite
def dicom_elements(draw) -> bytes:
    rows, cols = draw(SIDE), draw(SIDE)
    bits = draw(st.sampled_from([8, 8, 8, 16, 16, 16, 32, 1, 12, 64, 0, 7]))
    elements = {  # mostly consistent values, so that decoding gets somewhere
        "SamplesPerPixel": draw(st.sampled_from([1, 1, 1, 3, 3, 0, 2, 4])),
        "PhotometricInterpretation": draw(st.sampled_from(["MONOCHROME2"] * 3 + ["MONOCHROME1",
            "RGB", "RGB", "YBR_FULL", "PALETTE COLOR", "BOGUS"])),
        "BitsAllocated": bits,
        "BitsStored": draw(st.sampled_from([bits, bits, bits, 1, 12, 16, 0])),
        "HighBit": draw(st.sampled_from([max(bits - 1, 0)] * 3 + [0, 15, 31])),
        "PixelRepresentation": draw(st.sampled_from([0, 1])),
    }  # fmt: skip
    if elements["SamplesPerPixel"] == 3:
        elements["PlanarConfiguration"] = draw(st.sampled_from([0, 0, 1, 2]))
    if draw(st.booleans()):
        elements["NumberOfFrames"] = draw(st.sampled_from(["1", "2", "0", "-3", "1e9", ""]))
    for key in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if draw(st.booleans()):
            elements[key] = draw(DECIMAL)
    syntax = draw(st.sampled_from(SYNTAXES))
    garbage = syntax != DeflatedExplicitVRLittleEndian and draw(st.booleans())
    if garbage:  # replaced in the written bytes below (a deflated stream would hide it)
        elements[draw(st.sampled_from(["RescaleSlope", "WindowWidth"]))] = MARKER
    ds = _dicom(rows, cols, syntax, **elements)
    need = rows * cols * max(elements["SamplesPerPixel"], 1) * -(-bits // 8)
    exact = need <= 1 << 16 and draw(st.sampled_from([True, True, False]))
    pixels = bytes(need) if exact else draw(st.binary(max_size=512))
    if syntax in (RLELossless, JPEGBaseline8Bit):
        ds.PixelData = encapsulate([pixels + b"\0" * (len(pixels) % 2) or b"\0\0"])
    else:
        ds.PixelData = pixels
    ds["PixelData"].VR = "OB" if bits <= 8 or syntax in (RLELossless, JPEGBaseline8Bit) else "OW"
    try:
        data = _save(ds)
    except Exception:  # pydicom will not write some of these: not a case for the reader
        reject()
    if garbage:
        data = data.replace(MARKER.encode(), draw(GARBAGE).ljust(len(MARKER)))
    return data


@FUZZ
@given(data=dicom_elements())
def test_fuzz_dicom_elements(data):
    attempt("dicom-elements", lambda: _decode(data))
