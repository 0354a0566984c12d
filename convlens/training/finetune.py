"""The fine-tuning recipe, after fastai's `fine_tune`: with weights to start from, the head is
trained first with the body frozen, then the whole net with lower lrs for the body.

    epochs [0, freeze_epochs)        head alone: the body's parameters take no gradient and
                                     its BatchNorm layers run in eval mode, so neither its
                                     weights nor its running statistics move
    epochs [freeze_epochs, epochs)   every layer; the body's n stages (its top-level blocks)
                                     at body_lr_mult ** ((n - i) / n) x the head's lr for
                                     stage i = 0..n-1: from body_lr_mult at the input towards
                                     the head's 1 (fastai's slice(lr * mult, lr))

Each phase runs its own lr schedule (fastai's two fit_one_cycle). The head is the registry
model's last layer (`head_layer`) plus whatever a task wraps around the model (an embed run's
BN-neck and identity centres); the body is the rest of the registry model. `full` trains every
layer at one lr from the first step, as a run from scratch does.

body_lr_mult's default, 0.3, was chosen on benchmarks/transfer.py's fashion-scenes protocol
(classes 0-4 -> 5-9, fastnet, 20 epochs at batch 25, lr 0.2; BENCHMARKS.md, "A stronger source"):
on five held-out seeds it beat training from scratch by 19.9 / 19.5 points with 10 / 50 images
per class, and full fine-tuning by 3.5 points at 10 but not at 50 (-3.7). Over three sources and
ten fresh draws (30 pairs, "Three sources, ten fresh seeds") it beats scratch by ~20 points on
every pair and ties full fine-tuning (+0.8 / +0.4 points, both intervals across zero).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from convlens.config import TrainConfig
from convlens.errors import ConfigError
from convlens.models.base import head_layer
from convlens.training.optim import get_lr

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def resolve(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with transfer and freeze_epochs decided (what config.yaml records): auto is
    fine-tune when weights are given (--pretrained, --init), else full."""
    transfer = cfg.transfer
    if transfer == "auto":
        transfer = "fine-tune" if cfg.pretrained or cfg.init else "full"
    freeze = cfg.freeze_epochs
    if transfer == "full":
        freeze = 0
    elif freeze is None:  # fastai freezes 1 epoch of 1 + n; here a quarter, the body never idle
        freeze = max(1, cfg.epochs // 4) if cfg.epochs > 1 else 0
    if freeze > cfg.epochs:
        raise ConfigError(f"setting 'freeze_epochs' ({freeze}) must be at most 'epochs' "
                          f"({cfg.epochs})")  # fmt: skip
    return dataclasses.replace(cfg, transfer=transfer, freeze_epochs=freeze)


class Recipe:
    """Which parameters are the body, and per epoch and step what trains at which lr."""

    def __init__(self, cfg: TrainConfig, model: nn.Module) -> None:
        self.cfg = cfg
        self.freeze_epochs = cfg.freeze_epochs or 0
        self.fine_tune = cfg.transfer == "fine-tune"
        self.stages: list[list[nn.Parameter]] = []  # the body's, input side first
        self.norms: list[nn.Module] = []  # the body's BatchNorm layers
        if self.fine_tune:
            self.stages, self.norms = split_body(model)
        self.body = [p for stage in self.stages for p in stage]
        self.trainable = {id(p) for p in self.body if p.requires_grad}  # fastnet's stem: never
        self.frozen: bool | None = None  # the body's state now (None: not set yet)

    @property
    def body_shares(self) -> dict[int, float] | None:
        """Each body parameter's (id) lr as a share of the head's once unfrozen: body_lr_mult
        for the first stage, rising geometrically stage by stage towards the head's 1 (fastai's
        slice(lr * mult, lr)); None: one lr for every parameter."""
        if not self.fine_tune:
            return None
        n, mult = len(self.stages), self.cfg.body_lr_mult
        return {id(p): mult ** ((n - i) / n) for i, stage in enumerate(self.stages) for p in stage}

    def describe(self) -> str | None:
        """One line for the log (None for a run from scratch)."""
        if not self.fine_tune:
            full = "transfer: full (every layer trains at one lr from the first step)"
            return full if self.cfg.pretrained or self.cfg.init else None
        text = "transfer: fine-tune: "
        frozen = "the head alone (the body and its BatchNorm statistics frozen)"
        if self.freeze_epochs == self.cfg.epochs:  # a linear probe
            return f"{text}every epoch {frozen}"
        if self.freeze_epochs:
            first = f"epochs 1-{self.freeze_epochs}" if self.freeze_epochs > 1 else "epoch 1"
            text += f"{first} {frozen}, then "
        shares = sorted(set((self.body_shares or {}).values()))
        lrs = f"{shares[0]:.2g}x to {shares[-1]:.2g}x" if len(shares) > 1 else f"{shares[0]:.2g}x"
        return f"{text}every layer, the body's {len(self.stages)} stages at {lrs} the head's lr"

    def begin_epoch(self, model: nn.Module, epoch: int) -> bool:
        """Put `model` in training mode for `epoch`, the body frozen or not; whether that
        changed what trains (a DDP or compiled wrapper must then be made again)."""
        frozen = self.fine_tune and epoch < self.freeze_epochs
        for p in self.body:
            p.requires_grad = not frozen and id(p) in self.trainable
        model.train()
        if frozen:
            for m in self.norms:
                m.eval()  # running mean and variance stay those of the weights' own data
        changed = self.frozen is not None and frozen != self.frozen
        self.frozen = frozen
        return changed

    def lr(self, step: int, steps_per_epoch: int) -> tuple[float, bool]:
        """(the head's lr, whether the body is frozen) at optimisation step `step`, each phase
        on its own schedule."""
        start, epochs = 0, self.cfg.epochs
        frozen = self.fine_tune and step < self.freeze_epochs * steps_per_epoch
        if self.fine_tune:
            start = 0 if frozen else self.freeze_epochs
            epochs = self.freeze_epochs if frozen else self.cfg.epochs - self.freeze_epochs
        local = step - start * steps_per_epoch
        return get_lr(local, epochs * steps_per_epoch, steps_per_epoch, self.cfg), frozen


def split_body(model: nn.Module) -> tuple[list[list[nn.Parameter]], list[nn.Module]]:
    """(the body's parameters by stage, input side first; its BatchNorm layers): the registry
    model inside `model` (the first module with `forward_head`) without its head layer."""
    net = next((m for m in model.modules() if hasattr(m, "forward_head")), model)
    _, head = head_layer(net)
    in_head = {id(p) for p in head.parameters()}
    head_modules = {id(m) for m in head.modules()}
    norms = [m for m in net.modules() if isinstance(m, BATCH_NORMS) and id(m) not in head_modules]
    return _stages(net, in_head), norms


def _stages(module: nn.Module, skip: set[int]) -> list[list[nn.Parameter]]:
    """The parameters of `module`'s children in the order built, one list per child; a child
    holding nearly all of them (torchvision's `features`, timm's `stages`) is split the same
    way."""
    own = [p for p in module.parameters(recurse=False) if id(p) not in skip]
    kids = [(k, [p for p in k.parameters() if id(p) not in skip]) for k in module.children()]
    total = sum(p.numel() for p in module.parameters() if id(p) not in skip)
    out = [own] if own else []
    for kid, params in kids:
        if params and sum(p.numel() for p in params) >= 0.9 * total and any(kid.children()):
            out += _stages(kid, skip)
        elif params:
            out.append(params)
    return out
