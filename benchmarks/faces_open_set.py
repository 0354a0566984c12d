"""Open-set face-style verification on Fashion-MNIST: ArcFace against plain normalised softmax.

No face-identity dataset can be downloaded here, so Fashion-MNIST classes stand in for people.
An embedding (fastnet, 128-d, `convlens train --task embed`) is trained on classes 0-5 only (the
training images of those classes; the loader holds 10% out for validation, where the threshold
is chosen). It is then judged on identities it never saw: 6,000 seeded pairs (half matched)
drawn from the test images of classes 6-9 give AUC, EER, TAR at FAR 1e-2 and 1e-3, and the
accuracy of the threshold chosen on the validation pairs of the training classes. Open-set
identification: a gallery of 5 training images each of classes 6 and 7; probes are the test
images of 6 and 7 (known) and of 8 and 9 (unknown): DIR at FAR 1e-2; and closed-set rank-1 of
the test images of 6-9 against 5 training images of each of the four.

    .venv/bin/python benchmarks/faces_open_set.py    # both losses, 5 epochs, seeds 0 and 1
    .venv/bin/python benchmarks/faces_open_set.py --epochs 2 --losses arcface

Results: benchmarks/results/faces_open_set.json; the table is in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import convlens
from convlens.config import make_config
from convlens.data import load_dataset
from convlens.faces.embed import embed_images
from convlens.faces.metrics import (
    dir_at_far,
    per_identity,
    rank_k,
    sample_pairs,
    verification_metrics,
)
from convlens.models.loading import load_model
from convlens.runs.folder import Run
from convlens.training import fit

SEEN, UNSEEN = range(0, 6), range(6, 10)
KNOWN = (6, 7)  # enrolled in the open-set gallery; 8 and 9 are the unknown people
GALLERY_PER_CLASS = 5


def write_seen_npz(ds, path: Path) -> None:
    """Train and test images of classes 0-5 as a MedMNIST-style .npz (labels stay 0-5)."""
    parts = {}
    for name, split in (("train", ds.train), ("test", ds.test)):
        keep = torch.isin(split.labels, torch.tensor(list(SEEN)))
        parts[f"{name}_images"] = split.images[keep][:, 0].numpy()  # (N, 28, 28) uint8
        parts[f"{name}_labels"] = split.labels[keep].numpy()
    np.savez(path, classes=np.array(ds.classes[: len(SEEN)]), **parts)


def judge(run: Path, ds) -> dict:
    """Verification and open-set identification on the unseen classes 6-9."""
    model, meta, _ = load_model(run)
    norm = {"mean": meta["normalize"]["mean"], "std": meta["normalize"]["std"]}
    unseen = torch.isin(ds.test.labels, torch.tensor(list(UNSEEN)))
    images, labels = ds.test.images[unseen], ds.test.labels[unseen].numpy()
    emb = embed_images(model, images, **norm).numpy()  # (4000, 128)
    i, j, same = sample_pairs(labels, 6000, seed=0)
    scores = (emb[i] * emb[j]).sum(1)
    out = verification_metrics(scores, same)
    out["accuracy_at_val_threshold"] = float(((scores >= meta["threshold"]) == same).mean())
    out["val_threshold"] = meta["threshold"]

    y_train = ds.train.labels.numpy()
    pick = per_identity(y_train, GALLERY_PER_CLASS, seed=0, identities=UNSEEN)
    gallery = embed_images(model, ds.train.images[pick], **norm).numpy()
    sim = emb @ gallery.T  # (P, G)
    out.update({f"closed_set_{k}": v for k, v in rank_k(sim, labels, y_train[pick]).items()})
    enrolled = np.isin(y_train[pick], KNOWN)
    known = np.isin(labels, KNOWN)
    open_set = dir_at_far(sim[:, enrolled], labels, y_train[pick][enrolled], known, far=1e-2)
    out["open_set_dir@far=0.01"] = open_set["dir"]
    return out


def main() -> None:
    """Train one embedding per loss on classes 0-5 and judge each on classes 6-9."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--losses", nargs="+", default=["arcface", "softmax"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/faces_open_set.json")
    args = parser.parse_args()
    ds = load_dataset("fashion-mnist")
    results = {
        "command": "benchmarks/faces_open_set.py " + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k != "out"
        ),
        "machine": platform.processor() or platform.machine(),
        "versions": {"convlens": convlens.__version__, "torch": torch.__version__},
        "runs": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "fashion_0-5.npz"
        write_seen_npz(ds, npz)
        for seed in args.seeds:
            for loss in args.losses:
                cfg = make_config(overrides={
                    "task": "embed", "data": str(npz), "embed_loss": loss, "seed": seed,
                    "epochs": args.epochs, "lr": args.lr, "threads": args.threads,
                    "hflip": "alternate", "run": str(Path(tmp) / f"{loss}-{seed}"),
                })  # fmt: skip
                t0 = time.perf_counter()
                run = fit(cfg)
                seconds = time.perf_counter() - t0
                row = {"seed": seed, **judge(run, ds)}
                row["train_seconds_incl_eval"] = round(seconds, 1)
                row["val_auc_by_epoch"] = [r["val_auc"] for r in Run(run).read_results()]
                results["runs"].setdefault(loss, []).append(row)
                print(loss, json.dumps(row, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
