"""Parameter sharing, counted: each conv layer against the layers that would do its job unshared.

For a conv layer mapping an input volume (C, H, W) to an output volume (C', H', W'):

    conv                 C' * C/groups * kh * kw  (+ C' biases)          one filter, every place
    locally connected    H' * W' * C' * C/groups * kh * kw (+ C'H'W')    same window, own weights
    fully connected      (C * H * W) * (C' * H' * W') (+ C'H'W')         every input to every output

conv vs locally connected is the saving from sharing alone; vs fully connected, from sharing and
locality together (the seed article's "significantly reduces the number of parameters").
"""

from __future__ import annotations

import torch
from torch import nn


def parameter_sharing(model: nn.Module, input_shape: tuple[int, int, int]) -> dict:
    """Per conv layer and for the whole model: parameters as built, unshared, fully connected."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # name -> (in, out) volumes

    def hook(name: str):
        def record(module, inputs, output):
            shapes.setdefault(name, (tuple(inputs[0].shape[1:]), tuple(output.shape[1:])))

        return record

    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    handles = [m.register_forward_hook(hook(n)) for n, m in convs.items()]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    layers = []
    for name in shapes:  # in the order the forward pass ran them
        conv, (vin, vout) = convs[name], shapes[name]
        layers.append(_layer_row(name, conv, vin, vout))
    total = sum(p.numel() for p in model.parameters())
    conv_total = sum(row["conv"] for row in layers)
    return {
        "input": list(input_shape),
        "layers": layers,
        "total": total,
        "conv": conv_total,
        "other": total - conv_total,  # fully connected, batch norm, ...: counted as they are
        "locally_connected_total": total - conv_total + sum(r["locally_connected"] for r in layers),
        "fully_connected_total": total - conv_total + sum(r["fully_connected"] for r in layers),
    }


def _layer_row(name: str, conv: nn.Conv2d, vin: tuple, vout: tuple) -> dict:
    c_out, h_out, w_out = vout
    outputs = c_out * h_out * w_out
    inputs = vin[0] * vin[1] * vin[2]
    window = conv.weight[0].numel()  # C/groups * kh * kw: the weights one output unit sees
    bias = outputs if conv.bias is not None else 0  # unshared: one bias per output unit
    params = sum(p.numel() for p in conv.parameters())
    unshared = h_out * w_out * c_out * window + bias
    dense = inputs * outputs + bias
    return {
        "layer": name,
        "in": list(vin),  # (C, H, W)
        "out": list(vout),  # (C', H', W')
        "kernel": list(conv.kernel_size),
        "conv": params,
        "locally_connected": unshared,
        "fully_connected": dense,
        "ratio": dense / params,  # how many times more a fully connected layer would need
    }
