"""Stochastic gradient descent with momentum and weight decay: torch.optim.SGD's update rule."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from convlens.reference.layers import Parameter


class SGD:
    """`SGD(params_or_groups, lr, momentum, weight_decay, nesterov)`, groups as in torch.

    For each parameter p with gradient g (torch.optim.SGD, dampening 0):
        g = g + weight_decay * p                      L2 penalty, folded into the gradient
        v = g on the first step, else momentum * v + g
        g = g + momentum * v if nesterov else v
        p = p - lr * g
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.nesterov = nesterov
        self.velocity: dict[int, np.ndarray] = {}  # id(param) -> momentum buffer

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad[...] = 0

    def step(self) -> None:
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                self._update(p, lr, mu, wd)

    def _update(self, p: Parameter, lr: float, mu: float, wd: float) -> None:
        g = p.grad + wd * p.data if wd else p.grad
        if mu:
            v = self.velocity.get(id(p))
            v = g.copy() if v is None else mu * v + g
            self.velocity[id(p)] = v
            g = g + mu * v if self.nesterov else v
        p.data -= lr * g
