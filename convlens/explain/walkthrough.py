"""One image through the network, layer by layer: the data of the interactive explainer page.

`run_reference` or `run_torch` gives each layer's output (a Step); `walkthrough` makes each a
record: its kind, output shape, parameter count, the output as quantised PNGs (one per channel)
and, within a float budget, the exact float32 values, weights and bias that the page needs to
redo a conv's multiply-and-sum, a BatchNorm's scale and shift, a residual sum or a linear
unit's weighted sum in the browser. Models the NumPy engine runs (convlens.reference) are traced
there, so a learner can read the very lines that computed the numbers; any other model with
torch (explain/torch_trace.py).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from convlens import reference
from convlens.reference.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU

MAX_FLOATS = 400_000  # float32 numbers embedded per page: 1.6 MB raw, 2.1 MB as base64
MAX_MAPS = 64  # channels drawn per layer: a wide layer's maps are its first 64


def b64_floats(a: np.ndarray) -> str:
    """float32 little-endian bytes as base64 (the page reads them into a Float32Array)."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def png_uri(a: np.ndarray) -> str:
    """A uint8 (H, W) or (H, W, 3) array as a data: URI of a PNG."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def channel_pngs(out: np.ndarray, span=None) -> tuple[list[str], list[float]]:
    """(C, H, W) floats -> a grey PNG per channel (the first MAX_MAPS), quantised on `span`
    (lo, hi), by default the layer's own."""
    lo, hi = span if span is not None else (float(out.min()), float(out.max()))
    q = np.clip(np.round((out[:MAX_MAPS] - lo) / (hi - lo or 1.0) * 255), 0, 255)
    q = q.astype(np.uint8)  # (C, H, W)
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


@dataclass
class Step:
    """One layer's output for one image, and where its input came from."""

    name: str
    layer: object  # a convlens.reference layer or a torch module (None for the image)
    out: np.ndarray  # (C, H, W) or (F,)
    src: int | None  # the step whose output is its input (0: the image; None: not traced)
    operands: list[int] | None = None  # an op outside a module: the steps it read (a sum's two)


def run_reference(model: reference.Sequential, x: np.ndarray) -> tuple[list[Step], np.ndarray]:
    """(steps, logits (K,)) of a NumPy-engine model for x (C, H, W) floats."""
    steps, out = [Step("input", None, x, None)], x[None]  # (1, C, H, W)
    for name, layer in model.layers.items():
        if isinstance(layer, Dropout):  # the identity in eval mode: no column of its own
            continue
        out = layer.forward(out)
        steps.append(Step(name, layer, out[0], len(steps) - 1))
    return steps, out[0]


def walkthrough(steps: list[Step], image: np.ndarray) -> list[dict]:
    """The page's record of every step; image: the uint8 (C, H, W) the network was shown."""
    budget = Budget()
    records = [describe(s, budget) for s in steps]
    records[0]["picture"] = picture_uri(image)
    return records


def image_layers(steps: list[Step], limit: int) -> list[dict]:
    """Another image's part of each record (maps, range, values within `limit` floats): the
    page keeps the weights of the first image's records."""
    budget = Budget(limit)
    return [outputs(s.out, budget) for s in steps]


def outputs(out: np.ndarray, budget: Budget) -> dict:
    """A layer's output as the page draws it (maps, range) and redoes sums from (values)."""
    rec = {}
    if out.ndim == 3:
        rec["maps"], rec["range"] = channel_pngs(out)
    taken = budget.take(out)
    rec["values"] = taken[0] if taken else None
    return rec


def picture_uri(image: np.ndarray) -> str:
    """A uint8 (C, H, W) image as a PNG data: URI (grey or RGB)."""
    return png_uri(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))


def describe(step: Step, budget: Budget) -> dict:
    """A step's record: kind, shape, maps, and what a click on it needs, within the budget."""
    m, out = step.layer, step.out
    rec = {"name": step.name, "kind": "input", "shape": list(out.shape), "input": step.src}
    if step.operands is not None:
        rec["operands"] = step.operands
    rec["params"] = 0
    rec |= outputs(out, budget)
    weights = None
    if isinstance(m, Conv2d):  # the NumPy engine's layers
        rec |= {"kind": "conv", "k": m.weight.data.shape[-1], "stride": m.stride}
        rec["padding"], weights = m.padding, (m.weight.data, _data(m.bias))
    elif isinstance(m, Linear):
        rec["kind"], weights = "linear", (m.weight.data, _data(m.bias))
    elif isinstance(m, MaxPool2d):
        rec |= {"kind": "pool", "k": m.k, "stride": m.s, "padding": 0}
    elif isinstance(m, nn.Conv2d) and _plain_conv(m):  # torch's
        rec |= {"kind": "conv", "k": m.kernel_size[0], "stride": m.stride[0]}
        rec["padding"], weights = m.padding[0], (_np(m.weight), _np(m.bias))
    elif isinstance(m, nn.Linear):
        rec["kind"], weights = "linear", (_np(m.weight), _np(m.bias))
    elif isinstance(m, nn.MaxPool2d) and _plain_pool(m):
        rec |= {"kind": "pool", "k": m.kernel_size, "stride": m.stride, "padding": m.padding}
    elif isinstance(m, nn.BatchNorm2d) and m.running_var is not None:
        rec["kind"], rec["bn"] = "batchnorm", budget.take(*_bn(m))
    elif isinstance(m, str):  # an op outside a module (torch_trace): "add", "flatten", "cat"...
        rec["kind"], rec["outside"] = m, True
    elif m is not None:
        kinds = {ReLU: "relu", Flatten: "flatten", nn.ReLU: "relu", nn.Flatten: "flatten"}
        rec["kind"] = kinds.get(type(m), type(m).__name__.lower())
    if isinstance(m, nn.Module):
        rec["params"] = sum(p.numel() for p in m.parameters())
    if weights is not None:
        weight, bias = weights
        rec["params"], rec["wshape"] = int(weight.size + _size(bias)), list(weight.shape)
        rec["weight"] = rec["bias"] = None
        if step.src is not None:  # a layer fed from outside a module cannot be redone: no weights
            taken = budget.take(weight, bias)
            rec["weight"], rec["bias"] = taken if taken else (None, None)
    return rec


def _bn(m: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """An eval-mode BatchNorm as y = x * scale + shift per channel: ((C,) scale, (C,) shift)."""
    scale = _np(m.weight) if m.affine else np.ones(m.num_features, np.float32)
    shift = _np(m.bias) if m.affine else np.zeros(m.num_features, np.float32)
    inv = 1.0 / np.sqrt(_np(m.running_var).astype(np.float64) + m.eps)
    mean = _np(m.running_mean).astype(np.float64)
    return (scale * inv).astype(np.float32), (shift - mean * scale * inv).astype(np.float32)


def _plain_conv(m: nn.Conv2d) -> bool:
    # square kernel, one group, no dilation, zero padding: the window the page knows how to draw
    square = m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1]
    pad = isinstance(m.padding, tuple) and m.padding[0] == m.padding[1]
    plain = m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros"
    return square and pad and plain


def _plain_pool(m: nn.MaxPool2d) -> bool:
    # one int kernel, stride and padding, no dilation: the window the page draws
    ints = all(isinstance(v, int) for v in (m.kernel_size, m.stride, m.padding))
    return ints and m.dilation == 1  # ceil_mode's last window runs off the map: drawn as -


def _np(p: torch.Tensor | None) -> np.ndarray | None:
    return None if p is None else p.detach().float().cpu().numpy()


def _size(a: np.ndarray | None) -> int:
    return 0 if a is None else a.size


def _data(p: reference.Parameter | None) -> np.ndarray | None:
    return None if p is None else p.data
