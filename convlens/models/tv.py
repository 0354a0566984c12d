"""Any torchvision classifier as `tv-<name>`, with convlens's features/head split.

The model returned is the torchvision model itself (so parameter names, `isinstance` checks and
its own `forward` stay torchvision's); its class is extended with `forward_features` and
`forward_head`, which know where each family's convolutional trunk ends.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ModelError
from convlens.models.base import head_layer
from convlens.models.probe import adapt_conv_weight, check_input

Features = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (m, x) -> (B, C', H', W')
Head = Callable[[nn.Module, torch.Tensor, bool], torch.Tensor]  # (m, map, pre_logits) -> (B, .)


def _resnet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))  # (B, 64, H/4, W/4)
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))  # (B, C, H/32, W/32)


def _shufflenet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.conv1(x))  # (B, 24, H/4, W/4)
    return m.conv5(m.stage4(m.stage3(m.stage2(x))))  # (B, 1024, H/32, W/32)


def _features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.features(x)


def _avgpool_flat(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(m.avgpool(x), 1)


def _global_pool_flat(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)


def _mean(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.mean([2, 3])


def linear_head(pool: Features, attr: str) -> Head:
    """pool the map, then run `attr` (a Linear, or an nn.Sequential ending in one)."""

    def head(m: nn.Module, x: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        x = pool(m, x)  # (B, C) for most families
        layers = getattr(m, attr)
        *body, last = layers if isinstance(layers, nn.Sequential) else [layers]
        for layer in body:
            x = layer(x)  # (B, num_features) after the last one
        return x if pre_logits else last(x)

    return head


def _squeezenet_head(m: nn.Module, x: torch.Tensor, pre_logits: bool) -> torch.Tensor:
    # The classifier is dropout -> 1x1 conv -> ReLU -> pool, so the embedding is the pooled map.
    return _global_pool_flat(m, x) if pre_logits else torch.flatten(m.classifier(x), 1)


RESNET = (_resnet_features, linear_head(_avgpool_flat, "fc"))
FEATURES = (_features, linear_head(_avgpool_flat, "classifier"))  # features, avgpool, classifier
FAMILIES: dict[str, tuple[Features, Head]] = {  # name prefix -> split mirroring its forward
    "resnet": RESNET,
    "resnext": RESNET,
    "wide_resnet": RESNET,
    "regnet": (lambda m, x: m.trunk_output(m.stem(x)), linear_head(_avgpool_flat, "fc")),
    "shufflenet": (_shufflenet_features, linear_head(_mean, "fc")),
    "mnasnet": (lambda m, x: m.layers(x), linear_head(_mean, "classifier")),
    "mobilenet_v2": (_features, linear_head(_global_pool_flat, "classifier")),
    "mobilenet_v3": FEATURES,
    "efficientnet": FEATURES,
    "vgg": FEATURES,
    "alexnet": FEATURES,
    # convnext's classifier starts with LayerNorm2d and Flatten, so the pooled map stays 4-D
    "convnext": (_features, linear_head(lambda m, x: m.avgpool(x), "classifier")),
    "densenet": (lambda m, x: F.relu(m.features(x)), linear_head(_global_pool_flat, "classifier")),
    "squeezenet": (_features, _squeezenet_head),
}


class TorchvisionSplit:
    """Mixed into a torchvision model's class: adds forward_features and forward_head."""

    arch: str  # torchvision name, e.g. "resnet18"
    num_features: int

    def _split(self) -> tuple[Features, Head]:
        for prefix, split in FAMILIES.items():
            if self.arch.startswith(prefix):
                return split
        raise ModelError(
            f"tv-{self.arch}: cannot split {self.arch} into forward_features/forward_head; "
            f"families that can: {', '.join(FAMILIES)}"
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map (B, C', H', W')."""
        return self._split()[0](self, x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, num_classes), or the embedding (B, num_features) before the last layer."""
        return self._split()[1](self, x, pre_logits)


@functools.cache
def _with_split(cls: type[nn.Module]) -> type[nn.Module]:
    return type(cls.__name__, (TorchvisionSplit, cls), {"__module__": cls.__module__})


def create_torchvision_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    pretrained: bool = False,
    **kwargs: object,
) -> nn.Module:
    """torchvision `name` for (in_channels, *image_size) inputs and num_classes outputs."""
    from torchvision import models

    names = models.list_models(module=models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3) or ["resnet18", "mobilenet_v3_small"]
        raise ModelError(
            f"unknown torchvision model {name!r}; did you mean {', '.join(close)}? "
            f"({len(names)} known: {', '.join(names[:6])}, ...)"
        )
    if name in ("googlenet", "inception_v3") and not pretrained:
        kwargs = {"aux_logits": False, "init_weights": True, **kwargs}  # plain logits out
    try:
        if pretrained:
            model = _pretrained(name, **kwargs)
            if num_classes != 1000:
                _replace_last_layer(model, num_classes)
        else:
            model = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ModelError(f"tv-{name}: {e}") from e
    _set_in_channels(model, in_channels, pretrained)
    model.__class__ = _with_split(type(model))
    model.arch = name
    model.num_features = _num_inputs(head_layer(model)[1])
    check_input(model, f"tv-{name}", in_channels, image_size)
    return model


def _pretrained(name: str, **kwargs: object) -> nn.Module:
    """The 1000-class model with torchvision's published default weights."""
    import contextlib
    import io
    import sys

    from torchvision import models

    said = io.StringIO()  # torch.hub's "Downloading: ..." line, shown only if it downloads
    try:
        with contextlib.redirect_stderr(said):
            weights = models.get_model_weights(name).DEFAULT
            model = models.get_model(name, weights=weights, **kwargs)
        sys.stderr.write(said.getvalue())
        return model
    except OSError as e:  # urllib's URLError is an OSError; offline it fails fast
        reason = " ".join(str(getattr(e, "reason", e)).split())
        raise ModelError(
            f"cannot download pretrained weights for {name}: {reason}; "
            "use --init FILE with a local weights file"
        ) from e


def _set_in_channels(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        if pretrained:
            new.weight.copy_(adapt_conv_weight(conv.weight, in_channels))
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None and pretrained:
            new.bias.copy_(conv.bias)
        elif conv.bias is not None:
            new.bias.zero_()
    _set_module(model, name, new)


def _num_inputs(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _replace_last_layer(model: nn.Module, num_classes: int) -> None:
    name, last = head_layer(model)
    if isinstance(last, nn.Linear):
        new: nn.Module = nn.Linear(last.in_features, num_classes)
    else:
        new = nn.Conv2d(last.in_channels, num_classes, last.kernel_size)
    _set_module(model, name, new)


def _set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, child = dotted.rpartition(".")
    setattr(root.get_submodule(parent), child, module)
