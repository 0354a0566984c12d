"""Run a model over uint8 images: normalise, batch, optional mirror TTA, softmax."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from convlens.data.batches import normalize


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when enabled, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: list[float],
    std: list[float],
    tta_flip: bool = False,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Class probabilities (N, K) float32 for uint8 images (N, C, H, W)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = normalize(images[i : i + batch_size].to(device), mean, std)  # (B, C, H, W)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            p = model(x).float().softmax(dim=1)
            if tta_flip:  # average with the mirror image's prediction
                p = (p + model(x.flip(3)).float().softmax(dim=1)) / 2
        out.append(p.cpu())
    model.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)
