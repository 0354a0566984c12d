"""The face/non-face confirmer (`--confirm RUN`) on textured non-faces it never trained on.

For each seed: `convlens train --data lfw-faces --model textbook --epochs 20 --batch-size 16
--threads 1 --seed S`, then LFW test accuracy, the share of held-out textured crops (gravel,
coffee, the astronaut's suit and helmet; `held_out_negatives(20, seed=1234)`) scored >= 0.5, and
the score of the astronaut's face as the Haar cascade finds it.

    .venv/bin/python benchmarks/faces_confirmer.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

import convlens
from convlens.data.negatives import held_out_negatives
from convlens.faces.detect import FaceConfirmer, crop_face, detect_faces


def measure(run: Path, held: dict[str, np.ndarray], face: Image.Image) -> dict:
    confirmer = FaceConfirmer(run)
    row = {"run": run.name, "test_acc": json.loads((run / "metrics.json").read_text())["accuracy"]}
    accepted = []
    for name, crops in held.items():
        probs = confirmer.recogniser.predict_tensor(torch.from_numpy(crops))
        face_prob = probs[:, confirmer.index].numpy()  # (N,)
        row[name] = float((face_prob >= 0.5).mean())
        accepted.append(face_prob >= 0.5)
    row["textured accepted"] = float(np.concatenate(accepted).mean())
    row["astronaut face"] = confirmer.score(face)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--out", default="benchmarks/results/faces_confirmer.json")
    args = ap.parse_args()
    held = held_out_negatives(20, seed=1234)
    astronaut = Image.fromarray(data.astronaut())
    (box,) = detect_faces(astronaut)
    face = crop_face(astronaut, box, margin=0.0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="convlens-confirm-") as tmp:
        for seed in args.seeds:
            run_dir = str(Path(tmp) / f"seed{seed}")
            run = convlens.train(data="lfw-faces", model="textbook", epochs=20, batch_size=16,
                                 threads=1, seed=seed, run=run_dir)  # fmt: skip
            rows.append({"seed": seed, **measure(run, held, face)})
            print(json.dumps(rows[-1]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
