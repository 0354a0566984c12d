"""Small-image ResNets (He et al. 2016, section 4.2, the CIFAR-10 family): depth 6n + 2.

conv1 3x3 16 -> layer1 (n blocks, 16) -> layer2 (n, 32, stride 2) -> layer3 (n, 64, stride 2)
-> global average pool -> fc. Shortcuts that change shape are 1x1 conv + BN projections
(option B); a 3x3 stride-2 conv on a 1x1 map stays 1x1, so 8x8 inputs work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from convlens.models.base import ConvNet
from convlens.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus the input: relu(bn2(conv2(relu(bn1(conv1(x))))) + x)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()  # not inplace: Grad-CAM hooks must see unmodified tensors
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:  # option B: project the shortcut
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_planes, H, W) -> (B, planes, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(ConvNet):
    """conv1-bn1-relu, then one stage of `blocks` BasicBlocks per width, then pool and fc."""

    def __init__(
        self, in_channels: int, num_classes: int, blocks: int, widths: Sequence[int] = (16, 32, 64)
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_planes = widths[0]
        for i, planes in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            layer = [BasicBlock(in_planes, planes, stride)]
            layer += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*layer))
            in_planes = planes
        self.stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.num_features = in_planes
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last stage: (B, 64, H/4, W/4) for three stages."""
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        for i in range(1, self.stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool to (B, 64), then fc unless pre_logits."""
        x = torch.flatten(self.avgpool(x), 1)  # (B, 64)
        return x if pre_logits else self.fc(x)


@register_model("resnet8")
def resnet8(
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    widths: Sequence[int] = (16, 32, 64),
) -> ResNet:
    """ResNet-8 for small images (He et al. 2016, CIFAR variant, n=1): 3 stages 16/32/64."""
    return ResNet(in_channels, num_classes, blocks=1, widths=widths)


@register_model("resnet20")
def resnet20(
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    widths: Sequence[int] = (16, 32, 64),
) -> ResNet:
    """ResNet-20 for small images (He et al. 2016, CIFAR variant, n=3): 3 stages 16/32/64."""
    return ResNet(in_channels, num_classes, blocks=3, widths=widths)
