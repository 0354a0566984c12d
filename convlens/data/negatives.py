"""Hard negatives for lfw-faces: seeded face-free crops of scikit-image's sample photos.

lfw-faces' 100 non-faces are mostly smooth background patches, so a CNN trained on them alone
calls any texture a face (the astronaut's spacesuit scored 0.6-0.87). These crops, taken at the
sizes the Haar cascade searches and shrunk to 25x25 as a confirmer's crops are, teach it texture;
re-lit copies of the faces balance them. Numbers: BENCHMARKS.md, "the face/non-face confirmer".
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from convlens.data.images import to_tensor

# scikit-image sample photos bundled with the wheel (no pooch download) that show no human face;
# camera (a cameraman) is left out, and so is the astronaut except through the boxes below
TRAIN_PHOTOS = (
    "brick", "chelsea", "clock", "coins", "colorwheel", "grass", "hubble_deep_field",
    "immunohistochemistry", "microaneurysms", "moon", "page", "retina", "rocket", "text", "cell",
)  # fmt: skip
HELD_OUT_PHOTOS = ("gravel", "coffee")  # never trained on: for measuring textured non-faces
# boxes in the 512x512 astronaut photo, (left, top, right, bottom)
ASTRONAUT_FACE = (175, 65, 275, 165)  # her face, as the cascade finds it
FACE_MARGIN = 50  # pixels kept clear of the face on every side: no half-face "non-faces"
ASTRONAUT_HELD_OUT = (256, 224, 512, 512)  # suit, name tag, helmet: only for measuring
SIDES = (24, 160)  # crop side range in pixels: the cascade's smallest window to a large face


def photo(name: str) -> Image.Image:
    """A scikit-image sample photo as a PIL image (RGB or L)."""
    from skimage import data

    return Image.fromarray(getattr(data, name)())


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def random_crops(
    image: Image.Image,
    n: int,
    rng: np.random.Generator,
    avoid: tuple[tuple[int, int, int, int], ...] = (),
) -> np.ndarray:
    """n random square crops, none overlapping a box in `avoid`, as uint8 (n, 1, 25, 25)."""
    crops = []
    hi = min(SIDES[1], image.width, image.height)
    while len(crops) < n:
        side = int(rng.integers(SIDES[0], hi + 1))
        x = int(rng.integers(0, image.width - side + 1))
        y = int(rng.integers(0, image.height - side + 1))
        box = (x, y, x + side, y + side)
        if any(_overlaps(box, a) for a in avoid):
            continue
        crops.append(to_tensor(image.crop(box), channels=1, size=(25, 25)).numpy())
    return np.stack(crops)


def _face_zone() -> tuple[int, int, int, int]:
    left, top, right, bottom = ASTRONAUT_FACE
    m = FACE_MARGIN
    return (left - m, top - m, right + m, bottom + m)


def hard_negatives(n_per_photo: int, seed: int) -> np.ndarray:
    """Training crops: n_per_photo from each of TRAIN_PHOTOS and the astronaut's trained part."""
    rng = np.random.default_rng(seed)
    parts = [random_crops(photo(name), n_per_photo, rng) for name in TRAIN_PHOTOS]
    avoid = (_face_zone(), ASTRONAUT_HELD_OUT)
    parts.append(random_crops(photo("astronaut"), 2 * n_per_photo, rng, avoid=avoid))
    return np.concatenate(parts)  # (n, 1, 25, 25)


def held_out_negatives(n_per_photo: int, seed: int) -> dict[str, np.ndarray]:
    """Measuring crops, from photos and an astronaut region that training never sees."""
    rng = np.random.default_rng(seed)
    out = {name: random_crops(photo(name), n_per_photo, rng) for name in HELD_OUT_PHOTOS}
    astronaut = photo("astronaut").crop(ASTRONAUT_HELD_OUT)
    out["astronaut (suit, helmet)"] = random_crops(astronaut, n_per_photo, rng)
    return out


def lighting_jitter(images: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """`copies` of each uint8 image with random contrast (x0.4-1.0) and brightness (-20..+70)."""
    rng = np.random.default_rng(seed)
    x = np.repeat(images.astype(np.float32), copies, axis=0)  # (N * copies, C, H, W)
    n = len(x)
    contrast = rng.uniform(0.4, 1.0, (n, 1, 1, 1))
    brightness = rng.uniform(-20, 70, (n, 1, 1, 1))
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip((x - mean) * contrast + mean + brightness, 0, 255).round().astype(np.uint8)
