"""Open-set rejection on held-out classes: train on Fashion-MNIST classes 0-7, then score the
in-distribution test images (classes 0-7) against near unknowns (the test images of classes 8-9,
bag and ankle boot) and far unknowns (scikit-learn's 1,797 digits, 8x8 upscaled to 28x28).

For each open-set score (msp, energy, mahalanobis: convlens.tasks.openset) of the one trained
run: the AUROC of in-distribution against unknown images, and the FPR at 95% TPR (the share of
unknown images kept at the threshold keeping 95% of the in-distribution test images). The run is
temperature-calibrated on val as every classify run is. Prints a markdown table; the JSON goes
to --out.

    .venv/bin/python benchmarks/openset.py                          # fastnet, 8 epochs
    .venv/bin/python benchmarks/openset.py --limit 500 --epochs 1   # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

import convlens
from convlens.data import load_dataset
from convlens.tasks import openset
from convlens.tasks.loading import load_run

KNOWN = 8  # classes 0-7 are trained; 8 (bag) and 9 (ankle boot) are the near unknowns


def known_npz(path: Path, limit: int | None) -> dict[str, torch.Tensor]:
    """Fashion-MNIST's classes 0-7 as a .npz (train, val, test), and the unknown image sets."""
    ds = load_dataset("fashion-mnist")
    arrays, near = {}, None
    for name in ("train", "val", "test"):
        part = ds.split(name)
        keep = (part.labels < KNOWN).nonzero().flatten()
        if name == "test":
            near = part.images[(part.labels >= KNOWN).nonzero().flatten()]
        if limit:
            keep = keep[:limit]
        arrays[f"{name}_images"] = part.images[keep, 0].numpy()
        arrays[f"{name}_labels"] = part.labels[keep, None].numpy()
    np.savez(path, **arrays)
    digits = (load_digits().images * 255 / 16).astype(np.uint8)
    up = [np.asarray(Image.fromarray(d).resize((28, 28), Image.BILINEAR)) for d in digits]
    far = np.stack(up)  # (1797, 28, 28)
    near = near[:limit] if limit else near
    return {"near": near, "far": torch.from_numpy(far)[:, None][:limit]}


def fpr_at(known: np.ndarray, unknown: np.ndarray, tpr: float = 0.95) -> float:
    """Share of unknown images kept at the threshold keeping `tpr` of the known ones."""
    point = openset.choose(torch.from_numpy(known), "", tpr)
    return float((unknown >= point["threshold"]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fastnet")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--limit", type=int, help="at most this many images per split (smoke runs)")
    ap.add_argument("--out", default="benchmarks/results/openset.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        unknown = known_npz(Path(tmp) / "fashion0-7.npz", args.limit)
        run_dir = convlens.train(data=str(Path(tmp) / "fashion0-7.npz"), model=args.model,
                                 epochs=args.epochs, seed=args.seed, device=args.device,
                                 reject="msp", run=str(Path(tmp) / "run"))  # fmt: skip
        metrics = json.loads((run_dir / "metrics.json").read_text())
        ds = load_dataset(str(Path(tmp) / "fashion0-7.npz"))
        run = load_run(run_dir)
        rows = []
        for score in openset.SCORES:
            openset.attach(run.net, score, KNOWN)
            if score == "mahalanobis":
                openset.fit_gaussians(run, ds.train.images, ds.train.labels, args.seed)
            known = openset.torch_scores(run, ds.test.images, score)[:, -1].numpy()
            row = {"score": score}
            for name, images in unknown.items():
                theirs = openset.torch_scores(run, images, score)[:, -1].numpy()
                y = np.r_[np.ones(len(known)), np.zeros(len(theirs))]
                row[f"{name}_auroc"] = float(roc_auc_score(y, np.r_[known, theirs]))
                row[f"{name}_fpr95"] = fpr_at(known, theirs)
            rows.append(row)
        seconds = time.perf_counter() - t0

    print(f"Fashion-MNIST 0-7, {args.model} {args.epochs} epochs, test accuracy "
          f"{metrics['accuracy']:.4f} (n={metrics['n']}); near: classes 8-9 "
          f"(n={len(unknown['near'])}), far: digits (n={len(unknown['far'])}); "
          f"{seconds:.0f} s\n")  # fmt: skip
    print("| score | near AUROC | near FPR@95TPR | far AUROC | far FPR@95TPR |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['score']} | {r['near_auroc']:.4f} | {r['near_fpr95']:.4f} | "
              f"{r['far_auroc']:.4f} | {r['far_fpr95']:.4f} |")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "accuracy": metrics["accuracy"], "seconds": seconds, "rows": rows}
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
