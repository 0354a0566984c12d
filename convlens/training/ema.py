"""Exponential moving average of a model's weights (evaluated instead of the raw weights)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Keeps `shadow = decay * shadow + (1 - decay) * weights` after every step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v, 1 - self.decay)
            else:  # BatchNorm's step counter: copy
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow
