"""Where a `convlens train` run spends the time it does not train: a profiled breakdown.

Runs `python -m cProfile -m convlens train --data fashion-mnist --epochs E` (a subprocess, the
run's own defaults otherwise) for each source tree given (e.g. a checkout of an older commit
beside this one, so before and after are measured side by side in one sitting), and prints, per
tree, the wall time, the training time (results.csv: the epochs' steps, evaluation excluded) and
the phases outside it, read from the profile by function: start-up (imports, data, model,
optimiser), the epochs' validation, calibration, the test split's scores, metrics and figures.
cProfile slows Python-heavy code a little; compare trees with each other, not with an
unprofiled run. Measure alone.

    .venv/bin/python benchmarks/outside_training.py --epochs 1 --tree /tmp/before --tree .
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# phase -> (file suffix, function name) whose cumulative time is the phase's
PHASES = {
    "validation (every epoch)": ("tasks/classify.py", "validate"),
    "calibration": ("tasks/classify.py", "calibrate_run"),
    "test scores": ("tasks/classify.py", "scores"),
    "metrics": ("evaluation/metrics.py", "classification_metrics"),
    "figures and files": ("tasks/classify.py", "_write_outputs"),
    "report.html": ("report/__init__.py", "write_report"),
    "optimiser (imports torch._dynamo)": ("training/optim.py", "build_optimizer"),
    "data": ("training/data.py", "load_data"),
}


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    """Summed cumulative seconds of the functions `name` defined in a file ending in `suffix`."""
    return sum(
        row[3]
        for (path, _, func), row in stats.stats.items()  # type: ignore[attr-defined]
        if func == name and path.endswith(suffix)
    )


def profile(tree: Path, epochs: int, work: Path, data: str = "fashion-mnist") -> dict:
    """One profiled run of the tree's convlens; its wall, training and phase seconds."""
    run, prof = work / "run", work / "train.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "convlens", "train",
           "--data", data, "--epochs", str(epochs), "--run", str(run)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    t0 = time.perf_counter()
    # cwd outside any tree: python -m puts the cwd first on sys.path, ahead of PYTHONPATH
    subprocess.run(cmd, env=env, cwd=work, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    with (run / "results.csv").open() as f:
        training = float(list(csv.DictReader(f))[-1]["seconds"])
    stats = pstats.Stats(str(prof))
    phases = {k: round(cumulative(stats, *where), 2) for k, where in PHASES.items()}
    outside = wall - training
    phases["other (interpreter, imports, saving)"] = round(outside - sum(phases.values()), 2)
    metrics = json.loads((run / "metrics.json").read_text())
    return {"tree": str(tree), "epochs": epochs, "wall": round(wall, 2),
            "training": round(training, 2), "outside": round(outside, 2),
            "wall_over_training": round(wall / training, 3), "test_acc": metrics["accuracy"],
            "phases": phases}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", type=Path, help="a source tree (repeatable)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data", default="fashion-mnist", help="e.g. digits, for a smoke run")
    args = ap.parse_args()
    for tree in args.tree or [Path(".")]:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(profile(tree, args.epochs, Path(tmp), args.data)), flush=True)


if __name__ == "__main__":
    main()
