"""One image through a torch model, every op in the order it ran: the explainer page's steps.

torch.fx traces the model's forward into a graph, so an op computed outside a module (a
residual block's `out + identity`, torch.flatten) is a step too, linked to the steps it read.
A model fx cannot trace (Python control flow on values) is traced with forward hooks on its
leaf modules instead, where such ops leave no step.
"""

from __future__ import annotations

import operator
import weakref

import numpy as np
import torch
import torch.fx
from torch import nn

from convlens.explain.walkthrough import Step

ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}  # an fx node's target


_GRAPHS = weakref.WeakKeyDictionary()  # model -> its fx graph, None where fx cannot trace it


def run_torch(model: nn.Module, x: np.ndarray) -> tuple[list[Step], np.ndarray]:
    """(steps, logits (K,)) of a torch model for x (C, H, W) floats."""
    if model not in _GRAPHS:  # traced once: a page runs the model 33 times (drag, choices)
        try:
            _GRAPHS[model] = torch.fx.symbolic_trace(model)  # shares the model's modules
        except Exception:  # fx raises many types (TraceError, TypeError...) on untraceable code
            _GRAPHS[model] = None
    graph = _GRAPHS[model]
    return run_hooks(model, x) if graph is None else run_graph(graph, x)


def run_graph(graph: torch.fx.GraphModule, x: np.ndarray) -> tuple[list[Step], np.ndarray]:
    """(steps, logits) from fx's graph: a step per module call and per tensor op on the image."""
    steps = [Step("input", None, x, None)]
    made: dict[str, int] = {}  # fx node name -> its step
    calls: dict[str, int] = {}  # module name -> times called (a block's ReLU runs twice)
    modules = dict(graph.named_modules())

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node.op == "placeholder":
                made[node.name] = 0
            elif node.op != "output" and _batch_of_one(out):
                srcs = [made.get(a.name) for a in node.all_input_nodes]  # torch.cat's list too
                layer, name = _what(node, modules, calls)
                value = out.detach().float()[0].numpy().copy()  # now: an in-place op may follow
                src = srcs[0] if srcs else None
                operands = [i for i in srcs if i is not None] if isinstance(layer, str) else None
                steps.append(Step(name, layer, value, src, operands))
                made[node.name] = len(steps) - 1
            return out

    with torch.no_grad():
        logits = Recorder(graph).run(torch.from_numpy(x)[None])[0].float().numpy()  # (K,)
    return steps, logits


def _batch_of_one(out) -> bool:
    return isinstance(out, torch.Tensor) and out.ndim in (2, 4) and out.shape[0] == 1


def _what(node: torch.fx.Node, modules: dict, calls: dict) -> tuple[object, str]:
    """(the step's layer: a module, "add" or an op's name, its column's name)."""
    if node.op == "call_module":
        n = calls[node.target] = calls.get(node.target, 0) + 1
        return modules[node.target], node.target + (f" (call {n})" if n > 1 else "")
    two = len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args)
    if node.target in ADDS and two and not node.kwargs:  # a + b: a residual sum
        return "add", node.name
    return getattr(node.target, "__name__", str(node.target)), node.name


def run_hooks(model: nn.Module, x: np.ndarray) -> tuple[list[Step], np.ndarray]:
    """(steps, logits) of a torch model's leaf modules for x, in the order they ran.

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
