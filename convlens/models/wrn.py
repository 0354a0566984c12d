"""Wide ResNets (Zagoruyko & Komodakis 2016): WRN-depth-width, pre-activation blocks.

conv1 3x3 16 -> layer1 (n blocks, 16k) -> layer2 (n, 32k, stride 2) -> layer3 (n, 64k,
stride 2) -> bn-relu -> global average pool -> fc, with n = (depth - 4) / 6 and k the width.
WRN-40-4 (8.9 M parameters) is the longer GPU recipe in benchmarks/fashion_mnist_gpu.py.
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.errors import ModelError
from convlens.models.base import ConvNet
from convlens.models.registry import register_model


class WideBlock(nn.Module):
    """bn-relu-conv3x3-bn-relu-dropout-conv3x3 plus the shortcut (1x1 conv when shapes change)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU()  # not inplace: Grad-CAM hooks must see unmodified tensors
        self.dropout = nn.Dropout(dropout)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_planes, H, W) -> (B, planes, H / stride, W / stride)."""
        pre = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)  # the paper's choice
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(ConvNet):
    """conv1, three stages of WideBlocks, a final bn-relu, then pool and fc."""

    def __init__(
        self, in_channels: int, num_classes: int, depth: int, width: int, dropout: float = 0.0
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ModelError(
                f"model 'wrn': depth must be 6n + 4 (10, 16, 22, 28, 40...), got {depth}"
            )
        if width < 1:
            raise ModelError(f"model 'wrn': width must be a positive integer, got {width}")
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        in_planes = 16
        for i, planes in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            blocks = [WideBlock(in_planes, planes, stride, dropout)]
            blocks += [WideBlock(planes, planes, 1, dropout) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_planes = planes
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.num_features = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage after bn-relu: (B, 64 * width, H/4, W/4)."""
        x = self.conv1(x)  # (B, 16, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.relu(self.bn(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool to (B, 64 * width), then fc unless pre_logits."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)


@register_model("wrn")
def wrn(
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    depth: int = 16,
    width: int = 4,
    dropout: float = 0.0,
) -> WideResNet:
    """Wide ResNet WRN-depth-width (default WRN-16-4; WRN-40-4: depth=40) for small images."""
    return WideResNet(in_channels, num_classes, depth, width, dropout)
