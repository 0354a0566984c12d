"""One image through the network, layer by layer: the data of the interactive explainer page.

`run_reference` or `run_torch` gives each layer's output (a Step); `walkthrough` makes each a
record: its kind, output shape, parameter count, the output as quantised PNGs (one per channel)
and, within a float budget, the exact float32 values, weights and bias that the page needs to
redo a conv's multiply-and-sum or a linear unit's weighted sum in the browser. Models the NumPy
engine runs (convlens.reference) are traced there, so a learner can read the very lines that
computed the numbers; any other model is traced with torch hooks.
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


def run_reference(model: reference.Sequential, x: np.ndarray) -> tuple[list[Step], np.ndarray]:
    """(steps, logits (K,)) of a NumPy-engine model for x (C, H, W) floats."""
    steps, out = [Step("input", None, x, None)], x[None]  # (1, C, H, W)
    for name, layer in model.layers.items():
        if isinstance(layer, Dropout):  # the identity in eval mode: no column of its own
            continue
        out = layer.forward(out)
        steps.append(Step(name, layer, out[0], len(steps) - 1))
    return steps, out[0]


def run_torch(model: nn.Module, x: np.ndarray) -> tuple[list[Step], np.ndarray]:
    """(steps, logits (K,)) of a torch model's leaf modules for x, in the order they ran.

    A module's input is linked to the step whose output it is (a linear layer's also through
    torch.flatten's view of it); one computed outside a module (a residual sum, a functional
    op) has no step, so that layer is not clickable.
    """
    xt = torch.from_numpy(x)[None]
    steps = [Step("input", None, x, None)]
    source = {id(xt): (0, xt)}  # id(tensor) -> (step, the tensor kept alive so ids stay unique)
    storage = {}  # (data_ptr, numel) -> the step that last wrote that memory

    def hook(name: str):
        def run(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.shape[0] != 1:
                return
            t = inputs[0] if inputs else None
            src = source.get(id(t), (None,))[0]
            if src is None and isinstance(module, nn.Linear) and isinstance(t, torch.Tensor):
                src = storage.get((t.data_ptr(), t.numel()))  # (1, C*H*W) viewing (1, C, H, W)
            out = output.detach().float()[0].numpy().copy()  # now: an in-place op may follow
            steps.append(Step(name, module, out, src))
            source[id(output)] = (len(steps) - 1, output)
            storage[(output.data_ptr(), output.numel())] = len(steps) - 1

        return run

    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        with torch.no_grad():
            logits = model(xt)[0].float().numpy()  # (K,)
    finally:
        for h in handles:
            h.remove()
    return steps, logits


def walkthrough(steps: list[Step], image: np.ndarray) -> list[dict]:
    """The page's record of every step; image: the uint8 (C, H, W) the network was shown."""
    budget = Budget()
    records = [describe(s, budget) for s in steps]
    records[0]["picture"] = picture_uri(image)
    return records


def picture_uri(image: np.ndarray) -> str:
    """A uint8 (C, H, W) image as a PNG data: URI (grey or RGB)."""
    return png_uri(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))


def describe(step: Step, budget: Budget) -> dict:
    """A step's record: kind, shape, maps, and what a click on it needs, within the budget."""
    m, out = step.layer, step.out
    rec = {"name": step.name, "kind": "input", "shape": list(out.shape), "input": step.src}
    rec["params"] = 0
    if out.ndim == 3:
        rec["maps"], rec["range"] = channel_pngs(out)
    taken = budget.take(out)
    rec["values"] = taken[0] if taken else None
    weights = None
    if isinstance(m, Conv2d):  # the NumPy engine's layers
        rec |= {"kind": "conv", "k": m.weight.data.shape[-1], "stride": m.stride}
        rec["padding"], weights = m.padding, (m.weight.data, _data(m.bias))
    elif isinstance(m, Linear):
        rec["kind"], weights = "linear", (m.weight.data, _data(m.bias))
    elif isinstance(m, MaxPool2d):
        rec |= {"kind": "pool", "k": m.k, "stride": m.s}
    elif isinstance(m, nn.Conv2d) and _plain_conv(m):  # torch's
        rec |= {"kind": "conv", "k": m.kernel_size[0], "stride": m.stride[0]}
        rec["padding"], weights = m.padding[0], (_np(m.weight), _np(m.bias))
    elif isinstance(m, nn.Linear):
        rec["kind"], weights = "linear", (_np(m.weight), _np(m.bias))
    elif isinstance(m, nn.MaxPool2d) and _plain_pool(m):
        rec |= {"kind": "pool", "k": m.kernel_size, "stride": m.stride}
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


def _plain_conv(m: nn.Conv2d) -> bool:
    # square kernel, one group, no dilation, zero padding: the window the page knows how to draw
    square = m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1]
    pad = isinstance(m.padding, tuple) and m.padding[0] == m.padding[1]
    plain = m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros"
    return square and pad and plain


def _plain_pool(m: nn.MaxPool2d) -> bool:
    # one int kernel and stride, no padding or dilation: the window the page draws
    ints = isinstance(m.kernel_size, int) and isinstance(m.stride, int)
    return ints and m.padding == 0 and m.dilation == 1


def _np(p: torch.Tensor | None) -> np.ndarray | None:
    return None if p is None else p.detach().float().cpu().numpy()


def _size(a: np.ndarray | None) -> int:
    return 0 if a is None else a.size


def _data(p: reference.Parameter | None) -> np.ndarray | None:
    return None if p is None else p.data
