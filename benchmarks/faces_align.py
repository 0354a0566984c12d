"""Aligned against unaligned faces: verification on lfw-faces faces under synthetic pose changes.

scikit-image's LFW subset holds 100 faces of different people (25x25 grey). Each face is a
person; its photos are seeded pose changes (convlens.faces.poses: upscaled to 100 px in a 200 px
photo, rotated 15-25 degrees either way, scaled 0.8-1.2, shifted up to 10 px), made before
detection. Faces 0-69 train: `--train-copies` photos each, cut by the Haar detector (the whole
photo where none is found) and saved as crops; one embed run per `align` setting (none, eyes)
and seed trains on the same crops, the eyes run aligning them itself. Faces 70-99 are judged,
people never trained on: `--test-copies` photos each (another seed) go through the run's
FaceRecogniser (detect, crop, align as the weights say; no face found: the whole photo), and
every pair of test photos is scored (matched: the same face): AUROC, EER, TAR@FAR 1e-2 and 1e-3.
The same pairs are also scored on the raw model inputs (mean-centred pixels, cosine), which
needs no training: what alignment does to the pixels alone.

Caveat: the photo's edges are replicated from the face's border, so the streaks around a face
are its own and survive posing; the unaligned crop (a 20% margin) holds more of them than the
tighter aligned face, a cue that favours `none`. A trial (seed 0, --train-copies 30
--test-copies 6 --epochs 8, one core): embedding AUROC none 0.992, eyes 0.973; TAR@FAR=1e-3
none 0.44, eyes 0.77; pixel AUROC none 0.79, eyes 0.90.

    .venv/bin/python benchmarks/faces_align.py                  # 2 settings x seeds 0, 1
    .venv/bin/python benchmarks/faces_align.py --train-copies 8 --test-copies 3 --epochs 1 \\
        --seeds 0 --people 12   # smoke run

Results: benchmarks/results/faces_align.json; the table goes into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import convlens
from convlens.api.train import train as fit
from convlens.config import make_config
from convlens.faces import poses
from convlens.faces.detect import crop_face, detect_faces
from convlens.faces.metrics import verification_metrics
from convlens.faces.recogniser import FaceRecogniser, NoFaceError

TRAIN_SHARE = 0.7  # faces 0-69 train, 70-99 are judged
POSE_SEEDS = {"train": 0, "test": 1}  # the photos are the same for every run


def write_crops(faces: np.ndarray, copies: int, root: Path, side: int) -> dict:
    """root/personK/N.png: the detected face crop of each posed photo at side x side px (small
    images: held in memory, as alignment needs); how many photos had no face."""
    missed = 0
    for k, photos in enumerate(poses.posed_set(faces, copies, POSE_SEEDS["train"])):
        person = root / f"person{k:03d}"
        person.mkdir(parents=True)
        for n, photo in enumerate(photos):
            boxes = detect_faces(photo)
            missed += not boxes
            crop = crop_face(photo, boxes[0]) if boxes else photo
            crop.resize((side, side), Image.Resampling.BILINEAR).save(person / f"{n:03d}.png")
    return {"train_photos": len(faces) * copies, "train_no_face": missed}


def judge(run: Path, photos: list[list], labels: np.ndarray) -> dict:
    """Verification on every pair of test photos, by the run's embeddings and by raw pixels."""
    rec = FaceRecogniser(run)
    inputs, no_face, aligned = [], 0, 0
    for photo in (p for person in photos for p in person):
        try:
            x, info = rec.face(photo)
        except NoFaceError:
            x, info = rec.face(photo, detect=False)
            no_face += 1
        inputs.append(x)
        aligned += bool(info.get("aligned"))
    x = torch.stack(inputs)  # (N, C, H, W) uint8, the model's inputs
    i, j = np.triu_indices(len(x), k=1)
    same = labels[i] == labels[j]
    emb = rec.embed(x)
    pixels = x.flatten(1).float()
    pixels = torch.nn.functional.normalize(pixels - pixels.mean(1, keepdim=True), dim=1).numpy()
    out = {"photos": len(x), "no_face": no_face, "aligned": aligned}
    out["embedding"] = verification_metrics((emb[i] * emb[j]).sum(1), same)
    out["pixels"] = verification_metrics((pixels[i] * pixels[j]).sum(1), same)
    return out


def main() -> None:
    """Train an embedding per align setting and seed on posed faces 0-69; judge on 70-99."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=poses.FACES, help="faces used (<= 100)")
    parser.add_argument("--train-copies", type=int, default=40)
    parser.add_argument("--test-copies", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=48, help="crops' side, <= 64")
    parser.add_argument("--model", default="fastnet")
    parser.add_argument("--aligns", nargs="+", default=["none", "eyes"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/faces_align.json")
    args = parser.parse_args()
    faces = poses.lfw_faces()[: args.people]
    cut = int(round(TRAIN_SHARE * len(faces)))
    test_photos = poses.posed_set(faces[cut:], args.test_copies, POSE_SEEDS["test"])
    labels = np.repeat(np.arange(len(faces) - cut), args.test_copies)
    results = {
        "command": "benchmarks/faces_align.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k != "out"
        ),
        "machine": platform.processor() or platform.machine(),
        "versions": {"convlens": convlens.__version__, "torch": torch.__version__},
        "train_people": cut, "test_people": len(faces) - cut,
        "runs": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        crops = write_crops(faces[:cut], args.train_copies, Path(tmp) / "train", args.image_size)
        results.update(crops)
        for seed in args.seeds:
            for align in args.aligns:
                cfg = make_config(overrides={
                    "task": "embed", "data": str(Path(tmp) / "train"), "align": align,
                    "model": args.model, "seed": seed,
                    "epochs": args.epochs, "threads": args.threads, "val_fraction": 0.2,
                    "run": str(Path(tmp) / f"{align}-{seed}"),
                })  # fmt: skip
                t0 = time.perf_counter()
                run = fit(cfg)
                seconds = round(time.perf_counter() - t0, 1)
                row = {"seed": seed, **judge(run, test_photos, labels)}
                row["train_seconds_incl_eval"] = seconds
                results["runs"].setdefault(align, []).append(row)
                print(align, json.dumps(row, indent=1), flush=True)
    summary(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def summary(results: dict) -> None:
    """Mean over seeds per setting: embedding and pixel AUROC, TAR@FAR."""
    print("align  | emb AUROC | emb TAR@FAR=1e-2 | emb TAR@FAR=1e-3 | pixel AUROC | aligned")
    for align, rows in results["runs"].items():

        def mean(part: str, key: str, rows: list = rows) -> float:
            return float(np.mean([r[part][key] for r in rows]))

        share = np.mean([r["aligned"] / r["photos"] for r in rows])
        print(f"{align:6} | {mean('embedding', 'auc'):.4f}    | "
              f"{mean('embedding', 'tar@far=0.01'):.4f}           | "
              f"{mean('embedding', 'tar@far=0.001'):.4f}           | "
              f"{mean('pixels', 'auc'):.4f}      | {share:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
