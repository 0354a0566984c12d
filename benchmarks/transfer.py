"""Transfer learning on Fashion-MNIST: a convlens run trained on classes 0-4 (T-shirt/top,
Trouser, Pullover, Dress, Coat) starts runs on classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle
boot) that see only 10 or 50 training images per class.

Three ways to train on the few images, the same model, epochs, batch size and lr for all:
    fine-tune  --init SOURCE, the automatic recipe (--transfer auto): the head alone with the
               body and its BatchNorm statistics frozen, then the body at 0.1x the head's lr
    naive      --init SOURCE --transfer full: every layer at the same lr from the first step
    scratch    no weights: the same run from a random init
Validation: 10 further images per class (the best epoch is chosen on them); test: the 5,000
test images of classes 5-9. One JSON line per run ({"shots", "method", "seed", "test_acc",
"seconds"}), then one per shot count with the median over seeds and the two gaps the issue
sets targets for: fine-tune - scratch >= 15 points, fine-tune - naive > 0.

    .venv/bin/python benchmarks/transfer.py                       # 10 and 50 shots, seeds 0-2
    .venv/bin/python benchmarks/transfer.py --shots 10 --seeds 0 --epochs 30
    .venv/bin/python benchmarks/transfer.py --tiny                # a smoke run (~1 minute)

Evidence: none yet (the lead runs it on a quiet machine; the table goes in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import convlens

SOURCE, TARGET = range(5), range(5, 10)
VAL_SHOTS = 10  # validation images per target class (never trained on)


def subset(images: np.ndarray, labels: np.ndarray, classes, per_class: int | None, rng):
    """uint8 (N, 28, 28) images of `classes` relabelled 0..k-1; per_class of each (None: all)."""
    picked = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        picked.append(idx if per_class is None else rng.choice(idx, per_class, replace=False))
    idx = np.concatenate(picked)
    new = np.searchsorted(np.array(list(classes)), labels[idx])
    return images[idx], new


def write_npz(path: Path, names: list[str], splits: dict) -> Path:
    """A MedMNIST-layout .npz with class names (convlens reads `classes`)."""
    arrays = {"classes": np.array(names)}
    for split, (x, y) in splits.items():
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y[:, None]
    np.savez(path, **arrays)
    return path


def fashion_mnist() -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Class names and uint8 (N, 28, 28) images with labels of the train (train + val) and
    test splits, as convlens loads them."""
    ds = convlens.load_dataset("fashion-mnist")
    train_x = np.concatenate([ds.train.images.numpy(), ds.val.images.numpy()])[:, 0]
    train_y = np.concatenate([ds.train.labels.numpy(), ds.val.labels.numpy()])
    return ds.classes, {
        "train": (train_x, train_y),
        "test": (ds.test.images.numpy()[:, 0], ds.test.labels.numpy()),
    }


def train(work: Path, name: str, data: Path, settings: dict) -> tuple[float, float]:
    """(test accuracy, seconds) of one convlens run."""
    t0 = time.perf_counter()
    run = convlens.train(data=str(data), run=str(work / name), **settings)
    seconds = time.perf_counter() - t0
    return json.loads((run / "metrics.json").read_text())["accuracy"], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", default="10,50", help="training images per target class")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", default="fastnet")
    ap.add_argument("--source-epochs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=20, help="epochs on the few images")
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--lr", type=float, default=0.2, help="the same for all three methods")
    ap.add_argument("--work", help="folder for the data files and runs [default: a temp dir]")
    ap.add_argument("--tiny", action="store_true", help="smoke run: small source, 2 epochs")
    args = ap.parse_args()
    shots = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="convlens-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    names, splits = fashion_mnist()
    rng = np.random.default_rng(0)
    source_n = 200 if args.tiny else None  # per class
    src = {s: subset(*splits[s], SOURCE, source_n, rng) for s in ("train", "test")}
    source_data = write_npz(work / "source.npz", [names[c] for c in SOURCE], src)
    common = {"model": args.model, "threads": 0}
    source_epochs = 1 if args.tiny else args.source_epochs
    acc, seconds = train(work, "source", source_data, {**common, "epochs": source_epochs})
    row = {"run": "source", "classes": "0-4", "epochs": source_epochs}
    print(json.dumps({**row, "test_acc": round(acc, 4), "seconds": round(seconds, 1)}), flush=True)
    source = work / "source"

    epochs = 2 if args.tiny else args.epochs
    test = subset(*splits["test"], TARGET, 100 if args.tiny else None, rng)
    few = {**common, "epochs": epochs, "batch_size": args.batch_size, "lr": args.lr}
    methods = {
        "fine-tune": {"init": str(source), "transfer": "auto"},
        "naive": {"init": str(source), "transfer": "full"},
        "scratch": {},
    }
    for n in shots:
        accs: dict[str, list[float]] = {m: [] for m in methods}
        for seed in seeds:
            pick = np.random.default_rng(1000 * n + seed)
            x, y = subset(*splits["train"], TARGET, n + VAL_SHOTS, pick)
            train_idx = np.concatenate([np.flatnonzero(y == c)[:n] for c in range(5)])
            val_idx = np.concatenate([np.flatnonzero(y == c)[n:] for c in range(5)])
            data = write_npz(
                work / f"target-{n}-{seed}.npz",
                [names[c] for c in TARGET],
                {"train": (x[train_idx], y[train_idx]), "val": (x[val_idx], y[val_idx]),
                 "test": test},
            )  # fmt: skip
            for method, extra in methods.items():
                acc, seconds = train(work, f"{method}-{n}-{seed}", data,
                                     {**few, **extra, "seed": seed})  # fmt: skip
                accs[method].append(acc)
                print(json.dumps({"shots": n, "method": method, "seed": seed,
                                  "test_acc": round(acc, 4), "seconds": round(seconds, 1)}),
                      flush=True)  # fmt: skip
        med = {m: statistics.median(a) for m, a in accs.items()}
        summary = {
            "shots": n,
            "seeds": len(seeds),
            "median_test_acc": {m: round(a, 4) for m, a in med.items()},
            "fine_tune_minus_scratch_points": round(100 * (med["fine-tune"] - med["scratch"]), 1),
            "fine_tune_minus_naive_points": round(100 * (med["fine-tune"] - med["naive"]), 1),
        }
        print(json.dumps(summary), flush=True)
    print(json.dumps({"work": str(work)}))


if __name__ == "__main__":
    main()
