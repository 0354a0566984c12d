"""Scenes recipe: today's small-image pipeline against the photo recipe, in the same training time.

On fashion-scenes (Fashion-MNIST items on real photos, JPEG, shorter side 160-480 px; generated
on first use) it trains two rows with `convlens train` in a subprocess each, and prints one
JSON line per row:

- "today": the pipeline before issue 15, forced: the folder loaded as data/folder.py loads it
  (the median size capped at 64 px, every image squashed to it, aspect lost) and saved as an
  .npz, trained from memory with 2-pixel shifts and alternating flips (--augment light);
- "today FLAGS" (`--today-args FLAGS`, repeatable): today's pipeline with more flags, e.g. the
  photo recipe's CPU batch and lr ('--batch-size 64 --lr 0.25') on the squashed images;
- "photo": the photo recipe at the size it chooses (96 px on a CPU from scratch; --image-size
  to choose): shorter side resized, random resized crops, flips, colour jitter, the split
  streamed, test images centre-cropped; on a CPU batch 64, lr 0.25 and fastnet's stride-2 stem
  (TrivialAugment: --photo-args '--auto-augment trivial').

Both get the same training-time budget (`--budget` seconds, evaluation excluded): a one-epoch
probe run measures each row's seconds per epoch (from results.csv), then the row trains for as
many whole epochs as fit the budget (at least one), its one-cycle schedule spanning them all.
Each line gives the epochs, the training seconds it took and the test accuracy (metrics.json).
Issue 15's target: the photo row at least 10 points above today's on this CPU. Both rows train
under `--amp` (default auto: device.choose_amp's choice, float32 on a CPU without AMX, where
bf16 ran slower); each line says the precision its run chose.

`--shards` adds a row: the photo recipe for the photo row's epochs again, from WebDataset shards
of the same tree (`convlens shards`), under torchrun with two gloo processes; its notes say how
many samples were read each epoch (every one once), its accuracy should match the photo row's
within noise (issue 15's shard figure).

    .venv/bin/python benchmarks/scenes_recipe.py --budget 600 --shards \\
        --today-args '--batch-size 64 --lr 0.25'                      # the figures
    .venv/bin/python benchmarks/scenes_recipe.py --budget 600 --photo-args '--mix cutmix'
    .venv/bin/python benchmarks/scenes_recipe.py --data fashion-scenes-mini --budget 20 \\
        --probe-epochs 1                                              # a smoke run, ~2 min
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fashion_mnist_cpu import cpu_name  # this folder's script: the machine's name

from convlens.data import load_dataset
from convlens.data.named import tree_root


def legacy_npz(name: str, data_dir: str | None, out: Path) -> tuple[Path, str]:
    """The named folder set as today's loader decodes it (squashed, <= 64 px), as an .npz."""
    root = tree_root(name, data_dir)
    ds = load_dataset(str(root))  # no photo options: data/folder.py's in-memory path
    arrays = {"classes": np.array(ds.classes)}
    for split in ("train", "val", "test"):
        part = ds.split(split)
        arrays[f"{split}_images"] = part.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
        arrays[f"{split}_labels"] = part.labels.numpy()[:, None]
    np.savez(out, **arrays)
    h, w = ds.image_size
    return out, f"{ds.channels}x{h}x{w} squashed (median size, capped at 64)"


def train(data: str, run: Path, epochs: int, extra: list[str], launch: list | None = None) -> dict:
    """One `convlens train` subprocess (under `launch`, e.g. torchrun); its epochs, training
    seconds and test accuracy."""
    cmd = [*(launch or [sys.executable]), "-m", "convlens", "train", "--data", data,
           "--epochs", str(epochs), "--run-dir", str(run), *extra]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    metrics = json.loads((run / "metrics.json").read_text())
    notes = [line for line in done.stdout.splitlines() if line.startswith("note:")]
    # the start line's "...classes; cpu, float32: <why>; run ...": the precision choose_amp took
    precision = re.search(r"classes; (.+?); run ", done.stdout)
    return {
        "epochs": len(rows),
        "train_seconds": round(float(rows[-1]["seconds"]), 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "test_accuracy": round(metrics["accuracy"], 4),
        "precision": precision[1] if precision else None,
        "notes": notes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion-scenes", help="a named folder set")
    p.add_argument("--data-dir", help="where the set is looked up and generated")
    p.add_argument("--budget", type=float, default=600, help="training seconds per row")
    p.add_argument("--model", default="fastnet")
    p.add_argument("--image-size", type=int, help="the photo row's input [default: chosen]")
    p.add_argument("--workers", type=int, default=0, help="photo row's loader processes")
    p.add_argument("--probe-epochs", type=int, default=1, help="epochs timed per row first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", default="auto", help="both rows' --amp (auto: device.choose_amp)")
    p.add_argument("--photo-args", default="", help="more `convlens train` flags for the photo "
                   "row, e.g. '--mix cutmix'")  # fmt: skip
    p.add_argument("--today-args", action="append", default=[], help="add a row: today's "
                   "pipeline with these flags too, e.g. '--batch-size 64', repeatable")  # fmt: skip
    p.add_argument("--shards", action="store_true", help="add the 2-process shards row")
    args = p.parse_args()

    common = ["--model", args.model, "--seed", str(args.seed), "--amp", args.amp]
    with tempfile.TemporaryDirectory(prefix="scenes-recipe-") as tmp:
        tmp = Path(tmp)
        npz, squash = legacy_npz(args.data, args.data_dir, tmp / "today.npz")
        photo_data = args.data
        if args.data_dir:
            common += ["--data-dir", args.data_dir]
        rows = {
            "today": (str(npz), ["--augment", "light", "--hflip", "alternate"], squash),
            "photo": (photo_data, ["--workers", str(args.workers), *shlex.split(args.photo_args)]
                      + (["--image-size", str(args.image_size)] if args.image_size else []),
                      "shorter side resized, centre-cropped"),
        }  # fmt: skip
        for flags in args.today_args:
            rows[f"today {flags}"] = (str(npz), [*rows["today"][1], *shlex.split(flags)], squash)
        fitted = {}
        for name, (data, extra, input_note) in rows.items():
            probe = train(data, tmp / f"{name}-probe", args.probe_epochs, common + extra)
            per_epoch = probe["train_seconds"] / probe["epochs"]
            epochs = max(1, int(args.budget // per_epoch))
            row = train(data, tmp / name, epochs, common + extra)
            fitted[name] = epochs
            print(json.dumps({
                "pipeline": name, "data": args.data, "model": args.model, "input": input_note,
                "flags": extra, "budget_s": args.budget, "seconds_per_epoch": round(per_epoch, 2),
                **row, "machine": cpu_name(),
            }), flush=True)  # fmt: skip
        if args.shards:
            shards = tmp / "shards"
            convlens = [sys.executable, "-m", "convlens"]
            subprocess.run(
                [
                    *convlens,
                    "shards",
                    str(tree_root(args.data, args.data_dir)),
                    str(shards),
                    "--maxcount",
                    "100",
                ],
                check=True,
                capture_output=True,
            )  # fmt: skip (fashion-scenes: 100 train shards)
            launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                      "--master-addr=127.0.0.1", "--master-port=29517"]  # fmt: skip
            row = train(str(shards), tmp / "shards-run", fitted["photo"], rows["photo"][1] + common,
                        launch=launch)  # fmt: skip
            print(json.dumps({
                "pipeline": "photo-shards-2-processes", "data": args.data, "model": args.model,
                "input": rows["photo"][2], **row, "machine": cpu_name(),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
