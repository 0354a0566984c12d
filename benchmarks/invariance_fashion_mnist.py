"""Translation invariance on Fashion-MNIST: a CNN against an MLP trained with the same budget.

The seed article claims CNNs recognise patterns "regardless of their position in the image".
This trains a CNN (default: `textbook`, the article's own net) and an `mlp` with identical
settings (data, epochs, batch size, learning rate, schedule, augmentation, seed; the MLP is the
baseline `convlens explain RUN --invariance` trains), then measures test accuracy as every test
image is shifted by 0..k pixels up, down, left and right (zero fill), and rotated by +-a degrees.
Claim checked: the CNN's curve stays above the MLP's at shifts of 3 pixels and more.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/invariance_fashion_mnist.py           # ~4 min
    .venv/bin/python benchmarks/invariance_fashion_mnist.py --model fastnet --translate 0
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import convlens
from convlens.api.explain import train_baseline
from convlens.data import load_dataset
from convlens.explain.invariance import bare_predictor, invariance_curves, sample_split
from convlens.predict import Recogniser


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist", help="any dataset (digits: a smoke test)")
    ap.add_argument("--model", default="textbook", help="the CNN (any registered model)")
    ap.add_argument("--epochs", type=int, default=3, help="budget of both models")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05, help="peak SGD learning rate of both")
    ap.add_argument("--translate", type=int, default=2, help="training shift augmentation (px)")
    ap.add_argument("--max-shift", type=int, default=6, help="largest test shift (px)")
    ap.add_argument("--n-images", type=int, default=10000, help="test images measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the curves to this JSON file")
    args = ap.parse_args()

    ds = load_dataset(args.data, seed=args.seed)
    test = sample_split(ds.test, args.n_images, seed=args.seed)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "settings": vars(args),
    }
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cnn = convlens.train(data=args.data, model=args.model, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, translate=args.translate,
                             seed=args.seed, run=str(Path(tmp) / "cnn"))  # fmt: skip
        t1 = time.perf_counter()
        mlp = train_baseline(cnn, args.data, cnn / "config.yaml")  # the same settings, an mlp
        t2 = time.perf_counter()
        for key, run, seconds in (("cnn", cnn, t1 - t0), ("mlp", mlp, t2 - t1)):
            rec = Recogniser(run)
            predict = bare_predictor(rec.model, rec.meta)  # no test-time augmentation
            curves = invariance_curves(predict, test, max_shift=args.max_shift)
            params = sum(p.numel() for p in rec.model.parameters())
            name = rec.meta["model"]["name"]
            report[key] = {"model": name, "params": params, "train_seconds": seconds, **curves}

    cnn, mlp = report["cnn"], report["mlp"]
    print(f"\n{report['machine']}; each: {args.epochs} epochs, batch {args.batch_size}, "
          f"lr {args.lr}, translate {args.translate} px, seed {args.seed}; "
          f"{len(test)} test images")  # fmt: skip
    for r in (cnn, mlp):
        print(f"  {r['model']}: {r['params']:,} parameters, trained in {r['train_seconds']:.0f} s")
    print(f"\nshift (px) | {cnn['model']} acc | {mlp['model']} acc | difference (points)")
    for s, a, b in zip(cnn["shift"]["pixels"], cnn["shift"]["accuracy"],
                       mlp["shift"]["accuracy"], strict=True):  # fmt: skip
        print(f"{s:10d} | {100 * a:11.2f}% | {100 * b:7.2f}% | {100 * (a - b):+.2f}")
    print(f"\nrotation (deg) | {cnn['model']} acc | {mlp['model']} acc")
    for d, a, b in zip(cnn["rotation"]["degrees"], cnn["rotation"]["accuracy"],
                       mlp["rotation"]["accuracy"], strict=True):  # fmt: skip
        print(f"{d:14d} | {100 * a:11.2f}% | {100 * b:7.2f}%")
    beyond = [
        a > b
        for s, a, b in zip(
            cnn["shift"]["pixels"], cnn["shift"]["accuracy"], mlp["shift"]["accuracy"], strict=True
        )  # fmt: skip
        if s >= 3
    ]
    print(f"\nCNN above MLP at every shift >= 3 px: {all(beyond)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
