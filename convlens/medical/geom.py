"""GEOM's 72 geometric transformations (Golan & El-Yaniv, NeurIPS 2018) as pixel index maps.

Transformation k = ((flip * 3 + ty) * 3 + tx) * 4 + rot, applied in the paper's order: mirror
left-right (flip 0/1), translate by (-t, 0, +t) pixels down (ty 0/1/2) and right (tx 0/1/2)
with reflect fill (no black borders; the edge pixel is not repeated), then rotate by rot * 90
degrees anticlockwise. Every transformation only moves pixels, so each is one (H * W,) map of
source pixels and applying any mix of them to a batch is one `gather`. The shift t is a quarter
of the side (7 px at 28x28, 8 at 32x32).

Each image's score pass runs all 72 transformations through the network: the log-probability of
the right transformation (GEOM's simple score) and the penultimate features (for Mahalanobis).
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.data.batches import normalize
from convlens.device import autocast
from convlens.errors import ConfigError

COUNT = 72  # 2 flips x 3 x 3 translations x 4 rotations


def check_square(height: int, width: int, where: str) -> None:
    """Refuse images that 90-degree rotations would not map onto themselves."""
    if height != width:
        raise ConfigError(
            f"{where}: anomaly detection rotates images by 90 degrees, so they must be square; "
            f"these are {height}x{width} (pass --image-size to resize folder images)"
        )


def shift_for(size: int) -> int:
    """The translation in pixels for a square side of `size` (a quarter, as in the paper)."""
    return max(1, size // 4)


def index_maps(size: int) -> torch.Tensor:
    """(72, size * size) int64: output pixel p of transformation k reads input pixel maps[k, p]."""
    check_square(size, size, "index_maps")
    t = shift_for(size)
    grid = torch.arange(size * size).view(size, size)  # each pixel holds its own index
    maps = []
    for flip in (False, True):
        base = grid.flip(1) if flip else grid
        for dy in (-t, 0, t):
            for dx in (-t, 0, t):
                moved = base[_reflect(size, dy)][:, _reflect(size, dx)]  # (size, size)
                maps += [torch.rot90(moved, k, dims=(0, 1)).reshape(-1) for k in range(4)]
    return torch.stack(maps)


def _reflect(size: int, shift: int) -> torch.Tensor:
    """(size,) source rows for a shift by `shift` with reflect fill (edge pixel not repeated)."""
    src = torch.arange(size) - shift
    src = src.abs()  # below 0: mirrored about row 0
    return torch.where(src > size - 1, 2 * (size - 1) - src, src)  # past the end: mirrored back


def apply(images: torch.Tensor, index: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Transformation index[i] applied to image i: (B, C, H, W) -> (B, C, H, W), any dtype."""
    b, c, h, w = images.shape
    src = maps.to(images.device)[index.to(images.device)]  # (B, H * W)
    out = images.reshape(b, c, h * w).gather(2, src[:, None, :].expand(b, c, h * w))
    return out.view(b, c, h, w)


def apply_all(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """All 72 transformations of each image: (B, C, H, W) -> (B * 72, C, H, W), image-major."""
    b, c, h, w = images.shape
    out = images.reshape(b, c, h * w)[:, :, maps.to(images.device)]  # (B, C, 72, H * W)
    return out.transpose(1, 2).reshape(b * COUNT, c, h, w)


@torch.no_grad()
def score_pass(
    model: nn.Module,
    images: torch.Tensor,
    meta: dict,
    *,
    features: bool = False,
    chunk: int = 32,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GEOM's log p(right transformation) (N, 72) and, if asked, features (N, 72, D), float32.

    `model` is the 72-way transformation classifier (an AnomalyNet); `images` are uint8
    (N, C, H, W). Each chunk of images becomes chunk * 72 inputs to one forward pass.
    """
    device = torch.device(device)
    maps = index_maps(images.shape[-1]).to(device)
    mean, std = meta["normalize"]["mean"], meta["normalize"]["std"]
    was_training = model.training
    model.eval()
    if channels_last:  # a model loaded from a file is NCHW: converting inputs each pass is slow
        model.to(memory_format=torch.channels_last)
    logps, feats = [], []
    for i in range(0, len(images), chunk):
        x = normalize(apply_all(images[i : i + chunk].to(device), maps), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            f, logits = model.features_and_logits(x)  # (b * 72, D), (b * 72, 72)
        logp = logits.float().log_softmax(1).view(-1, COUNT, COUNT)  # (b, 72 inputs, 72 classes)
        logps.append(logp.diagonal(dim1=1, dim2=2).cpu())  # (b, 72): log p(k | transform k)
        if features:
            feats.append(f.float().view(-1, COUNT, f.shape[-1]).cpu())  # (b, 72, D)
    model.train(was_training)
    return torch.cat(logps), (torch.cat(feats) if features else None)
