"""Synthetic lesion images for tests and demos: textured background, small findings on top.

`lesion_images` draws a smooth random texture (blurred noise plus grain, like soft tissue) with
or without one small bright Gaussian blob (the lesion); `finding_images` draws up to three
findings per image (bright blob, dark blob, bright streak) for multi-label runs. `write_lesions`
and `write_findings` save them as PNG files that convlens reads like any other data;
`lesion_masks` adds each lesion's mask and `write_lesion_masks` saves those in MVTec AD's layout.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FINDINGS = ("lesion", "cyst", "streak")  # bright blob, dark blob, bright line segment
SPLIT_SHARES = {"train": 0.6, "val": 0.2, "test": 0.2}


def texture(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Background float (N, size, size): mean 110, blurred-noise texture (std ~18) plus grain."""
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2.0, 2.0))
    smooth /= smooth.std(axis=(1, 2), keepdims=True)  # unit std per image
    return 110 + 18 * smooth + rng.normal(0, 5, (n, size, size))


def add_blob(
    img: np.ndarray, rng: np.random.Generator, amplitude: float, sigma: tuple = (1.2, 2.0)
) -> np.ndarray:
    """Add a Gaussian blob (sigma in px) of `amplitude` grey levels somewhere, in place; the
    blob's profile (size, size), 1 at its centre, is returned (for its mask)."""
    size = img.shape[0]
    cy, cx = rng.uniform(5, size - 5, 2)
    sigma = rng.uniform(*sigma)
    yy, xx = np.mgrid[:size, :size]
    profile = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    img += amplitude * profile
    return profile


def add_streak(img: np.ndarray, rng: np.random.Generator, amplitude: float = 60) -> None:
    """Add a bright line segment (8-14 px, 1 px wide, soft edges) at a random angle, in place."""
    size = img.shape[0]
    cy, cx = rng.uniform(8, size - 8, 2)
    angle, half = rng.uniform(0, np.pi), rng.uniform(4, 7)
    yy, xx = np.mgrid[:size, :size] - np.array([cy, cx])[:, None, None]  # (2, H, W) offsets
    along = yy * np.sin(angle) + xx * np.cos(angle)
    across = -yy * np.cos(angle) + xx * np.sin(angle)
    img += amplitude * np.exp(-(across**2) / 0.8) * (np.abs(along) <= half)


def lesion_images(
    n: int, size: int = 32, seed: int = 0, prevalence: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, size, size) and bool labels (N,): True where a bright blob was added."""
    images, labels, _ = lesion_masks(n, size, seed, prevalence)
    return images, labels


MASK_LEVEL = 0.5  # a lesion's mask: where its blob reaches half its peak (its FWHM disc)


def lesion_masks(
    n: int,
    size: int = 32,
    seed: int = 0,
    prevalence: float = 0.5,
    sigma: tuple[float, float] = (1.2, 2.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`lesion_images` with the lesions' masks: uint8 (N, size, size), bool labels (N,), and
    bool masks (N, size, size), True where the blob reaches MASK_LEVEL of its peak; `sigma`
    (px) is the blobs' range (larger for larger images)."""
    rng = np.random.default_rng(seed)
    images = texture(rng, n, size)
    labels = rng.random(n) < prevalence
    masks = np.zeros((n, size, size), bool)
    for i in np.flatnonzero(labels):
        blob = add_blob(images[i], rng, amplitude=rng.uniform(70, 100), sigma=sigma)
        masks[i] = blob >= MASK_LEVEL
    return images.clip(0, 255).round().astype(np.uint8), labels, masks


def finding_images(
    n: int, size: int = 32, seed: int = 0, prevalence: float = 0.35
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, size, size) and 0/1 labels (N, 3), one column per FINDINGS entry."""
    rng = np.random.default_rng(seed)
    images = texture(rng, n, size)
    labels = (rng.random((n, len(FINDINGS))) < prevalence).astype(np.uint8)
    for i in range(n):
        if labels[i, 0]:
            add_blob(images[i], rng, amplitude=rng.uniform(70, 100))
        if labels[i, 1]:  # darker and sharper than the texture's own dark patches
            add_blob(images[i], rng, amplitude=-rng.uniform(90, 110), sigma=(1.0, 1.3))
        if labels[i, 2]:
            add_streak(images[i], rng)
    return images.clip(0, 255).round().astype(np.uint8), labels


def split_names(n: int, seed: int) -> list[str]:
    """A seeded train/val/test name for each of `n` images, in SPLIT_SHARES proportions."""
    cuts = np.cumsum([round(n * f) for f in SPLIT_SHARES.values()])[:-1]
    names = np.array(list(SPLIT_SHARES))[np.searchsorted(cuts, np.arange(n), side="right")]
    return np.random.default_rng(seed + 1).permutation(names).tolist()


def write_lesions(folder: str | Path, n: int = 300, size: int = 32, seed: int = 0) -> Path:
    """Write `folder/{train,val,test}/{lesion,normal}/NNNN.png`: a class-folder dataset."""
    from PIL import Image

    folder = Path(folder)
    images, labels = lesion_images(n, size, seed)
    for i, (img, label, split) in enumerate(zip(images, labels, split_names(n, seed), strict=True)):
        out = folder / split / ("lesion" if label else "normal")
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(out / f"{i:04d}.png")
    return folder


def write_lesion_masks(
    folder: str | Path, n: int = 300, size: int = 32, seed: int = 0, sigma=(1.2, 2.0)
) -> Path:
    """Write `lesion_masks` in MVTec AD's layout (convlens.data.mvtec): train/good holds the
    normal images of the train split, val and test their normal and lesion images with masks."""
    from convlens.data.mvtec import write_mask_set

    images, labels, masks = lesion_masks(n, size, seed, sigma=sigma)
    splits = split_names(n, seed)
    keep = [i for i, (s, y) in enumerate(zip(splits, labels, strict=True)) if s != "train" or not y]
    kinds = ["lesion" if labels[i] else "good" for i in keep]
    return write_mask_set(folder, images[keep], kinds, masks[keep], [splits[i] for i in keep])


def write_findings(folder: str | Path, n: int = 300, size: int = 32, seed: int = 0) -> Path:
    """Write `folder/images/NNNN.png` and `folder/labels.csv` (path,labels,split): the CSV path."""
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, labels = finding_images(n, size, seed)
    rows = []
    for i, (img, row, split) in enumerate(zip(images, labels, split_names(n, seed), strict=True)):
        Image.fromarray(img).save(folder / "images" / f"{i:04d}.png")
        names = ";".join(f for f, on in zip(FINDINGS, row, strict=True) if on)
        rows.append([f"images/{i:04d}.png", names, split])
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "labels", "split"], *rows])
    return folder / "labels.csv"
