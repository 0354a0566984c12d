"""Read a DICOM image with pydicom and bring it to 8 bits the way a viewer shows it.

Normalisation, in order (DICOM PS3.3 C.11.2.1.2): stored values times RescaleSlope plus
RescaleIntercept (e.g. CT Hounsfield units); then the first WindowCenter/WindowWidth pair mapped
linearly to 0..255 (clipped), or, when the file has no window, the image's own min..max; then
MONOCHROME1 images (where high values are dark) are inverted so that bright means dense for every
file. 8-bit RGB files are kept as they are. Multi-frame files are refused.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from convlens.data.images import minmax_uint8
from convlens.errors import DatasetFormatError

GREY = ("MONOCHROME1", "MONOCHROME2")


def is_dicom(data: bytes) -> bool:
    """Whether `data` is a DICOM Part 10 file (128-byte preamble, then "DICM")."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def dicom_image(data: bytes, name: str) -> Image.Image:
    """A PIL image (L or RGB, 8 bits) of a DICOM file's pixels, normalised as described above."""
    return Image.fromarray(dicom_pixels(data, name))


def dicom_pixels(data: bytes, name: str) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) pixels of a DICOM file, or DatasetFormatError naming the file."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise DatasetFormatError(f"{name}: multi-frame DICOM ({frames} frames) not supported")
        pixels = ds.pixel_array  # (H, W) or (H, W, 3), the stored values
    except DatasetFormatError:
        raise
    except Exception as e:  # untrusted bytes: pydicom raises many kinds
        raise DatasetFormatError(f"{name}: unreadable DICOM ({e})") from None
    kind = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3:
        if pixels.dtype != np.uint8:
            raise DatasetFormatError(f"{name}: colour DICOM with {pixels.dtype} samples")
        return np.ascontiguousarray(pixels)
    if kind not in GREY:
        raise DatasetFormatError(f"{name}: photometric interpretation {kind} not supported")
    values = pixels * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0))
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    has_window = center is not None and width is not None and width > 1
    out = to_uint8(values, center, width) if has_window else minmax_uint8(values)
    return 255 - out if kind == "MONOCHROME1" else out


def to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The DICOM linear window: center - width/2 .. center + width/2 -> 0..255, clipped."""
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255  # PS3.3 C.11.2.1.2.1
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _first(value) -> float | None:
    """The first value of a possibly multi-valued DICOM element, as a float."""
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None
