"""Optimisers and learning-rate schedules (a schedule is a pure function of the step), and an
optimiser's state split into tensors and JSON for the resume state."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from convlens.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only, unless the model says otherwise.

    A model may define `param_groups(weight_decay)` (as nanoGPT's `configure_optimizers`) to
    give groups their own `weight_decay`, an `lr_scale` (a multiple of the scheduled lr) and an
    `until` (the share of training after which the group stops changing).
    """
    if hasattr(model, "param_groups"):
        return model.param_groups(weight_decay)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (Nesterov optional) or AdamW, at the schedule's starting rate."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
    )


def get_lr(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate for optimisation step `step` (0-based) of `total_steps`."""
    t = step / max(1, total_steps)  # share of training done, 0..1
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    # onecycle: linear rise from lr_start to the peak over `warmup`, then linear fall to lr_end
    # (airbench's triangular shape: 0.2 -> 1 at 23% -> 0.07 of the peak).
    start, end = cfg.lr_start, cfg.lr_end
    if t < cfg.warmup:
        return cfg.lr * (start + (1 - start) * t / cfg.warmup)
    return cfg.lr * (1 - (1 - end) * (t - cfg.warmup) / (1 - cfg.warmup))


def set_lr(opt, lr: float, progress: float = 0.0) -> None:
    """Give each group `lr` times its `lr_scale`, or 0 once `progress` reaches its `until`."""
    for group in opt.param_groups:
        active = progress < group.get("until", 1.0)
        group["lr"] = lr * group.get("lr_scale", 1.0) if active else 0.0


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state_dict into tensors and JSON (no pickle)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    """Rebuild the state_dict that `flatten_optimizer` split."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in info["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": info["param_groups"]}
