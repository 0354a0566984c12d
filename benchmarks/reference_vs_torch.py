"""Time per training step of `textbook`: the NumPy reference engine against PyTorch on the CPU.

One step = forward, cross-entropy (label smoothing 0.1), backward, Nesterov SGD update with
weight decay, as both training loops run it; batch 64 of 28x28x1 images, float32 (torch without
bf16 autocast), the same thread count for both (torch threads and BLAS threads). Data loading
and augmentation are left out: both engines share that code. Steps of the two engines
alternate, so a disturbance on the machine hits both alike; the numbers are medians. A second,
instrumented pass splits the NumPy step into im2col, the convolutions' matrix products, col2im,
max-pooling, ReLU, the fully connected layer, and loss + SGD.

    .venv/bin/python benchmarks/reference_vs_torch.py                  # 1 thread, 50 steps
    .venv/bin/python benchmarks/reference_vs_torch.py --threads 2 --steps 100
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from convlens import reference
from convlens.config import TrainConfig
from convlens.data.batches import normalize
from convlens.models import create_model
from convlens.reference import layers
from convlens.training.numpy_loop import build_sgd, train_step
from convlens.training.optim import build_optimizer

TARGET = 3.0  # the NumPy engine should be within 3x of PyTorch per step


def make_engines(batch: int, size: int, cfg: TrainConfig):
    """A torch step and a NumPy step on the same batch, from the same initial weights."""
    torch.manual_seed(0)
    shape = {"in_channels": 1, "num_classes": 10, "image_size": (size, size)}
    model = create_model("textbook", **shape)
    ours = reference.build_model("textbook", **shape)
    ours.load_state_dict({k: v.numpy() for k, v in model.state_dict().items()})
    opt, our_opt = build_optimizer(model, cfg), build_sgd(ours, cfg)
    loss_fn = reference.CrossEntropyLoss(cfg.label_smoothing)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=gen)
    x, y = normalize(images, [0.5], [0.25]), torch.randint(0, 10, (batch,), generator=gen)
    x_np, y_np = x.numpy(), y.numpy()

    def torch_step() -> None:
        logits = model(x)  # (B, 10)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def numpy_step() -> None:
        train_step(ours, our_opt, loss_fn, x_np, y_np)

    return torch_step, numpy_step


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def side_by_side(torch_step, numpy_step, steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each engine, alternating which goes first."""
    times: dict[str, list[float]] = {"torch": [], "numpy": []}
    for i in range(warmup + steps):
        order = [("torch", torch_step), ("numpy", numpy_step)]
        for name, fn in order if i % 2 else order[::-1]:
            t = timed(fn)
            if i >= warmup:
                times[name].append(t)
    return times


def breakdown(numpy_step, steps: int) -> dict[str, float]:
    """Median milliseconds per step of each part of the NumPy step (an instrumented pass)."""
    spent: dict[str, float] = defaultdict(float)

    def clock(key, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0

        return wrapper

    patched = [(layers, "im2col"), (layers, "col2im")]
    for cls in (layers.Conv2d, layers.MaxPool2d, layers.ReLU, layers.Linear, layers.Flatten):
        patched += [(cls, "forward"), (cls, "backward")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in patched]
    for owner, name, fn in saved:
        key = "im2col" if name == "im2col" else "col2im" if name == "col2im" else owner.__name__
        setattr(owner, name, clock(key, fn))
    rows: dict[str, list[float]] = defaultdict(list)
    try:
        for _ in range(steps):
            spent.clear()
            total = timed(numpy_step)
            part = dict(spent)
            conv = part.get("Conv2d", 0) - part.get("im2col", 0) - part.get("col2im", 0)
            split = {
                "im2col (pad + window copy)": part.get("im2col", 0),
                "conv matrix products (+ bias)": conv,
                "col2im (scatter-add)": part.get("col2im", 0),
                "max-pool (forward + backward)": part.get("MaxPool2d", 0),
                "ReLU": part.get("ReLU", 0),
                "fully connected + flatten": part.get("Linear", 0) + part.get("Flatten", 0),
            }
            split["loss + SGD + rest"] = total - sum(split.values())
            split["total (instrumented)"] = total
            for k, v in split.items():
                rows[k].append(v * 1e3)
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
    return {k: statistics.median(v) for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per engine")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=28, help="image height and width")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(model="textbook", lr=0.01, amp="off")  # small lr: random labels stay finite
    load_before = os.getloadavg()
    with threadpool_limits(args.threads):
        torch_step, numpy_step = make_engines(args.batch_size, args.size, cfg)
        times = side_by_side(torch_step, numpy_step, args.steps, args.warmup)
        parts = breakdown(numpy_step, args.steps)
    load_after = os.getloadavg()

    print(
        f"textbook, batch {args.batch_size}, {args.size}x{args.size}x1, float32, "
        f"{args.threads} thread(s), {args.steps} steps per engine after {args.warmup} warm-up"
    )
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch "
        f"{torch.__version__}, numpy {np.__version__}; load average {load_before[0]:.2f} "
        f"before, {load_after[0]:.2f} after"
    )
    print(f"\n{'engine':<8}{'median ms/step':>16}{'p25':>9}{'p75':>9}{'images/s':>10}")
    med = {}
    for name, ts in times.items():
        q1, med[name], q3 = np.percentile(np.array(ts) * 1e3, [25, 50, 75])
        print(
            f"{name:<8}{med[name]:>16.2f}{q1:>9.2f}{q3:>9.2f}"
            f"{args.batch_size / med[name] * 1e3:>10.0f}"
        )
    ratio = med["numpy"] / med["torch"]
    verdict = "within" if ratio <= TARGET else "over"
    print(f"\nnumpy / torch: {ratio:.2f}x per step ({verdict} the {TARGET:g}x target)")

    print("\nwhere the NumPy step's time goes (instrumented, medians):")
    total = parts["total (instrumented)"]
    for name, ms in parts.items():
        share = "" if name.startswith("total") else f"{100 * ms / total:>6.1f}%"
        print(f"  {name:<32}{ms:>8.2f} ms {share}")


if __name__ == "__main__":
    main()
