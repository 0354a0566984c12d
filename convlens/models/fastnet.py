"""PLACEHOLDER written by the model-zoo engineer; the speed work replaces this file."""

from __future__ import annotations

import torch
from torch import nn

from convlens.models.base import ConvNet, max_pool
from convlens.models.registry import register_model


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (no bias) -> BN -> ReLU, size kept."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class FastNet(ConvNet):
    """conv 24 -> pool -> 2 convs 48 -> pool -> 2 convs 96 -> global max pool -> fc."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(in_channels, 24),
            max_pool(),  # (B, 24, H/2, W/2)
            conv_bn(24, 48),
            conv_bn(48, 48),
            max_pool(),  # (B, 48, H/4, W/4)
            conv_bn(48, 96),
            conv_bn(96, 96),
        )
        self.fc = nn.Linear(96, num_classes)
        self.num_features = 96

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 96, H/4, W/4)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global max pool to (B, 96), then fc unless pre_logits."""
        x = torch.amax(x, dim=(2, 3))  # (B, 96)
        return x if pre_logits else self.fc(x)


@register_model("fastnet")
def fastnet(*, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> FastNet:
    """Small BN conv net for fast CPU training (placeholder)."""
    return FastNet(in_channels, num_classes)
