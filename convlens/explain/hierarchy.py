"""Hierarchical features: first-layer filters, feature maps per stage, top-activating patches.

A "stage" is the last module of the convolutional trunk at each spatial resolution, found by
running `forward_features` once: the trunk is `model.features` when it is an nn.Sequential, else
the model's own children (conv1, layer1, ...). For the textbook CNN on 28x28 that is relu1
(16x28x28), relu2 (32x14x14) and pool2 (32x7x7); for a ResNet, layer1..layer3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class Stage:
    """One resolution level of the trunk."""

    name: str  # dotted module name, e.g. "features.relu2" or "layer2"
    module: nn.Module
    shape: tuple[int, int, int]  # (C, h, w) of its output for the model's input size


def first_conv(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[str, nn.Conv2d] | None:
    """The first nn.Conv2d the forward pass runs, or None (an MLP)."""
    found: list[tuple[str, nn.Conv2d]] = []
    named = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    def hook(module, inputs, output):
        if not found:
            found.append((named[module], module))

    handles = [m.register_forward_hook(hook) for m in named]
    try:
        _probe(model, input_shape)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def find_stages(model: nn.Module, input_shape: tuple[int, int, int]) -> list[Stage]:
    """The trunk's stages in forward order (empty for a model without feature maps)."""
    trunk = getattr(model, "features", None)
    prefix = "features."
    if not isinstance(trunk, nn.Sequential):
        trunk, prefix = model, ""
    children = [(prefix + n, m) for n, m in trunk.named_children()]
    calls: list[tuple[str, nn.Module, tuple[int, ...]]] = []  # first call of each, in order

    def hook(name: str):
        def record(module, inputs, output):
            if isinstance(output, torch.Tensor) and all(c[0] != name for c in calls):
                calls.append((name, module, tuple(output.shape[1:])))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in children]
    try:
        _probe(model, input_shape, features_only=True)
    finally:
        for h in handles:
            h.remove()
    maps = [c for c in calls if len(c[2]) == 3]  # (C, h, w) outputs only
    groups: list[list[tuple[str, nn.Module, tuple[int, ...]]]] = []
    for call in maps:  # consecutive modules with the same resolution
        if groups and groups[-1][-1][2][1:] == call[2][1:]:
            groups[-1].append(call)
        else:
            groups.append([call])
    keep = [
        g for i, g in enumerate(groups)
        if i == len(groups) - 1 or not all(isinstance(m, POOLS) for _, m, _ in g)
    ]  # fmt: skip  # a group that only pools repeats the stage before it
    return [Stage(name, module, shape) for name, module, shape in (g[-1] for g in keep)]


def stage_outputs(model: nn.Module, x: torch.Tensor, stages: list[Stage]) -> list[torch.Tensor]:
    """Each stage's output (B, C, h, w) for normalised images x."""
    out: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, inputs, output):
            out.setdefault(name, output.detach())

        return record

    handles = [s.module.register_forward_hook(hook(s.name)) for s in stages]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [out[s.name] for s in stages]


def receptive_field(model: nn.Module, stage: Stage, x: torch.Tensor) -> tuple[int, int]:
    """(height, width) in pixels of the input that the stage's central unit depends on.

    Measured, not derived: the support of d(centre unit, all channels) / d(input) over a few
    images x, so it holds for any architecture (padding, strides, pooling, shortcuts). Give
    images with a margin wider than the field, or it is cut off at their border.
    """
    seen: list[torch.Tensor] = []

    def hook(module, inputs, output):
        if not seen:
            seen.append(output)

    handle = stage.module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            model.forward_features(x)
            fmap = seen[0]  # (B, C, h, w)
            h, w = fmap.shape[-2:]
            fmap[:, :, h // 2, w // 2].abs().sum().backward()
    finally:
        handle.remove()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    support = x.grad.abs().sum((0, 1)) > 0  # (H, W)
    rows, cols = support.any(1).nonzero(), support.any(0).nonzero()
    if len(rows) == 0:
        return 1, 1
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def top_activating(
    model: nn.Module,
    images: torch.Tensor,
    normalize_fn,
    stages: list[Stage],
    *,
    channels: int = 4,
    per_channel: int = 6,
    batch_size: int = 256,
) -> list[dict]:
    """For each stage, its `channels` strongest channels and the patches that excite each most.

    Strength is a channel's mean over `images` (uint8 (N, C, H, W)) of its largest activation
    in each image. Returns per stage: {stage, shape, receptive_field, channels: [{channel,
    activations, patches uint8 (per_channel, C, rh, rw)}]}.
    """
    peaks, where = [], []  # per batch: (B, S, C) max activation and flat argmax, per stage
    for i in range(0, len(images), batch_size):
        outs = stage_outputs(model, normalize_fn(images[i : i + batch_size]), stages)
        peaks.append([o.flatten(2).amax(2) for o in outs])  # S x (B, C)
        where.append([o.flatten(2).argmax(2) for o in outs])
    h, w = images.shape[-2:]
    probe = normalize_fn(F.pad(images[:8], (w, w, h, h)))  # a margin, so no field is cut off
    result = []
    for s, stage in enumerate(stages):
        act = torch.cat([p[s] for p in peaks])  # (N, C)
        pos = torch.cat([w[s] for w in where])  # (N, C) flat index into (h, w)
        rf = receptive_field(model, stage, probe)
        strongest = act.mean(0).argsort(descending=True)[:channels]
        rows = []
        for c in strongest.tolist():
            vals, idx = act[:, c].topk(min(per_channel, len(images)))
            centres = [_unit_centre(int(pos[n, c]), stage.shape, images.shape[-2:]) for n in idx]
            patches = torch.stack(
                [crop(images[n], yx, rf) for n, yx in zip(idx, centres, strict=True)]
            )
            rows.append({"channel": c, "activations": vals.tolist(), "patches": patches})
        result.append({"stage": stage.name, "shape": list(stage.shape),
                       "receptive_field": list(rf), "channels": rows})  # fmt: skip
    return result


def _unit_centre(flat: int, shape: tuple[int, int, int], size) -> tuple[float, float]:
    """Input pixel under the centre of unit `flat` of a (C, h, w) map of an (H, W) image."""
    _, h, w = shape
    i, j = divmod(flat, w)
    return (i + 0.5) * size[0] / h - 0.5, (j + 0.5) * size[1] / w - 0.5


def crop(image: torch.Tensor, centre: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
    """A window of `size` (at most the image) around `centre`, kept inside image (C, H, W)."""
    _, h, w = image.shape
    rh, rw = min(size[0], h), min(size[1], w)
    y0 = min(max(int(round(centre[0] - (rh - 1) / 2)), 0), h - rh)
    x0 = min(max(int(round(centre[1] - (rw - 1) / 2)), 0), w - rw)
    return image[:, y0 : y0 + rh, x0 : x0 + rw]


def _probe(model: nn.Module, shape: tuple[int, int, int], features_only: bool = False) -> None:
    """One forward pass on a zero image (1, C, H, W), for hooks to watch."""
    param = next(model.parameters())
    x = torch.zeros(1, *shape, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.forward_features(x) if features_only else model(x)
    finally:
        model.train(was_training)
