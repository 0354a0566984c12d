"""Run a model over uint8 images: normalise, batch, test-time augmentation, softmax."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data.batches import normalize
from convlens.device import autocast


def tta_views(x: torch.Tensor, mode: str) -> list[tuple[torch.Tensor, float]]:
    """The views of a normalised batch that test-time augmentation averages, with weights.

    flip: the image and its mirror. flip-shift (airbench's 6 views): those two with half the
    weight, plus the image moved 1 pixel up-left and 1 pixel down-right (zero = mean-grey fill),
    each with its mirror.
    """
    if mode == "none":
        return [(x, 1.0)]
    if mode == "flip":
        return [(x, 0.5), (x.flip(3), 0.5)]
    h, w = x.shape[2:]
    padded = F.pad(x, (1, 1, 1, 1))  # (B, C, H + 2, W + 2)
    shifted = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]  # content moved down-right, up-left
    views = [(x, 0.25), (x.flip(3), 0.25)]
    return views + [(v, 0.125) for s in shifted for v in (s, s.flip(3))]


@torch.no_grad()
def map_batches(
    model: nn.Module,
    images: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    mean: list[float],
    std: list[float],
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """fn(normalised batch) (B, ...) for uint8 images (N, C, H, W), the model in eval mode;
    float32 on the CPU, concatenated to (N, ...). Every task's inference runs through here."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = normalize(images[i : i + batch_size].to(device), mean, std)  # (B, C, H, W)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out.append(fn(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: list[float],
    std: list[float],
    tta: str = "none",
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Class probabilities (N, K) float32 for uint8 images (N, C, H, W)."""

    def probs(x: torch.Tensor) -> torch.Tensor:  # (B, K), test-time views averaged
        return sum(w * model(v).float().softmax(dim=1) for v, w in tta_views(x, tta))

    return map_batches(model, images, probs, mean=mean, std=std, batch_size=batch_size,
                       device=device, amp=amp, channels_last=channels_last)  # fmt: skip
