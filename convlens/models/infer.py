"""Run a model over uint8 images: normalise, batch, test-time augmentation, softmax."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data.batches import normalize
from convlens.device import autocast


def tta_views(
    x: torch.Tensor, mode: str, layout: torch.memory_format = torch.channels_last
) -> list[tuple[torch.Tensor, float]]:
    """The views of a normalised batch that test-time augmentation averages, with weights, each
    dense in `layout` (NHWC, as map_batches runs by default: a strided slice or a mirror runs a
    CPU's convolutions 2-6x slower).

    flip: the image and its mirror. flip-shift (airbench's 6 views): those two with half the
    weight, plus the image moved 1 pixel up-left and 1 pixel down-right (zero = mean-grey fill),
    each with its mirror.
    """
    if mode == "none":
        views = [(x, 1.0)]
    elif mode == "flip":
        views = [(x, 0.5), (x.flip(3), 0.5)]
    else:
        h, w = x.shape[2:]
        padded = F.pad(x, (1, 1, 1, 1))  # (B, C, H + 2, W + 2)
        shifted = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]  # content moved down-right, up-left
        views = [(x, 0.25), (x.flip(3), 0.25)]
        views += [(v, 0.125) for s in shifted for v in (s, s.flip(3))]
    return [(v.contiguous(memory_format=layout), w) for v, w in views]


def layout(channels_last: bool) -> torch.memory_format:
    """The memory format of inference batches: NHWC runs this CPU's convolutions about twice as
    fast as NCHW in float32 (BENCHMARKS.md, "Time outside training")."""
    return torch.channels_last if channels_last else torch.contiguous_format


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
    channels_last: bool = True,
) -> torch.Tensor:
    """fn(normalised batch) (B, ...) for uint8 images (N, C, H, W), the model in eval mode (and,
    with channels_last, its weights and batches NHWC); float32 on the CPU, concatenated to
    (N, ...). Every task's inference runs through here."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)  # in place; a no-op once it is
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = normalize(images[i : i + batch_size].to(device), mean, std)  # (B, C, H, W)
        x = x.contiguous(memory_format=layout(channels_last))
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
    channels_last: bool = True,
) -> torch.Tensor:
    """Class probabilities (N, K) float32 for uint8 images (N, C, H, W)."""
    views_layout = layout(channels_last)

    def probs(x: torch.Tensor) -> torch.Tensor:  # (B, K), test-time views averaged
        views = tta_views(x, tta, views_layout)
        return sum(w * model(v).float().softmax(dim=1) for v, w in views)

    return map_batches(model, images, probs, mean=mean, std=std, batch_size=batch_size,
                       device=device, amp=amp, channels_last=channels_last)  # fmt: skip
