"""Anomaly maps (PatchCore, PaDiM) of `convlens train --task anomaly --method M`: one-class
Fashion-MNIST image AUROC, pixel AUROC and PRO on generated sets with known masks, and the
bank-size sweep of PatchCore's search.

fashion: each class in turn is normal, and one backbone per class serves every method: `convlens
train --data fashion-mnist --task anomaly --normal CLASS --method patchcore` (the first of
--methods) trains it as benchmarks/anomaly_fashion_mnist.py trains its GEOM runs (fastnet from
scratch on the class's 5,400 training images, 30 epochs, translate 2, label smoothing 0.2) and
fits PatchCore; then `--method padim --init THAT_RUN --epochs 0` fits PaDiM on the same weights,
nothing trained (so the methods differ in their scorer alone, at half the training). Each run
chooses its threshold on validation (the other classes' val images are the anomalies there);
the 10,000 test images give the image AUROC, next to the backbone's GEOM score (auroc_geom)
and the GEOM-Mahalanobis mean in BENCHMARKS.md (94.61).
maps: generated sets in MVTec AD's layout with exact masks (convlens.medical.defects: brick,
grass, gravel, coffee with scratches, stains and holes; convlens.medical.synthetic: the
synthetic lesions), each trained on with every model of --models and every method: image AUROC,
pixel AUROC, PRO (FPR <= 0.3) and test sensitivity/specificity at the validation threshold, all
from the run's metrics.json.
sweep: seconds per search of Q query patches against banks of 1e3..1e6 patches of D dimensions
(torch's chunked matmul; FAISS's exact index too when faiss-cpu is installed), and the greedy
coreset's seconds.

    .venv/bin/python benchmarks/anomaly_maps.py                          # all three parts
    .venv/bin/python benchmarks/anomaly_maps.py --parts fashion --classes 0 6 --epochs 30
    .venv/bin/python benchmarks/anomaly_maps.py --parts maps --size 64 --models fastnet resnet8
    .venv/bin/python benchmarks/anomaly_maps.py --parts sweep --threads 2
    .venv/bin/python benchmarks/anomaly_maps.py --smoke                  # maps, sweep: no figures
    .venv/bin/python benchmarks/anomaly_maps.py --smoke --parts fashion  # one class, one epoch
    .venv/bin/python benchmarks/anomaly_maps.py --parts fashion \
        --out benchmarks/results/anomaly_maps_fashion.json            # the fashion figure
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

import convlens
from convlens.data import load_dataset
from convlens.evaluation.neighbours import faiss_available
from convlens.medical import defects, synthetic
from convlens.medical.patchcore import (
    faiss_search,
    greedy_coreset,
    nearest_chunked,
)
from convlens.runs.folder import Run
from convlens.runs.weights import load_weights

GEOM_MEAN = 94.61  # BENCHMARKS.md: GEOM transformations + Mahalanobis, fastnet, 30 epochs
KEPT = ("auroc", "auroc_geom", "sensitivity", "specificity", "pixel_auroc", "pro")


def train(args: argparse.Namespace, method: str, run: Path, **settings) -> dict:
    """One anomaly run of `method`; what its metrics.json says, with its seconds."""
    t0 = time.perf_counter()
    out = convlens.train(task="anomaly", method=method, seed=args.seed, coreset=args.coreset,
                         patch_dim=args.patch_dim, device=args.device, run=str(run),
                         **settings)  # fmt: skip
    total = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = Run(out).read_results()  # none for a run fitted on given weights (epochs 0)
    train_s = rows[-1]["seconds"] if rows else 0.0  # cumulative: the epochs' seconds
    row = {k: metrics[k] for k in KEPT if k in metrics}
    _, meta = load_weights(out / "weights" / "best.safetensors")
    return {**row, "train_seconds": train_s, "total_seconds": total,
            "patch": meta["patch"]["settings"]}  # fmt: skip


# --- fashion -----------------------------------------------------------------------------------
def fashion(args: argparse.Namespace, workdir: Path) -> dict:
    """One-class Fashion-MNIST: per class, the first method's run trains the backbone and the
    other methods are fitted on its weights as they are (init=that run, epochs=0)."""
    classes = load_dataset("fashion-mnist").classes
    first, *others = args.methods
    rows = []
    for c in args.classes:
        row = {"class": c, "name": classes[c]}
        data = {"data": "fashion-mnist", "normal": classes[c]}
        trained = workdir / f"fashion-{first}-{c}"
        row[first] = train(args, first, trained, **data, epochs=args.epochs, translate=2,
                           label_smoothing=0.2)  # fmt: skip
        for method in others:  # the same backbone, nothing trained
            row[method] = train(args, method, workdir / f"fashion-{method}-{c}", **data,
                                init=str(trained), epochs=0)  # fmt: skip
        rows.append(row)
        print(f"class {c} {row['name']:<12} "
              + "  ".join(f"{m} {100 * row[m]['auroc']:.2f}" for m in args.methods)
              + f"  (GEOM score {100 * row[first]['auroc_geom']:.2f}; trained "
              f"{row[first]['train_seconds']:.0f} s)", flush=True)  # fmt: skip
    means = {m: statistics.mean(r[m]["auroc"] for r in rows) for m in args.methods}
    geom = statistics.mean(r[first]["auroc_geom"] for r in rows)
    return {"classes": rows, "mean_image_auroc": means, "mean_geom_score_auroc": geom,
            "geom_mahalanobis_reported_mean": GEOM_MEAN}  # fmt: skip


# --- maps --------------------------------------------------------------------------------------
def generated_sets(args: argparse.Namespace, workdir: Path) -> dict[str, Path]:
    """Write each generated set once: name -> its MVTec-style folder."""
    out = {}
    for category in args.categories:
        root = workdir / f"set-{category}"
        if category == "lesions":  # blobs scaled with the side (sigma 1.2-2 px at 32 px)
            scale = args.size / 32
            n = sum(args.counts) * 5 // 3  # write_lesion_masks keeps train's normal images only
            synthetic.write_lesion_masks(root, n=n, size=args.size, seed=args.seed,
                                         sigma=(1.2 * scale, 2.0 * scale))  # fmt: skip
        else:
            defects.write_defects(root, category, args.size, tuple(args.counts), args.seed)
        out[category] = root
    return out


def maps(args: argparse.Namespace, workdir: Path) -> dict:
    """Pixel AUROC, PRO and image AUROC of every model x method on every generated set."""
    rows = []
    for category, root in generated_sets(args, workdir).items():
        for model in args.models:
            for method in args.methods:
                run = workdir / f"maps-{category}-{model}-{method}"
                got = train(args, method, run, data=str(root), model=model,
                            epochs=args.map_epochs)  # fmt: skip
                row = {"set": category, "model": model, "method": method, **got}
                rows.append(row)
                print(f"{category:8s} {model:10s} {method:9s} image {row['auroc']:.3f}  pixel "
                      f"{row['pixel_auroc']:.3f}  PRO {row['pro']:.3f}  "
                      f"{row['total_seconds']:.0f} s", flush=True)  # fmt: skip
    return {"rows": rows, "size": args.size, "counts": args.counts, "epochs": args.map_epochs}


# --- sweep -------------------------------------------------------------------------------------
def sweep(args: argparse.Namespace) -> dict:
    """Seconds per search of Q queries against banks of growing size; coreset seconds."""
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(args.queries, args.dim, generator=gen)
    rows = []
    for m in args.banks:
        bank = torch.randn(int(m), args.dim, generator=gen)
        bank_sq = (bank * bank).sum(1)
        row = {"bank": int(m), "dim": args.dim, "queries": args.queries}
        for engine in ("torch", "faiss") if faiss_available() else ("torch",):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                if engine == "torch":
                    nearest_chunked(queries, bank, bank_sq)
                else:
                    faiss_search(queries, bank)
                times.append(time.perf_counter() - t0)
            row[f"{engine}_seconds"] = min(times)
        rows.append(row)
        print(f"bank {int(m):>9,} x {args.dim}: torch {1000 * row['torch_seconds']:9.1f} ms"
              + (f", faiss {1000 * row['faiss_seconds']:9.1f} ms" if "faiss_seconds" in row else "")
              + f" per {args.queries} queries", flush=True)  # fmt: skip
        del bank, bank_sq
    coreset = []
    for n in args.coreset_n:
        x = torch.randn(int(n), args.dim, generator=gen)
        k = max(1, int(n * args.coreset))
        t0 = time.perf_counter()
        greedy_coreset(x, k)
        coreset.append({"patches": int(n), "centres": k, "seconds": time.perf_counter() - t0})
        print(f"coreset {k:,} of {int(n):,} patches: {coreset[-1]['seconds']:.1f} s", flush=True)
    return {"search": rows, "coreset": coreset, "faiss": faiss_available()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="*", default=["fashion", "maps", "sweep"],
                    choices=["fashion", "maps", "sweep"])  # fmt: skip
    ap.add_argument("--methods", nargs="*", default=["patchcore", "padim"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--coreset", type=float, default=0.1, help="PatchCore's bank fraction")
    ap.add_argument("--patch-dim", type=int, default=None, help="patch features kept")
    ap.add_argument("--device", default="auto", help="where the runs train and score")
    ap.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    ap.add_argument("--epochs", type=int, default=30, help="GEOM epochs of a Fashion-MNIST run")
    ap.add_argument("--categories", nargs="*", default=[*defects.CATEGORIES, "lesions"])
    ap.add_argument("--size", type=int, default=64, help="generated image side, px")
    ap.add_argument("--counts", type=int, nargs=3, default=[200, 60, 200], help="train val test")
    ap.add_argument("--models", nargs="*", default=["fastnet", "resnet8", "textbook"])
    ap.add_argument("--map-epochs", type=int, default=10, help="GEOM epochs of a generated set's")
    ap.add_argument("--banks", type=float, nargs="*", default=[1e3, 1e4, 1e5, 3e5, 1e6])
    ap.add_argument("--dim", type=int, default=192, help="patch dimensions (fastnet's: 64 + 128)")
    ap.add_argument("--queries", type=int, default=784, help="query patches (28x28: 224 px)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--coreset-n", type=float, nargs="*", default=[1e4, 1e5])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script runs")
    ap.add_argument("--out", default="benchmarks/results/anomaly_maps.json")
    args = ap.parse_args()
    if args.smoke:  # tiny sets, one epoch; fashion only when named (a whole class: minutes)
        if "--parts" not in sys.argv:
            args.parts = ["maps", "sweep"]
        args.classes, args.epochs, args.map_epochs, args.coreset = args.classes[:1], 1, 1, 0.01
        args.categories, args.size, args.counts = ["brick", "lesions"], 32, [20, 10, 12]
        args.models, args.banks, args.queries = ["fastnet"], [1e3, 1e4], 64
        args.repeats, args.coreset_n = 1, [2e3]
        args.out = str(Path(tempfile.gettempdir()) / "anomaly_maps_smoke.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "command": "benchmarks/anomaly_maps.py " + " ".join(sys.argv[1:]),
        "settings": vars(args),
        "machine": f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, cuda {torch.cuda.is_available()}",
    }
    parts = {"fashion": fashion, "maps": maps, "sweep": lambda a, _: sweep(a)}
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts:
            t0 = time.perf_counter()
            report[part] = parts[part](args, Path(tmp))
            report[part]["seconds"] = time.perf_counter() - t0
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")
    if "fashion" in report:
        means = report["fashion"]["mean_image_auroc"]
        print("mean image AUROC: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in means.items())
              + f" (GEOM-Mahalanobis in BENCHMARKS.md: {GEOM_MEAN})")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
