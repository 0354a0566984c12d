"""Synthetic inspection images: textures and an object with pasted defects and exact masks.

A category's normal images are random crops of one photograph that scikit-image ships (brick,
grass, gravel: textures, flipped at random) or one object (a coffee cup, shifted by a few
pixels), with a little brightness jitter. A defective image gets one defect, drawn with a soft
alpha and masked where the alpha reaches 0.5:
- scratch: a thin bent line (a quadratic curve over 20-45% of the side), darker or brighter;
- stain: a soft-edged ellipse (5-10% of the side) that darkens or tints what is under it;
- hole: a rotated rectangle (8-18% of the side) of flat dark fill, sharp-edged: a missing part.
Sizes scale with the image side (64-128 px in the benchmarks). `write_defects` writes the
MVTec AD-style tree of convlens.data.mvtec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from convlens.errors import ConvlensError

DEFECTS = ("scratch", "stain", "hole")
CATEGORIES = {  # name: (bundled photo, texture or object)
    "brick": (("skimage", "data/brick.png"), "texture"),
    "grass": (("skimage", "data/grass.png"), "texture"),
    "gravel": (("skimage", "data/gravel.png"), "texture"),
    "coffee": (("skimage", "data/coffee.png"), "object"),
}
GREY = ("brick", "grass", "gravel")  # grey photographs: their images are grey too


def background(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One normal image of `category`: float (size, size) or (size, size, 3), 0-255."""
    from convlens.data.scenes import bundled_photo

    (source, kind) = CATEGORIES[category]
    photo = bundled_photo(source)
    pw, ph = photo.size
    if kind == "texture":  # a random crop of a quarter to a half of the photo's side
        side = rng.uniform(0.25, 0.5) * min(pw, ph)
        x0, y0 = rng.uniform(0, pw - side), rng.uniform(0, ph - side)
    else:  # the object centred, shifted by up to 3% of the crop
        side = 0.9 * min(pw, ph)
        x0 = (pw - side) / 2 + rng.uniform(-0.03, 0.03) * side
        y0 = (ph - side) / 2 + rng.uniform(-0.03, 0.03) * side
    crop = photo.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    img = np.asarray(crop.convert("L" if category in GREY else "RGB"), np.float64)
    if kind == "texture" and rng.random() < 0.5:
        img = img[:, ::-1]
    return img * rng.uniform(0.92, 1.08) + rng.uniform(-8, 8)


def _scratch(size: int, rng: np.random.Generator) -> np.ndarray:
    """Alpha (size, size) of a thin bent line."""
    length = rng.uniform(0.2, 0.45) * size
    centre = rng.uniform(0.2, 0.8, 2) * size
    angle = rng.uniform(0, np.pi)
    half = 0.5 * length * np.array([np.sin(angle), np.cos(angle)])
    bend = rng.uniform(-0.25, 0.25) * length * np.array([np.cos(angle), -np.sin(angle)])
    t = np.linspace(0, 1, 64)[:, None]
    p0, p2, p1 = centre - half, centre + half, centre + bend
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (64, 2) (y, x)
    yy, xx = np.mgrid[:size, :size][..., None]  # (size, size, 1) each: against 64 points
    dist = np.sqrt(((yy - curve[:, 0]) ** 2 + (xx - curve[:, 1]) ** 2).min(-1))
    width = rng.uniform(0.6, 1.2) * max(1.0, size / 64)  # half-width, px
    return np.clip(1.5 - dist / width, 0, 1)  # 1 inside, fading over one half-width


def _stain(size: int, rng: np.random.Generator) -> np.ndarray:
    """Alpha (size, size) of a soft-edged ellipse."""
    r = rng.uniform(0.05, 0.10) * size * np.array([1.0, rng.uniform(0.6, 1.0)])
    cy, cx = rng.uniform(0.15, 0.85, 2) * size
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:size, :size] - np.array([cy, cx])[:, None, None]
    u = (yy * np.cos(angle) + xx * np.sin(angle)) / r[0]
    v = (-yy * np.sin(angle) + xx * np.cos(angle)) / r[1]
    return 1 / (1 + np.exp(8 * (np.sqrt(u**2 + v**2) - 1)))  # 0.5 on the ellipse


def _hole(size: int, rng: np.random.Generator) -> np.ndarray:
    """Alpha (size, size) of a rotated rectangle, sharp-edged."""
    h, w = rng.uniform(0.08, 0.18, 2) * size / 2
    cy, cx = rng.uniform(0.15, 0.85, 2) * size
    angle = rng.uniform(0, np.pi / 2)
    yy, xx = np.mgrid[:size, :size] + 0.5 - np.array([cy, cx])[:, None, None]
    u = yy * np.cos(angle) + xx * np.sin(angle)
    v = -yy * np.sin(angle) + xx * np.cos(angle)
    return ((np.abs(u) <= h) & (np.abs(v) <= w)).astype(np.float64)


def add_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Paste a `kind` defect onto img (float, in place); its mask (size, size) bool."""
    size = img.shape[0]
    alpha = {"scratch": _scratch, "stain": _stain, "hole": _hole}[kind](size, rng)
    a = alpha[..., None] if img.ndim == 3 else alpha
    level = img.mean()
    if kind == "scratch":  # a bright or dark line, 60-100 grey levels off the image's mean
        fill = level + rng.choice([-1, 1]) * rng.uniform(60, 100)
    elif kind == "stain":  # darker, and on colour images tinted
        tint = rng.uniform(0.3, 0.6, 3) if img.ndim == 3 else rng.uniform(0.35, 0.6)
        fill = img * tint
    else:  # a missing piece: flat and dark, a little noise
        fill = rng.uniform(10, 35) + rng.normal(0, 2, img.shape)
    img *= 1 - a
    img += a * fill
    return alpha >= 0.5


def defect_images(
    n: int,
    category: str = "brick",
    size: int = 64,
    seed: int = 0,
    prevalence: float = 0.5,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """uint8 images (N, size, size) grey or (N, size, size, 3), kinds (N,) ("good" or one of
    DEFECTS, in turn) and bool masks (N, size, size)."""
    if category not in CATEGORIES:
        raise ConvlensError(f"defects: unknown category {category!r}; known: "
                            f"{', '.join(CATEGORIES)}")  # fmt: skip
    if size < 16:
        raise ConvlensError(f"defects: size {size} px is too small for a defect (16 or more)")
    rng = np.random.default_rng(seed)
    images, kinds, masks = [], [], np.zeros((n, size, size), bool)
    defective = rng.random(n) < prevalence
    for i in range(n):
        img = background(category, size, rng)
        kind = DEFECTS[int(defective[:i].sum()) % len(DEFECTS)] if defective[i] else "good"
        if defective[i]:
            masks[i] = add_defect(img, kind, rng)
        images.append(img.clip(0, 255).round().astype(np.uint8))
        kinds.append(kind)
    return np.stack(images), kinds, masks


def write_defects(
    folder: str | Path,
    category: str = "brick",
    size: int = 64,
    counts: tuple[int, int, int] = (200, 60, 120),
    seed: int = 0,
) -> Path:
    """Write `counts` (train, val, test) images of `category` in MVTec AD's layout: train all
    good, val and test half defective; returns the folder."""
    from convlens.data.mvtec import write_mask_set

    n_train, n_val, n_test = counts
    good, _, _ = defect_images(n_train, category, size, seed, prevalence=0.0)
    rest, kinds, masks = defect_images(n_val + n_test, category, size, seed + 1, prevalence=0.5)
    images = np.concatenate([good, rest])
    kinds = ["good"] * n_train + kinds
    masks = np.concatenate([np.zeros((n_train, size, size), bool), masks])
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return write_mask_set(folder, images, kinds, masks, splits)
