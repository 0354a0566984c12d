"""Decode an image file and make it a uint8 (C, H, W) tensor: shared by training and predict.

Images with more than 8 bits become 8 bits here, the same way for training and predict:
16-bit (and 32-bit integer) PNG/TIFF files are mapped linearly from their own min..max to
0..255 (a 12-bit X-ray stored in 16 bits keeps its contrast; absolute levels are not kept), and
DICOM files are rescaled and windowed as convlens.data.dicom describes.
"""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from convlens.data.dicom import dicom_image
from convlens.data.files import read_regular
from convlens.data.levels import minmax_uint8
from convlens.errors import DatasetFormatError

MAX_PIXELS = 64_000_000  # refuse images over 64 megapixels: decompression bombs
_OPEN_LOCK = threading.Lock()  # warnings.catch_warnings is process-wide; opening is cheap
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})


def decode_image(
    source: str | Path | bytes, *, name: str | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Open and fully decode an image, or raise DatasetFormatError naming the file and reason."""
    img = open_image(source, name=name, max_pixels=max_pixels)
    name = name or _name(source)
    try:
        img.load()  # decode now, so truncated or corrupt files fail here
        return ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
    except Exception as e:  # untrusted bytes: decoders raise OSError, SyntaxError, ValueError...
        raise DatasetFormatError(f"{name}: corrupt or truncated image ({e})") from None


def open_image(
    source: str | Path | bytes, *, name: str | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Read an image's header only (size and mode), refusing empty files and decompression bombs."""
    name = name or _name(source)
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    data = source if isinstance(source, bytes) else read_regular(source, name=name)
    if not data:
        raise DatasetFormatError(f"{name}: empty file (0 bytes)")
    if data[128:132] == b"DICM":  # DICOM: pydicom decodes and windows it to 8 bits
        return dicom_image(data, name, max_pixels=limit)  # its header is checked first
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise DatasetFormatError(f"{name}: image too large to open safely ({e})") from None
    except Image.UnidentifiedImageError:
        raise DatasetFormatError(f"{name}: not an image format PIL can read") from None
    except Exception as e:
        raise DatasetFormatError(f"{name}: unreadable image header ({e})") from None
    w, h = img.size
    if w * h > limit:
        raise DatasetFormatError(
            f"{name}: image is {w}x{h} pixels, over the {limit / 10**6:g}-megapixel limit"
        )
    return img


def shown_size(img: Image.Image, name: str = "<image>") -> tuple[int, int]:
    """(width, height) as shown, from the header: EXIF orientations 5-8 turn the photo 90 degrees.

    decode_image applies the same tag (ImageOps.exif_transpose), so both agree on the size.
    """
    if img.format == "PNG" and "exif" not in img.info:
        return img.size  # PIL would decode the whole PNG to look for an eXIf after the pixels
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as e:  # untrusted bytes: a broken EXIF block raises many kinds
        raise DatasetFormatError(f"{name}: unreadable EXIF data ({e})") from None
    return (img.height, img.width) if orientation in (5, 6, 7, 8) else img.size


def to_tensor(
    img: Image.Image, *, channels: int, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """uint8 (C, H, W), `channels` 1 (L) or 3 (RGB), resized (antialiased bilinear) to (H, W)."""
    img = to_mode(img, channels)
    if size is not None and (img.height, img.width) != tuple(size):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # PIL antialiases
    x = torch.from_numpy(np.array(img, dtype=np.uint8))  # (H, W) or (H, W, 3)
    return x[None] if channels == 1 else x.permute(2, 0, 1).contiguous()


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """`img` as 8-bit L (`channels` 1) or RGB (3): 16-bit, float and palette modes first."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mode = "L" if channels == 1 else "RGB"
    try:
        return _to_8bit(img).convert(mode)
    except ValueError as e:  # a few exotic modes (La, ...) have no conversion
        raise DatasetFormatError(
            f"cannot convert an image of mode {img.mode} to {mode}: {e}"
        ) from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """Bring 16/32-bit and float modes into 8 bits, and palettes to RGBA, before any convert()."""
    if img.mode.startswith("I"):  # I;16, I;16B, I (16-bit PNG/TIFF): per-image min..max
        return Image.fromarray(minmax_uint8(np.asarray(img).astype(np.float64)), "L")
    if img.mode == "F":  # float: assumed 0..255, as PIL's own convert does
        return Image.fromarray(np.asarray(img).clip(0, 255).round().astype(np.uint8), "L")
    if img.mode in ("P", "PA"):  # palette: via RGBA so transparency is handled without a warning
        return img.convert("RGBA")
    if img.mode == "LAB":  # PIL converts LAB to RGB only
        return img.convert("RGB")
    return img


def is_colour(img: Image.Image) -> bool:
    """Whether an image's mode carries colour (palettes count as colour)."""
    return img.mode in COLOUR_MODES


def _name(source: str | Path | bytes) -> str:
    return "<bytes>" if isinstance(source, bytes) else str(source)
