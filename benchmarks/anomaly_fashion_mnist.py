"""One-class anomaly detection on Fashion-MNIST: the standard protocol, no pretrained weights.

Each class in turn is normal: `convlens train --task anomaly --normal CLASS` learns GEOM's 72
transformations on that class's training images (54,000 training images in all, 5,400 per
class: convlens holds 10% of Fashion-MNIST's training set out as validation, used for the best
epoch and the flag threshold only), then the whole 10,000-image test set is scored and the AUROC
taken with CLASS as normal and the other nine as anomalous. The run's own method (mahalanobis by
default) is the headline; a mahalanobis run also reports GEOM's score of the same pass.
Published means for this protocol: GEOM 93.5 (Golan & El-Yaniv 2018), Sohn et al. 2021 94.8.

    .venv/bin/python benchmarks/anomaly_fashion_mnist.py                    # all 10 classes
    .venv/bin/python benchmarks/anomaly_fashion_mnist.py --classes 0 2 4 6 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

import convlens
from convlens.data import load_dataset

PUBLISHED = {"GEOM (Golan & El-Yaniv 2018)": 93.5, "Sohn et al. 2021": 94.8}


def one_class(index: int, name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Train on class `name` only, score the test set; AUROC and seconds."""
    t0 = time.perf_counter()
    run = convlens.train(
        data="fashion-mnist",
        task="anomaly",
        normal=name,
        anomaly_method=args.method,
        epochs=args.epochs,
        seed=args.seed,
        translate=args.translate,
        label_smoothing=args.label_smoothing,
        model_args=yaml.safe_load(args.model_args or "{}"),
        run=str(workdir / f"class{index}"),
    )
    total = time.perf_counter() - t0
    rows = (run / "results.csv").read_text().splitlines()[1:]
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "class": index,
        "name": name,
        "auroc": metrics["auroc"],
        "auroc_geom": metrics.get("auroc_geom", metrics["auroc"]),
        "sensitivity": metrics["sensitivity"],
        "specificity": metrics["specificity"],
        "train_seconds": float(rows[-1].split(",")[-1]),
        "total_seconds": total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    ap.add_argument("--epochs", type=int, default=30, help="passes over the class's images")
    ap.add_argument("--method", default="mahalanobis", choices=["geom", "mahalanobis"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--translate", type=int, default=2, help="random shift on top (px)")
    ap.add_argument("--label-smoothing", type=float, default=0.2)
    ap.add_argument(
        "--model-args", help="YAML mapping for fastnet, e.g. '{widths: [64, 128, 256]}'"
    )
    ap.add_argument("--out", default="benchmarks/results/anomaly_fashion_mnist.json")
    args = ap.parse_args()

    classes = load_dataset("fashion-mnist").classes
    report = {
        "command": "benchmarks/anomaly_fashion_mnist.py " + " ".join(sys.argv[1:]),
        "settings": vars(args),
        "machine": f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        "published_mean_auroc": PUBLISHED,
        "classes": [],
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.classes:
            row = one_class(c, classes[c], args, Path(tmp))
            report["classes"].append(row)
            print(
                f"class {c} {row['name']:<12} AUROC {100 * row['auroc']:.2f} (geom "
                f"{100 * row['auroc_geom']:.2f})  train {row['train_seconds']:.0f} s, total "
                f"{row['total_seconds']:.0f} s",
                flush=True,
            )
            report["seconds"] = time.perf_counter() - t0
            for key in ("auroc", "auroc_geom"):  # written after every class: partial runs count
                report[f"mean_{key}"] = statistics.mean(r[key] for r in report["classes"])
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"mean AUROC {100 * report['mean_auroc']:.2f} ({args.method}), "
        f"{100 * report['mean_auroc_geom']:.2f} (geom); {report['seconds'] / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
