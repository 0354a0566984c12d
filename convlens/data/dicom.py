"""Read a DICOM image with pydicom and bring it to 8 bits the way a viewer shows it.

Normalisation, in order (DICOM PS3.3 C.11.2.1.2): stored values times RescaleSlope plus
RescaleIntercept (e.g. CT Hounsfield units); then the first WindowCenter/WindowWidth pair mapped
linearly to 0..255 (clipped), or, when the file has no window, the image's own min..max; then
MONOCHROME1 images (where high values are dark) are inverted so that bright means dense for every
file. 8-bit RGB files are kept as they are. Multi-frame files are refused.

Decompression bombs: Rows x Columns x frames x samples from the header is checked against the
pixel limit before anything is decoded, and a deflated file (whose whole dataset is one deflate
stream) is inflated only as far as its header's pixels need.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from convlens.data.levels import minmax_uint8, window_uint8
from convlens.errors import DatasetFormatError

GREY = ("MONOCHROME1", "MONOCHROME2")
PIXEL_TAGS = (0x7FE00010, 0x7FE00009, 0x7FE00008)  # (7FE0,0010) Pixel Data, its float kinds
PIXEL_TAG_BYTES = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x09\x00", b"\xe0\x7f\x08\x00")  # LE
HEADER_BYTES = 8 << 20  # a deflated file's elements before its pixels, inflated: at most 8 MiB
SLACK_BYTES = 1 << 20  # room for elements after the pixel data (padding, signatures)
RLE_MAX_RATIO = 64  # PackBits at best: 2 bytes -> 128 (PS3.5 G.3.1)


def is_dicom(data: bytes) -> bool:
    """Whether `data` is a DICOM Part 10 file (128-byte preamble, then "DICM")."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def dicom_image(data: bytes, name: str, *, max_pixels: int) -> Image.Image:
    """A PIL image (L or RGB, 8 bits) of a DICOM file's pixels, normalised as described above."""
    return Image.fromarray(dicom_pixels(data, name, max_pixels=max_pixels))


def dicom_pixels(data: bytes, name: str, *, max_pixels: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) pixels of a DICOM file, or DatasetFormatError naming the file."""
    try:
        return _to_8bit(read_dicom(data, name, max_pixels), name)
    except DatasetFormatError:
        raise
    except Exception as e:  # untrusted bytes: pydicom raises many kinds
        raise DatasetFormatError(f"{name}: unreadable DICOM ({e})") from None


def _to_8bit(ds, name: str) -> np.ndarray:
    """A dataset's pixels decoded and normalised as described above."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DatasetFormatError(f"{name}: multi-frame DICOM ({frames} frames) not supported")
    pixels = ds.pixel_array  # (H, W) or (H, W, 3), the stored values
    shape = (int(ds.Rows), int(ds.Columns))
    if pixels.shape not in (shape, (*shape, 3)):  # pydicom returns extra data as more frames
        raise DatasetFormatError(
            f"{name}: DICOM pixel data of shape {pixels.shape} for {shape[0]}x{shape[1]} pixels"
        )
    kind = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3:
        if pixels.dtype != np.uint8:
            raise DatasetFormatError(f"{name}: colour DICOM with {pixels.dtype} samples")
        return np.ascontiguousarray(pixels)
    if kind not in GREY:
        raise DatasetFormatError(f"{name}: photometric interpretation {kind} not supported")
    values = pixels.astype(np.float32)  # float32, not 64: half the memory of a 64-MP image
    values *= _number(ds.get("RescaleSlope"), 1.0) or 1.0
    values += _number(ds.get("RescaleIntercept"), 0.0)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    has_window = center is not None and width is not None and width > 1
    out = window_uint8(values, center, width) if has_window else minmax_uint8(values)
    return 255 - out if kind == "MONOCHROME1" else out


def read_dicom(data: bytes, name: str, max_pixels: int):
    """The pydicom dataset of a file whose header declares at most `max_pixels` pixels.

    The header is read and checked before any pixel is decoded; a deflated file is inflated
    here, never further than its header declares (pydicom would inflate all of it first).
    """
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_preamble  # what dcmread uses
    from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

    fp = DicomBytesIO(data)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    syntax = meta.get("TransferSyntaxUID")
    if syntax == DeflatedExplicitVRLittleEndian:
        return _inflated(data[fp.tell() :], meta, name, max_pixels)
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    need = check_pixel_count(header, name, max_pixels)
    if syntax == RLELossless and need > RLE_MAX_RATIO * len(data):
        raise DatasetFormatError(
            f"{name}: {len(data)} bytes of RLE cannot expand to the {need} bytes of pixels "
            f"its header declares"
        )
    return pydicom.dcmread(io.BytesIO(data))


def _inflated(stream: bytes, meta, name: str, max_pixels: int):
    """The dataset of a Deflated Explicit VR file: its header, checked, then what it declares."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    inflate = zlib.decompressobj(-zlib.MAX_WBITS)  # PS3.5 A.5: raw deflate after the meta group
    head = inflate.decompress(stream, HEADER_BYTES)
    fp = DicomBytesIO(head)
    header = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag in PIXEL_TAGS)
    at = fp.tell()  # where the pixel data element starts, or the end of `head`
    if not (inflate.eof or head[at : at + 4] in PIXEL_TAG_BYTES):
        raise DatasetFormatError(f"{name}: deflated DICOM header over {HEADER_BYTES >> 20} MiB")
    limit = at + check_pixel_count(header, name, max_pixels) + SLACK_BYTES
    body = head
    if len(body) <= limit and inflate.unconsumed_tail:
        body += inflate.decompress(inflate.unconsumed_tail, limit + 1 - len(body))
    if len(body) > limit:
        raise DatasetFormatError(
            f"{name}: deflated DICOM inflates to more than its header declares "
            f"({limit} bytes for {header.Rows}x{header.Columns} pixels)"
        )
    ds = read_dataset(DicomBytesIO(body), False, True)
    ds.file_meta = meta  # the pixels inside are native: pydicom decodes them as such
    return ds


def check_pixel_count(header, name: str, max_pixels: int) -> int:
    """The bytes of pixel data a header declares; DatasetFormatError over `max_pixels` pixels."""
    rows, cols = int(header.Rows), int(header.Columns)
    frames = max(int(header.get("NumberOfFrames", 1) or 1), 1)
    samples = max(int(header.get("SamplesPerPixel", 1) or 1), 1)
    bits = max(int(header.get("BitsAllocated", 8) or 8), 1)
    if rows * cols * frames * samples > max_pixels:
        raise DatasetFormatError(
            f"{name}: DICOM header says {rows}x{cols} pixels ({_count(frames, 'frame')}, "
            f"{_count(samples, 'sample')}), over the {max_pixels / 10**6:g}-megapixel limit"
        )
    return rows * cols * frames * samples * -(-bits // 8)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("s" if n != 1 else "")


def _number(value, default: float) -> float:
    """A DICOM decimal string as a float; `default` when absent or not a number."""
    try:
        return default if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return default


def _first(value) -> float | None:
    """The first value of a possibly multi-valued DICOM element, as a float."""
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None
