"""Anomaly maps (PatchCore, PaDiM) next to GEOM: one-class Fashion-MNIST image AUROC, pixel
AUROC and PRO on generated sets with known masks, and the bank-size sweep of the search.

fashion: each class in turn is normal. A GEOM run (`convlens train --task anomaly --normal
CLASS`, as benchmarks/anomaly_fashion_mnist.py trains it: fastnet from scratch on that class's
5,400 training images) is the backbone; PatchCore and PaDiM are fitted on the same normal
training images, their thresholds chosen on validation (the other classes' val images are the
anomalies there, as in the GEOM runs), and the 10,000 test images give the image AUROC, next to
the run's own Mahalanobis and GEOM scores (BENCHMARKS.md: GEOM-Mahalanobis mean 94.61).
maps: generated sets in MVTec AD's layout with exact masks (convlens.medical.defects: brick,
grass, gravel, coffee with scratches, stains and holes; convlens.medical.synthetic: the
synthetic lesions), backbones with random weights (no training at all), a GEOM-trained fastnet
("geom": fitted on the set's normal train and val images) and torchvision ones ("tv-resnet18",
"tv-resnet18:pretrained" for ImageNet weights, downloaded by torchvision): image AUROC, pixel
AUROC, PRO (FPR <= 0.3), and test sensitivity/specificity at the validation threshold.
sweep: seconds per search of Q query patches against banks of 1e3..1e6 patches of D dimensions
(torch's chunked matmul; FAISS's exact index too when faiss-cpu is installed), and the greedy
coreset's seconds.

    .venv/bin/python benchmarks/anomaly_maps.py                          # all three parts
    .venv/bin/python benchmarks/anomaly_maps.py --parts fashion --classes 0 6 --epochs 30
    .venv/bin/python benchmarks/anomaly_maps.py --parts maps --size 128 --backbones fastnet geom
    .venv/bin/python benchmarks/anomaly_maps.py --parts sweep --threads 2
    .venv/bin/python benchmarks/anomaly_maps.py --smoke                  # seconds: runs, no figures
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

from convlens.data import mvtec
from convlens.medical import defects, masks, synthetic
from convlens.medical.padim import PaDiM
from convlens.medical.patchcore import (
    PatchCore,
    faiss_available,
    faiss_search,
    greedy_coreset,
    nearest_chunked,
)

GEOM_MEAN = 94.61  # BENCHMARKS.md: GEOM transformations + Mahalanobis, fastnet, 30 epochs
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def methods(args: argparse.Namespace) -> dict:
    """name -> (class, its settings) for every method measured."""
    table = {
        "patchcore": (PatchCore, {"coreset": args.coreset}),
        "padim": (PaDiM, {"dim": args.padim_dim}),
    }
    return {k: table[k] for k in args.methods}


def measure(method, train: torch.Tensor, val: tuple, test: tuple, test_masks=None) -> dict:
    """Fit on normal train images; threshold on val (images, anomalous); image AUROC, the
    flags' sensitivity and specificity (and pixel AUROC and PRO given masks) on test."""
    t0 = time.perf_counter()
    method.fit(train)
    fit_s = time.perf_counter() - t0
    (val_images, val_bad), (test_images, test_bad) = val, test
    val_scores, _ = method.score(val_images)
    calibration = method.calibrate(val_scores[~val_bad], val_scores[val_bad])
    t0 = time.perf_counter()
    scores, maps = method.score(test_images)
    score_s = time.perf_counter() - t0
    flagged = scores >= calibration["threshold"]
    row = {
        "image_auroc": masks.image_auroc(test_bad.numpy(), scores.numpy()),
        "sensitivity": float(flagged[test_bad].float().mean()),
        "specificity": float((~flagged[~test_bad]).float().mean()),
        "fit_seconds": fit_s,
        "score_ms_per_image": 1000 * score_s / len(test_images),
        "settings": method.settings(),
    }
    if test_masks is not None:
        row["pixel_auroc"] = masks.pixel_auroc(test_masks.numpy(), maps.numpy())
        row["pro"] = masks.pro_auc(test_masks.numpy(), maps.numpy())
    return row


# --- fashion -----------------------------------------------------------------------------------
def fashion(args: argparse.Namespace, workdir: Path) -> dict:
    """One-class Fashion-MNIST, each class's GEOM run as the backbone (and untrained fastnet)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from anomaly_fashion_mnist import one_class

    from convlens.data import load_dataset
    from convlens.models import create_model
    from convlens.tasks.loading import load_model

    ds = load_dataset("fashion-mnist", seed=args.seed)
    geom_args = argparse.Namespace(method="mahalanobis", epochs=args.epochs, seed=args.seed,
                                   translate=2, label_smoothing=0.2, model_args=None)  # fmt: skip
    pick = torch.randperm(len(ds.test), generator=torch.Generator().manual_seed(args.seed))
    test_images, test_labels = (
        t[pick[: args.test_images]] for t in (ds.test.images, ds.test.labels)
    )
    rows = []
    for c in args.classes:
        row = {"class": c, "name": ds.classes[c]}
        train = ds.train.images[ds.train.labels == c][: args.fit_images]
        val = (ds.val.images, ds.val.labels != c)
        test = (test_images, test_labels != c)
        for spec in args.fashion_backbones:
            if spec == "geom":  # the GEOM run: its own AUROC (whole test set) and its backbone
                run = one_class(c, ds.classes[c], geom_args, workdir)
                row["geom_mahalanobis"], row["geom_score"] = run["auroc"], run["auroc_geom"]
                model, meta, _ = load_model(workdir / f"class{c}")
                norm = meta["normalize"]
            else:  # untrained: what the GEOM training adds
                torch.manual_seed(args.seed)
                model = create_model("fastnet", in_channels=1, num_classes=10, image_size=28)
                norm = {"mean": [0.2860], "std": [0.3530]}  # Fashion-MNIST's
            kw = dict(input_shape=(1, 28, 28), mean=norm["mean"], std=norm["std"], seed=args.seed)
            for name, (cls, extra) in methods(args).items():
                row[f"{name}_{spec}"] = measure(cls(model, **kw, **extra), train, val, test)
        rows.append(row)
        print(f"class {c} {row['name']:<12} "
              + "  ".join(f"{k} {100 * (v['image_auroc'] if isinstance(v, dict) else v):.2f}"
                          for k, v in row.items() if k not in ("class", "name")),
              flush=True)  # fmt: skip
    keys = [k for k in rows[0] if k not in ("class", "name")]
    means = {k: statistics.mean(r[k]["image_auroc"] if isinstance(r[k], dict) else r[k]
                                for r in rows) for k in keys}  # fmt: skip
    return {"classes": rows, "mean_image_auroc": means, "geom_reported_mean": GEOM_MEAN,
            "test_images": len(test_images)}  # fmt: skip


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


def backbone(spec: str, channels: int, size: int, train, workdir: Path, args) -> tuple:
    """(model, mean, std) for a backbone spec: a registry name (random weights, the training
    images' mean and std), "geom", or "tv-NAME:pretrained" (ImageNet's weights and statistics)."""
    from convlens.models import create_model

    if spec == "geom":
        return geom_backbone(train, workdir, args)
    name, _, flag = spec.partition(":")
    torch.manual_seed(args.seed)
    model = create_model(name, in_channels=channels, num_classes=10, image_size=size,
                         **({"pretrained": True} if flag == "pretrained" else {}))  # fmt: skip
    if flag == "pretrained":
        stats = {k: v if channels == 3 else [sum(v) / 3] for k, v in IMAGENET.items()}
        return model.eval(), stats["mean"], stats["std"]
    x = train.float() / 255
    return model.eval(), x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).clamp_min(1e-3).tolist()


def geom_backbone(train: torch.Tensor, workdir: Path, args) -> tuple:
    """fastnet trained on GEOM's 72 transformations of the set's normal images (train/val)."""
    from PIL import Image

    import convlens
    from convlens.tasks.loading import load_model

    data = workdir / f"geom-data-{time.monotonic_ns()}"
    cut = max(1, len(train) // 6)  # a sixth of the normal images picks the best epoch
    for split, part in (("val", train[:cut]), ("train", train[cut:])):
        (data / split / "good").mkdir(parents=True)
        for i, img in enumerate(part):
            arr = img.permute(1, 2, 0).numpy()
            Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(
                data / split / "good" / f"{i:04d}.png"
            )
    run = convlens.train(data=str(data), task="anomaly", normal="good",
                         anomaly_method="mahalanobis", epochs=args.epochs, seed=args.seed,
                         run=str(workdir / f"geom-run-{time.monotonic_ns()}"))  # fmt: skip
    model, meta, _ = load_model(run)
    return model, meta["normalize"]["mean"], meta["normalize"]["std"]


def maps(args: argparse.Namespace, workdir: Path) -> dict:
    """Pixel AUROC, PRO and image AUROC of every method x backbone on every generated set."""
    rows = []
    for category, root in generated_sets(args, workdir).items():
        split = {s: mvtec.read_mask_set(root, s) for s in mvtec.SPLITS}
        train = split["train"].images
        channels, size = train.shape[1], train.shape[-1]
        for spec in args.backbones:
            try:
                model, mean, std = backbone(spec, channels, size, train, workdir, args)
            except Exception as e:  # e.g. no network for pretrained weights: say so, go on
                print(f"{category:8s} {spec}: skipped ({str(e).splitlines()[0][:120]})")
                continue
            for name, (cls, extra) in methods(args).items():
                method = cls(model, input_shape=(channels, size, size), mean=mean, std=std,
                             seed=args.seed, **extra)  # fmt: skip
                val, test = split["val"], split["test"]
                got = measure(method, train, (val.images, val.anomalous),
                              (test.images, test.anomalous), test.masks)  # fmt: skip
                row = {"set": category, "backbone": spec, "method": name, **got}
                rows.append(row)
                print(f"{category:8s} {spec:24s} {name:9s} image {row['image_auroc']:.3f}  "
                      f"pixel {row['pixel_auroc']:.3f}  PRO {row['pro']:.3f}  fit "
                      f"{row['fit_seconds']:.1f} s", flush=True)  # fmt: skip
    return {"rows": rows, "size": args.size, "counts": args.counts}


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
    ap.add_argument("--coreset", type=float, default=0.01, help="PatchCore's bank fraction")
    ap.add_argument("--padim-dim", type=int, default=100, help="PaDiM's random channels")
    ap.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    ap.add_argument("--epochs", type=int, default=30, help="GEOM backbone epochs")
    ap.add_argument("--fit-images", type=int, default=100_000, help="normal images fitted, at most")
    ap.add_argument("--fashion-backbones", nargs="*", default=["geom", "random"])
    ap.add_argument("--test-images", type=int, default=10_000, help="Fashion-MNIST test images")
    ap.add_argument("--categories", nargs="*", default=[*defects.CATEGORIES, "lesions"])
    ap.add_argument("--size", type=int, default=64, help="generated image side, px")
    ap.add_argument("--counts", type=int, nargs=3, default=[200, 60, 200], help="train val test")
    ap.add_argument(
        "--backbones",
        nargs="*",
        default=["textbook", "resnet8", "fastnet", "geom", "tv-resnet18:pretrained"],
    )
    ap.add_argument("--banks", type=float, nargs="*", default=[1e3, 1e4, 1e5, 3e5, 1e6])
    ap.add_argument("--dim", type=int, default=192, help="patch dimensions (fastnet's: 64 + 128)")
    ap.add_argument("--queries", type=int, default=784, help="query patches (28x28: 224 px)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--coreset-n", type=float, nargs="*", default=[1e4, 1e5])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script runs")
    ap.add_argument("--out", default="benchmarks/results/anomaly_maps.json")
    args = ap.parse_args()
    if args.smoke:
        args.classes, args.epochs, args.fit_images = args.classes[:1], 1, 200
        args.fashion_backbones, args.test_images = ["random"], 500
        args.categories, args.size, args.counts = ["brick", "lesions"], 32, [20, 10, 12]
        args.backbones, args.banks, args.queries = ["textbook", "geom"], [1e3, 1e4], 64
        args.repeats, args.coreset_n = 1, [2e3]
        args.out = str(Path(tempfile.gettempdir()) / "anomaly_maps_smoke.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "command": "benchmarks/anomaly_maps.py " + " ".join(sys.argv[1:]),
        "settings": vars(args),
        "machine": f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
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
