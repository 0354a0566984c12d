"""One image through the network, layer by layer: the data of the interactive explainer page.

Each layer becomes a record: its kind, output shape, parameter count, the output as quantised
PNGs (one per channel) and, within a float budget, the exact float32 values, weights and bias
that the page needs to redo a conv's multiply-and-sum or a linear unit's weighted sum in the
browser. Models the NumPy engine runs (convlens.reference) are traced there, so a learner can
read the very lines that computed the numbers; any other model is traced with torch hooks.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image
from torch import nn

from convlens import reference
from convlens.reference.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU

MAX_FLOATS = 600_000  # float32 numbers embedded per page: 2.4 MB raw, 3.2 MB as base64
MAX_MAPS = 64  # channels drawn per layer: a wide layer's maps are its first 64


def b64_floats(a: np.ndarray) -> str:
    """float32 little-endian bytes as base64 (the page reads them into a Float32Array)."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def png_uri(a: np.ndarray) -> str:
    """A uint8 (H, W) or (H, W, 3) array as a data: URI of a PNG."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def channel_pngs(out: np.ndarray) -> tuple[list[str], list[float]]:
    """(C, H, W) floats -> a grey PNG per channel (the first MAX_MAPS), quantised on the
    layer's own [lo, hi]."""
    lo, hi = float(out.min()), float(out.max())
    q = np.round((out[:MAX_MAPS] - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)  # (C, H, W)
    return [png_uri(c) for c in q], [lo, hi]


class Budget:
    """Embeds float arrays until MAX_FLOATS is spent; then a record keeps only its PNGs."""

    def __init__(self, limit: int = MAX_FLOATS) -> None:
        self.left = limit

    def take(self, *arrays: np.ndarray | None) -> list[str] | None:
        n = sum(a.size for a in arrays if a is not None)
        if n > self.left:
            return None
        self.left -= n
        return [None if a is None else b64_floats(a) for a in arrays]


def record(name: str, kind: str, out: np.ndarray, src: int | None, budget: Budget, **extra):
    """A layer's record for one image's output `out` (C, H, W) or (F,); src: its input's index."""
    rec = {"name": name, "kind": kind, "shape": list(out.shape), "input": src, "params": 0}
    rec |= extra
    if out.ndim == 3:
        rec["maps"], rec["range"] = channel_pngs(out)
    taken = budget.take(out)
    rec["values"] = taken[0] if taken else None
    return rec


def with_params(rec: dict, weight: np.ndarray, bias: np.ndarray | None, budget: Budget) -> dict:
    """Add a layer's weights (and their count) to its record, if the budget allows."""
    rec["params"] = int(weight.size + (0 if bias is None else bias.size))
    rec["wshape"] = list(weight.shape)
    taken = budget.take(weight, bias)
    rec["weight"], rec["bias"] = taken if taken else (None, None)
    return rec


def input_record(image: np.ndarray, x: np.ndarray, budget: Budget) -> dict:
    """The picture as the network sees it: uint8 (C, H, W) shown, normalised floats x used."""
    rec = record("input", "input", x, None, budget)
    rec["picture"] = png_uri(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
    return rec


def trace_reference(
    model: reference.Sequential, image: np.ndarray, x: np.ndarray
) -> tuple[list[dict], np.ndarray]:
    """(records, logits (K,)) of a NumPy-engine model for one image (x: (C, H, W) floats)."""
    budget = Budget()
    records = [input_record(image, x, budget)]
    out = x[None]  # (1, C, H, W)
    for name, layer in model.layers.items():
        if isinstance(layer, Dropout):  # the identity in eval mode: no column of its own
            continue
        out = layer.forward(out)
        src = len(records) - 1
        if isinstance(layer, Conv2d):
            extra = {"k": layer.weight.data.shape[-1], "stride": layer.stride}
            rec = record(name, "conv", out[0], src, budget, padding=layer.padding, **extra)
            records.append(with_params(rec, layer.weight.data, _data(layer.bias), budget))
        elif isinstance(layer, Linear):
            rec = record(name, "linear", out[0], src, budget)
            records.append(with_params(rec, layer.weight.data, _data(layer.bias), budget))
        elif isinstance(layer, MaxPool2d):
            records.append(record(name, "pool", out[0], src, budget, k=layer.k, stride=layer.s))
        elif isinstance(layer, ReLU | Flatten):
            kind = "relu" if isinstance(layer, ReLU) else "flatten"
            records.append(record(name, kind, out[0], src, budget))
        else:
            records.append(record(name, type(layer).__name__.lower(), out[0], src, budget))
    return records, out[0]


def trace_torch(
    model: nn.Module, image: np.ndarray, x: np.ndarray
) -> tuple[list[dict], np.ndarray]:
    """(records, logits (K,)) of a torch model's leaf modules, in the order they ran.

    A module's input is linked to the record whose output it is; one computed outside a
    module (a residual sum, a functional op) has no record, so that layer is not clickable.
    """
    budget = Budget()
    records = [input_record(image, x, budget)]
    source: dict[int, tuple[int, torch.Tensor]] = {}  # id(tensor) -> (record, tensor kept alive)
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]

    def hook(name: str):
        def run(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.shape[0] != 1:
                return
            src = source.get(id(inputs[0]), (None,))[0] if inputs else None
            out = output.detach().float()[0].numpy()
            records.append(leaf_record(name, module, out, src, budget))
            source[id(output)] = (len(records) - 1, output)

        return run

    xt = torch.from_numpy(x)[None]
    source[id(xt)] = (0, xt)
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        with torch.no_grad():
            logits = model(xt)[0].float().numpy()  # (K,)
    finally:
        for h in handles:
            h.remove()
    return records, logits


def leaf_record(name: str, m: nn.Module, out: np.ndarray, src: int | None, budget: Budget):
    """A torch leaf module's record; a plain conv or linear layer keeps its weights."""
    if isinstance(m, nn.Conv2d) and _plain_conv(m):
        extra = {"k": m.kernel_size[0], "stride": m.stride[0], "padding": m.padding[0]}
        rec = record(name, "conv", out, src, budget, **extra)
        return with_params(rec, _np(m.weight), None if m.bias is None else _np(m.bias), budget)
    if isinstance(m, nn.Linear):
        rec = record(name, "linear", out, src, budget)
        return with_params(rec, _np(m.weight), None if m.bias is None else _np(m.bias), budget)
    if isinstance(m, nn.MaxPool2d) and isinstance(m.kernel_size, int) and not m.padding:
        return record(name, "pool", out, src, budget, k=m.kernel_size, stride=m.stride)
    kind = {nn.ReLU: "relu", nn.Flatten: "flatten"}.get(type(m), type(m).__name__.lower())
    rec = record(name, kind, out, src, budget)
    rec["params"] = sum(p.numel() for p in m.parameters())
    return rec


def _plain_conv(m: nn.Conv2d) -> bool:
    # square kernel, one group, no dilation, zero padding: the window the page knows how to draw
    square = m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1]
    pad = isinstance(m.padding, tuple) and m.padding[0] == m.padding[1]
    plain = m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros"
    return square and pad and plain


def _np(p: torch.Tensor) -> np.ndarray:
    return p.detach().float().cpu().numpy()


def _data(p: reference.Parameter | None) -> np.ndarray | None:
    return None if p is None else p.data
