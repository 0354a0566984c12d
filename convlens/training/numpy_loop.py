"""`convlens train --engine numpy`: the training loop, the NumPy reference engine doing the math.

Piece for piece the loop of convlens.training.loop: the same data order, augmentation and
learning-rate schedule, the same run folder. Only forward, loss, backward and the SGD step are
convlens.reference's. torch serves the data pipeline (batches, normalisation) and draws the
initial weights, so for one seed both engines start from the same weights and see the same
batches. No resume state is written: a NumPy run is short and starts over.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from convlens import reference
from convlens.config import TrainConfig
from convlens.data.batches import normalize
from convlens.errors import ConfigError
from convlens.training.build import build_model, weights_meta
from convlens.training.data import load_data
from convlens.training.hooks import EpochEnd, Finish, MakeHooks, NumpyHooks
from convlens.training.lifecycle import (
    TrainBatches,
    check_loss,
    early_stop,
    end_epoch,
    epoch_steps,
    lookahead,
    note_bad_files,
    open_run,
    resolve_batch,
    resolve_run,
    step_of,
)
from convlens.training.optim import get_lr, param_groups, set_lr
from convlens.training.progress import Progress
from convlens.training.resume import RunState

DEVICE = SimpleNamespace(type="cpu (numpy engine)")  # what the start line names as the device


def fit(
    cfg: TrainConfig,
    make_hooks: MakeHooks,
    finish: Finish | None = None,
    epoch_end: EpochEnd | None = None,
) -> Path:
    """Train as `cfg` says with the NumPy engine (a classifier's hooks, from `make_hooks`);
    `epoch_end` after each epoch, then `finish`, the run folder still held. Returns it."""
    check_supported(cfg)
    with resolve_run(cfg) as (cfg, run_dir):
        return _fit(cfg, run_dir, make_hooks(cfg), finish, epoch_end)


def _fit(
    cfg: TrainConfig,
    run_dir: Path,
    task: NumpyHooks,
    finish: Finish | None,
    epoch_end: EpochEnd | None = None,
) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # the data pipeline's threads
    log = Progress()
    ds, mean, std, hflip = load_data(cfg, log, task)
    cfg, chosen = resolve_batch(cfg, ds, torch.device("cpu"))  # batch_size, lr: if left out
    if chosen:
        log.note(chosen)
    meta = weights_meta(cfg, ds, mean, std, hflip, task)

    torch.manual_seed(cfg.seed)
    init = build_model(cfg, ds, log, mean, std, task, meta)  # the torch engine's initial weights
    model = reference.build_model(
        cfg.model,
        in_channels=ds.channels,
        num_classes=ds.num_classes,
        image_size=ds.image_size,
        seed=cfg.seed,  # dropout masks
        **cfg.model_args,
    )
    model.load_state_dict({k: v.numpy() for k, v in init.state_dict().items()})
    open_run(cfg, run_dir, ds, log)
    opt = build_sgd(model, cfg)
    shared = TorchView(model)
    weight = None if task.class_weight is None else task.class_weight.numpy()
    loss_fn = reference.CrossEntropyLoss(cfg.label_smoothing, weight=weight)

    drop_last, steps_per_epoch, total_steps = epoch_steps(cfg, len(ds.train))
    batches = TrainBatches(cfg, ds, hflip, drop_last)  # in memory, or photo_loader's
    ema = lookahead(cfg, steps_per_epoch)
    state = RunState()
    log.start(cfg, ds, run_dir, init, DEVICE, "float32, the NumPy engine")
    with threadpool_limits(cfg.threads or None):  # BLAS threads, as torch's for its engine
        for epoch in range(cfg.epochs):
            model.train()
            t0 = time.perf_counter()
            loss_sum, seen = 0.0, 0
            log.epoch_start(epoch + 1, cfg.epochs, steps_per_epoch)
            for i, (xb, yb) in enumerate(batches(epoch)):
                step = step_of(epoch, i, steps_per_epoch)
                lr = get_lr(step, total_steps, steps_per_epoch, cfg)
                set_lr(opt, lr, step / total_steps)
                x = normalize(xb, mean, std).numpy()  # (B, C, H, W) float32
                value = train_step(model, opt, loss_fn, x, yb.numpy())
                if ema:
                    ema.step(shared, step + 1, total_steps)
                check_loss(value, epoch, i, state, run_dir)
                loss_sum += value * len(yb)
                seen += len(yb)
                log.step(value)
            seconds = time.perf_counter() - t0
            note_bad_files(run_dir, ds, batches.bad, log)
            if ema:
                ema.end_epoch(shared)

            val = ds.val.images.numpy()  # (N, C, H, W) uint8
            probs = model.predict_proba(val, mean, std)  # (N, K), one view, as the torch loop
            row = end_epoch(
                run_dir,
                state,
                {k: torch.from_numpy(v) for k, v in model.state_dict().items()},
                meta,
                task.probability_scores(torch.from_numpy(probs), ds.val.labels),
                task.score,
                epoch=epoch + 1,
                train_loss=loss_sum / max(1, seen),
                lr=lr,
                seconds=seconds,
            )
            log.epoch_end(row, best=state.stale == 0)
            if epoch_end is not None:
                epoch_end(cfg, run_dir, row)
            if early_stop(cfg, state, log):
                break

    log.close()
    if finish is not None:  # the test metrics come from the torch engine, on these weights
        finish(task, run_dir, ds, log)
    return run_dir


class TorchView:
    """The NumPy model's weights as torch tensors sharing their memory (for Lookahead)."""

    def __init__(self, model: reference.Sequential) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in self.model.state_dict().items()}


def train_step(
    model: reference.Sequential,
    opt: reference.SGD,
    loss_fn: reference.CrossEntropyLoss,
    x: np.ndarray,
    y: np.ndarray,
) -> float:
    """Forward, loss, backward, SGD step on one batch x (B, C, H, W), y (B,); the loss."""
    logits = model(x)  # (B, K)
    loss = loss_fn(logits, y)
    opt.zero_grad()
    model.backward(loss_fn.backward())  # dL/dlogits (B, K), then layer by layer back to conv1
    opt.step()
    return loss


def build_sgd(model: reference.Sequential, cfg: TrainConfig) -> reference.SGD:
    """SGD as convlens.training.optim.build_optimizer sets it up: no decay on biases."""
    groups = param_groups(model, cfg.weight_decay)
    nesterov = cfg.nesterov and cfg.momentum > 0
    return reference.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov)


def check_supported(cfg: TrainConfig) -> None:
    """The NumPy engine does plain SGD on the CPU for the models it has; say what it lacks."""
    if cfg.model not in reference.MODELS:
        have = ", ".join(reference.MODELS)
        raise ConfigError(f"--engine numpy has the models {have}; not {cfg.model!r}")
    unsupported = {
        "optimizer": cfg.optimizer != "sgd",
        "resume": cfg.resume,
        "device": cfg.device not in ("auto", "cpu"),
        "amp": cfg.amp == "bf16",
    }
    names = [name for name, bad in unsupported.items() if bad]
    if names:
        shown = ", ".join(f"{n}={getattr(cfg, n)}" for n in names)
        raise ConfigError(f"--engine numpy does not support {shown} (float32 SGD on the CPU)")
