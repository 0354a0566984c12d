"""fashion-scenes: Fashion-MNIST items composited onto real photographs, saved as mixed-size JPEGs.

A photo-like benchmark that needs no download. Each image is one Fashion-MNIST item, enlarged
(Lanczos) to 45-90% of the image's shorter side (`item_scale`; fashion-scenes-small: 15-35%,
small subjects in large scenes), slightly rotated, coloured (its grey intensity
becomes alpha and shading over a random colour or a tinted photo texture) and pasted at a random
place, sometimes cut by the frame edge, onto a random crop of a real photograph that scikit-image
or scikit-learn ships; then re-lit, sometimes blurred or noisy, and saved as JPEG (quality 85-95)
with a shorter side of 160-480 px and an aspect ratio (width / height) of 0.6-1.8.

Honest test set: train and val items are Fashion-MNIST train items (disjoint), test items are
its test items, and test backgrounds and textures come from photos that train and val never use
(TEST_PHOTOS against TRAIN_PHOTOS). Every image draws from its own generator seeded by (seed,
split, class, index), so the bytes depend on the seed and VERSION only, whatever `workers` is
(with the same Pillow and libjpeg).
"""

from __future__ import annotations

import colorsys
import io
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

from convlens.data.dataset import Split
from convlens.errors import ConvlensError
from convlens.runs.atomic import check_new_folder, new_tree

VERSION = 1  # bump whenever a change alters any output byte: cached trees are then regenerated
SPLITS = ("train", "val", "test")
PER_CLASS = (1000, 200, 300)  # images per class in train, val, test: ~1 min on 2 idle cores
SHORT_SIDE = (160, 480)  # pixels, the image's shorter side
ASPECT = (0.6, 1.8)  # width / height, drawn log-uniformly
ITEM_SCALE = (0.45, 0.9)  # item side / the image's shorter side
SMALL_ITEMS = (0.15, 0.35)  # fashion-scenes-small's: an item of 24-168 px in its scene
CROP_SCALE = (0.35, 1.0)  # background crop side / the largest crop of that aspect the photo holds
JPEG_QUALITY = (85, 95)
EDGE_CUT = 0.15  # share of images whose item runs up to a quarter of its side past the frame
MANIFEST = "manifest.json"
PHOTO_SIDE = 800  # photos are first shrunk to this longest side: retina's 1411 px is slow to crop
# (module, file inside it): real photographs, no synthetic pictures; held out for test below
TRAIN_PHOTOS = (
    *(("skimage", f"data/{name}.png") for name in (
        "astronaut", "brick", "camera", "cell", "chelsea", "coins", "grass", "ihc", "moon",
        "motorcycle_left", "motorcycle_right", "page")),  # the motorcycles are a stereo pair
    ("skimage", "data/hubble_deep_field.jpg"),
    ("sklearn", "datasets/images/china.jpg"),
)  # fmt: skip
TEST_PHOTOS = (
    *(("skimage", f"data/{name}.png") for name in ("clock_motion", "coffee", "gravel", "text")),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/rocket.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
)


def folder_name(label: str) -> str:
    """A class name safe as a folder name: "T-shirt/top" -> "T-shirt-top"."""
    return re.sub(r"[^\w .-]+", "-", label).strip(" .-") or "class"


def generate(
    out: str | Path,
    items: tuple[Split, Split, list],
    *,
    seed: int = 0,
    per_class: tuple[int, int, int] = PER_CLASS,
    workers: int | None = None,
    item_scale: tuple[float, float] = ITEM_SCALE,
) -> dict:
    """Write `out/{train,val,test}/<class>/<n>.jpg` and its manifest; returns the manifest.

    `out` must not exist or be empty; the tree is built beside it and renamed into place, so an
    interrupted run leaves no half tree. `workers` processes render (0: this process; None: one
    per core, at most 8); `item_scale` is the item's side as a share of the image's shorter side,
    (low, high). Fashion-MNIST is looked up (or downloaded) as the named dataset is.
    """
    out, per_class = Path(out), tuple(int(n) for n in per_class)
    if len(per_class) != 3 or min(per_class) < 1:
        raise ConvlensError(f"fashion-scenes: per_class {per_class} needs 3 counts of at least 1")
    if seed < 0:
        raise ConvlensError(f"fashion-scenes: seed {seed} must be at least 0")
    item_scale = (float(item_scale[0]), float(item_scale[1]))
    if not 0 < item_scale[0] <= item_scale[1] <= 1:
        raise ConvlensError(f"fashion-scenes: item_scale {item_scale} needs 0 < low <= high <= 1")
    check_new_folder(out)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    train, test, classes = items
    jobs = _jobs(train, test, len(classes), seed, per_class)
    names = [folder_name(c) for c in classes]
    manifest = _manifest(seed, per_class, names, item_scale)
    with new_tree(out) as tmp:
        for split in SPLITS:
            for name in names:
                (tmp / split / name).mkdir(parents=True)
        tasks = [
            (str(tmp / split / names[c] / f"{n:05d}.jpg"), item, (seed, s, c, n), item_scale)
            for s, split in enumerate(SPLITS)
            for c, n, item in jobs[split]
        ]
        _run(tasks, workers)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(root: str | Path) -> dict | None:
    """The manifest of a generated tree, or None when `root` holds none (or an unreadable one)."""
    try:
        return json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def matches(
    manifest: dict | None,
    seed: int,
    per_class: tuple[int, int, int],
    item_scale: tuple[float, float] = ITEM_SCALE,
) -> bool:
    """Whether a tree's manifest says it is this version's set for `seed`, `per_class` and
    `item_scale` (a manifest without one, written before it could be chosen, has ITEM_SCALE)."""
    want = {
        "version": VERSION,
        "seed": seed,
        "per_class": dict(zip(SPLITS, per_class, strict=True)),
        "item_scale": list(item_scale),
    }
    if manifest is None:
        return False
    got = {"item_scale": list(ITEM_SCALE), **manifest}
    return all(got.get(k) == v for k, v in want.items())


def _manifest(
    seed: int, per_class: tuple[int, int, int], names: list[str], item_scale: tuple[float, float]
) -> dict:
    return {
        "dataset": "fashion-scenes",
        "version": VERSION,
        "seed": seed,
        "per_class": dict(zip(SPLITS, per_class, strict=True)),
        "counts": {s: n * len(names) for s, n in zip(SPLITS, per_class, strict=True)},
        "classes": names,
        "short_side": list(SHORT_SIDE),
        "aspect": list(ASPECT),
        "item_scale": list(item_scale),
        "jpeg_quality": list(JPEG_QUALITY),
        "backgrounds": {
            "train+val": [Path(f).stem for _, f in TRAIN_PHOTOS],
            "test": [Path(f).stem for _, f in TEST_PHOTOS],
        },
    }


def _jobs(
    train: Split, test: Split, k: int, seed: int, per_class: tuple[int, int, int]
) -> dict[str, list[tuple[int, int, np.ndarray]]]:
    """(class, index, 28x28 item) per image of each split: distinct items, seeded choice."""
    n_train, n_val, n_test = per_class
    rng = np.random.default_rng([seed, VERSION])
    jobs: dict[str, list] = {split: [] for split in SPLITS}
    for c in range(k):
        pool = np.flatnonzero(np.asarray(train.labels) == c)
        held = np.flatnonzero(np.asarray(test.labels) == c)
        if n_train + n_val > len(pool) or n_test > len(held):
            raise ConvlensError(
                f"fashion-scenes: class {c} has {len(pool)} train and {len(held)} test items in "
                f"Fashion-MNIST, too few for {n_train}+{n_val} train+val and {n_test} test"
            )
        chosen = rng.permutation(pool)[: n_train + n_val]
        picks = {"train": chosen[:n_train], "val": chosen[n_train:], "test": rng.permutation(held)}
        sources = {"train": (train, n_train), "val": (train, n_val), "test": (test, n_test)}
        for split, (source, n_split) in sources.items():
            images = np.asarray(source.images)  # (N, 1, 28, 28) uint8
            jobs[split] += [(c, n, images[i, 0]) for n, i in enumerate(picks[split][:n_split])]
    return jobs


Task = tuple[str, np.ndarray, tuple[int, ...], tuple[float, float]]  # path, item, key, scale


def _run(tasks: list[Task], workers: int) -> None:
    if not workers:
        for task in tasks:
            _write(task)
        return
    with ProcessPoolExecutor(workers) as pool:
        chunk = max(1, len(tasks) // (8 * workers))
        for _ in pool.map(_write, tasks, chunksize=chunk):
            pass


def _write(task: Task) -> None:
    path, item, key, item_scale = task
    split = key[1]
    rng = np.random.default_rng([*key, VERSION])
    photos = TEST_PHOTOS if SPLITS[split] == "test" else TRAIN_PHOTOS
    with open(path, "wb") as f:
        f.write(render(item, rng, photos, item_scale))


def render(
    item: np.ndarray,
    rng: np.random.Generator,
    photos: tuple = TRAIN_PHOTOS,
    item_scale: tuple[float, float] = ITEM_SCALE,
) -> bytes:
    """One scene as JPEG bytes: the 28x28 uint8 `item` on a crop of one of `photos`, its side
    a share of the scene's shorter side drawn from `item_scale`."""
    short = int(rng.integers(SHORT_SIDE[0], SHORT_SIDE[1] + 1))
    aspect = float(np.exp(rng.uniform(*np.log(ASPECT))))
    w, h = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
    scene = _crop(_photo(photos[rng.integers(len(photos))]), w, h, rng)

    grey = Image.fromarray(item)  # (28, 28), bright item on black
    if rng.random() < 0.5:
        grey = grey.transpose(Image.FLIP_LEFT_RIGHT)
    grey = grey.rotate(rng.uniform(-15, 15), Image.BICUBIC, expand=True)  # corners stay 0
    side = rng.uniform(*item_scale) * short * grey.width / 28  # the item, not its corners
    grey = grey.resize((round(side), round(side)), Image.LANCZOS)
    gain = rng.uniform(1.5, 3.0)  # faint parts of the item are see-through, the body opaque
    alpha = grey.point(_lut(np.arange(256) * gain))
    shade = grey.point(_lut(90 + np.arange(256) * (165 / 255))).convert("RGB")
    fill = _fill(grey.size, rng, photos)
    item_rgb = ImageChops.multiply(fill, shade)  # the item's own folds and edges show through

    iw, ih = grey.size
    cut = 0.25 if rng.random() < EDGE_CUT else 0.0  # how far past the frame it may run
    x = int(rng.integers(min(0, w - iw) - round(cut * iw), max(0, w - iw) + round(cut * iw) + 1))
    y = int(rng.integers(min(0, h - ih) - round(cut * ih), max(0, h - ih) + round(cut * ih) + 1))
    scene.paste(item_rgb, (x, y), alpha)
    return _finish(scene, rng)


def _crop(photo: Image.Image, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A random crop of `photo` with the aspect of w x h, resized to it, maybe mirrored."""
    pw, ph = photo.size
    cw, ch = (ph * w / h, ph) if pw / ph > w / h else (pw, pw * h / w)
    scale = rng.uniform(*CROP_SCALE)
    cw, ch = cw * scale, ch * scale
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    scene = photo.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    return scene.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else scene


def _fill(size: tuple[int, int], rng: np.random.Generator, photos: tuple) -> Image.Image:
    """The item's surface: a random colour, or (a third of the time) a tinted photo texture."""
    hue, sat, val = rng.random(), rng.uniform(0.15, 0.9), rng.uniform(0.45, 1.0)
    colour = tuple(round(255 * v) for v in colorsys.hsv_to_rgb(hue, sat, val))
    solid = Image.new("RGB", size, colour)
    if rng.random() >= 1 / 3:
        return solid
    texture = _crop(_photo(photos[rng.integers(len(photos))]), *size, rng)
    return ImageChops.multiply(texture, solid)


def _finish(scene: Image.Image, rng: np.random.Generator) -> bytes:
    """Camera realism: exposure, contrast and white balance, sometimes blur or sensor noise."""
    contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-30, 30)
    gains = rng.uniform(0.9, 1.1, (3, 1))  # white balance per channel
    scene = scene.point(_lut(((np.arange(256) - 128) * contrast + 128 + brightness) * gains))
    if rng.random() < 0.3:  # slight defocus: down and up again (a Gaussian costs 10x more)
        f = rng.uniform(1.3, 2.0)
        small = scene.resize((round(scene.width / f), round(scene.height / f)), Image.BILINEAR)
        scene = small.resize(scene.size, Image.BILINEAR)
    if rng.random() < 0.3:  # sensor noise, the same on every channel
        sigma = rng.uniform(2, 8)
        noise = 128 + sigma * rng.standard_normal((scene.height, scene.width), dtype=np.float32)
        grain = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).convert("RGB")
        scene = ImageChops.add(scene, grain, offset=-128)
    buf = io.BytesIO()
    scene.save(buf, "JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    return buf.getvalue()


def _lut(values: np.ndarray) -> list[int]:
    """A Pillow point() table: `values` rounded and clipped to 0-255, flattened."""
    return np.clip(np.round(values), 0, 255).astype(np.uint8).ravel().tolist()


def bundled_photo(source: tuple[str, str]) -> Image.Image:
    """A photograph scikit-image or scikit-learn ships, as RGB, at most PHOTO_SIDE px a side."""
    return _photo(source)


@cache
def _photo(source: tuple[str, str]) -> Image.Image:
    """A bundled photograph as RGB, read from the installed package (never downloaded)."""
    import importlib.util

    module, file = source
    spec = importlib.util.find_spec(module)
    path = Path(spec.origin).parent / file if spec and spec.origin else Path(module, file)
    if not path.is_file():
        raise ConvlensError(f"{path}: {module}'s bundled photo is missing; reinstall {module}")
    with Image.open(path) as img:
        img = img.convert("RGB")
    img.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.LANCZOS)  # no crop is drawn larger
    return img
