"""The LFW verification protocol: read `pairs.txt` and the `lfw/Name/Name_0001.jpg` tree, and score
accuracy with 10-fold threshold selection (each fold's threshold chosen on the other nine).

pairs.txt (View 2): a first line "10 300" (folds, pairs of each kind per fold), then per fold
300 matched lines `name n1 n2` followed by 300 mismatched lines `name1 n1 name2 n2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convlens.errors import ConvlensError, DatasetFormatError
from convlens.faces.metrics import accuracy, best_threshold, verification_metrics


@dataclass
class Pairs:
    """LFW pairs: two image paths, whether they show the same person, and the fold of each."""

    left: list[Path]
    right: list[Path]
    same: np.ndarray  # (N,) bool
    fold: np.ndarray  # (N,) int, 0 .. folds - 1


def image_path(root: Path, name: str, number: str, where: str) -> Path:
    """root/name/name_0001.jpg for image `number` of `name`; the line is named when it is bad."""
    if not number.isdigit():
        raise DatasetFormatError(f"{where}: image number {number!r} is not a whole number")
    return root / name / f"{name}_{int(number):04d}.jpg"


def read_pairs(pairs_txt: str | Path, root: str | Path) -> Pairs:
    """Parse pairs.txt against the image tree under `root`; every listed image must exist."""
    pairs_txt, root = Path(pairs_txt), Path(root)
    try:
        lines = [ln.split() for ln in pairs_txt.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{pairs_txt}: cannot read ({e})") from None
    if not lines:
        raise DatasetFormatError(f"{pairs_txt}: empty file")
    head = lines[0]
    if not (1 <= len(head) <= 2 and all(h.isdigit() for h in head)):
        raise DatasetFormatError(f"{pairs_txt}: line 1 must be 'FOLDS PAIRS' (e.g. '10 300')")
    folds, per = (int(head[0]), int(head[1])) if len(head) == 2 else (1, int(head[0]))
    body = lines[1:]
    if len(body) != 2 * folds * per:
        raise DatasetFormatError(
            f"{pairs_txt}: line 1 announces {folds} folds of {per} matched + {per} mismatched "
            f"pairs ({2 * folds * per} lines), the file has {len(body)}"
        )
    left, right, same = [], [], []
    for n, fields in enumerate(body, start=2):
        where = f"{pairs_txt}, line {n}"
        matched = (n - 2) % (2 * per) < per  # each fold: matched lines first, then mismatched
        if matched and len(fields) == 3:
            a = image_path(root, fields[0], fields[1], where)
            b = image_path(root, fields[0], fields[2], where)
        elif not matched and len(fields) == 4:
            a = image_path(root, fields[0], fields[1], where)
            b = image_path(root, fields[2], fields[3], where)
        else:
            kind = "matched 'name n1 n2'" if matched else "mismatched 'name1 n1 name2 n2'"
            raise DatasetFormatError(f"{where}: expected a {kind} line, got {' '.join(fields)!r}")
        left.append(a)
        right.append(b)
        same.append(matched)
    missing = sorted({str(p) for p in left + right if not p.is_file()})
    if missing:
        raise DatasetFormatError(
            f"{pairs_txt}: {len(missing)} listed image(s) missing under {root}, e.g. {missing[0]}"
        )
    fold = np.repeat(np.arange(folds), 2 * per)
    return Pairs(left, right, np.array(same, bool), fold)


def ten_fold_accuracy(scores: np.ndarray, same: np.ndarray, fold: np.ndarray) -> dict:
    """Mean and std of per-fold accuracy, each fold judged at the threshold best on the others."""
    accs, thresholds = [], []
    for k in np.unique(fold):
        test = fold == k
        if test.all():  # a single fold (pairsDevTest.txt): no other folds to choose on
            t, _ = best_threshold(scores, same)
        else:
            t, _ = best_threshold(scores[~test], same[~test])
        thresholds.append(t)
        accs.append(accuracy(scores[test], same[test], t))
    return {
        "accuracy": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "fold_accuracy": [float(a) for a in accs],
        "fold_threshold": thresholds,
    }


def find_pairs(root: str | Path, pairs: str | Path | None = None) -> Path:
    """`pairs`, else pairs.txt in the LFW folder `root` or beside it."""
    if pairs is not None:
        return Path(pairs)
    root = Path(root)
    found = [p for p in (root / "pairs.txt", root.parent / "pairs.txt") if p.is_file()]
    if not found:
        raise ConvlensError(f"{root}: no pairs.txt in it or beside it; pass --pairs FILE")
    return found[0]


def run_protocol(recogniser, pairs_txt: str | Path, root: str | Path) -> dict:
    """LFW accuracy (10-fold) and ROC metrics of a FaceRecogniser on the pairs in pairs_txt."""
    pairs = read_pairs(pairs_txt, root)
    files = sorted({str(p) for p in pairs.left + pairs.right})
    emb, faces = recogniser.embed_files(files)  # (F, D), per-file face info
    row = {f: i for i, f in enumerate(files)}
    a = emb[[row[str(p)] for p in pairs.left]]
    b = emb[[row[str(p)] for p in pairs.right]]
    scores = (a * b).sum(1)  # cosine: embeddings are unit length
    out = {"pairs_file": str(pairs_txt), "images": len(files)}
    out.update(ten_fold_accuracy(scores, pairs.same, pairs.fold))
    out.update(verification_metrics(scores, pairs.same))
    out["no_face"] = [f for f, info in faces.items() if info.get("fallback")]
    return out
