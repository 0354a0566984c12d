"""Aspect-true preprocessing: resize the shorter side, centre-crop to the model's input size.

torchvision's classification presets are the model (`weights.transforms()`, i.e.
`torchvision.transforms._presets.ImageClassification`): resize the shorter side to 256 with
antialiased bilinear, centre-crop 224; `apply` gives the same uint8 pixels as the preset given
the same PIL image, before its float conversion and normalisation. Small images (<= 64 px) keep
the old path bit for bit: `resize=None` squashes the whole image to the input size with
`images.to_tensor`. A `Preprocess` is saved in the weights' metadata (`to_dict` / `from_dict`)
so evaluation, predict, serve, ONNX and the NumPy engine all cut images the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from PIL import ExifTags, Image, ImageOps

from convlens.data.images import to_mode, to_tensor
from convlens.errors import ConfigError, ConvlensError, DatasetFormatError
from convlens.runs.checks import MAX_SIDE
from convlens.runs.meta import PreprocessSpec, WeightsMeta

if TYPE_CHECKING:
    import torch

SMALL_SIDE = 64  # images up to this side keep the old squash-to-size path (28x28, 8x8, 64x64)
GPU_SIDE = 224  # pretrained weights and GPU runs: torchvision's and timm's default input
# A CPU from scratch: fastnet trains 180/85/64/50/31/14 images/s at 64/96/112/128/160/224 px
# on this 2-core Xeon (no AMX; bf16 autocast, batch 32, best of 3, a fairly quiet machine;
# benchmarks/photo_pipeline.py --sizes). 96 px trains 1.7x the images of 128 and 6x those of
# 224 in the same time, and a subject filling half the frame still spans ~48 px (a
# Fashion-MNIST item has 28).
CPU_SIDE = 96
MIN_PHOTO_SIDE = 16  # a photo's shorter side under this is an icon or a broken file, not a photo
MAX_ASPECT = 10.0  # longer / shorter side: a 20000x100 strip centre-cropped shows 0.5 % of it
CROP_RATIO = 256 / 224  # resize side / model side in torchvision's presets (crop_pct 0.875)


@dataclass(frozen=True)
class Preprocess(PreprocessSpec):
    """How one decoded image becomes the model's uint8 (C, H, W) input (fields: PreprocessSpec)."""

    @classmethod
    def of(cls, meta: WeightsMeta) -> Preprocess:
        """A trained model's own: its metadata's, else (older files) squashed to its input."""
        if meta.preprocess is None:
            return cls(meta.input.size, meta.input.channels)
        return cls(**{**meta.preprocess.to_dict(), "size": meta.preprocess.size})

    @classmethod
    def photo(cls, side: int, channels: int, **kwargs: Any) -> Preprocess:
        """Square `side` input from a shorter side of `storage_size(side)` (256 for 224)."""
        return cls((side, side), channels, resize=storage_size(side), **kwargs)

    @property
    def legacy(self) -> bool:
        """Whether this is the old squash-to-size path (small images)."""
        return self.resize is None

    def apply(self, image: Image.Image) -> torch.Tensor:
        """uint8 (C, H, W) model input from a PIL image (EXIF-rotated first if it still says so)."""
        image = upright(image)
        if self.resize is None:
            return to_tensor(image, channels=self.channels, size=self.size)
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        mode = InterpolationMode(self.interpolation)
        crop = list(self.size)
        img = to_mode(image, self.channels)
        if self.antialias:  # on a PIL image, as the presets given one: PIL always antialiases
            img = F.center_crop(F.resize(img, [self.resize], interpolation=mode), crop)
            return F.pil_to_tensor(img).contiguous()
        x = F.pil_to_tensor(img)  # (C, H, W) uint8
        x = F.resize(x, [self.resize], interpolation=mode, antialias=False)
        return F.center_crop(x, crop).contiguous()


def storage_size(side: int) -> int:
    """The side decoded training images are kept at, so random crops have room: 256 for 224.

    About side x 256/224, rounded so that the margin is a multiple of 4 px: centre-cropping
    `side` from a stored image then gives exactly `Preprocess.photo(side, c).apply` (torchvision
    rounds half crop offsets to even; an even half-margin keeps that rounding the same).
    """
    return side + 4 * round(side * (CROP_RATIO - 1) / 4)


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation says (decode_image has done it already)."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as e:  # untrusted bytes: a broken EXIF block raises many kinds
        raise DatasetFormatError(f"unreadable EXIF data ({e})") from None
    return image if orientation in (1, None) else ImageOps.exif_transpose(image)


def check_photo(width: int, height: int, name: str) -> None:
    """DatasetFormatError naming `name` unless a width x height image can be a photo input."""
    short, long = sorted((width, height))
    if short < MIN_PHOTO_SIDE:
        raise DatasetFormatError(
            f"{name}: {width}x{height} pixels, too small for a photo input (shorter side under "
            f"{MIN_PHOTO_SIDE} px)"
        )
    if long > MAX_ASPECT * short:
        raise DatasetFormatError(
            f"{name}: {width}x{height} pixels, aspect {long / short:.0f}:1 is over "
            f"{MAX_ASPECT:g}:1 (a centre crop would show a sliver of it)"
        )


class BackboneInput(NamedTuple):
    """The input a pretrained backbone's weights were trained on (models/pretrained.py's
    BackboneDefaults): a photo run without --image-size takes it."""

    side: int  # the square centre crop, px
    resize: int | None  # the shorter side before the crop (None: storage_size(side))
    interpolation: str  # torchvision InterpolationMode name
    source: str  # whose weights, for the log: "torchvision ResNet18_Weights.IMAGENET1K_V1"


class InputSize(NamedTuple):
    """The model input chosen for a set of images, and why (one line to print)."""

    size: tuple[int, int]  # (H, W)
    photo: bool  # aspect-true resize and crop (Preprocess.photo); False: the small-image path
    reason: str
    resize: int | None = None  # photo: the shorter side before the crop (None: storage_size)
    interpolation: str = "bilinear"  # photo: torchvision InterpolationMode name

    def preprocess(self, channels: int) -> Preprocess:
        """The Preprocess this choice means for images of `channels`."""
        if not self.photo:
            return Preprocess(self.size, channels)
        if self.resize is None:
            return Preprocess.photo(self.size[0], channels, interpolation=self.interpolation)
        return Preprocess(self.size, channels, self.resize, self.interpolation)


def choose_input_size(
    shapes: list[tuple[int, int]],
    *,
    image_size: int | None = None,
    device: str = "cpu",
    pretrained: bool = False,
    backbone: BackboneInput | None = None,
) -> InputSize:
    """The input size for images of `shapes` (H, W): small ones kept, photos by device and model.

    Images whose (median) size is at most SMALL_SIDE keep the old path: the one size they share,
    else the median height x width, squashed (data/folder.py's rule below its 64 px cap).
    Photos get GPU_SIDE for pretrained weights or a GPU run, else CPU_SIDE, never more than
    their median shorter side (rounded down to 8 px) unless the weights are pretrained.
    `image_size` (--image-size) wins; the images decide small path or photo path, but an
    `image_size` above SMALL_SIDE always takes the photo path (the user asked for a big input).
    Photos without `image_size` for a pretrained `backbone` take its crop, resize and
    interpolation (torchvision's or timm's preset for those weights).
    """
    if not shapes:
        raise ConvlensError("no readable images to choose an input size from")
    import numpy as np

    if len(set(shapes)) == 1:
        h, w = shapes[0]
        seen = f"images of {h}x{w}"
    else:
        h, w = np.median(np.array(shapes), axis=0).round().astype(int).tolist()
        seen = f"images of {len(set(shapes))} sizes (median {h}x{w})"
    small = max(h, w) <= SMALL_SIDE and (image_size is None or image_size <= SMALL_SIDE)
    if image_size is not None:
        if not isinstance(image_size, int) or not 1 <= image_size <= MAX_SIDE:
            raise ConfigError(f"image_size must be a whole number of pixels 1-{MAX_SIDE}")
        how = "squashed to it (small images)" if small else "shorter side resized, centre-cropped"
        reason = f"{seen}: --image-size {image_size}, {how}"
        return InputSize((image_size, image_size), not small, reason)
    if small:
        reason = f"{seen}: kept at {h}x{w} (small images, squashed as before)"
        return InputSize((h, w), False, reason)
    if backbone is not None:
        resize = backbone.resize or storage_size(backbone.side)
        reason = (
            f"{seen}: {backbone.side}x{backbone.side} as {backbone.source} expects, shorter side "
            f"resized to {resize} ({backbone.interpolation}) and centre-cropped "
            "(--image-size chooses)"
        )
        side = (backbone.side, backbone.side)
        return InputSize(side, True, reason, resize, backbone.interpolation)
    short = int(np.median([min(s) for s in shapes]))
    gpu = not str(device).startswith("cpu")
    if pretrained:
        side, why = GPU_SIDE, "pretrained weights"
    else:
        side, why = (GPU_SIDE, f"a {device} run") if gpu else (CPU_SIDE, "a CPU run from scratch")
        if short < side:
            side, why = max(8, short // 8 * 8), f"{why}, not above the median shorter side {short}"
    reason = (
        f"{seen}: {side}x{side} for {why}, shorter side resized and centre-cropped "
        "(--image-size chooses)"
    )
    return InputSize((side, side), True, reason)
