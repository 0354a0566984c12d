"""LeNet-5 (LeCun et al. 1998), modern variant: ReLU and max-pooling instead of tanh and
trainable subsampling, and a plain Linear output instead of RBF units.

    x (B, C, 28, 28)
    features.conv1  Conv2d(C, 6, 5, padding=2)   (B, 6, 28, 28)  pad 2: 28x28 acts like 32x32
    features.relu1  ReLU
    features.pool1  MaxPool2d(2, ceil_mode=True) (B, 6, 14, 14)
    features.conv2  Conv2d(6, 16, 5)             (B, 16, 10, 10) padding=2 if the map is < 5x5
    features.relu2  ReLU
    features.pool2  MaxPool2d(2, ceil_mode=True) (B, 16, 5, 5)   <- forward_features
    classifier.flatten  Flatten                  (B, 400)
    classifier.fc1  Linear(400, 120), classifier.relu3  ReLU
    classifier.fc2  Linear(120, 84),  classifier.relu4  ReLU     (B, 84) <- pre_logits
    classifier.fc3  Linear(84, classes)          (B, classes) logits

Small images (8x8 digits) pool to 4x4, too small for an unpadded 5x5 conv, so conv2 is then
padded by 2 as well.
Parameters: features.conv{1,2}.{weight,bias}, classifier.fc{1,2,3}.{weight,bias}.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from convlens.models.base import SequentialNet, max_pool, pooled
from convlens.models.registry import register_model


def conv2_padding(image_size: tuple[int, int]) -> int:
    """0 like the original, or 2 when the pooled map is smaller than conv2's 5x5 kernel."""
    return 0 if min(pooled(side) for side in image_size) >= 5 else 2


@register_model("lenet5")
def lenet5(*, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> SequentialNet:
    """LeNet-5 (LeCun 1998) with ReLU and max-pooling: conv 6 -> conv 16 -> fc 120 -> 84."""
    pad = conv2_padding(image_size)
    h, w = (pooled(pooled(side) - 4 + 2 * pad) for side in image_size)  # after pool2
    features = OrderedDict(
        conv1=nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
        relu1=nn.ReLU(),
        pool1=max_pool(),
        conv2=nn.Conv2d(6, 16, kernel_size=5, padding=pad),
        relu2=nn.ReLU(),
        pool2=max_pool(),
    )
    classifier = OrderedDict(
        flatten=nn.Flatten(),
        fc1=nn.Linear(16 * h * w, 120),
        relu3=nn.ReLU(),
        fc2=nn.Linear(120, 84),
        relu4=nn.ReLU(),
        fc3=nn.Linear(84, num_classes),
    )
    return SequentialNet(nn.Sequential(features), nn.Sequential(classifier), num_features=84)
