"""The interactive explainer page: how long it takes to write and how large it is, per model.

For each model, a run trained for one epoch on Fashion-MNIST (28x28; tv-resnet18 on the same
images, as the run's input), then the page of one test image timed as `serve` builds it (the
run already loaded, no patches section; median of --repeat) and its size against the 5 MB
budget (issue 20); then once with the stored test images to choose among, as `convlens explain
--interactive` writes it (less the patches). Prints one JSON line per model, then a table.

    .venv/bin/python benchmarks/explainer_page.py
    .venv/bin/python benchmarks/explainer_page.py --models textbook lenet5 --data digits  # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import convlens
from convlens.api.explain import load_data, run_home
from convlens.api.interactive import Explainer, pick_image
from convlens.report.explainer import page

BUDGET = 5 * 2**20  # bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["textbook", "lenet5", "fastnet", "tv-resnet18"])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="convlens-explainer-") as tmp:
        for name in args.models:
            run = convlens.train(data=args.data, model=name, epochs=1, amp="off",
                                 run=str(Path(tmp) / name))  # fmt: skip
            ex = Explainer(run)
            ds = load_data(ex.rec, None, run_home(ex.rec.weights))
            picture, caption = pick_image(ex.rec, None, ds)
            seconds, html = [], ""
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                html = page(ex.data(picture, caption))
                seconds.append(time.perf_counter() - t0)
            size = len(html.encode())
            t0 = time.perf_counter()
            data = ex.data(picture, caption) | {"choices": ex.choices(ds, skip=0)}
            written = time.perf_counter() - t0  # as `convlens explain --interactive`, less patches
            full = len(page(data).encode())
            row = {"model": name, "engine": ex.engine, "seconds": statistics.median(seconds),
                   "bytes": size, "under_budget": size < BUDGET, "choices": len(data["choices"]),
                   "with_choices_s": written, "with_choices_bytes": full}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| model | engine | page written (s) | page size (MB) | with the test images "
          "to choose among (s) | its size (MB) |\n|---|---|---:|---:|---:|---:|")  # fmt: skip
    for r in rows:
        print(f"| {r['model']} | {r['engine']} | {r['seconds']:.2f} | {r['bytes'] / 2**20:.2f} "
              f"| {r['with_choices_s']:.2f} ({r['choices']} images) "
              f"| {r['with_choices_bytes'] / 2**20:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
