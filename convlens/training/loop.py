"""The training loop: batch, forward, loss, backward, step, schedule, log; a checkpoint per epoch.

Everything random in an epoch comes from a generator seeded by (seed, epoch), and the global
RNG state is saved with each checkpoint, so a killed run resumed from its last checkpoint ends
with the same weights, bit for bit on the CPU, as a run that was never stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from convlens.config import TrainConfig
from convlens.data.batches import normalize, to_device
from convlens.device import autocast, choose_amp, resolve_device, sync_debug
from convlens.runs.folder import Run
from convlens.runs.weights import save_weights
from convlens.training import distributed
from convlens.training.build import build_model, resolve_stem, weights_meta
from convlens.training.data import load_data
from convlens.training.finetune import Recipe, resolve
from convlens.training.hooks import EpochEnd, Finish, MakeHooks, TrainingHooks
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
from convlens.training.optim import build_optimizer, set_lr
from convlens.training.progress import Progress
from convlens.training.resume import RunState, load_run_state, save_run_state
from convlens.training.start import start_weights

FIT_ONLY_NOTE = "epochs 0: nothing trains; the run keeps the given weights as they are"


def fit(
    cfg: TrainConfig,
    make_hooks: MakeHooks,
    finish: Finish | None = None,
    epoch_end: EpochEnd | None = None,
) -> Path:
    """Train as `cfg` says for the task whose hooks `make_hooks` gives for the config it
    resolves (a resumed run's own); `epoch_end` after each epoch and then `finish` on the main
    process, the run folder still held. Returns the run folder."""
    torch.set_flush_denormal(True)  # denormal floats are ~100x slower on x86 CPUs
    try:
        return _fit(cfg, make_hooks, finish, epoch_end)
    finally:
        torch.set_flush_denormal(False)  # torch's default, for whatever runs next


def _fit(
    cfg: TrainConfig, make_hooks: MakeHooks, finish: Finish | None, epoch_end: EpochEnd | None
) -> Path:
    with resolve_run(cfg) as (cfg, run_dir):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        group, device = distributed.setup(resolve_device(cfg.device))
        try:
            run_dir = distributed.from_main(run_dir, group)  # the folder rank 0 holds
            return _train(cfg, run_dir, group, device, make_hooks(cfg), finish, epoch_end)
        finally:
            distributed.teardown(group)


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    group: distributed.Group,
    device: torch.device,
    task: TrainingHooks,
    finish: Finish | None,
    epoch_end: EpochEnd | None = None,
) -> Path:
    cfg = resolve(cfg)  # transfer: auto -> fine-tune or full, as config.yaml records it
    amp, precision = choose_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)  # fp16's underflow
    log = Progress(enabled=group.main)
    start = start_weights(cfg)  # --init's tensors and the preprocessing the weights expect
    backbone = start and start.defaults  # photos without --image-size: the weights' input
    with distributed.local_main_first(group):  # one process per machine builds a folder cache
        ds, mean, std, hflip = load_data(cfg, log, task, backbone)
    cfg, batch_note = resolve_batch(cfg, ds, device)  # batch_size, lr: by the data if left out
    cfg, stem_note = resolve_stem(cfg, ds)  # fastnet on photos: a stride-2 stem
    for note in (batch_note, stem_note):
        if note:
            log.note(note)
    distributed.check_batch(cfg.batch_size, group)
    meta = weights_meta(cfg, ds, mean, std, hflip, task, start)
    mean, std = meta["normalize"]["mean"], meta["normalize"]["std"]  # the weights' own, if given

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, ds, log, mean, std, task, meta, start).to(device)
    if device.type == "cuda":  # fixed batch shapes: let cuDNN time its kernels once, keep the best
        torch.backends.cudnn.benchmark = not cfg.deterministic
    drop_last, steps_per_epoch, total_steps = epoch_steps(cfg, len(ds.train))
    batches = TrainBatches(cfg, ds, hflip, drop_last, group.world)  # in memory, or a loader
    if device.type == "cuda" and task.gpu_batches and batches.in_memory:
        # Images cross to the GPU once; batches are cut, mirrored and shifted there. A task with
        # its own batch hook keeps CPU batches: its augmentation may mix in CPU tensors.
        ds.train = to_device(ds.train, device)
    if group.main:
        open_run(cfg, run_dir, ds, log)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    recipe = Recipe(cfg, model)  # before the optimiser: its groups split head from body
    opt = build_optimizer(model, cfg, recipe.body_shares)
    ema = lookahead(cfg, steps_per_epoch)
    state = RunState()
    state_path = Run(run_dir).state
    if cfg.resume:
        state = load_run_state(state_path, model, opt, ema)
        log.note(f"resuming {run_dir} after epoch {state.epoch} of {cfg.epochs}")
    log.start(cfg, ds, run_dir, model, device, precision)
    if note := FIT_ONLY_NOTE if not cfg.epochs else recipe.describe():
        log.note(note)
    trained = None

    # Reading the loss back each step would make the CPU wait for the GPU at every step; on a
    # GPU it is summed there and read (and checked) once an epoch.
    per_step = device.type == "cpu"
    norm = [torch.tensor(v, dtype=torch.float32, device=device) for v in (mean, std)]
    for epoch in range(state.epoch, cfg.epochs):
        if recipe.begin_epoch(model, epoch) or trained is None:  # model.train(), body frozen or not
            trained = distributed.wrap(model, group)  # DDP (torchrun): of what trains now
            if cfg.compile:  # `model` itself stays plain: its state_dict names carry no _orig_mod.
                trained = torch.compile(trained)
        t0 = time.perf_counter()
        loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
        log.epoch_start(epoch + 1, cfg.epochs, steps_per_epoch)
        aug = torch.Generator().manual_seed(cfg.seed * 7_919 + epoch)  # the task's own draws
        with sync_debug(device), distributed.uneven(trained, batches.per_rank):
            for i, (xb, yb) in enumerate(batches(epoch)):
                xb, yb = task.batch(xb, yb, aug)
                step = step_of(epoch, i, steps_per_epoch)
                lr, body_frozen = recipe.lr(step, steps_per_epoch)
                set_lr(opt, lr, step / total_steps, body_frozen)
                if not batches.per_rank:  # shards: each rank reads its own batches
                    xb, yb = distributed.shard(xb, group), distributed.shard(yb, group)
                x = normalize(xb.to(device, non_blocking=True), *norm)  # (B, C, H, W) float32
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = yb.to(device, non_blocking=True)  # (B,)
                with autocast(device, amp):
                    logits = trained(x)  # (B, K)
                loss = task.loss(model, logits, y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()  # as loss.backward() when fp16 is off
                scaler.step(opt)
                scaler.update()
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

        if batches.per_rank:  # shards: every sample once an epoch, over all the processes
            read = distributed.total(seen, group, device)
            log.note(f"epoch {epoch + 1}: {read} of {len(ds.train)} training samples read by "
                     f"{group.world} process(es)")  # fmt: skip
        if group.main:
            note_bad_files(run_dir, ds, batches.bad, log)
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
            save_run_state(state_path, state, model, opt, ema)
        log.epoch_end(row, best=state.stale == 0)
        if group.main and epoch_end is not None:
            epoch_end(cfg, run_dir, row)
        if early_stop(cfg, state, log):
            break

    log.close()
    if not cfg.epochs and group.main:  # fit only: the weights as given are the run's best
        save_weights(Run(run_dir).best, model.state_dict(), meta)
    if group.main and finish is not None:
        finish(task, run_dir, ds, log)
    return run_dir
