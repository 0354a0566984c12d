"""Where a model looked: Grad-CAM (Selvaraju et al. 2017) and vanilla gradient saliency.

Grad-CAM weighs each channel k of a feature map A (B, K, h, w) by the mean gradient of the
explained class score y_c over the map, alpha_k = mean_ij dy_c / dA_kij, and keeps the positive
part of sum_k alpha_k A_k, upsampled to the image. By default A is `forward_features(x)`, the
last convolutional stage of every convlens model; any named module can be asked for instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | None = None,
    layer: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(heatmaps (B, H, W) in [0, 1], class probabilities (B, K)) for normalised images x.

    `target` (B,) is the class explained for each image (default: the predicted one).
    """
    was_training = model.training
    model.eval()
    x = x.detach().requires_grad_(False)
    try:
        with torch.enable_grad():
            if layer is None:
                fmap = model.forward_features(x)  # (B, K, h, w)
                _need_map(fmap, "forward_features")
                fmap.retain_grad()
                logits = model.forward_head(fmap)
            else:
                fmap, logits = _forward_with_map(model, x, layer)
            target = _target(logits, target)
            model.zero_grad(set_to_none=True)
            logits.gather(1, target[:, None]).sum().backward()
        grads = fmap.grad  # (B, K, h, w)
        alpha = grads.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
        cam = F.relu((alpha * fmap.detach()).sum(1, keepdim=True))  # (B, 1, h, w)
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        model.zero_grad(set_to_none=True)
        return _unit_range(cam[:, 0]), logits.detach().softmax(1)
    finally:
        model.train(was_training)


def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """|d score / d pixel|, the largest over colour channels, in [0, 1]: (B, H, W)."""
    was_training = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            logits = model(x)
            target = _target(logits, target)
            logits.gather(1, target[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)
        return _unit_range(x.grad.abs().amax(1))  # (B, H, W)
    finally:
        model.train(was_training)


def has_feature_map(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether forward_features gives a map (B, C, H, W), as every CNN does, not a vector (MLP)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model.forward_features(x[:1]).ndim == 4
    finally:
        model.train(was_training)


def peak(heatmaps: torch.Tensor) -> torch.Tensor:
    """(row, col) of each map's maximum: (B, 2)."""
    b, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, -1).argmax(1)  # (B,)
    return torch.stack([flat // w, flat % w], dim=1)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` (e.g. "features.conv2", "layer3.0"); the error lists convs."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = ", ".join(n for n, m in model.named_modules() if n and isinstance(m, nn.Conv2d))
        raise ConvlensError(f"no layer {name!r} in this model; its conv layers: {names}") from None


def _forward_with_map(model: nn.Module, x: torch.Tensor, layer: str):
    module = find_layer(model, layer)
    seen: list[torch.Tensor] = []

    def keep(mod, inputs, output):
        if not seen:  # a module used twice: explain its first use
            output.retain_grad()
            seen.append(output)

    handle = module.register_forward_hook(keep)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if not seen:
        raise ConvlensError(f"layer {layer!r} is not used by the forward pass")
    _need_map(seen[0], layer)
    return seen[0], logits


def _need_map(t: torch.Tensor, where: str) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 4:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ConvlensError(
            f"Grad-CAM needs a convolutional feature map (B, C, H, W); {where} gives {shape}"
        )


def _target(logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    if target is None:
        return logits.argmax(1)
    return torch.as_tensor(target, device=logits.device).long().reshape(-1)


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map (B, H, W) to [0, 1]; an all-zero map stays zero."""
    top = maps.flatten(1).amax(1).clamp_min(1e-12)  # (B,)
    return (maps / top[:, None, None]).detach()
