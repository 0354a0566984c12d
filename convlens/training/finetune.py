"""The fine-tuning recipe, after fastai's `fine_tune`: with weights to start from, the head is
trained first with the body frozen, then the whole net with the body at a lower lr.

    epochs [0, freeze_epochs)        head alone: the body's parameters take no gradient and
                                     its BatchNorm layers run in eval mode, so neither its
                                     weights nor its running statistics move
    epochs [freeze_epochs, epochs)   every layer; the body's lr is body_lr_mult x the head's
                                     (discriminative learning rates)

Each phase runs its own lr schedule (fastai's two fit_one_cycle). The head is the registry
model's last layer (`head_layer`) plus whatever a task wraps around the model (an embed run's
BN-neck and identity centres); the body is the rest of the registry model. `full` trains every
layer at one lr from the first step, as a run from scratch does.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from convlens.config import TrainConfig
from convlens.errors import ConfigError
from convlens.models.base import head_layer
from convlens.training.optim import get_lr


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
        self.body: list[nn.Parameter] = []
        self.norms: list[nn.Module] = []  # the body's BatchNorm layers
        if self.fine_tune:
            self.body, self.norms = split_body(model)
        self.trainable = {id(p) for p in self.body if p.requires_grad}  # fastnet's stem: never
        self.frozen: bool | None = None  # the body's state now (None: not set yet)

    @property
    def body_ids(self) -> set[int] | None:
        """ids of the body's parameters, for the optimiser's groups (None: one lr for all)."""
        return {id(p) for p in self.body} if self.fine_tune else None

    def describe(self) -> str | None:
        """One line for the log (None for a run from scratch)."""
        if not self.fine_tune:
            full = "transfer: full (every layer trains at one lr from the first step)"
            return full if self.cfg.pretrained or self.cfg.init else None
        text = "transfer: fine-tune: "
        if self.freeze_epochs == self.cfg.epochs:  # a linear probe
            return (
                text + "every epoch the head alone (the body and its BatchNorm statistics frozen)"
            )
        if self.freeze_epochs:
            first = f"epochs 1-{self.freeze_epochs}" if self.freeze_epochs > 1 else "epoch 1"
            text += f"{first} the head alone (the body and its BatchNorm statistics frozen), then "
        return text + f"every layer, the body at {self.cfg.body_lr_mult:g}x the head's lr"

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

    def lr(self, step: int, steps_per_epoch: int) -> tuple[float, float]:
        """(the head's lr, the body's lr as a share of it) at optimisation step `step`, each
        phase on its own schedule."""
        start, epochs = 0, self.cfg.epochs
        frozen = self.fine_tune and step < self.freeze_epochs * steps_per_epoch
        if self.fine_tune:
            start = 0 if frozen else self.freeze_epochs
            epochs = self.freeze_epochs if frozen else self.cfg.epochs - self.freeze_epochs
        local = step - start * steps_per_epoch
        lr = get_lr(local, epochs * steps_per_epoch, steps_per_epoch, self.cfg)
        return lr, 0.0 if frozen else (self.cfg.body_lr_mult if self.fine_tune else 1.0)


def split_body(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Module]]:
    """(the body's parameters, its BatchNorm layers): the registry model inside `model` (the
    first module with `forward_head`) without its head layer."""
    net = next((m for m in model.modules() if hasattr(m, "forward_head")), model)
    _, head = head_layer(net)
    in_head = {id(p) for p in head.parameters()}
    body = [p for p in net.parameters() if id(p) not in in_head]
    head_modules = {id(m) for m in head.modules()}
    norms = [
        m
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_modules
    ]
    return body, norms
