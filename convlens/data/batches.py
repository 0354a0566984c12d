"""Batches of uint8 images with batch-wise augmentation, all randomness from one torch.Generator."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from convlens.data.dataset import Split


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    translate: int = 0,
    hflip: bool | torch.Tensor = False,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 (B, C, H, W), int64 (B,)) batches; shifts fill with zeros, flips p = 0.5.

    `hflip` may also be an (N,) bool tensor: which images of the split to mirror this epoch.

    All random numbers for the epoch are drawn here, at the call, from `generator`: the same
    generator state gives the same batches, and the state afterwards does not depend on how many
    batches were consumed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if translate < 0:
        raise ValueError(f"translate must be >= 0 pixels, got {translate}")
    if generator is None and (shuffle or translate or hflip is True):
        raise ValueError("shuffling and augmentation need a torch.Generator (reproducible runs)")
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    shifts = None  # (N, 2) (dy, dx)
    if translate:
        shifts = torch.randint(-translate, translate + 1, (n, 2), generator=generator)
    if isinstance(hflip, torch.Tensor):
        flips = hflip[order]  # (N,) bool, in batch order
    else:
        flips = torch.rand(n, generator=generator) < 0.5 if hflip else None  # (N,) bool
    device = split.images.device  # draws cross to a GPU once an epoch, not once a batch
    order, shifts, flips = (t if t is None else t.to(device) for t in (order, shifts, flips))
    return _batches(split, batch_size, drop_last, order, shifts, flips, translate)


def _batches(split, batch_size, drop_last, order, shifts, flips, translate):
    n = len(split)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]  # (B,)
        x = split.images[idx]  # (B, C, H, W) uint8
        if flips is not None:
            x = flip_some(x, flips[start : start + batch_size])
        if shifts is not None:
            x = translate_each(x, shifts[start : start + batch_size], translate)
        yield x, split.labels[idx]


def flip_some(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where `mask` (B,) is True."""
    mask = mask.to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def translate_each(x: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift image i by shifts[i] = (dy, dx) pixels down and right (|d| <= pad), zero-filled."""
    b, c, h, w = x.shape
    shifts = shifts.to(x.device)
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p), zeros around
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = (pad - shifts[:, 0])[:, None] + ar_h  # (B, H): output row y reads padded row y + p - dy
    cols = (pad - shifts[:, 1])[:, None] + ar_w  # (B, W)
    x = xp.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * pad))  # (B, C, H, W + 2p)
    return x.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))  # (B, C, H, W)


def to_device(split: Split, device: torch.device | str) -> Split:
    """The split held on `device`; iterate_batches then cuts and augments batches there."""
    return Split(split.images.to(device), split.labels.to(device))


def normalize(
    x: torch.Tensor, mean: list[float] | torch.Tensor, std: list[float] | torch.Tensor
) -> torch.Tensor:
    """float32 (x / 255 - mean) / std per channel, for uint8 (..., C, H, W).

    `mean` and `std` already on x's device (float32 tensors) spare a copy to it per call."""
    if len(mean) != x.shape[-3] or len(std) != x.shape[-3]:
        raise ValueError(f"{len(mean)} means and {len(std)} stds for {x.shape[-3]} channels")
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)  # (C, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x.float() / 255 - m) / s


def channel_stats(split: Split, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a split's pixels in [0, 1] units (std at least 1e-3)."""
    c = split.images.shape[1]
    return pixel_stats((split.images[i : i + chunk] for i in range(0, len(split), chunk)), c)


def pixel_stats(batches: Iterable[torch.Tensor], c: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the pixels of uint8 batches (n, C, H, W), one at a time."""
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    count = 0
    for batch in batches:
        x = batch.double().transpose(0, 1).reshape(c, -1) / 255  # (C, n)
        total += x.sum(1)
        squares += (x * x).sum(1)
        count += batch.numel() // c
    count = max(count, 1)
    mean = total / count
    std = (squares / count - mean**2).clamp(min=1e-6).sqrt()  # >= 1e-3: normalize never / 0
    return mean.tolist(), std.tolist()
