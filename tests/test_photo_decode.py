"""Fast JPEG decoding for stored photos (data/jpeg.py): torchvision.io.decode_jpeg and PIL's draft
mode give PIL's pixels within decoder tolerance, turned as EXIF says; whatever they do not take
goes PIL's way, and bad files keep their one-line reasons."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from convlens.data.jpeg import DRAFT_FACTOR, fast_photo
from convlens.data.preprocess import Preprocess
from convlens.data.stream import load_stored, open_split
from convlens.errors import DatasetFormatError
from tests.test_data_photo import age, photo


def jpeg(img: Image.Image, orientation: int = 1, **kw) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes(), **kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("channels", [1, 3])
def test_decode_jpeg_gives_pils_pixels_turned_as_exif_says(tmp_path, orientation, channels):
    path = write(tmp_path / "a.jpg", jpeg(photo(150, 230, seed=orientation), orientation))
    data = Path(path).read_bytes()
    prep = Preprocess.photo(64, channels)  # shorter side 72, crop 64
    fast = fast_photo(data, path, prep, "torchvision")
    pil = load_stored(path, prep, "pil")
    assert fast is not None and fast.shape == pil.shape == (channels, 64, 64)
    assert gap(fast, pil) < 1.0  # libjpeg's colour conversion and the tensor resize's rounding
    assert torch.equal(load_stored(path, prep), fast)  # the default takes it
    unturned = load_stored(write(tmp_path / "b.jpg", jpeg(photo(150, 230, seed=orientation))),
                           prep, "pil")  # fmt: skip
    if orientation != 1:  # the check can fail: a wrong turn is far off
        assert gap(fast, unturned) > 10


def test_a_big_jpeg_is_drafted_at_a_dct_scale_still_above_the_resize(tmp_path):
    prep = Preprocess.photo(32, 3)  # resize 36: a 144 px shorter side is 4x
    side = DRAFT_FACTOR * prep.resize
    path = write(tmp_path / "big.jpg", jpeg(photo(side, side * 3 // 2, seed=3), orientation=6))
    data = Path(path).read_bytes()
    drafted, decoded = fast_photo(data, path, prep), fast_photo(data, path, prep, "torchvision")
    pil = load_stored(path, prep, "pil")
    assert drafted.shape == decoded.shape == pil.shape == (3, 32, 32)
    assert gap(decoded, pil) < 1.0 and gap(drafted, pil) < 3.0
    assert not torch.equal(drafted, decoded)  # the draft path was the one taken
    small = Preprocess.photo(64, 3)  # resize 72: 144 px is only 2x, decode_jpeg takes it
    assert torch.equal(fast_photo(data, path, small), fast_photo(data, path, small, "torchvision"))


def test_what_decode_jpeg_does_not_take_goes_pils_way_with_its_reasons(tmp_path):
    prep = Preprocess.photo(64, 3)
    good = jpeg(photo(120, 160))
    cases = {
        "cmyk.jpg": jpeg(photo(120, 160).convert("CMYK")),
        "truncated.jpg": good[: len(good) // 2],
        "tiny.jpg": jpeg(photo(1, 1)),
        "sliver.jpg": jpeg(photo(20, 400)),
    }
    png = io.BytesIO()
    photo(120, 160).save(png, "PNG")
    cases["photo.png"] = png.getvalue()
    paths = {name: write(tmp_path / name, data) for name, data in cases.items()}
    for name in ("cmyk.jpg", "truncated.jpg", "photo.png"):
        assert fast_photo(cases[name], paths[name], prep) is None, name
    assert load_stored(paths["cmyk.jpg"], prep).shape == (3, 64, 64)  # PIL converts it
    assert load_stored(paths["photo.png"], prep).shape == (3, 64, 64)
    reasons = {"truncated.jpg": "corrupt or truncated image", "tiny.jpg": "too small",
               "sliver.jpg": "aspect 20:1"}  # fmt: skip
    for name, why in reasons.items():
        with pytest.raises(DatasetFormatError, match=why) as e:
            load_stored(paths[name], prep)
        assert str(e.value).startswith(f"{paths[name]}: ") and "\n" not in str(e.value)


def test_the_files_source_streams_fast_decoded_jpegs_and_skips_bad_ones(tmp_path):
    items = []
    for i in range(4):
        items.append((write(tmp_path / "c0" / f"{i}.jpg", jpeg(photo(100, 140, seed=i))), 0))
    cut = jpeg(photo(100, 140))
    items.append((write(tmp_path / "c0" / "cut.jpg", cut[: len(cut) // 2]), 0))
    age(tmp_path)
    prep = Preprocess.photo(48, 3)
    files = open_split(items, prep, root=tmp_path, source="decode").dataset
    ram = open_split(items, prep, root=tmp_path, source="ram", max_bad=1.0)
    assert [Path(p).name for p, _ in ram.bad] == ["cut.jpg"]
    for i in range(4):  # the RAM source decodes through the same function
        assert torch.equal(files[i][0], ram.dataset[i][0])
        assert files[i][0].shape == (3, 56, 56)  # storage size: crops have room
    with pytest.raises(DatasetFormatError, match="cut.jpg: corrupt or truncated"):
        files[4]
