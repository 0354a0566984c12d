"""Medical formats: DICOM written here with pydicom (MONOCHROME1/2, rescale, window, 16-bit),
16-bit PNG and TIFF, MedMNIST NPZ flavours with wrong keys and shapes, MedMNIST score files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sklearn.metrics import roc_auc_score

from convlens.data import load_dataset
from convlens.data.images import decode_image, to_tensor
from convlens.errors import DatasetFormatError
from convlens.evaluation.medmnist import auc_acc, flag_of, read_scores, write_scores


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **elements) -> None:
    """A minimal single-frame DICOM file of 16-bit grey `pixels` (uint16 or int16)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        SecondaryCaptureImageStorage,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(pixels.dtype == np.int16)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def grey(path) -> list[int]:
    """The first row of a file as convlens decodes it, uint8 values."""
    return to_tensor(decode_image(path), channels=1)[0, 0].tolist()


CT = np.array([[0, 864, 1064, 1264, 1100]], np.uint16)  # stored; HU = stored - 1024


def test_dicom_rescale_then_window(tmp_path):
    # HU -1024, -160, 40, 240, 76 in a window 40 +- 200: below -> 0, centre -> 128, above -> 255
    write_dicom(tmp_path / "ct.dcm", CT, RescaleSlope=1, RescaleIntercept=-1024,
                WindowCenter=40, WindowWidth=400)  # fmt: skip
    assert grey(tmp_path / "ct.dcm") == [0, 0, 128, 255, 151]  # 76 HU: (76-39.5)/399+.5 -> .59


def test_dicom_without_window_uses_min_max_and_monochrome1_is_inverted(tmp_path):
    pixels = np.array([[1000, 2000, 3000, 4000]], np.uint16)  # 12-bit values in 16 bits
    write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2")
    write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1")
    assert grey(tmp_path / "m2.dcm") == [0, 85, 170, 255]
    assert grey(tmp_path / "m1.dcm") == [255, 170, 85, 0]  # high values shown dark


def test_signed_dicom_with_slope(tmp_path):
    pixels = np.array([[-100, 0, 100, 300]], np.int16)
    write_dicom(tmp_path / "s.dcm", pixels, RescaleSlope=2, RescaleIntercept=10,
                WindowCenter="210", WindowWidth=["401", "800"])  # fmt: skip
    # values -190, 10, 210, 610; the first window 210 +- 200.5 -> 0, 0, 128, 255
    assert grey(tmp_path / "s.dcm") == [0, 0, 128, 255]


def test_corrupt_and_multiframe_dicom_are_named_errors(tmp_path):
    good = tmp_path / "good.dcm"
    write_dicom(good, CT)
    (tmp_path / "cut.dcm").write_bytes(good.read_bytes()[:200])
    with pytest.raises(DatasetFormatError, match="cut.dcm: unreadable DICOM"):
        decode_image(tmp_path / "cut.dcm")
    write_dicom(tmp_path / "frames.dcm", np.zeros((2, 4, 4), np.uint16).reshape(8, 4),
                NumberOfFrames=2, Rows=4)  # fmt: skip
    with pytest.raises(DatasetFormatError, match="frames.dcm: multi-frame DICOM"):
        decode_image(tmp_path / "frames.dcm")


def test_folder_of_dicom_files_loads(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for cls, level in (("normal", 1000), ("nodule", 3000)):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = (rng.integers(0, 500, (12, 12)) + level).astype(np.uint16)
                pixels[0, 0] = 0  # a fixed black corner: min-max keeps the level visible
                write_dicom(tmp_path / split / cls / f"{i}.dcm", pixels, RescaleSlope=1,
                            RescaleIntercept=0, WindowCenter=2000, WindowWidth=4000)  # fmt: skip
    ds = load_dataset(str(tmp_path), val_fraction=0.34)
    assert ds.classes == ["nodule", "normal"] and ds.image_size == (12, 12) and ds.channels == 1
    assert len(ds.train) + len(ds.val) == 12 and len(ds.test) == 4
    bright = ds.test.images[ds.test.labels == 0].float().mean()
    dark = ds.test.images[ds.test.labels == 1].float().mean()
    assert bright > 150 > 100 > dark  # 3000-3500 vs 1000-1500 in the window 0..4000


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_are_stretched_min_to_max(tmp_path, suffix):
    pixels = np.array([[1000, 2000, 2500, 4000]], np.uint16)
    Image.fromarray(pixels).save(tmp_path / f"x{suffix}")
    with Image.open(tmp_path / f"x{suffix}") as img:
        assert img.mode.startswith("I")  # really 16 bits on disk
    assert grey(tmp_path / f"x{suffix}") == [0, 85, 128, 255]
    Image.fromarray(np.full((2, 2), 777, np.uint16)).save(tmp_path / f"flat{suffix}")
    assert grey(tmp_path / f"flat{suffix}") == [0, 0]


def _medmnist(size: int, rgb: bool, labels_cols: int = 1, n=(30, 10, 10)) -> dict:
    rng = np.random.default_rng(size)
    shape = (size, size, 3) if rgb else (size, size)
    out = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        out[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        if labels_cols == 1:
            out[f"{split}_labels"] = (np.arange(count) % 2).reshape(-1, 1).astype(np.uint8)
        else:
            out[f"{split}_labels"] = (rng.random((count, labels_cols)) < 0.3).astype(np.uint8)
    return out


@pytest.mark.parametrize("size", [28, 64, 128, 224])
@pytest.mark.parametrize("rgb", [False, True])
def test_every_2d_medmnist_flavour_loads(tmp_path, size, rgb):
    arrays = _medmnist(size, rgb)
    np.savez_compressed(tmp_path / f"pathmnist_{size}.npz", **arrays)
    ds = load_dataset(str(tmp_path / f"pathmnist_{size}.npz"))
    assert ds.train.images.shape == (30, 3 if rgb else 1, size, size)
    assert ds.train.labels.tolist() == arrays["train_labels"][:, 0].tolist()
    assert not ds.multilabel


def test_chestmnist_layout_is_multilabel(tmp_path):
    arrays = _medmnist(28, False, labels_cols=14)
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    ds = load_dataset(str(tmp_path / "chestmnist.npz"))
    assert ds.multilabel and ds.classes == [str(i) for i in range(14)]
    assert ds.test.labels.shape == (10, 14) and ds.test.labels.dtype.is_floating_point
    np.testing.assert_array_equal(ds.val.labels.numpy(), arrays["val_labels"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a.update(train_imgs=a.pop("train_images")), r"missing key 'train_images' \("
         r"the file has test_images, test_labels, train_imgs"),
        (lambda a: a.update(val_images=a["val_images"][..., None].repeat(4, -1)),
         r"val_images must be \(N, H, W\) or \(N, H, W, 3\), got \(10, 28, 28, 4\)"),
        (lambda a: a.update(test_labels=np.full((10, 14), 2)), "must hold only 0 and 1"),
        (lambda a: a.update(test_labels=np.zeros((10, 5), int)), "disagree on label columns"),
    ],
)  # fmt: skip
def test_wrong_keys_and_shapes_are_clear_errors(tmp_path, change, match):
    arrays = _medmnist(28, False, labels_cols=14)
    change(arrays)
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    with pytest.raises(DatasetFormatError, match=match) as e:
        load_dataset(str(tmp_path / "chestmnist.npz"))
    assert str(tmp_path / "chestmnist.npz") in str(e.value)


def test_score_file_name_and_contents_follow_medmnist(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    p1 = np.clip(y * 0.6 + rng.random(50) * 0.5, 0, 1)
    scores = np.stack([1 - p1, p1], 1)  # (N, 2) softmax-like, as for PneumoniaMNIST
    path = write_scores(tmp_path, "data/pneumoniamnist_64.npz", "test", "run3", y, scores)
    auc, acc = roc_auc_score(y, p1), ((p1 > 0.5) == y).mean()
    assert path.name == f"pneumoniamnist_64_test_[AUC]{auc:.3f}_[ACC]{acc:.3f}@run3.csv"
    assert path.read_text().splitlines()[0].startswith("0,")  # index, then one score per class
    fields, back = read_scores(path)
    assert (fields["flag"], fields["size"], fields["run"]) == ("pneumoniamnist", "_64", "run3")
    np.testing.assert_allclose(back, scores)
    assert flag_of("x/breastmnist.npz") == ("breastmnist", "")
    # multi-class: MedMNIST averages one-vs-rest AUCs and takes the argmax for ACC
    y3 = rng.integers(0, 3, 60)
    s3 = rng.dirichlet([1, 1, 1], 60)
    auc3, acc3 = auc_acc(y3, s3)
    assert auc3 == pytest.approx(np.mean([roc_auc_score(y3 == k, s3[:, k]) for k in range(3)]))
    assert acc3 == pytest.approx((s3.argmax(1) == y3).mean())


def test_two_class_npz_run_writes_a_score_file_beside_its_detection_metrics(tmp_path):
    import json

    from convlens.medical.synthetic import lesion_images
    from tests.helpers import convlens

    arrays = {}
    for i, (split, n) in enumerate((("train", 200), ("val", 60), ("test", 60))):
        images, labels = lesion_images(n, size=28, seed=20 + i)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.astype(np.uint8)[:, None]  # (N, 1): 1 = lesion
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    out = convlens("train", "--data", tmp_path / "pneumoniamnist.npz", "--model", "fastnet",
                   "--model-arg", "widths=[8,16,16]", "--epochs", 1, "--batch-size", 32,
                   "--threads", 1, "--run", tmp_path / "run")  # fmt: skip
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["detection"]["positive_class"] == "1"  # unnamed classes: class 1 is positive
    (score_file,) = (tmp_path / "run" / "medmnist").glob("*.csv")
    fields, scores = read_scores(score_file)
    assert (fields["flag"], fields["split"]) == ("pneumoniamnist", "test")
    assert scores.shape == (60, 2)
    y = arrays["test_labels"][:, 0]
    assert fields["auc"] == pytest.approx(roc_auc_score(y, scores[:, 1]), abs=5e-4)
    assert fields["auc"] == pytest.approx(metrics["detection"]["roc_auc"]["value"], abs=5e-4)
