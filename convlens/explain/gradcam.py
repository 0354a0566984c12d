"""Where a model looked: Grad-CAM (Selvaraju et al. 2017) and vanilla gradient saliency.

Grad-CAM weighs each channel k of a feature map A (B, K, h, w) by the mean gradient of the
explained class score y_c over the map, alpha_k = mean_ij dy_c / dA_kij, and keeps the positive
part of sum_k alpha_k A_k, upsampled to the image. By default A is `forward_features(x)`, the
last convolutional stage of every convlens model; any named module can be asked for instead.
"""

from __future__ import annotations

import contextlib
import threading

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

    `target` (B,) is the class explained for each image (default: the predicted one). Threads may
    share one eval-mode model (the server does): the gradient is taken with respect to the map
    alone, so no parameter's `.grad` is read or written and the model is left untouched.
    """
    with _eval_mode(model):
        if layer is None:
            with torch.no_grad():  # the backbone needs no graph: only d score / d map is used
                fmap = model.forward_features(x)  # (B, K, h, w)
            _need_map(fmap, "forward_features")
            fmap = fmap.detach().requires_grad_(True)  # a leaf of its own, never x itself
            with torch.enable_grad():
                logits = model.forward_head(fmap)
        else:
            with torch.enable_grad():
                fmap, logits = _forward_with_map(model, x.detach(), layer)
        target = _target(logits, target)
        score = logits.gather(1, target[:, None]).sum()
        (grads,) = torch.autograd.grad(score, fmap)  # (B, K, h, w)
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
    cam = F.relu((alpha * fmap.detach()).sum(1, keepdim=True))  # (B, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return _unit_range(cam[:, 0]), logits.detach().softmax(1)


def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """|d score / d pixel|, the largest over colour channels, in [0, 1]: (B, H, W)."""
    x = x.detach().clone().requires_grad_(True)
    with _eval_mode(model), torch.enable_grad():
        logits = model(x)
        target = _target(logits, target)
        (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    return _unit_range(grads.abs().amax(1))  # (B, H, W)


def has_feature_map(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether forward_features gives a map (B, C, H, W), as every CNN does, not a vector (MLP)."""
    with _eval_mode(model), torch.no_grad():
        return model.forward_features(x[:1]).ndim == 4


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """The model in eval mode for the block. A model wholly in eval mode is not written to, so
    threads sharing it never race on its mode; one with a module training is put back as it was."""
    modes = {m: m.training for m in model.modules()}
    if not any(modes.values()):
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


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
    """(the layer's output, as a leaf the gradient is taken for; logits) of one forward pass."""
    module = find_layer(model, layer)
    seen: list[torch.Tensor] = []
    caller = threading.get_ident()

    def keep(mod, inputs, output):
        # Another thread's forward pass through the shared module runs this hook too: skip it.
        # A module used twice: explain its first use.
        if seen or threading.get_ident() != caller:
            return None
        _need_map(output, layer)
        seen.append(output.detach().requires_grad_(True))
        return seen[0]  # the rest of the pass runs on the leaf

    handle = module.register_forward_hook(keep)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if not seen:
        raise ConvlensError(f"layer {layer!r} is not used by the forward pass")
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
