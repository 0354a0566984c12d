"""Fashion-MNIST on the CPU: convlens's default recipe against the PyTorch examples' MNIST CNN.

Both run from this one script, one after the other, on the same machine (measure alone: a second
job on the cores ruins the timing), so ratios to the baseline's epoch hold across machines. It
prints the machine (CPU model, AMX or not, threads) with every figure and, for each run, test
accuracy against training seconds (evaluation excluded), in baseline epochs too, the wall time of
the `convlens train` command (a subprocess, start-up to final line) over its training time, and
the time to reach 92.0% test accuracy. `--amps off bf16` adds seed 0 under each precision, to
check `--amp auto`'s choice on this CPU.

- convlens: `convlens train --data fashion-mnist` with its defaults, once per seed (the median
  is the headline); and short budgets (3 epochs; 3 epochs of a narrower fastnet) to find how
  soon a complete schedule reaches 92.0%.
- baseline: github.com/pytorch/examples mnist/main.py's network and settings (conv 32, conv 64,
  max-pool, dropout 0.25, fc 128, dropout 0.5, fc 10; Adadelta lr 1.0, StepLR gamma 0.7,
  batch 64, 14 epochs), trained on all 60,000 training images, tested after every epoch.

    .venv/bin/python benchmarks/fashion_mnist_cpu.py              # everything (~25 min here)
    .venv/bin/python benchmarks/fashion_mnist_cpu.py --seeds 0 --no-budgets --baseline-epochs 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data import load_dataset
from convlens.device import hardware_caps

TARGET = 0.92


class ExamplesNet(nn.Module):
    """The PyTorch examples' MNIST CNN, unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))  # (B, 32, 26, 26)
        x = F.relu(self.conv2(x))  # (B, 64, 24, 24)
        x = F.max_pool2d(x, 2)  # (B, 64, 12, 12)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def baseline(epochs: int, seed: int = 1) -> list[dict]:
    """Train the examples' CNN; test accuracy and cumulative training seconds per epoch."""
    ds = load_dataset("fashion-mnist")
    x = torch.cat([ds.train.images, ds.val.images]).float().div(255).sub(0.1307).div(0.3081)
    y = torch.cat([ds.train.labels, ds.val.labels])
    xt = ds.test.images.float().div(255).sub(0.1307).div(0.3081)
    torch.manual_seed(seed)
    model = ExamplesNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    rows, seconds = [], 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.nll_loss(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
        seconds += time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(b).argmax(1) for b in xt.split(1000)])
        acc = (pred == ds.test.labels).float().mean().item()
        rows.append({"epoch": epoch, "seconds": seconds, "test_acc": acc})
        print(f"baseline epoch {epoch:2d}  {seconds:7.1f} s  test {100 * acc:.2f}%", flush=True)
    return rows


BUDGETS = {  # name -> settings changed from the defaults
    "3 epochs": {"epochs": 3},
    "3 epochs, widths 16/64/128": {"epochs": 3, "model_args": {"widths": [16, 64, 128]}},
}


def convlens_run(seed: int, workdir: Path, name: str = "default", **changes) -> dict:
    """One `convlens train --data fashion-mnist` run with its defaults (and `changes`), as a user
    runs it (a subprocess): its training seconds (results.csv), wall seconds and test accuracy."""
    run_dir = workdir / f"{len(list(workdir.iterdir()))}"
    cmd = [sys.executable, "-m", "convlens", "train", "--data", "fashion-mnist", "--seed",
           str(seed), "--run", str(run_dir)]  # fmt: skip
    for key, value in changes.items():
        if key == "model_args":  # the CLI takes each as --model-arg KEY=VALUE
            for arg, v in value.items():
                cmd += ["--model-arg", f"{arg}={json.dumps(v).replace(' ', '')}"]
            continue
        cmd += [
            f"--{key.replace('_', '-')}",
            value if isinstance(value, str) else json.dumps(value),
        ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    rows = [line.split(",") for line in (run_dir / "results.csv").read_text().splitlines()[1:]]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = float(rows[-1][-1])
    first = next((x for x in out.stdout.splitlines() if x.startswith("train ")), "")
    precision = first.rsplit("; run ", 1)[0].split("; ")[-1].split(":")[0]  # "cpu, float32"
    result = {
        "name": name,
        "seed": seed,
        "epochs": len(rows),
        "seconds": seconds,
        "wall": wall,
        "wall_over_training": wall / seconds,
        "precision": precision,
        "test_acc": metrics["accuracy"],
        "val_acc": [float(r[3]) for r in rows],
        "console": out.stdout,  # what the user saw (the README's quick tour shows one)
    }
    shown = {k: v for k, v in result.items() if k not in ("console", "val_acc")}
    print(json.dumps(shown), flush=True)  # each run as it ends: a later failure loses none
    return result


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if "model name" in line)
    except (OSError, StopIteration):
        return platform.machine()


def machine() -> str:
    """The CPU, whether it has AMX and AVX512_BF16, and the threads: every figure's context."""
    caps = hardware_caps(torch.device("cpu"))
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    kind = (
        "AMX" if caps.cpu_amx else ("AVX512_BF16, no AMX" if "avx512_bf16" in flags else "no bf16")
    )
    return (f"{cpu_name()} ({kind}), {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
            f"threads, torch {torch.__version__}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--no-budgets", action="store_true", help="skip the short schedules")
    ap.add_argument("--baseline-epochs", type=int, default=14)
    ap.add_argument(
        "--amps",
        nargs="*",
        default=[],
        choices=["off", "bf16"],
        help="also train seed 0 with these --amp settings (auto's choice vs both)",
    )
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs (a smoke run)")
    ap.add_argument("--out", default="benchmarks/results/fashion_mnist_cpu.json")
    args = ap.parse_args()

    report = {
        "machine": machine(),
        "convlens": [],
        "amps": [],
        "budgets": [],
        "baseline": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        short = {"epochs": args.epochs} if args.epochs else {}
        for seed in args.seeds:
            report["convlens"].append(convlens_run(seed, Path(tmp), **short))
        for name, changes in {} if args.no_budgets else BUDGETS.items():
            report["budgets"].append(convlens_run(0, Path(tmp), name, **changes))
        for amp in args.amps:
            report["amps"].append(convlens_run(0, Path(tmp), f"--amp {amp}", amp=amp, **short))
    if args.baseline_epochs:
        report["baseline"] = baseline(args.baseline_epochs)

    epoch = report["baseline"][0]["seconds"] if report["baseline"] else None

    def line(r: dict) -> str:  # accuracy, training and wall seconds, baseline epochs
        unit = f", {r['seconds'] / epoch:.2f} baseline epochs" if epoch else ""
        return (
            f"{100 * r['test_acc']:.2f}%  {r['seconds']:.1f} s training{unit}, wall "
            f"{r['wall']:.1f} s ({r['wall_over_training']:.3f}x training; {r['precision']})"
        )

    print(f"\n{report['machine']}; baseline epoch: {epoch and round(epoch, 1)} s")
    print("convlens default recipe (per seed): test accuracy, training seconds")
    for r in report["convlens"]:
        print(f"  seed {r['seed']}: {line(r)}")
    if report["convlens"]:
        acc = statistics.median(r["test_acc"] for r in report["convlens"])
        sec = statistics.median(r["seconds"] for r in report["convlens"])
        print(f"  median: {100 * acc:.2f}% in {sec:.1f} s")
    for r in report["budgets"] + report["amps"]:
        print(f"  {r['name']}: {line(r)}")
    ours = [r["seconds"] for r in report["budgets"] + report["convlens"] if r["test_acc"] >= TARGET]
    theirs = [r["seconds"] for r in report["baseline"] if r["test_acc"] >= TARGET]
    report["time_to_92"] = {
        "convlens": min(ours, default=None),
        "baseline": min(theirs, default=None),
    }
    t = report["time_to_92"]
    print(f"time to {100 * TARGET:.0f}%: convlens {t['convlens']} s, baseline {t['baseline']} s")
    if t["convlens"] and t["baseline"]:
        print(f"  ratio: {t['baseline'] / t['convlens']:.1f}x sooner")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
