"""Optimisers and learning-rate schedules (a schedule is a pure function of the step)."""

from __future__ import annotations

import math

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


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, body: dict[int, float] | None = None
) -> torch.optim.Optimizer:
    """SGD with momentum (Nesterov optional) or AdamW, at the schedule's starting rate; with
    `body` (parameter id -> its share of the lr), each group split by those shares."""
    groups = param_groups(model, cfg.weight_decay)
    if body is not None:
        groups = split_groups(groups, body)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
    )


def split_groups(groups: list[dict], body: dict[int, float]) -> list[dict]:
    """Each group as its head part and one part per share of the body's (`"body_share"`),
    empty parts left out, so that `set_lr` can freeze the body or give it its own lr."""
    out = []
    for group in groups:
        head = [p for p in group["params"] if id(p) not in body]
        if head:
            out.append({**group, "params": head})
        for share in sorted({body[id(p)] for p in group["params"] if id(p) in body}):
            params = [p for p in group["params"] if body.get(id(p)) == share]
            out.append({**group, "params": params, "body_share": share})
    return out


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


def set_lr(opt, lr: float, progress: float = 0.0, body_frozen: bool = False) -> None:
    """Give each group `lr` times its `lr_scale` and `body_share`, or 0 once `progress`
    reaches its `until` (and a body group's 0 while the body is frozen)."""
    for group in opt.param_groups:
        frozen = body_frozen and "body_share" in group
        active = progress < group.get("until", 1.0) and not frozen
        scale = group.get("lr_scale", 1.0) * group.get("body_share", 1.0)
        group["lr"] = lr * scale if active else 0.0
