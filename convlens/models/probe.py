"""What every foreign backbone (tv-*, timm-*) shares: a first conv adapted to the image's
channels, and a trial pass that names the model when images of a size cannot go through."""

from __future__ import annotations

import torch
from torch import nn

from convlens.errors import ModelError


def adapt_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Filters (out, c, k, k) for in_channels, as timm's adapt_input_conv: RGB summed for grey
    (a grey image is R = G = B), else tiled and rescaled (grey repeated / 3 for RGB)."""
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    repeats = -(-in_channels // weight.shape[1])
    tiled = weight.repeat(1, repeats, 1, 1)[:, :in_channels]
    return tiled * (weight.shape[1] / in_channels)  # as timm; flat-image response kept for 3k


def check_input(model: nn.Module, label: str, in_channels: int, image_size: tuple[int, int]):
    """Fail now, naming `label`, if images of this size cannot pass through `model`."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, *image_size))
    except (RuntimeError, ValueError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"{label} cannot take {in_channels}x{image_size[0]}x{image_size[1]} images: {first}"
        ) from e
    finally:
        model.train(was_training)
