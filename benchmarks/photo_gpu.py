"""Photo pipeline on a GPU (issue 21): training images/s at 224 px with a ResNet-50, GPU memory.

Writes a class-folder tree of seeded synthetic JPEGs of mixed sizes (shorter side 256-640 px,
aspect 0.6-1.8: no dataset needs to travel to the GPU machine), then trains `--model`
(tv-resnet50, no pretrained weights) on it with the photo recipe at `--image-size` (224) on
`--device`, `--workers` processes decoding and augmenting, and writes one JSON object: each
epoch's training images/s (from results.csv), the peak GPU memory the run held
(torch.cuda.max_memory_allocated) next to the size of the training split decoded at the model's
size (the split streams: it must never be copied whole to the GPU), and the test accuracy (of
synthetic classes: a check that it learns, not a figure).

    python3 benchmarks/photo_gpu.py --out /tmp/photo.json            # on the GPU machine
    .venv/bin/python benchmarks/photo_gpu.py --device cpu --model fastnet --image-size 64 \\
        --per-class 8 2 2 --epochs 1 --workers 1 --out /tmp/photo.json   # a dry run, ~1 min
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import convlens

CLASSES = 10


def picture(rng: np.random.Generator, label: int) -> Image.Image:
    """A smooth random background with a class-coloured disc, at a random size and aspect."""
    short = int(rng.integers(256, 641))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.8))))
    w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR)).copy()
    yy, xx = np.ogrid[:h, :w]
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, 0.25 * short
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    img[disc] = np.array([25 * label, 255 - 25 * label, (97 * label) % 256], dtype=np.uint8)
    return Image.fromarray(img)


def write_tree(root: Path, per_class: tuple[int, int, int], seed: int) -> int:
    """train/val/test class folders of JPEGs; the number of training images."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val", "test"), per_class, strict=True):
        for c in range(CLASSES):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                picture(rng, c).save(folder / f"{i}.jpg", quality=90)
    return per_class[0] * CLASSES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tv-resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--per-class", type=int, nargs=3, default=[400, 40, 40])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="benchmarks/results/photo_gpu.json")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    with tempfile.TemporaryDirectory(prefix="photo-gpu-") as tmp:
        t0 = time.perf_counter()
        n_train = write_tree(Path(tmp) / "tree", tuple(args.per_class), seed=0)
        written = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        run = convlens.train(
            data=str(Path(tmp) / "tree"), run=str(Path(tmp) / "run"), model=args.model,
            image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
            workers=args.workers, device=args.device, calibrate="none",
        )  # fmt: skip
        peak = torch.cuda.max_memory_allocated() if cuda else None
        with open(Path(run) / "results.csv") as f:
            rows = list(csv.DictReader(f))
        metrics = json.loads((Path(run) / "metrics.json").read_text())
    epochs, before = [], 0.0
    for row in rows:
        seconds = float(row["seconds"]) - before  # results.csv's seconds run on
        before = float(row["seconds"])
        epochs.append({"epoch": int(row["epoch"]), "seconds": round(seconds, 2),
                       "images_per_s": round(n_train / seconds, 1)})  # fmt: skip
    decoded = n_train * 3 * args.image_size**2
    out = {
        "device": torch.cuda.get_device_name() if cuda else args.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "train_images": n_train,
        "tree_written_s": round(written, 1),
        "epochs": epochs,
        "peak_gpu_mib": None if peak is None else round(peak / 2**20, 1),
        "train_split_decoded_mib": round(decoded / 2**20, 1),
        "test_accuracy": round(metrics["accuracy"], 4),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
