"""Photo augmentation (--augment auto|light|photo|none): torchvision.transforms.v2 on uint8 tensors.

`train_transform` works on ONE uint8 (C, H, W) image, at storage size (stream.py) or any size
(a shard's decoded photo), and gives uint8 (C, size, size). The recipe is torchvision's
reference one (references/classification/presets.py): RandomResizedCrop, a flip, TrivialAugment
(or RandAugment), optional RandomErasing, mixup/cutmix in the collate step; colour jitter on
top. Grey images (X-rays, CT slices) get intensity and small affine changes and no colour.

Determinism: v2 transforms draw from torch's global CPU generator. `seeded(seed, epoch, index)`
runs one sample with that generator seeded from (seed, epoch, index) and restores it after, so
a sample draws the same augmentation in whichever DataLoader worker, with any number of
workers, and again in a resumed run; the caller's own random stream is left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from convlens.data.preprocess import SMALL_SIDE, storage_size
from convlens.errors import ConfigError

POLICIES = ("auto", "light", "photo", "none")
AUTO_AUGMENTS = ("trivial", "rand", "none")
SCALE = (0.25, 1.0)  # RandomResizedCrop area share; ImageNet's 0.08 suits 90 epochs of 1.28 M
GREY_SCALE = (0.6, 1.0)  # a crop of an X-ray must still hold the finding
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}
GREY_JITTER = {"brightness": 0.2, "contrast": 0.2}  # intensity only: no saturation or hue
GAMMA = (0.8, 1.25)  # grey: exposure curves of different scanners
AFFINE = {"degrees": 7, "translate": (0.04, 0.04), "scale": (0.95, 1.05)}  # grey, small
SHIFT = 2  # light: batches.py's translate, in pixels
STREAMS = {"sample": 0, "batch": 1, "order": 2}  # independent random streams per (seed, epoch)


@dataclass(frozen=True)
class AugmentPlan:
    """What --augment resolves to for a dataset, and a line saying why."""

    policy: str  # "light", "photo" or "none"; never "auto"
    grey: bool  # the photo policy's grey form: intensity and small affine changes, no colour
    reason: str

    @property
    def in_batches(self) -> bool:
        """Whether batches.iterate_batches' shifts and flips do it (in-memory small images)."""
        return self.policy == "light"


def resolve_augment(
    policy: str, image_size: int | tuple[int, int], channels: int, *, photos: bool | None = None
) -> AugmentPlan:
    """'auto' is 'light' for small images (<= SMALL_SIDE px), else 'photo'; grey if one channel.

    `photos` says whether the images are photos cut to `image_size` (the photo path, at any
    input size); None: judged by `image_size` alone.
    """
    if policy not in POLICIES:
        raise ConfigError(f"augment must be one of {', '.join(POLICIES)}, got {policy!r}")
    side = max(image_size) if isinstance(image_size, tuple) else image_size
    grey = channels == 1
    if photos is None:
        photos = side > SMALL_SIDE
    if policy == "auto":
        policy = "photo" if photos else "light"
        why = f"auto: {'photos cut' if photos else 'small images'} to {side} px"
    else:
        why = f"--augment {policy}"
    flips = "flips where the dataset allows"
    photo = "intensity and small affine changes (grey)" if grey else "colour jitter, TrivialAugment"
    what = {
        "light": f"{SHIFT}-pixel shifts and {flips}",
        "photo": f"random resized crops, {flips}, {photo}",
        "none": "none (centre crop only)",
    }[policy]
    return AugmentPlan(policy, grey and policy == "photo", f"augmentation: {what} ({why})")


def train_transform(
    policy: str,
    size: int,
    channels: int,
    hflip: bool,
    *,
    grey: bool | None = None,
    scale: tuple[float, float] | None = None,
    auto_augment: str = "trivial",
    erase: float = 0.0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (C, H, W) -> uint8 (C, size, size), drawing from torch's global RNG (see `seeded`).

    `grey` defaults to channels == 1 (a grey set stored as RGB may ask for it); `erase` is
    RandomErasing's probability; 'light' here is the per-sample form of batches.py's shifts.
    """
    if policy not in POLICIES or policy == "auto":
        raise ConfigError(f"train_transform: policy must be light, photo or none, got {policy!r}")
    if auto_augment not in AUTO_AUGMENTS:
        raise ConfigError(f"auto_augment must be one of {', '.join(AUTO_AUGMENTS)}")
    grey = channels == 1 if grey is None else grey
    flip = [v2.RandomHorizontalFlip()] if hflip else []
    if policy == "none":
        return eval_transform(size)
    if policy == "light":  # the centre crop, then batches.translate_each's shifts per sample
        return v2.Compose([eval_transform(size), v2.RandomCrop(size, padding=SHIFT), *flip])
    if grey:
        steps = [
            v2.RandomResizedCrop(size, scale=scale or GREY_SCALE, antialias=True),
            *flip,
            v2.RandomAffine(**AFFINE),
            v2.ColorJitter(**GREY_JITTER),
            RandomGamma(GAMMA),
        ]
    else:
        auto = {"trivial": [v2.TrivialAugmentWide()], "rand": [v2.RandAugment()], "none": []}
        steps = [
            v2.RandomResizedCrop(size, scale=scale or SCALE, antialias=True),
            *flip,
            v2.ColorJitter(**JITTER),
            *auto[auto_augment],
        ]
    if erase:
        steps.append(v2.RandomErasing(p=erase, value=0))  # one value: grey stays grey
    return v2.Compose(steps)


def eval_transform(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (C, H, W) -> (C, size, size): Preprocess.photo's resize and crop on a tensor.

    On an image at storage_size(size), the resize does nothing and the crop gives the same
    pixels as Preprocess.photo(size, c).apply on the original (see preprocess.storage_size).
    """
    return v2.Compose([v2.Resize(storage_size(size), antialias=True), v2.CenterCrop(size)])


class RandomGamma(v2.Transform):
    """Gamma drawn log-uniformly from `gamma` (lo, hi), applied with F.adjust_gamma."""

    def __init__(self, gamma: tuple[float, float]) -> None:
        super().__init__()
        self.log_gamma = (math.log(gamma[0]), math.log(gamma[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gamma": math.exp(float(torch.empty(()).uniform_(*self.log_gamma)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.adjust_gamma(inpt, params["gamma"])


def mix_collate(
    alpha_mixup: float, alpha_cutmix: float, num_classes: int
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 (B, C, H, W), int64 (B,)) -> (uint8 images, float32 (B, K) soft labels).

    One of v2.MixUp / v2.CutMix per batch (those with alpha > 0). MixUp blends in float32 and
    rounds back to uint8 (within half a grey level): batches stay uint8 up to normalize().
    """
    mixers = [
        cls(alpha=alpha, num_classes=num_classes)
        for cls, alpha in ((v2.MixUp, alpha_mixup), (v2.CutMix, alpha_cutmix))
        if alpha > 0
    ]
    if not mixers:
        raise ConfigError("mix_collate: give mixup or cutmix an alpha above 0")
    mix = v2.RandomChoice(mixers)

    def collate(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed, soft = mix(images.float(), labels)  # MixUp cannot write into uint8
        return mixed.round_().clamp_(0, 255).to(torch.uint8), soft

    return collate


def sample_seed(seed: int, epoch: int, index: int, stream: str = "sample") -> int:
    """A 64-bit seed for one (seed, epoch, index), via NumPy's SeedSequence (well mixed)."""
    entropy = [seed, epoch, index, STREAMS[stream]]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


@contextmanager
def seeded(seed: int, epoch: int, index: int, stream: str = "sample") -> Iterator[None]:
    """Run the block with torch's CPU generator seeded for (seed, epoch, index); restore it after.

    Only the CPU generator: torch.manual_seed would also reseed CUDA's, which fork_rng with
    devices=[] does not restore.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(sample_seed(seed, epoch, index, stream))
        yield
