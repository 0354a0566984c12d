"""The training loop: batch, forward, loss, backward, step, schedule, log; a checkpoint per epoch.

Everything random in an epoch comes from a generator seeded by (seed, epoch), and the global
RNG state is saved with each checkpoint, so a killed run resumed from its last checkpoint ends
with the same weights, bit for bit on the CPU, as a run that was never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from convlens.config import TrainConfig, make_config, save_config, to_dict
from convlens.data import Dataset, load_dataset
from convlens.data.badfiles import write_bad_files
from convlens.data.batches import channel_stats, iterate_batches, normalize, to_device
from convlens.device import autocast, resolve_amp, resolve_device, sync_debug
from convlens.errors import ConfigError, ConvlensError, TrainingError
from convlens.models import create_model
from convlens.runs.checks import one_line
from convlens.runs.folder import Run, resolve_weights
from convlens.runs.lock import claim_new_run_dir, claim_run_dir_to_resume
from convlens.runs.weights import load_state, read_safetensors, save_state, save_weights
from convlens.training import distributed
from convlens.training.ema import Lookahead
from convlens.training.optim import (
    build_optimizer,
    flatten_optimizer,
    get_lr,
    set_lr,
    unflatten_optimizer,
)
from convlens.training.progress import Progress
from convlens.training.tasks import Classify, make_task
from convlens.version import __version__

RESUMABLE_CHANGES = {"device", "threads", "run", "resume"}  # settings a resume may change


def fit(cfg: TrainConfig) -> Path:
    """Train a model as `cfg` says; return the run folder."""
    torch.set_flush_denormal(True)  # denormal floats are ~100x slower on x86 CPUs
    try:
        return _fit(cfg)
    finally:
        torch.set_flush_denormal(False)  # torch's default, for whatever runs next


def _fit(cfg: TrainConfig) -> Path:
    with resolve_run(cfg) as (cfg, run_dir):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        group, device = distributed.setup(resolve_device(cfg.device), cfg.batch_size)
        try:
            run_dir = distributed.from_main(run_dir, group)  # the folder rank 0 holds
            return _train(cfg, run_dir, group, device)
        finally:
            distributed.teardown(group)


def _train(cfg: TrainConfig, run_dir: Path, group: distributed.Group, device) -> Path:
    amp = resolve_amp(cfg.amp, device)
    log = Progress(enabled=group.main)
    task = make_task(cfg)
    with distributed.local_main_first(group):  # one process per machine builds a folder cache
        ds, mean, std, hflip = load_data(cfg, log, task)
    meta = weights_meta(cfg, ds, mean, std, hflip, task)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, ds, log, mean, std, task, meta).to(device)
    if device.type == "cuda":  # fixed batch shapes: let cuDNN time its kernels once, keep the best
        torch.backends.cudnn.benchmark = not cfg.deterministic
    if device.type == "cuda" and type(task).batch is Classify.batch:
        # Images cross to the GPU once; batches are cut, mirrored and shifted there. A task with
        # its own batch hook keeps CPU batches: its augmentation may mix in CPU tensors.
        ds.train = to_device(ds.train, device)
    if group.main:
        open_run(cfg, run_dir, ds, log)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    drop_last, steps_per_epoch, total_steps = epoch_steps(cfg, len(ds.train))
    ema = lookahead(cfg, steps_per_epoch)
    state = {"epoch": 0, "rows": [], "best_acc": -1.0, "best_epoch": None, "stale": 0}
    state_path = Run(run_dir).state
    if cfg.resume:
        state = _load_state(state_path, model, opt, ema)
        log.note(f"resuming {run_dir} after epoch {state['epoch']} of {cfg.epochs}")
    log.start(cfg, ds, run_dir, model, device, amp)
    trained = distributed.wrap(model, group)  # DDP when torchrun started several processes
    if cfg.compile:  # `model` itself stays plain: its state_dict names carry no _orig_mod.
        trained = torch.compile(trained)

    # Reading the loss back each step would make the CPU wait for the GPU at every step; on a
    # GPU it is summed there and read (and checked) once an epoch.
    per_step = device.type == "cpu"
    norm = [torch.tensor(v, dtype=torch.float32, device=device) for v in (mean, std)]
    for epoch in range(state["epoch"], cfg.epochs):
        batches = epoch_batches(cfg, ds, epoch, hflip, drop_last)
        model.train()
        t0 = time.perf_counter()
        loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
        log.epoch_start(epoch + 1, cfg.epochs, steps_per_epoch)
        aug = torch.Generator().manual_seed(cfg.seed * 7_919 + epoch)  # the task's own draws
        with sync_debug(device):
            for i, (xb, yb) in enumerate(batches):
                xb, yb = task.batch(xb, yb, aug)
                step = epoch * steps_per_epoch + i
                lr = get_lr(step, total_steps, steps_per_epoch, cfg)
                set_lr(opt, lr, step / total_steps)
                xb, yb = distributed.shard(xb, group), distributed.shard(yb, group)
                x = normalize(xb.to(device, non_blocking=True), *norm)  # (B, C, H, W) float32
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = yb.to(device, non_blocking=True)  # (B,)
                with autocast(device, amp):
                    logits = trained(x)  # (B, K)
                loss = task.loss(model, logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema:
                    ema.step(model, step + 1, total_steps)
                loss_sum += loss.detach() * len(y)
                seen += len(y)
                value = loss.item() if per_step else None
                if value is not None:
                    check_loss(value, epoch, i, state, run_dir)
                log.step(value)
        train_loss = loss_sum.item() / max(1, seen)
        check_loss(train_loss, epoch, None, state, run_dir)
        seconds = time.perf_counter() - t0

        if ema:
            ema.end_epoch(model)
        scores = task.validate(
            model, ds.val, meta, device=device, amp=amp, channels_last=cfg.channels_last
        )
        row = end_epoch(
            run_dir,
            state,
            model.state_dict(),
            meta,
            scores,
            task.score,
            epoch=epoch + 1,
            train_loss=train_loss,
            lr=lr,
            seconds=seconds,
            write=group.main,
        )
        if group.main:
            _save_state(state_path, state, model, opt, ema)
        log.epoch_end(row, best=state["stale"] == 0)
        if early_stop(cfg, state, log):
            break

    if group.main:
        finish(run_dir, ds, log, task)
    return run_dir


# --- the pieces both engines share (convlens.training.numpy_loop runs the NumPy engine) -----


@contextlib.contextmanager
def resolve_run(cfg: TrainConfig) -> Iterator[tuple[TrainConfig, Path]]:
    """The config to train with and its run folder (a fresh one, or the one to resume), which
    this training holds until the block ends. torchrun's other ranks hold nothing and make
    nothing: rank 0 holds the folder for them all."""
    claim = claim_run_dir_to_resume if cfg.resume else claim_new_run_dir
    if distributed.launched_rank() != 0:
        claim = _unclaimed
    with claim(cfg.run) as run_dir:
        if cfg.resume:
            yield _resumed_config(run_dir, cfg), run_dir
        else:
            yield dataclasses.replace(cfg, run=str(run_dir)), run_dir


@contextlib.contextmanager
def _unclaimed(requested: str | None) -> Iterator[Path]:
    yield Path(requested) if requested else Path("runs") / "train"


def load_data(
    cfg: TrainConfig, log: Progress, task: Classify | None = None
) -> tuple[Dataset, list[float], list[float], str]:
    """The task's dataset, its per-channel mean and std, and how training mirrors images."""
    ds = load_dataset(
        cfg.data,
        data_dir=cfg.data_dir,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        strict=cfg.strict,
        image_size=cfg.image_size,
        workers=cfg.workers,
    )
    ds = (task or Classify(cfg)).prepare(ds)
    side = min(ds.image_size)
    if cfg.translate >= side:  # every shifted image would be blank, or nearly
        raise ConfigError(f"setting 'translate' must be below the image side ({side} pixels "
                          f"here), got {cfg.translate}")  # fmt: skip
    for note in ds.notes:
        log.note(note)
    mean, std = channel_stats(ds.train)
    hflip = cfg.hflip
    if hflip == "auto":  # airbench: every image mirrored on every other epoch
        hflip = "alternate" if ds.hflip else "off"
    return ds, mean, std, hflip


def open_run(cfg: TrainConfig, run_dir: Path, ds: Dataset, log: Progress) -> None:
    """Write config.yaml (of a fresh run) and bad_files.csv into the held run folder, once the
    model is built."""
    if not cfg.resume:
        save_config(cfg, Run(run_dir).config)
    if ds.bad_files:
        write_bad_files(run_dir / "bad_files.csv", ds.bad_files)
        log.note(f"{len(ds.bad_files)} unreadable image(s) skipped, listed in bad_files.csv")


def epoch_steps(cfg: TrainConfig, n_train: int) -> tuple[bool, int, int]:
    """(drop_last, steps per epoch, total steps) for `n_train` training images."""
    drop_last = n_train > cfg.batch_size  # keep BatchNorm away from a tiny last batch
    steps_per_epoch = n_train // cfg.batch_size if drop_last else 1
    return drop_last, steps_per_epoch, steps_per_epoch * cfg.epochs


def lookahead(cfg: TrainConfig, steps_per_epoch: int) -> Lookahead | None:
    """The weight average (or None), updated at least once an epoch: each epoch ends on the
    average, so one not updated in a short epoch (8x8 digits: 2 steps) would undo its training."""
    if not cfg.ema:
        return None
    return Lookahead(cfg.ema, cfg.ema_start, min(cfg.ema_every, steps_per_epoch))


def epoch_batches(cfg: TrainConfig, ds: Dataset, epoch: int, hflip: str, drop_last: bool):
    """One epoch's (uint8 images, labels) batches, order and augmentation seeded by the epoch."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    flips: bool | torch.Tensor = hflip == "random"
    if hflip == "alternate":  # a fixed coin per image, inverted on odd epochs
        coins = torch.rand(len(ds.train), generator=torch.Generator().manual_seed(cfg.seed))
        flips = (coins < 0.5) ^ (epoch % 2 == 1)  # (N,) bool
    return iterate_batches(
        ds.train,
        cfg.batch_size,
        shuffle=True,
        generator=gen,
        translate=cfg.translate,
        hflip=flips,
        drop_last=drop_last,
    )


def check_loss(value: float, epoch: int, step: int | None, state: dict, run_dir: Path) -> None:
    """Stop on a non-finite loss (of a step, or the epoch's mean), saying what weights exist."""
    if not math.isfinite(value):
        where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else "")
        raise TrainingError(
            f"{where}: loss is {value}; training stopped; {saved_weights(state, run_dir)}; "
            "try a lower --lr"
        )


def saved_weights(state: dict, run_dir: Path) -> str:
    """What the run folder holds after the epochs in `state`, for a stopped run's message."""
    last = state["epoch"]
    if not last:
        return "no epoch ended with finite scores, so no weights were saved"
    kept = f"the weights of epoch {last} (last.safetensors"
    best = state.get("best_epoch", last)  # a state saved before best_epoch was: not said
    if best is None:
        kept += "; no epoch had a finite score, so no best.safetensors"
    elif best != last:
        kept += f") and of epoch {best}, the best (best.safetensors"
    return f"{kept}) are intact in {run_dir / 'weights'}"


def end_epoch(
    run_dir: Path,
    state: dict,
    weights: dict[str, torch.Tensor],
    meta: dict,
    scores: dict,
    score: str,
    *,
    epoch: int,
    train_loss: float,
    lr: float,
    seconds: float,
    write: bool = True,
) -> dict:
    """Record the epoch's validation `scores`; save last (and best by `score`) weights. Weights
    whose validation loss is not finite have overflowed: training stops, saving nothing."""
    if not math.isfinite(scores["val_loss"]):
        raise TrainingError(
            f"epoch {epoch}: validation loss is {scores['val_loss']} (the weights overflowed); "
            f"training stopped; {saved_weights(state, run_dir)}; try a lower --lr"
        )
    prev = state["rows"][-1]["seconds"] if state["rows"] else 0.0
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": scores["val_loss"],
        score: scores[score],
        "lr": lr,
        "seconds": prev + seconds,  # cumulative training time, evaluation excluded
    }
    state["rows"].append(row)
    # "best_acc": the best score, whatever it is; a non-finite one is never best
    improved = math.isfinite(row[score]) and row[score] > state["best_acc"]
    if improved:
        state["best_acc"], state["best_epoch"], state["stale"] = row[score], epoch, 0
    else:
        state["stale"] += 1
    if write:  # with torchrun, rank 0 alone writes
        run = Run(run_dir)
        save_weights(run.last, weights, meta)
        if improved:
            save_weights(run.best, weights, meta)
        run.write_results(state["rows"])
    state["epoch"] = epoch
    return row


def early_stop(cfg: TrainConfig, state: dict, log: Progress) -> bool:
    if cfg.patience and state["stale"] >= cfg.patience:
        log.note(f"early stop: no val improvement in {cfg.patience} epochs")
        return True
    return False


def finish(run_dir: Path, ds: Dataset, log: Progress, task: Classify) -> None:
    """Evaluate the best weights on the test split; write metrics.json and the figures."""
    log.close()
    note = task.calibrate(run_dir, ds)
    if note:
        log.note(note)
    metrics = task.finish(run_dir, ds)
    log.final(task.summary(metrics), run_dir)


def weights_meta(
    cfg: TrainConfig, ds: Dataset, mean: list[float], std: list[float], hflip: str, task: Classify
) -> dict:
    """What `predict` needs besides the weights: classes, input, normalisation, model, TTA."""
    tta = cfg.tta
    if tta == "auto":  # mirrored views help only a model that was trained on mirrored images
        tta = "flip-shift" if hflip != "off" else "none"
    return {
        "task": task.name,
        "classes": ds.classes,
        "outputs": task.outputs(ds),
        "input": {"channels": ds.channels, "height": ds.image_size[0], "width": ds.image_size[1]},
        "normalize": {"mean": mean, "std": std},
        "tta": tta,
        "model": {"name": cfg.model, "args": cfg.model_args},
        "data": cfg.data,
        "versions": {"convlens": __version__, "torch": torch.__version__},
        **task.meta(ds),
    }


def build_model(
    cfg: TrainConfig,
    ds: Dataset,
    log: Progress,
    mean: list[float],
    std: list[float],
    task: Classify | None = None,
    meta: dict | None = None,
) -> nn.Module:
    """The task's model, with weights from --init, or a data-based init where it has one."""
    task = task or Classify(cfg)
    kwargs = dict(cfg.model_args)
    if cfg.pretrained:
        kwargs["pretrained"] = True
    model = create_model(
        cfg.model,
        in_channels=ds.channels,
        num_classes=task.outputs(ds),
        image_size=ds.image_size,
        **kwargs,
    )
    if not cfg.init and hasattr(model, "init_from_data"):  # e.g. fastnet's whitening layer
        model.init_from_data(normalize(ds.train.images[:5000], mean, std))
    model = task.wrap(model, meta or {})
    if cfg.init:
        log.note(init_from_file(model, cfg.init))
    return model


def init_from_file(model: nn.Module, path: str) -> str:
    """Copy every tensor whose name and shape match from a weights file; say what was kept."""
    tensors, _ = read_safetensors(resolve_weights(path))
    own = model.state_dict()
    taken = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
    if not taken:
        raise ConvlensError(f"--init {path}: no tensor matches this model's names and shapes")
    model.load_state_dict(taken, strict=False)
    skipped = sorted(set(own) - set(taken))
    more = f"; kept this model's own {', '.join(skipped)}" if skipped else ""
    return f"init: {len(taken)} of {len(own)} tensors loaded from {path}{more}"


def _save_state(path: Path, state: dict, model: nn.Module, opt, ema: Lookahead | None) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_tensors, opt_info = flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    save_state(path, tensors, {**state, "optimizer": opt_info})


def _load_state(path: Path, model: nn.Module, opt, ema: Lookahead | None) -> dict:
    if not path.is_file():
        raise ConvlensError(f"{path}: no saved state; the run stopped before its first epoch ended")
    tensors, info = load_state(path)
    try:  # a state saved by another model or another convlens, or a crafted one
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema:
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        opt.load_state_dict(unflatten_optimizer(tensors, info.pop("optimizer")))
        torch.set_rng_state(tensors["rng.torch"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise ConvlensError(
            f"{path}: this state does not fit the run's model ({one_line(e)})"
        ) from None
    return info


def _resumed_config(run_dir: Path, given: TrainConfig) -> TrainConfig:
    """The run's saved config; flags may change only where and how it runs."""
    saved = make_config(Run(run_dir).config)
    defaults = TrainConfig()
    asked = {k: v for k, v in to_dict(given).items() if v != getattr(defaults, k)}
    changed = [k for k, v in asked.items() if k not in RESUMABLE_CHANGES and v != getattr(saved, k)]
    if changed:
        raise ConfigError(f"cannot change {', '.join(changed)} when resuming {run_dir}")
    overrides = {k: v for k, v in asked.items() if k in ("device", "threads")}
    return dataclasses.replace(saved, run=str(run_dir), resume=True, **overrides)
