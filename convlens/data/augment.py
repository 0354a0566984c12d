"""Photo augmentation (--augment auto|light|photo|none): which policy, and its random streams.

The transforms themselves are in data/transforms.py (torchvision.transforms.v2 on uint8
tensors), imported only by runs that use them: torchvision costs a second at start-up.
`train_transform` works on ONE uint8 (C, H, W) image, at storage size (stream.py) or any size
(a shard's decoded photo), and gives uint8 (C, size, size). The recipe is torchvision's
reference one (references/classification/presets.py): RandomResizedCrop, a flip, optional
TrivialAugment or RandAugment (--auto-augment; off by default, as there), optional
RandomErasing, mixup/cutmix in the collate step; colour jitter (no hue) on top. Grey images
(X-rays, CT slices) get intensity and small affine changes and no colour.

Determinism: v2 transforms draw from torch's global CPU generator. `seeded(seed, epoch, index)`
runs one sample with that generator seeded from (seed, epoch, index) and restores it after, so
a sample draws the same augmentation in whichever DataLoader worker, with any number of
workers, and again in a resumed run; the caller's own random stream is left untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from convlens.data.preprocess import SMALL_SIDE
from convlens.errors import ConfigError

POLICIES = ("auto", "light", "photo", "none")
AUTO_AUGMENTS = ("trivial", "rand", "none")
# RandomResizedCrop's area share: ImageNet's 0.08 suits 90 epochs of 1.28 M images; a short run
# on a subject that fills much of the frame keeps more (fashion-scenes, 96 px, 16 epochs: 71.5%)
SCALE = (0.35, 1.0)
GREY_SCALE = (0.6, 1.0)  # a crop of an X-ray must still hold the finding
# No hue: torchvision's hue shift cost 0.87 / 1.47 ms per 64 / 96 px image on one thread of the
# 2-core AMD EPYC (the rest of the policy 0.3 / 0.5 ms), a third of a CPU training step's time
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2}
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
    policy: str,
    image_size: int | tuple[int, int],
    channels: int,
    *,
    photos: bool | None = None,
    auto_augment: str = "none",
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
    extra = {"trivial": ", TrivialAugment", "rand": ", RandAugment", "none": ""}[auto_augment]
    photo = "intensity and small affine changes (grey)" if grey else f"colour jitter{extra}"
    what = {
        "light": f"{SHIFT}-pixel shifts and {flips}",
        "photo": f"random resized crops, {flips}, {photo}",
        "none": "none (centre crop only)",
    }[policy]
    return AugmentPlan(policy, grey and policy == "photo", f"augmentation: {what} ({why})")


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
