"""Hostile data: DICOM bombs, special files (FIFO, /dev/zero), huge labels, non-UTF-8 names,
bad_files.csv that spreadsheets cannot misread, EXIF-rotated photos. Real files, and a child
process wherever the old behaviour was to hang or to eat memory."""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from convlens.data import load_dataset
from convlens.data.badfiles import write_bad_files
from convlens.data.files import read_regular
from convlens.data.idx import write_idx
from convlens.data.images import decode_image, to_tensor
from convlens.errors import DatasetFormatError
from tests.helpers import PEAK_RSS_CODE, convlens

QUICK = ["--epochs", 1, "--model", "mlp", "--batch-size", 64, "--threads", 1]
CHILD_MEMORY = 6 << 30  # address space of a child: torch reserves ~3 GiB, a bomb fails past it


def in_child(code: str, *args: object, timeout: float = 60):
    """Run Python `code` in a child process with bounded memory; the JSON it prints last."""
    limit = (CHILD_MEMORY, CHILD_MEMORY)
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, limit),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


LOAD = """
import json, sys
from convlens.data import load_dataset
from convlens.data.labelcsv import load_label_csv
from convlens.errors import ConvlensError
out = []
for arg in sys.argv[1:]:  # each a load_dataset spec, or csv=PATH for load_label_csv
    load = load_label_csv if arg.startswith("csv=") else load_dataset
    try:
        ds = load(arg.removeprefix("csv="))
        out.append({"classes": len(ds.classes), "bad": ds.bad_files})
    except ConvlensError as e:
        out.append({"error": str(e)})
print(json.dumps(out))
"""


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), value).save(path)


def _special_files(folder: Path, dangling: bool = False) -> dict[str, str]:
    """A FIFO and a symlink to /dev/zero named as images (and a dangling link); their reasons."""
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    reasons = {"pipe.png": "not a regular file (a FIFO)", "zero.png": "a character device"}
    if dangling:
        (folder / "gone.png").symlink_to(folder / "nowhere.png")
        reasons["gone.png"] = "cannot read (No such file or directory)"
    return reasons


# ---- DICOM bombs: the header is checked before anything is inflated or decoded ----


def _dicom(rows: int, cols: int, syntax=ExplicitVRLittleEndian, **elements) -> Dataset:
    """An 8-bit grey DICOM dataset of rows x cols (no pixels yet)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        SecondaryCaptureImageStorage,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


def _save(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def rle_dicom(rows: int, cols: int, value: int = 7) -> bytes:
    """A real RLE Lossless file: every row PackBits-encoded as runs of 128 (then the rest)."""
    row = b"\x81" + bytes([value])  # -127: the next byte 128 times
    row = row * (cols // 128) + (bytes([257 - cols % 128, value]) if cols % 128 else b"")
    segment = row * rows
    frame = struct.pack("<16I", 1, 64, *[0] * 14) + segment + b"\x00" * (len(segment) % 2)
    ds = _dicom(rows, cols, RLELossless)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return _save(ds)


def short_rle_dicom(rows: int, cols: int) -> bytes:
    """An RLE file whose header declares rows x cols of 64-bit samples but holds 32 bytes."""
    ds = _dicom(rows, cols, RLELossless, BitsAllocated=64, BitsStored=64, HighBit=63)
    frame = struct.pack("<16I", 8, *range(64, 96, 4), *[0] * 7) + b"\x81\x00" * 16
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return _save(ds)


def deflated_dicom(rows: int, cols: int, pixels: bytes | None = None, bomb: int = 0) -> bytes:
    """A Deflated Explicit VR file; `bomb` bytes of zeros in pixel data instead of `pixels`."""
    ds = _dicom(rows, cols, DeflatedExplicitVRLittleEndian)
    if bomb == 0:
        ds.PixelData = pixels if pixels is not None else bytes(rows * cols)
        return _save(ds)
    data = _save(ds)  # no pixel data: append a huge element to the inflated stream
    meta_end = 144 + struct.unpack("<I", data[140:144])[0]
    body = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [data[:meta_end], z.compress(body + b"\xe0\x7f\x10\x00OB\x00\x00")]
    out.append(z.compress(struct.pack("<I", bomb)))
    zeros = bytes(1 << 20)
    out += [z.compress(zeros) for _ in range(bomb >> 20)]
    return b"".join([*out, z.flush()])


PEAK = (
    PEAK_RSS_CODE
    + """
import json, sys
from convlens.data.images import decode_image
from convlens.errors import ConvlensError
warm, bombs = sys.argv[1:3], sys.argv[3:]
for path in warm:  # pydicom and its decoders imported before anything is measured
    decode_image(path)
out = []
for path in bombs:  # each bomb's peak over the resident set before it
    reset_peak_rss()
    before = peak_rss_mb()  # the resident set now
    try:
        decode_image(path)
        error = None
    except ConvlensError as e:
        error = str(e)
    out.append({"error": error, "grew_mb": peak_rss_mb() - before})
print(json.dumps(out))
"""
)


def test_dicom_bombs_are_refused_before_memory_grows(tmp_path):
    (tmp_path / "warm-rle.dcm").write_bytes(rle_dicom(4, 200))
    (tmp_path / "warm-deflated.dcm").write_bytes(deflated_dicom(4, 4))
    bombs = {  # 1.3 MB that decodes to 81 MB (and 648 MB as float64)
        "rle.dcm": (rle_dicom(9000, 9000), "header says 9000x9000 pixels (1 frame, 1 sample), "
                    "over the 64-megapixel limit"),
        "rle-short.dcm": (short_rle_dicom(8000, 8000),  # 64 MP (at the limit) of 8 bytes each
                          "cannot expand to the 512000000 bytes of pixels its header declares"),
        "deflated-header.dcm": (deflated_dicom(9000, 9000, pixels=bytes(64)),
                                "header says 9000x9000 pixels"),
        "deflated-bomb.dcm": (deflated_dicom(64, 64, bomb=300 << 20),  # 300 MiB in ~300 kB
                              "inflates to more than its header declares"),
    }  # fmt: skip
    for name, (data, _) in bombs.items():
        assert len(data) < 2 << 20
        (tmp_path / name).write_bytes(data)
    warm = [tmp_path / "warm-rle.dcm", tmp_path / "warm-deflated.dcm"]
    results = in_child(PEAK, *warm, *(tmp_path / name for name in bombs))
    for (name, (_, message)), result in zip(bombs.items(), results, strict=True):
        assert result["error"] is not None and message in result["error"], (name, result)
        assert result["error"].startswith(f"{tmp_path / name}: ")
        assert result["grew_mb"] < 32, (name, result)  # was 0.7, 0.5 (RLE) and 1 GB (deflated)


def test_deflated_and_rle_dicom_files_still_decode(tmp_path):
    pixels = np.arange(12 * 130, dtype=np.uint8).reshape(12, 130)
    (tmp_path / "d.dcm").write_bytes(deflated_dicom(12, 130, pixels=pixels.tobytes()))
    (tmp_path / "e.dcm").write_bytes(_save_pixels(_dicom(12, 130), pixels))
    (tmp_path / "r.dcm").write_bytes(rle_dicom(12, 130, value=200))
    deflated = to_tensor(decode_image(tmp_path / "d.dcm"), channels=1)
    explicit = to_tensor(decode_image(tmp_path / "e.dcm"), channels=1)
    assert deflated.shape == (1, 12, 130) and deflated.equal(explicit)
    rle = to_tensor(decode_image(tmp_path / "r.dcm"), channels=1)
    assert rle.shape == (1, 12, 130) and (rle == 0).all()  # a constant image: min..max -> 0


def _save_pixels(ds: Dataset, pixels: np.ndarray) -> bytes:
    ds.PixelData = pixels.tobytes()
    return _save(ds)


def test_multiframe_dicom_counts_every_frame_against_the_limit(tmp_path):
    ds = _dicom(4000, 4000, NumberOfFrames=5)  # 80 megapixels in 5 frames of 16
    path = tmp_path / "frames.dcm"
    path.write_bytes(_save_pixels(ds, np.zeros(64, np.uint8)))
    with pytest.raises(DatasetFormatError, match=r"frames.dcm: .*4000x4000 pixels \(5 frames"):
        decode_image(path)


# ---- special files: one reader for every loader, regular files only, with a size cap ----


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> dict:
    """A folder with special files and strange names, trained on for an epoch by the CLI."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "pets"
    for i in range(800):  # 8 bad files stay under the 1% that is skipped, not refused
        _png(data / "cat" / f"{i}.png", 10)
    os.makedirs(os.fsencode(data / "caf") + b"\xe9")  # a Latin-1 folder name: not UTF-8
    for i in range(60):
        Image.new("L", (4, 4), 200).save(os.fsencode(data) + b"/caf\xe9/" + b"%d.png" % i)
    reasons = _special_files(data / "cat", dangling=True)
    odd = ["=1+2.png", 'say "hi",\nbye.png', "semi;colon.png"]
    for name in odd:
        (data / "cat" / name).write_bytes(b"not an image")
    (data / "cat" / "bad\udcff.png").write_bytes(b"not an image")  # a name with byte 0xff
    with open(data / "cat" / "huge.png", "wb") as f:
        f.truncate(600 << 20)  # sparse: no disk used
    run = root / "run"
    result = convlens("train", "--data", data, *QUICK, "--run", run, timeout=120)
    return {"data": data, "run": run, "result": result, "reasons": reasons, "odd": odd}


def test_training_on_special_and_strangely_named_files_finishes_with_a_report(hostile_run):
    result, run = hostile_run["result"], hostile_run["run"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "report.html").stat().st_size > 1000
    rows = list(csv.reader((run / "bad_files.csv").open(encoding="utf-8", newline="")))
    assert rows[0] == ["path", "reason"]
    reasons = {Path(p).name: why for p, why in rows[1:]}
    assert len(rows) == 1 + 8, rows
    for name, why in hostile_run["reasons"].items():
        assert why in reasons[name]
    assert "huge.png" in reasons and "over the 512 MiB limit" in reasons["huge.png"]
    assert "bad\\xff.png" in reasons  # the undecodable byte written as an escape, valid UTF-8
    paths = {p for p, _ in rows[1:]}
    for name in hostile_run["odd"]:  # quotes, a comma and a newline come back intact
        assert str(hostile_run["data"] / "cat" / name) in paths, (name, rows)


def test_class_names_from_undecodable_folder_names_are_printable(hostile_run, tmp_path):
    assert hostile_run["result"].returncode == 0
    import convlens as api

    assert api.load(str(hostile_run["run"])).classes == ["caf\\xe9", "cat"]
    os.makedirs(os.fsencode(tmp_path / "tab\tand\x1b[31mred"))
    _png(tmp_path / "tab\tand\x1b[31mred" / "0.png")
    _png(tmp_path / "plain" / "0.png")
    for i in range(1, 10):
        _png(tmp_path / "plain" / f"{i}.png")
        _png(tmp_path / "tab\tand\x1b[31mred" / f"{i}.png")
    ds = load_dataset(str(tmp_path))
    assert ds.classes == ["plain", "tab\\tand\\x1b[31mred"]
    assert all(name.isprintable() for name in ds.classes)


def test_bad_files_csv_keeps_names_intact_and_neutralises_formulas(tmp_path):
    bad = [
        ('a "quoted", name\nwith a newline.png', "corrupt"),
        ("=HYPERLINK(1).png", "+also a formula"),
        ("-1.png", "@x"),
        ("\tTAB.png", "\rCR"),
        ("ok.png", "cannot read (Is a directory)"),
        ("bad\udcff\udce9.png", "not an image: bad\udcff"),
    ]
    write_bad_files(tmp_path / "bad_files.csv", bad)
    rows = list(csv.reader((tmp_path / "bad_files.csv").open(encoding="utf-8", newline="")))
    assert rows == [
        ["path", "reason"],
        ['a "quoted", name\nwith a newline.png', "corrupt"],
        ["'=HYPERLINK(1).png", "'+also a formula"],
        ["'-1.png", "'@x"],
        ["'\tTAB.png", "'\rCR"],
        ["ok.png", "cannot read (Is a directory)"],
        ["bad\\xff\\xe9.png", "not an image: bad\\xff"],
    ]


def test_a_label_csv_listing_special_files_skips_them(tmp_path):
    lines = ["path,labels"]
    for i in range(200):
        _png(tmp_path / "img" / f"{i}.png", i % 2)
        lines.append(f"img/{i}.png,{'a' if i % 2 else 'b'}")
    _special_files(tmp_path / "img")
    lines += ["img/pipe.png,a", "img/zero.png,b"]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    os.mkfifo(tmp_path / "fifo.csv")  # a label CSV that is itself special: a one-line error
    (tmp_path / "zero.csv").symlink_to("/dev/zero")
    specs = ["", "", "", "csv=", "csv="]  # the last two call load_label_csv itself
    names = ["labels.csv", "fifo.csv", "zero.csv", "fifo.csv", "zero.csv"]
    paths = [f"{how}{tmp_path / name}" for how, name in zip(specs, names, strict=True)]
    listed, *special = in_child(LOAD, *paths, timeout=60)
    reasons = {Path(p).name: why for p, why in listed["bad"]}
    assert "not a regular file (a FIFO)" in reasons["pipe.png"]
    assert "not a regular file (a character device)" in reasons["zero.png"]
    fifo = {"error": f"{tmp_path}/fifo.csv: not a regular file (a FIFO)"}
    zero = {"error": f"{tmp_path}/zero.csv: not a regular file (a character device)"}
    assert special == [fifo, zero, fifo, zero]


def test_read_regular_caps_the_size(tmp_path):
    path = tmp_path / "big.png"
    with open(path, "wb") as f:
        f.truncate(5000)
    assert len(read_regular(path, limit=5000)) == 5000
    with pytest.raises(DatasetFormatError, match=r"big.png: 5000 bytes, over the .* limit"):
        read_regular(path, limit=4999)


def test_enroll_skips_special_files_in_a_gallery(tmp_path):
    train = tmp_path / "train"
    rng = np.random.default_rng(0)
    for person in range(3):
        for i in range(30):
            pixels = (rng.integers(0, 40, (8, 8)) + 70 * person).astype(np.uint8)
            (train / f"p{person}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(train / f"p{person}" / f"{i}.png")
    run = tmp_path / "run"
    trained = convlens("train", "--data", train, "--task", "embed", "--embedding-size", 8,
                       *QUICK, "--run", run, timeout=180)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    gallery = tmp_path / "gallery"
    _png(gallery / "ann" / "1.png", 10)
    reasons = _special_files(gallery / "ann")
    os.makedirs(os.fsencode(gallery) + b"/b\xf8rn")  # a Latin-1 person folder: not UTF-8
    Image.new("L", (4, 4), 90).save(os.fsencode(gallery) + b"/b\xf8rn/1.png")
    result = convlens("enroll", run, gallery, "--out", tmp_path / "g.npz", "--no-detect",
                      "--json", timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["images"] == 2 and out["people"] == 2
    with np.load(tmp_path / "g.npz") as z:
        assert sorted(z["names"].tolist()) == ["ann", "b\\xf8rn"]
    skipped = {Path(row["file"]).name: row["error"] for row in out["skipped"]}
    assert set(skipped) == set(reasons)
    for name, why in reasons.items():
        assert why in skipped[name]


# ---- labels: non-negative class indices below MAX_CLASSES, checked where they are parsed ----


def _npz_with_label(path: Path, label: int, dtype) -> None:
    labels = np.zeros(10, dtype)
    labels[3] = label
    np.savez(path, train_images=np.zeros((10, 4, 4), np.uint8), train_labels=labels)


NPZ_LABELS = [(2**31 - 1, np.int32), (2**64 - 1, np.uint64), (2**63, np.uint64),
              (100_000, np.int64), (-1, np.int8)]  # fmt: skip


def test_huge_labels_are_one_line_errors_where_they_are_parsed(tmp_path):
    specs, expected = [], []
    for i, (label, dtype) in enumerate(NPZ_LABELS):
        path = tmp_path / f"labels{i}.npz"
        _npz_with_label(path, label, dtype)
        assert path.stat().st_size < 3000
        specs.append(path)
        what = f"a negative label ({label})" if label < 0 else f"label {label}"
        expected.append(f"{path}: train_labels holds {what}; class indices go from 0 to 99999")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 4, 4), np.uint8))
    labels = np.zeros(10, np.int32)
    labels[9] = 2**31 - 1
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    specs.append(tmp_path / "train")
    where = tmp_path / "train-labels-idx1-ubyte"
    expected.append(f"{where}: the file holds label 2147483647; class indices go from 0 to 99999")
    rows = ["path,labels"] + [f"{i}.png,l{i}" for i in range(12_000)]  # 12000 x 12000 labels
    (tmp_path / "many.csv").write_text("\n".join(rows) + "\n")
    specs.append(tmp_path / "many.csv")
    expected.append(f"{tmp_path / 'many.csv'}: 12000 rows x 12000 labels is over the "
                    "134217728-cell limit of a label table")  # fmt: skip
    assert in_child(LOAD, *specs) == [{"error": e} for e in expected]


# ---- EXIF orientation: measured and decoded as shown ----


def test_exif_rotated_photos_keep_their_shape(tmp_path):
    stored = np.zeros((20, 40), np.uint8)  # 40 wide, 20 tall as stored
    stored[:, 20:] = 255  # right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: 20 wide, 40 tall
    for cls in ("a", "b"):
        for i in range(3):
            (tmp_path / cls).mkdir(exist_ok=True)
            Image.fromarray(stored).save(tmp_path / cls / f"{i}.jpg", exif=exif, quality=95)
    ds = load_dataset(str(tmp_path), val_fraction=0.34)
    assert ds.image_size == (40, 20)  # (H, W) as shown
    shown = to_tensor(decode_image(tmp_path / "a" / "0.jpg"), channels=1)
    assert shown.shape == (1, 40, 20)
    assert shown[0, :15].float().mean() < 30 and shown[0, 25:].float().mean() > 225
    assert any(shown.equal(x) for x in (*ds.train.images, *ds.val.images))


def test_a_symlinked_cache_folder_is_not_followed(tmp_path, monkeypatch):
    for cls in ("a", "b"):
        for i in range(5):
            _png(tmp_path / "data" / cls / f"{i}.png", 40 * i)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    np.save(elsewhere / "keep.npy", np.arange(3))  # the cache deletes *.npy it did not write
    (tmp_path / "data" / ".convlens-cache").symlink_to(elsewhere)
    old = time.time() - 60  # older than the racy window: the cache is written
    for path in (tmp_path / "data").rglob("*.png"):
        os.utime(path, (old, old))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    load_dataset(str(tmp_path / "data"))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.npy"]
    assert list((tmp_path / "home-cache" / "convlens" / "folders").glob("*/manifest.json"))
