"""Photo files to a Preprocess's uint8 (C, H, W) faster than PIL where the file is a JPEG.

torchvision.io.decode_jpeg (libjpeg-turbo into a tensor, EXIF-rotated) took 1.28 ms against
PIL's 2.63 ms per scenes JPEG at 148 px storage (BENCHMARKS.md, photo pipeline); a JPEG at
least DRAFT_FACTOR times the resize side is decoded by PIL's draft mode instead, which scales
the DCT by 1/4 or 1/8 and so decodes a sixteenth of the pixels or fewer. Everything else (PNG,
CMYK, 16-bit, DICOM, a file either decoder refuses) gives None: the caller takes PIL's path,
which names the reason a bad file is skipped.
"""

from __future__ import annotations

import math
import warnings

import torch
from PIL import Image

from convlens.data.images import open_image, shown_size
from convlens.data.preprocess import Preprocess, check_photo

DECODERS = ("auto", "torchvision", "pil")  # auto: draft for big JPEGs, else torchvision
# At 1/2 DCT scaling PIL's draft (1.89 ms) was slower than decode_jpeg (1.28 ms) on the scenes
# set; 1/4 decodes a sixteenth of the pixels. Not timed here: photo_pipeline.py --decoders is.
DRAFT_FACTOR = 4
JPEG_MODES = ("L", "RGB")  # what libjpeg gives as is; CMYK and the rest take PIL's path
# torchvision 0.29 warns on every call that its image I/O moves to TorchCodec
_DEPRECATED = "The image decoding and encoding capabilities of TorchVision are deprecated"


def fast_photo(
    data: bytes, name: str, prep: Preprocess, decoder: str = "auto"
) -> torch.Tensor | None:
    """`prep` applied to the JPEG bytes `data` (file `name`) without PIL's full decode, or None.

    The header is PIL's (open_image: empty files and decompression bombs refused; shown_size:
    the EXIF turn), and check_photo runs on it, so a tiny or sliver JPEG fails as on PIL's path.
    """
    if prep.legacy or decoder == "pil":
        return None
    img = open_image(data, name=name)
    if img.format != "JPEG" or img.mode not in JPEG_MODES:
        return None
    check_photo(*shown_size(img, name), name)
    if decoder == "auto" and min(img.size) >= DRAFT_FACTOR * prep.resize:
        return _drafted(img, prep)
    return _decoded(data, img, prep)


def _decoded(data: bytes, img: Image.Image, prep: Preprocess) -> torch.Tensor | None:
    """torchvision.io.decode_jpeg, then the tensor resize and crop (None where it refuses)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mode = ImageReadMode.GRAY if prep.channels == 1 else ImageReadMode.RGB
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _DEPRECATED)
            x = decode_jpeg(encoded, mode=mode, apply_exif_orientation=True)  # (C, H, W) uint8
    except RuntimeError:  # truncated or corrupt: PIL's path says which
        return None
    w, h = shown_size(img)
    if tuple(x.shape) != (prep.channels, h, w):  # another header than PIL's: trust neither
        return None
    mode = InterpolationMode(prep.interpolation)
    x = F.resize(x, [prep.resize], interpolation=mode, antialias=prep.antialias)
    return F.center_crop(x, list(prep.size)).contiguous()


def _drafted(img: Image.Image, prep: Preprocess) -> torch.Tensor | None:
    """PIL's draft mode: the JPEG decoded at the smallest DCT scale still above the resize."""
    from PIL import ImageOps

    w, h = img.size
    scale = prep.resize / min(w, h)
    img.draft(img.mode, (math.ceil(w * scale), math.ceil(h * scale)))
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Exception:  # untrusted bytes: PIL's own path decodes again and names the reason
        return None
    return prep.apply(img)
