"""Enrol a gallery of known people and identify a photo against it (open set: "unknown").

A gallery file is an .npz of plain arrays (never pickled): `embeddings` (N, D) float32 unit
vectors, `names` (N,) and `files` (N,) strings, and `model`, the embedding run's name and weights
hash: embeddings from another model live in another space, so such a gallery is refused.

identify ranks people by their best image's cosine similarity to the probe: one torch matmul
over the gallery (faster at every size measured: FAISS_FROM), or, with search="faiss", an exact
FAISS inner-product index (the faiss extra); either is asked for as many nearest images as it
takes to meet top_k distinct people.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch

from convlens.data.folder import IMAGE_EXTENSIONS
from convlens.data.names import class_name
from convlens.data.npz import read_npz
from convlens.errors import ConvlensError
from convlens.evaluation.neighbours import check_search, flat_index, knn, use_faiss
from convlens.faces.recogniser import FaceRecogniser
from convlens.runs.atomic import atomic_write_bytes
from convlens.runs.checks import one_line

UNKNOWN = "unknown"
MAX_GALLERY_BYTES = 256 << 20  # unpacked arrays: half a million 128-d float32 embeddings
# gallery images from which identify's search="auto" uses FAISS when installed: never, in
# effect. The exact index, built per call as identify builds it, was 1.6-5.3x slower than the
# matmul at every gallery size measured, 1e3 to 1e6 embeddings of 128 dimensions (BENCHMARKS.md,
# "FAISS against the matmul"); search="faiss" still forces it
FAISS_FROM = 2**62
FIRST_NEIGHBOURS = 64  # neighbours FAISS is first asked for; 4x more while too few people


def enroll(rec: FaceRecogniser, gallery_dir: str | Path, out: str | Path) -> dict:
    """Embed every image of `gallery_dir/<person>/`; write the .npz; report skipped images."""
    gallery_dir = Path(gallery_dir)
    people = (
        sorted(p for p in gallery_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if gallery_dir.is_dir()
        else []
    )
    if not people:
        raise ConvlensError(f"{gallery_dir}: expected one subfolder of images per person")
    tensors, names, files, skipped = [], [], [], []
    for person in people:
        for f in sorted(person.iterdir()):
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                x, _ = rec.face(f)
            except ConvlensError as e:  # unreadable, or no face: reported, not embedded
                skipped.append({"file": str(f), "error": str(e)})
                continue
            tensors.append(x)
            names.append(class_name(person.name))  # a folder name: printable, valid Unicode
            files.append(str(f))
    if not tensors:
        raise ConvlensError(f"{gallery_dir}: no usable image in any person's folder")
    emb = rec.embed(torch.stack(tensors))  # (N, D)
    buf = io.BytesIO()
    np.savez(buf, embeddings=emb.astype(np.float32), names=np.array(names),
             files=np.array(files), model=np.array(rec.model_id))  # fmt: skip
    atomic_write_bytes(out, buf.getvalue())
    missing = sorted({class_name(p.name) for p in people} - set(names))
    return {"gallery": str(out), "model": rec.model_id, "people": len(set(names)),
            "images": len(names), "skipped": skipped, "people_without_images": missing}  # fmt: skip


def load_gallery(path: str | Path, rec: FaceRecogniser) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, D), names (N,)) of a gallery made with this very model, else an error."""
    arrays = _read_gallery(Path(path))
    need = {"embeddings", "names", "model"}
    if not need <= set(arrays):
        raise ConvlensError(
            f"{path}: not a gallery .npz (lacks {', '.join(sorted(need - set(arrays)))})"
        )
    made_with = arrays["model"]
    if made_with.ndim != 0 or made_with.dtype.kind != "U":
        raise ConvlensError(
            f"{path}: gallery 'model' must be one string, not {made_with.dtype} {made_with.shape}"
        )
    if str(made_with) != rec.model_id:
        raise ConvlensError(
            f"{path} was enrolled with model {_short(str(made_with))}, not with {rec.model_id} "
            f"({rec.weights}): enroll the gallery again with this model"
        )
    emb, names, d = arrays["embeddings"], arrays["names"], rec.meta.extras["embedding_size"]
    if emb.ndim != 2 or emb.dtype.kind != "f" or emb.shape[0] < 1 or emb.shape[1] != d:
        raise ConvlensError(f"{path}: gallery embeddings are {emb.dtype} {emb.shape}, not "
                            f"(N, {d}) floats of this model")  # fmt: skip
    if not np.isfinite(emb).all():
        raise ConvlensError(f"{path}: gallery embeddings hold NaN or infinite values")
    if names.ndim != 1 or names.dtype.kind != "U" or len(names) != len(emb):
        raise ConvlensError(f"{path}: gallery names are {names.dtype} {names.shape}, not "
                            f"{len(emb)} strings (one per embedding)")  # fmt: skip
    return emb.astype(np.float32), names


def _read_gallery(path: Path) -> dict[str, np.ndarray]:
    """A gallery .npz's arrays: a regular file, at most MAX_GALLERY_BYTES unpacked, no pickle."""
    if not path.is_file():  # a FIFO would block, /dev/zero never end
        what = "not a regular file" if path.exists() else "no such gallery file"
        raise ConvlensError(f"{path}: {what}")
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except Exception as e:  # untrusted bytes: zipfile raises many kinds
        raise ConvlensError(
            f"{path}: not a gallery .npz, which enroll writes ({one_line(e)})"
        ) from None
    if unpacked > MAX_GALLERY_BYTES:
        raise ConvlensError(f"{path}: gallery unpacks to {unpacked} bytes, over the "
                            f"{MAX_GALLERY_BYTES} allowed")  # fmt: skip
    return read_npz(path)


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def identify(
    rec: FaceRecogniser, gallery: str | Path, image: str, top_k: int = 5, search: str = "auto"
) -> dict:
    """The best-matching person, or "unknown" when even the best is under the threshold.

    `search`: "torch" (a matmul), "faiss" (an exact index) or "auto" (FAISS from FAISS_FROM
    gallery images, when installed); all three give the same people."""
    check_search(search, "identify")
    emb, names = load_gallery(gallery, rec)
    x, face = rec.face(image)
    probe = rec.embed(x[None])[0]  # (D,)
    candidates = nearest_people(probe, emb, names, top_k, search)
    best = candidates[0][1]
    return {
        "image": image,
        "identity": candidates[0][0] if best >= rec.threshold else UNKNOWN,
        "similarity": best,
        "threshold": rec.threshold,
        "candidates": [{"identity": name, "similarity": sim} for name, sim in candidates],
        "face": face,
        "model": rec.model_id,
    }


def nearest_people(
    probe: np.ndarray, emb: np.ndarray, names: np.ndarray, top_k: int, search: str = "auto"
) -> list[tuple[str, float]]:
    """The top_k people [(name, similarity)], best first, by their best image's cosine with
    the unit `probe` (D,) among the unit gallery embeddings `emb` (N, D) of `names` (N,)."""
    if use_faiss(check_search(search, "identify"), len(emb), FAISS_FROM):
        index = flat_index(emb, "ip", "identify")  # inner product = cosine on unit vectors

        def ranked(k: int) -> tuple[np.ndarray, np.ndarray]:
            sims, rows = knn(index, probe[None], k)  # (1, k) each
            return sims[0], rows[0]
    else:
        all_sims = torch.from_numpy(emb) @ torch.from_numpy(probe)  # (N,)

        def ranked(k: int) -> tuple[np.ndarray, np.ndarray]:
            sims, rows = torch.topk(all_sims, k)
            return sims.numpy(), rows.numpy()

    k = min(len(emb), FIRST_NEIGHBOURS)
    sims, rows = ranked(k)  # the k nearest images, best first
    while k < len(emb) and len(np.unique(names[rows])) < top_k:  # too few people among them
        k = min(len(emb), 4 * k)
        sims, rows = ranked(k)
    _, first = np.unique(names[rows], return_index=True)  # each person's best ranked image
    return [(str(names[rows[i]]), float(sims[i])) for i in np.sort(first)[:top_k]]
