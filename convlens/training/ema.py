"""Lookahead averaging of the weights (airbench): an EMA that is copied back into the model.

From `start` (a share of all steps) on, every `every` steps the average moves towards the
current weights with decay `decay ** every * progress ** 3` (little averaging early, much at the
end), and the model continues from the average. Each epoch ends on the averaged weights.
"""

from __future__ import annotations

import torch
from torch import nn


class Lookahead:
    """The running average of a model's float tensors (weights and BatchNorm statistics)."""

    def __init__(self, decay: float, start: float, every: int) -> None:
        self.decay, self.start, self.every = decay, start, every
        self.avg: dict[str, torch.Tensor] | None = None  # None until `start`

    @torch.no_grad()
    def step(self, model: nn.Module, step: int, total: int) -> None:
        """Call after optimisation step `step` (1-based) of `total`."""
        if step < self.start * total or step % self.every:
            return
        if self.avg is None:
            self.avg = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return
        self._blend(model, self.decay**self.every * (step / total) ** 3)

    @torch.no_grad()
    def end_epoch(self, model: nn.Module) -> None:
        """Put the averaged weights into the model."""
        if self.avg is not None:
            self._blend(model, 1.0)

    def _blend(self, model: nn.Module, decay: float) -> None:
        for name, current in model.state_dict().items():
            if current.is_floating_point():
                avg = self.avg[name]
                avg.lerp_(current, 1 - decay)
                current.copy_(avg)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.avg or {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.avg = dict(tensors) if tensors else None
