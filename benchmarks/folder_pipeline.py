"""Folder pipeline: images/s decoded (first load, building the cache), read from it, trained.

It writes Fashion-MNIST test images as PNG files into class folders under a temporary folder
(28x28 grey, about 0.8 kB each), then for each number of decoding workers (0 = threads of the
main process; 1, 2 = processes):

1. first load: list, read headers, decode every PNG, write `.convlens-cache/` (cache removed
   before, so every row decodes);
2. cached load: the same call again, which memory-maps the cache and decodes nothing;
3. one training epoch of fastnet on the cached folder (`convlens.train`, epochs=1): training
   images/s from the run's results.csv (evaluation excluded). Workers only change decoding, so
   this column should not move with them; it is there to show what the decoding costs relative
   to a training epoch.

    .venv/bin/python benchmarks/folder_pipeline.py                  # 10,000 images, ~2 min here
    .venv/bin/python benchmarks/folder_pipeline.py --images 1000 --no-train   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from fashion_mnist_cpu import cpu_name  # this folder's script: the machine's name
from PIL import Image

import convlens
from convlens.data import load_dataset
from convlens.data.cache import DIR_NAME
from convlens.data.folder import load_folder


def write_pngs(root: Path, count: int) -> int:
    """The first `count` Fashion-MNIST test images as root/<class>/<i>.png; their total bytes."""
    ds = load_dataset("fashion-mnist")
    images, labels = ds.test.images[:count], ds.test.labels[:count]  # (N, 1, 28, 28) uint8, (N,)
    total = 0
    for i, (x, y) in enumerate(zip(images, labels, strict=True)):
        path = root / ds.classes[int(y)].replace("/", "-") / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[0].numpy(), "L").save(path)
        total += path.stat().st_size
    past = time.time_ns() - 3600 * 10**9  # older than the cache's racy window, so it is written
    for path in root.rglob("*.png"):
        os.utime(path, ns=(past, past))
    return total


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def measure(root: Path, workers: int, train: bool, threads: int, runs: Path) -> dict:
    """One row: first (decoding) load, cached load and, optionally, a training epoch."""
    shutil.rmtree(root / DIR_NAME, ignore_errors=True)
    first_s, ds = timed(load_folder, root, workers=workers)
    if not (root / DIR_NAME / "manifest.json").is_file():
        raise SystemExit(f"{root}: no cache was written")
    cached_s, again = timed(load_folder, root, workers=workers)
    n = len(ds.train) + len(ds.val) + (len(ds.test) if ds.test is not None else 0)
    if not torch.equal(ds.train.images, again.train.images):
        raise SystemExit("the cached load differs from the decoded one")
    row = {
        "workers": workers,
        "images": n,
        "first_load_s": round(first_s, 3),
        "decoded_per_s": round(n / first_s),
        "cached_load_s": round(cached_s, 3),
        "cached_per_s": round(n / cached_s),
    }
    if train:
        run = convlens.train(data=str(root), epochs=1, workers=workers, threads=threads,
                             run=str(runs / f"w{workers}"))  # fmt: skip
        seconds = float((run / "results.csv").read_text().splitlines()[-1].split(",")[-1])
        row["train_epoch_s"] = round(seconds, 2)
        row["trained_per_s"] = round(len(ds.train) / seconds)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000, help="how many PNGs to write")
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--no-train", action="store_true", help="skip the training epoch")
    ap.add_argument("--out", default="benchmarks/results/folder_pipeline.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="convlens-folder-") as tmp:
        root = Path(tmp) / "fashion-png"
        png_bytes = write_pngs(root, args.images)
        load = os.getloadavg()[0]
        rows = [measure(root, w, not args.no_train, args.threads, Path(tmp) / "runs")
                for w in args.workers]  # fmt: skip
    report = {
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "load_average_before": load,
        "images": args.images,
        "png_bytes": png_bytes,
        "rows": rows,
    }
    print(f"{args.images} Fashion-MNIST PNGs ({png_bytes / 1e6:.1f} MB), load {load:.1f}")
    columns = {"workers": "workers", "first load s": "first_load_s", "decoded/s": "decoded_per_s",
               "cached s": "cached_load_s", "cached/s": "cached_per_s",
               "train epoch s": "train_epoch_s", "trained/s": "trained_per_s"}  # fmt: skip
    print("  ".join(f"{title:>13}" for title in columns))
    for r in rows:
        print("  ".join(f"{r.get(key, '-'):>13}" for key in columns.values()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
