"""Temperature scaling measured on the test split: ECE, NLL and accuracy without and with it.

A calibrated run's weights hold logits / T, so the same weights give both sides: the test views'
logits times T are the uncalibrated ones. Trains the default recipe on Fashion-MNIST for each
seed unless runs are given.

    .venv/bin/python benchmarks/calibration.py --seeds 0 1 2
    .venv/bin/python benchmarks/calibration.py --runs runs/demo
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

import convlens
from convlens.evaluation.calibration import probs_at, view_logits
from convlens.evaluation.metrics import expected_calibration_error
from convlens.tasks.loading import load_model
from convlens.training.data import load_run_data


def measure(run: Path) -> dict:
    """Test accuracy, ECE and NLL of a calibrated run at T = 1 and at its fitted T."""
    model, meta, _ = load_model(run)
    t = meta["calibration"]["temperature"]
    ds = load_run_data(meta["data"], run)
    part = ds.test if ds.test is not None else ds.val
    logits, weights = view_logits(model, part.images, meta)  # (N, V, K): uncalibrated / T
    out = {"run": str(run), "temperature": t, "n": len(part)}
    for name, scale in (("before", 1 / t), ("after", 1.0)):
        p = probs_at(logits, weights, scale).float()  # (N, K)
        out[name] = {
            "accuracy": (p.argmax(1) == part.labels).float().mean().item(),
            "ece": expected_calibration_error(part.labels, p),
            "nll": torch.nn.functional.nll_loss(p.clamp_min(1e-12).log(), part.labels).item(),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", type=Path, default=[])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--out", default="benchmarks/results/calibration.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="convlens-cal-") as tmp:
        runs = args.runs or [
            convlens.train(data="fashion-mnist", seed=s, run=str(Path(tmp) / f"seed{s}"))
            for s in args.seeds
        ]
        rows = [measure(Path(r)) for r in runs]
    for r in rows:
        b, a = r["before"], r["after"]
        print(f"{r['run']}: T {r['temperature']:.3f}  accuracy {b['accuracy']:.4f} -> "
              f"{a['accuracy']:.4f}  ECE {100 * b['ece']:.2f}% -> {100 * a['ece']:.2f}%  "
              f"NLL {b['nll']:.4f} -> {a['nll']:.4f}")  # fmt: skip
    for key in ("ece", "nll", "accuracy"):
        before = statistics.median(r["before"][key] for r in rows)
        after = statistics.median(r["after"][key] for r in rows)
        print(f"median {key}: {before:.4f} -> {after:.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
