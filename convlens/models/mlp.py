"""A fully connected baseline: what the CNNs' parameter sharing is measured against.

    x (B, C, H, W)
    features.flatten  Flatten                    (B, C*H*W)
    features.fc1      Linear(C*H*W, 256), features.relu1 ReLU, [features.drop1 Dropout]
    features.fc2      Linear(256, 256),   features.relu2 ReLU, [features.drop2 Dropout]
                                                 (B, 256) <- forward_features, pre_logits
    classifier.fc     Linear(256, classes)       (B, classes) logits

Parameters: features.fc{i}.{weight,bias}, classifier.fc.{weight,bias}; Dropout has none, so
the names do not depend on it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from convlens.errors import ModelError
from convlens.models.base import SequentialNet
from convlens.models.registry import register_model


@register_model("mlp")
def mlp(
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    hidden: int | Sequence[int] = 256,
    dropout: float = 0.0,
) -> SequentialNet:
    """Fully connected baseline: flatten -> [Linear -> ReLU] x 2 -> Linear."""
    widths = [hidden, hidden] if isinstance(hidden, int) else list(hidden)
    if any(width < 1 for width in widths):
        raise ModelError(f"mlp: hidden sizes must be positive, got {widths}")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"mlp: dropout must be in [0, 1), got {dropout}")
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    size = in_channels * image_size[0] * image_size[1]
    for i, width in enumerate(widths, start=1):
        layers[f"fc{i}"] = nn.Linear(size, width)
        layers[f"relu{i}"] = nn.ReLU()
        if dropout:
            layers[f"drop{i}"] = nn.Dropout(dropout)
        size = width  # (B, width)
    classifier = nn.Sequential(OrderedDict(fc=nn.Linear(size, num_classes)))
    return SequentialNet(nn.Sequential(layers), classifier, num_features=size)
