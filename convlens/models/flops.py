"""How big a model is: trainable parameters, forward FLOPs for one image, a summary row."""

from __future__ import annotations

import torch
from torch import nn

from convlens.models.registry import create_model, image_size_pair, model_entrypoint


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, in_channels: int, image_size: int | tuple[int, int]) -> int:
    """Forward FLOPs for one image, as torch's FlopCounterMode counts them.

    A multiply-add is 2 FLOPs: a conv is 2 * C_out * C_in/groups * k_h * k_w * H_out * W_out and a
    Linear is 2 * in * out; biases, activations, pooling and batch norm count 0.
    """
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else ("cpu", torch.float32)
    x = torch.zeros(1, in_channels, *image_size_pair(image_size), device=device, dtype=dtype)
    was_training = model.training
    model.eval()  # batch norm uses running statistics; nothing is updated
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def model_info(
    name: str,
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int | tuple[int, int] = (28, 28),
) -> dict[str, object]:
    """{name, params, flops, description} for `convlens models`; description is a docstring line."""
    model = create_model(
        name, in_channels=in_channels, num_classes=num_classes, image_size=image_size
    )
    if name.startswith("tv-"):
        description = f"torchvision {name[3:]}"
    elif name.startswith("timm-"):
        description = f"timm {name[5:]}"
    else:
        description = (model_entrypoint(name).__doc__ or "").strip().splitlines()[0:1]
        description = description[0] if description else ""
    return {
        "name": name,
        "params": count_parameters(model),
        "flops": count_flops(model, in_channels, image_size),
        "description": description,
    }
