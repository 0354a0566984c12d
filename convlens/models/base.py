"""What every convlens model shares: the timm-style split into features and head."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class ConvNet(nn.Module):
    """A classifier whose forward is `forward_head(forward_features(x))`."""

    num_features: int  # width of the embedding that forward_head(..., pre_logits=True) returns

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map (B, C', H', W'): the layer Grad-CAM hooks."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, num_classes), or the embedding (B, num_features) when pre_logits."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes); softmax is applied by the loss and by predict, not here."""
        return self.forward_head(self.forward_features(x))


class SequentialNet(ConvNet):
    """Two nn.Sequential of plain layers run in order: `features`, then `classifier`."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, num_features: int):
        super().__init__()
        self.features = features  # ends with the last conv block (or hidden layer for an MLP)
        self.classifier = classifier  # ends with the final nn.Linear
        self.num_features = num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of `features`: (B, C', H', W') for a CNN, (B, D) for an MLP."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Run `classifier`; stop before its final Linear when pre_logits."""
        *body, last = self.classifier
        for layer in body:
            x = layer(x)  # (B, num_features) after the last one
        return x if pre_logits else last(x)


def max_pool() -> nn.MaxPool2d:
    """2x2 max-pool, stride 2, ceil_mode: an H x W map becomes ceil(H/2) x ceil(W/2), never 0."""
    return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)


def pooled(size: int) -> int:
    """Side length after `max_pool()`; odd sides keep their last row/column."""
    return -(-size // 2)


def head_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the layer that gives the logits: timm's `get_classifier()`,
    else the last Linear (or squeezenet's final 1x1 conv) built, as every registry model and
    torchvision classifier builds it."""
    if hasattr(model, "get_classifier"):
        layer = model.get_classifier()
        found = [(n, m) for n, m in model.named_modules() if m is layer and n]
        if found and not isinstance(layer, nn.Identity):
            return found[0]
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return layers[-1]


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """(dotted name, module) of the conv that takes the image: timm's `pretrained_cfg`
    'first_conv', else the first Conv2d built; None for a model without one (mlp)."""
    named = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if isinstance(named, str):
        with contextlib.suppress(AttributeError):
            layer = model.get_submodule(named)
            if isinstance(layer, nn.Conv2d):
                return named, layer
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
