"""The photo path's transforms: torchvision.transforms.v2 on uint8 (C, H, W) tensors.

data/augment.py says which policy a run takes and seeds each sample; this module builds the
ops. Imported where a photo run needs them, not at start-up (torchvision costs about a second).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from convlens.data.augment import (
    AFFINE,
    AUTO_AUGMENTS,
    GAMMA,
    GREY_JITTER,
    GREY_SCALE,
    JITTER,
    POLICIES,
    SCALE,
    SHIFT,
)
from convlens.data.preprocess import storage_size
from convlens.errors import ConfigError


def train_transform(
    policy: str,
    size: int,
    channels: int,
    hflip: bool,
    *,
    grey: bool | None = None,
    scale: tuple[float, float] | None = None,
    auto_augment: str = "none",
    erase: float = 0.0,
    resize: int | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (C, H, W) -> uint8 (C, size, size), drawing from torch's global RNG (see `seeded`).

    `grey` defaults to channels == 1 (a grey set stored as RGB may ask for it); `erase` is
    RandomErasing's probability; 'light' here is the per-sample form of batches.py's shifts;
    `resize` is the run's shorter side before the crop (eval_transform's).
    """
    if policy not in POLICIES or policy == "auto":
        raise ConfigError(f"train_transform: policy must be light, photo or none, got {policy!r}")
    if auto_augment not in AUTO_AUGMENTS:
        raise ConfigError(f"auto_augment must be one of {', '.join(AUTO_AUGMENTS)}")
    grey = channels == 1 if grey is None else grey
    flip = [v2.RandomHorizontalFlip()] if hflip else []
    if policy == "none":
        return eval_transform(size, resize)
    if policy == "light":  # the centre crop, then batches.translate_each's shifts per sample
        return v2.Compose([eval_transform(size, resize), v2.RandomCrop(size, padding=SHIFT), *flip])
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


def eval_transform(size: int, resize: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (C, H, W) -> (C, size, size): a Preprocess's resize and crop on a tensor.

    On an image stored at `resize` (default storage_size(size)), the resize does nothing and
    the crop gives the same pixels as the Preprocess (Preprocess.photo(size, c) by default)
    applied to the original (see preprocess.storage_size).
    """
    side = storage_size(size) if resize is None else resize
    return v2.Compose([v2.Resize(side, antialias=True), v2.CenterCrop(size)])


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
