"""Seconds to cut one augmented epoch of 55,000 28x28 images (translate 2 + flips), batch 128.

The in-memory batches of small-image runs: shifts and flips are whole-batch tensor ops, never a
per-image Python loop. Measured on one thread (so another process on the other core matters
less), median of --repeats; it was a timed test until a loaded CI machine made it flaky.

    .venv/bin/python benchmarks/augment_epoch.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from convlens.data import Split, iterate_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = Split(torch.zeros(55_000, 1, 28, 28, dtype=torch.uint8), torch.zeros(55_000).long())
    times = []
    for seed in range(args.repeats):
        g = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        for _ in iterate_batches(split, 128, shuffle=True, generator=g, translate=2, hflip=True):
            pass
        times.append(time.perf_counter() - start)
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "threads": 1,
                      "median_s": round(statistics.median(times), 3),
                      "runs_s": [round(t, 3) for t in times]}))  # fmt: skip


if __name__ == "__main__":
    main()
