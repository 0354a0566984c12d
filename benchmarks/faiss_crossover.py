"""Where FAISS's exact search overtakes torch's matmul: PatchCore's bank and identify's gallery.

bank: Q query patches of D dimensions against a bank of M random patches (1e3..1e6), as
PatchCoreScorer searches: torch's chunked matmul + min (patchcore.nearest_chunked) against
FAISS's IndexFlatL2 (patchcore.faiss_search), whose index the scorer builds once per bank (its
build time is reported apart). gallery: one probe against N random unit embeddings of D
dimensions, top-k people, as `identify` searches (gallery.nearest_people): torch's matmul + sort
against FAISS's IndexFlatIP, the index built inside each call as identify builds it.

Each figure is the median of --repeats timed calls after one untimed warm-up. Every measurement
prints as one JSON line; then, per part and query count, the crossover: the smallest size from
which FAISS is faster at that size and every larger one measured (null: never). Those sizes are
patchcore.FAISS_FROM and gallery.FAISS_FROM's evidence (BENCHMARKS.md).

    .venv/bin/python benchmarks/faiss_crossover.py --threads 2
    .venv/bin/python benchmarks/faiss_crossover.py --parts bank --queries 784 6272 --repeats 5
    .venv/bin/python benchmarks/faiss_crossover.py --smoke          # tiny sizes: proves it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from convlens.evaluation.neighbours import flat_index, require_faiss
from convlens.faces.gallery import nearest_people
from convlens.medical.patchcore import faiss_search, nearest_chunked


def median_seconds(call, repeats: int) -> float:
    """Median wall seconds of `call()` over `repeats` runs after one warm-up."""
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bank_rows(args: argparse.Namespace) -> list[dict]:
    """PatchCore: Q queries against banks of growing size, torch and FAISS."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for m in map(int, args.sizes):
        bank = torch.randn(m, args.dim, generator=gen)
        bank_sq = (bank * bank).sum(1)
        t0 = time.perf_counter()
        index = flat_index(bank, "l2", "benchmark")
        build = time.perf_counter() - t0
        for q in args.queries:
            queries = torch.randn(q, args.dim, generator=gen)
            torch_s = median_seconds(partial(nearest_chunked, queries, bank, bank_sq), args.repeats)
            faiss_s = median_seconds(partial(faiss_search, queries, bank, index), args.repeats)
            row = {"part": "bank", "rows": m, "dim": args.dim, "queries": q, "torch_s": torch_s,
                   "faiss_s": faiss_s, "faiss_build_s": build}  # fmt: skip
            print(json.dumps(row), flush=True)
            out.append(row)
        del bank, bank_sq, index
    return out


def gallery_rows(args: argparse.Namespace) -> list[dict]:
    """identify: one probe against galleries of growing size, top-k people, torch and FAISS."""
    rng = np.random.default_rng(0)
    out = []
    for n in map(int, args.sizes):
        emb = rng.standard_normal((n, args.gallery_dim), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        names = np.array([f"p{i % max(1, n // args.per_person):07d}" for i in range(n)])
        probe = emb[0] + 0.3 * rng.standard_normal(args.gallery_dim, dtype=np.float32)
        probe /= np.linalg.norm(probe)
        row = {"part": "gallery", "rows": n, "dim": args.gallery_dim, "queries": 1,
               "top_k": args.top_k}  # fmt: skip
        for search in ("torch", "faiss"):
            call = partial(nearest_people, probe, emb, names, args.top_k, search)
            row[f"{search}_s"] = median_seconds(call, args.repeats)
        print(json.dumps(row), flush=True)
        out.append(row)
        del emb, names
    return out


def crossovers(rows: list[dict]) -> list[dict]:
    """Per part and query count: the smallest size from which FAISS is faster at every size."""
    out = []
    for part, q in sorted({(r["part"], r["queries"]) for r in rows}):
        mine = sorted((r for r in rows if (r["part"], r["queries"]) == (part, q)),
                      key=lambda r: r["rows"])  # fmt: skip
        start = None
        for r in reversed(mine):
            if r["faiss_s"] >= r["torch_s"]:
                break
            start = r["rows"]
        out.append({"part": part, "queries": q, "faiss_from": start})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="*", default=["bank", "gallery"], choices=["bank", "gallery"])
    ap.add_argument("--sizes", type=float, nargs="*", default=[1e3, 1e4, 3e4, 1e5, 3e5, 1e6])
    ap.add_argument("--dim", type=int, default=192, help="patch dimensions (fastnet's: 64 + 128)")
    ap.add_argument("--queries", type=int, nargs="*", default=[64, 784, 6272],
                    help="query patches: a 64 px image's 8x8, a 224 px image's 28x28, 8 of "
                    "those")  # fmt: skip
    ap.add_argument("--gallery-dim", type=int, default=128, help="embedding size (the default)")
    ap.add_argument("--per-person", type=int, default=5, help="gallery images per person")
    ap.add_argument("--top-k", type=int, default=5, help="people identify names (its default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch and FAISS threads")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script runs")
    ap.add_argument("--out", default="benchmarks/results/faiss_crossover.json")
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.queries, args.repeats = [200, 2000], [16, 64], 1
        args.out = str(Path(tempfile.gettempdir()) / "faiss_crossover_smoke.json")
    faiss = require_faiss("benchmarks/faiss_crossover.py")
    if args.threads:
        torch.set_num_threads(args.threads)  # FAISS searches with as many (neighbours.knn)
    rows = []
    if "bank" in args.parts:
        rows += bank_rows(args)
    if "gallery" in args.parts:
        rows += gallery_rows(args)
    cross = crossovers(rows)
    for c in cross:
        print(json.dumps({"crossover": c}), flush=True)
    report = {
        "command": "benchmarks/faiss_crossover.py " + " ".join(sys.argv[1:]),
        "settings": vars(args),
        "machine": f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads (torch and "
        f"FAISS), torch {torch.__version__}, faiss {faiss.__version__}",
        "rows": rows,
        "crossover": cross,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
