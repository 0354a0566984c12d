"""The seed article's CNN, nothing added.

    x (B, C, H, W)
    features.conv1  Conv2d(C, 16, 5, padding=2)      (B, 16, H, W)      "same" padding
    features.relu1  ReLU
    features.pool1  MaxPool2d(2, ceil_mode=True)     (B, 16, H/2, W/2)  sides rounded up
    features.conv2  Conv2d(16, 32, 5, padding=2)     (B, 32, H/2, W/2)
    features.relu2  ReLU
    features.pool2  MaxPool2d(2, ceil_mode=True)     (B, 32, H/4, W/4)  <- forward_features
    classifier.flatten  Flatten                      (B, 32 * H/4 * W/4) <- pre_logits
    classifier.fc   Linear(32 * H/4 * W/4, classes)  (B, classes) logits

Softmax is not a layer here: cross-entropy applies it in the loss, and predict applies it to
report probabilities.
Parameters: features.conv{i}.weight (out, in, k, k), features.conv{i}.bias,
classifier.fc.weight (classes, C * H/4 * W/4), classifier.fc.bias; flatten order is (C, H, W).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from convlens.errors import ModelError
from convlens.models.base import SequentialNet, max_pool, pooled
from convlens.models.registry import register_model


@register_model("textbook")
def textbook(
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    widths: Sequence[int] = (16, 32),
    kernel_size: int = 5,
) -> SequentialNet:
    """The seed article's CNN: [conv -> ReLU -> max-pool] x 2 -> fully connected."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ModelError(f"textbook: kernel_size must be odd for 'same' padding, got {kernel_size}")
    if not widths or min(widths) < 1:
        raise ModelError(f"textbook: widths must be positive channel counts, got {list(widths)}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    (h, w), c = image_size, in_channels
    for i, width in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(c, width, kernel_size, padding=kernel_size // 2)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = max_pool()
        (h, w), c = (pooled(h), pooled(w)), width  # (B, width, h, w)
    classifier = OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(c * h * w, num_classes))
    return SequentialNet(nn.Sequential(layers), nn.Sequential(classifier), num_features=c * h * w)
