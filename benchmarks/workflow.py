"""The workflow tools' costs (issue 18): what --log adds to a training, what --nproc saves, and
how fast the torch, TorchScript and ONNX engines predict one run's validation images.

Each training is a `convlens train` subprocess timed end to end (imports and evaluation
included), one JSON line each; the engines are timed in this process, median of --repeats.

    .venv/bin/python benchmarks/workflow.py                     # fashion-mnist, fastnet, 2 epochs
    .venv/bin/python benchmarks/workflow.py --data digits --model textbook --epochs 1 --images 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import convlens
from convlens.training.data import load_run_data


def timed_train(args, folder: Path, name: str, *extra: str) -> dict:
    """Wall seconds of one `convlens train` with `extra` flags."""
    cmd = [sys.executable, "-m", "convlens", "train", "--data", args.data, "--model", args.model,
           "--epochs", str(args.epochs), "--run", str(folder / name), *extra]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return {"case": name, "flags": " ".join(extra), "seconds": round(time.perf_counter() - t0, 2)}


def engine_speed(run: Path, n: int, repeats: int) -> list[dict]:
    """Images per second of each engine's predict_tensor on n validation images."""
    images = load_run_data(None, run).val.images[:n]
    files = {"torch": run,
             "torchscript": convlens.export(run, format="torchscript")["torchscript"],
             "onnx": convlens.export(run, format="onnx")["onnx"]}  # fmt: skip
    rows = []
    for name, target in files.items():
        rec = convlens.load(target)
        rec.predict_tensor(images[:8])  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            rec.predict_tensor(images)
            times.append(time.perf_counter() - t0)
        rows.append({"engine": name, "images": len(images),
                     "images_per_s": round(len(images) / statistics.median(times), 1)})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--model", default="fastnet")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--images", type=int, default=2000, help="validation images per engine")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/workflow.jsonl")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="convlens-workflow-") as tmp:
        folder = Path(tmp)
        rows.append(timed_train(args, folder, "plain"))
        rows.append(timed_train(args, folder, "tensorboard", "--log", "tensorboard"))
        rows.append(timed_train(args, folder, "mlflow", "--log", "mlflow"))
        rows.append(timed_train(args, folder, "nproc2", "--nproc", "2"))
        rows += engine_speed(folder / "plain", args.images, args.repeats)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        for row in rows:
            line = json.dumps({"data": args.data, "model": args.model, **row})
            print(line)
            f.write(line + "\n")


if __name__ == "__main__":
    main()
