"""Datasets known by name: where each is looked for, how it is fetched, how it is split."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convlens.data import archives, scenes
from convlens.data.dataset import Dataset, Split, stratified_split
from convlens.data.download import download as fetch
from convlens.data.idx import find_idx_folder, load_idx, read_idx_split
from convlens.errors import ConvlensError

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
SYSTEM_DIR = Path("/usr/share/datasets")  # Debian's dataset-* packages install here
FIXED_SPLIT = ([0.15, 0.15], 0)  # (val, test) fractions and seed for small built-in sets
LFW_NEGATIVES_PER_PHOTO = 10  # hard negatives per face-free photo added to lfw-faces' train
LFW_RELIT_COPIES = 2  # re-lit copies of each lfw-faces train face, to balance the negatives
SCENES_SEED = 0  # fashion-scenes' generator seed, not the run's: test sets agree across runs
SCENES_WORKERS = min(8, os.cpu_count() or 1)  # processes that generate fashion-scenes
ITEM_SCALE = scenes.ITEM_SCALE  # (Named's field `scenes` hides the module in its class body)


@dataclass(frozen=True)
class Named:
    """A dataset known by name."""

    description: str
    classes: list[str]
    hflip: bool  # a mirrored image keeps its class
    mirrors: tuple[str, ...] = ()  # base URLs tried in order, for IDX datasets
    sha256: tuple[str, ...] = ()  # SHA-256 of each of IDX_FILES, in that order
    bundled: tuple[str, str] | None = None  # (package, file inside it) for built-in sets
    scenes: tuple[int, int, int] | None = None  # per class (train, val, test): generated scenes
    item_scale: tuple[float, float] = ITEM_SCALE  # generated scenes: item side / shorter side
    archives: tuple[archives.Archive, ...] = ()  # (URL, MD5) of a photo set, as torchvision has


_FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
_FASHION += ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

DATASETS: dict[str, Named] = {
    "fashion-mnist": Named(
        "Zalando clothing photos, 28x28 grey, 10 classes, 60000 train + 10000 test",
        _FASHION,
        hflip=True,
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        # the .gz files as published (their MD5s are the ones torchvision checks); Debian's
        # copy in /usr/share/datasets is re-gzipped: other bytes, the same decompressed data
        sha256=(
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    ),
    "mnist": Named(
        "handwritten digits, 28x28 grey, 10 classes, 60000 train + 10000 test",
        [str(i) for i in range(10)],
        hflip=False,
        mirrors=(
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
        # the files yann.lecun.com published, which both mirrors serve (torchvision's MD5s
        # f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d... are of the same bytes)
        sha256=(
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    ),
    "digits": Named(
        "scikit-learn's handwritten digits, 8x8 grey, 10 classes, 1797 images",
        [str(i) for i in range(10)],
        hflip=False,
        bundled=("sklearn", "datasets/data/digits.csv.gz"),
    ),
    "lfw-faces": Named(
        "scikit-image's LFW subset, 25x25 grey, face vs non-face, 200 images "
        "(+ 310 extra in train: hard non-faces, re-lit faces)",
        ["non-face", "face"],
        hflip=True,
        bundled=("skimage", "data/lfw_subset.npy"),
    ),
    "fashion-scenes": Named(
        "Fashion-MNIST items on crops of real photos (convlens.data.scenes), JPEG, shorter side "
        "160-480 px, aspect 0.6-1.8, 10 classes, 1000 train + 200 val + 300 test each; "
        "generated on first use, no download",
        sorted(scenes.folder_name(c) for c in _FASHION),
        hflip=True,
        scenes=scenes.PER_CLASS,
    ),
    "fashion-scenes-small": Named(
        "fashion-scenes with small items (15-35% of the shorter side, not 45-90%) in large "
        "scenes, where resolution and aspect matter; 1000 train + 200 val + 300 test each",
        sorted(scenes.folder_name(c) for c in _FASHION),
        hflip=True,
        scenes=scenes.PER_CLASS,
        item_scale=scenes.SMALL_ITEMS,
    ),
    "fashion-scenes-mini": Named(
        "fashion-scenes with 20 train + 5 val + 5 test images per class, for quick checks",
        sorted(scenes.folder_name(c) for c in _FASHION),
        hflip=True,
        scenes=(20, 5, 5),
    ),
    "imagenette-160": Named(
        "fast.ai's Imagenette, 10 easy ImageNet classes, JPEG photos with a shorter side of "
        "160 px, 9469 train + 3925 val",
        sorted(archives.IMAGENETTE_CLASSES.values()),
        hflip=True,
        archives=(archives.IMAGENETTE_160,),
    ),
    "imagenette-320": Named(
        "fast.ai's Imagenette, 10 easy ImageNet classes, JPEG photos with a shorter side of "
        "320 px, 9469 train + 3925 val",
        sorted(archives.IMAGENETTE_CLASSES.values()),
        hflip=True,
        archives=(archives.IMAGENETTE_320,),
    ),
    "oxford-pets": Named(
        "Oxford-IIIT Pet, 37 cat and dog breeds, JPEG photos of mixed size, 3680 train + 3669 test",
        [],  # the breeds are read from its annotations when it is laid out
        hflip=True,
        archives=archives.OXFORD_PETS,
    ),
}


def list_datasets(data_dir: str | None = None) -> list[dict]:
    """One row per named dataset: name, description, found (a path or None), obtain."""
    rows = []
    for name, d in DATASETS.items():
        if d.bundled:
            found, obtain = _bundled_path(d.bundled), f"bundled with {d.bundled[0]}"
        elif d.scenes or d.archives:
            tree = _find_tree(name, d, data_dir)
            found, place = (str(tree) if tree else None), _tree_dir(name, data_dir)
            obtain = f"generated on first use into {place}"
            if d.archives:
                more = f" (+ {len(d.archives) - 1} more)" if len(d.archives) > 1 else ""
                obtain = f"download from {d.archives[0][0]}{more} into {place}"
        else:
            folder = _find_idx_dir(name, data_dir)
            found = str(folder) if folder else None
            obtain = f"download from {d.mirrors[0]} into {_download_dir(name, data_dir)}"
        rows.append({"name": name, "description": d.description, "found": found, "obtain": obtain})
    return rows


def load_named(
    name: str,
    *,
    data_dir: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    download: bool = True,
) -> Dataset:
    """Load a dataset by name, downloading IDX files when they are nowhere on disk."""
    d = DATASETS[name]
    if d.bundled:
        return _LOADERS[name](name, d)
    if d.scenes or d.archives:
        return _load_tree(name, d, data_dir, download, seed=seed, val_fraction=val_fraction)
    folder = _find_idx_dir(name, data_dir)
    if folder is None:
        if not download:
            places = ", ".join(str(p) for p in _search_dirs(name, data_dir))
            raise ConvlensError(
                f"{name} not found (looked in {places}) and downloads are off; "
                f"put {', '.join(IDX_FILES)} in one of those folders"
            )
        folder = _download_idx(name, d, _download_dir(name, data_dir))
    pairs = find_idx_folder(folder)
    return load_idx(
        pairs, name=name, classes=d.classes, hflip=d.hflip, seed=seed, val_fraction=val_fraction
    )


def _search_dirs(name: str, data_dir: str | None) -> list[Path]:
    """data_dir (and data_dir/name), $CONVLENS_DATA/name, ~/.cache/convlens/name, system dir."""
    dirs = [Path(data_dir), Path(data_dir) / name] if data_dir else []
    if os.environ.get("CONVLENS_DATA"):
        dirs.append(Path(os.environ["CONVLENS_DATA"]) / name)
    return dirs + [Path.home() / ".cache" / "convlens" / name, SYSTEM_DIR / name]


def _find_idx_dir(name: str, data_dir: str | None) -> Path | None:
    for folder in _search_dirs(name, data_dir):
        pairs = find_idx_folder(folder)
        if pairs and "test" in pairs:
            return folder
    return None


def _download_dir(name: str, data_dir: str | None) -> Path:
    return Path(data_dir) if data_dir else Path.home() / ".cache" / "convlens" / name


def _download_idx(name: str, d: Named, folder: Path) -> Path:
    """Fetch the four IDX files, trying each mirror in turn; every file is checked by SHA-256."""
    for file, sha256 in zip(IDX_FILES, d.sha256, strict=True):
        if (folder / file).is_file():
            continue
        errors = []
        for base in d.mirrors:
            try:
                fetch(base + file, folder / file, sha256)
                break
            except ConvlensError as e:
                errors.append(str(e))
        else:
            raise ConvlensError(f"cannot download {name}: {errors[-1]}")
    return folder


def _bundled_path(bundled: tuple[str, str]) -> str | None:
    spec = importlib.util.find_spec(bundled[0])
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / bundled[1]
    return str(path) if path.is_file() else None


def _fixed_split(name: str, d: Named, images: np.ndarray, labels: np.ndarray) -> Dataset:
    """A Dataset split 70/15/15 with a fixed seed, so test sets agree across runs and seeds."""
    fractions, seed = FIXED_SPLIT
    whole = Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
    train, val, test = (whole.subset(i) for i in stratified_split(whole.labels, fractions, seed))
    return Dataset(
        name=name,
        classes=d.classes,
        train=train,
        val=val,
        test=test,
        source=_bundled_path(d.bundled) or d.bundled[0],
        hflip=d.hflip,
        notes=[
            f"fixed stratified split 70/15/15 (seed {seed}), independent of the seed setting, "
            "so test sets are comparable across runs"
        ],
    )


def _digits(name: str, d: Named) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    return _fixed_split(name, d, images, bunch.target)


def _lfw_faces(name: str, d: Named) -> Dataset:
    from skimage.data import lfw_subset

    from convlens.data.negatives import TRAIN_PHOTOS, hard_negatives, lighting_jitter

    faces = lfw_subset()  # (200, 25, 25) float in [0, 1]: 100 faces, then 100 non-faces
    images = np.round(faces.clip(0, 1) * 255).astype(np.uint8)[:, None]  # (200, 1, 25, 25)
    labels = np.r_[np.ones(100), np.zeros(100)]  # face = 1, non-face = 0
    ds = _fixed_split(name, d, images, labels)
    # hard negatives, and faces re-lit so a bright, low-contrast face is still a face
    negatives = hard_negatives(LFW_NEGATIVES_PER_PHOTO, seed=0)  # (N, 1, 25, 25)
    train_faces = ds.train.images[ds.train.labels == 1].numpy()
    relit = lighting_jitter(train_faces, LFW_RELIT_COPIES, seed=0)
    ds.train = Split(
        torch.cat([ds.train.images, torch.from_numpy(negatives), torch.from_numpy(relit)]),
        torch.cat([ds.train.labels, torch.zeros(len(negatives), dtype=torch.int64),
                   torch.ones(len(relit), dtype=torch.int64)]),
    )  # fmt: skip
    ds.notes.append(
        f"train adds {len(negatives)} seeded non-face crops of {len(TRAIN_PHOTOS) + 1} face-free "
        f"scikit-image photos and {len(relit)} re-lit copies of its faces "
        "(convlens/data/negatives.py); val and test are LFW's 30 alone"
    )
    return ds


_LOADERS: dict[str, Callable[[str, Named], Dataset]] = {"digits": _digits, "lfw-faces": _lfw_faces}


def _load_tree(
    name: str, d: Named, data_dir: str | None, download: bool, **split_args: float
) -> Dataset:
    """A class-folder set, generated or downloaded once (under a lock) where none is found."""
    from convlens.data.folder import load_folder

    return name_tree(load_folder(tree_root(name, data_dir, download), **split_args), name)


def tree_root(name: str, data_dir: str | None = None, download: bool = True) -> Path | None:
    """The folder of a named class-folder set (fashion-scenes, imagenette, ...), generated or
    downloaded once (under a lock) where none is found; None for a set that is not a tree."""
    d = DATASETS[name]
    if not (d.scenes or d.archives):
        return None
    root = _find_tree(name, d, data_dir)
    if root is None:
        root = _tree_dir(name, data_dir)
        with _locked(root):  # a second process waits, then finds the tree the first made
            if not _tree_ready(d, root):
                _make_tree(name, d, root, data_dir, download)
    return root


def name_tree(ds: Dataset, name: str) -> Dataset:
    """A named tree's Dataset, loaded as a folder, under its name (and mirroring rule)."""
    d = DATASETS[name]
    ds.name, ds.hflip = name, d.hflip
    if d.scenes:
        ds.notes.insert(
            0,
            f"generated by convlens.data.scenes v{scenes.VERSION}, seed {SCENES_SEED} (fixed, so "
            "test sets agree across runs); test items and backgrounds are never in train",
        )
    return ds


def _find_tree(name: str, d: Named, data_dir: str | None) -> Path | None:
    return next((p for p in _search_dirs(name, data_dir) if _tree_ready(d, p)), None)


def _tree_dir(name: str, data_dir: str | None) -> Path:
    """Where a tree is made: data_dir/name (so sizes of a set can sit side by side) or ~/.cache."""
    return Path(data_dir) / name if data_dir else Path.home() / ".cache" / "convlens" / name


def _tree_ready(d: Named, root: Path) -> bool:
    if d.scenes:
        return scenes.matches(scenes.read_manifest(root), SCENES_SEED, d.scenes, d.item_scale)
    return archives.matches(root, d.archives)


def _make_tree(name: str, d: Named, root: Path, data_dir: str | None, download: bool) -> None:
    if d.archives and not download:
        places = ", ".join(str(p) for p in _search_dirs(name, data_dir))
        raise ConvlensError(
            f"{name} not found (looked in {places}) and downloads are off; "
            f"allow downloads to fetch {d.archives[0][0]}"
        )
    if d.archives:
        archives.fetch(name, root, d.archives)
        return
    old = scenes.read_manifest(root)
    if old is not None and old.get("dataset") == "fashion-scenes":
        shutil.rmtree(root)  # another version or size of ours: made again below
    n = sum(d.scenes) * len(d.classes)
    print(f"{name}: generating {n} JPEGs into {root} (once)", file=sys.stderr, flush=True)
    scenes.generate(root, fashion_items(download=download), seed=SCENES_SEED, per_class=d.scenes,
                    workers=SCENES_WORKERS, item_scale=d.item_scale)  # fmt: skip


def fashion_items(data_dir: str | None = None, download: bool = True) -> tuple[Split, Split, list]:
    """Fashion-MNIST's train and test items (N, 1, 28, 28) in file order, and its class names:
    what convlens.data.scenes composites."""
    ds = load_named("fashion-mnist", data_dir=data_dir, download=download)  # found or fetched
    pairs = find_idx_folder(ds.source)  # read again in file order: no split's seed shapes the set
    train, test = (read_idx_split(*pairs[split]) for split in ("train", "test"))
    return train, test, ds.classes


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive flock on the folder holding `root` (no lock file to leave), for the block."""
    import fcntl

    root.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(root.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
