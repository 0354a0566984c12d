"""Photo datasets published as archives: download (MD5-checked), extract safely, lay out as folders.

The URLs and MD5s are the ones the installed torchvision's dataset classes publish (Imagenette,
OxfordIIITPet); no checksum here was made up. Each set is laid out as `ROOT/{train,val,test}/
<class>/*.jpg` so data/folder.py loads it, and gets a manifest naming its archives.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from convlens.data.download import download
from convlens.errors import ConvlensError, DatasetFormatError

MANIFEST = "manifest.json"
# Imagenette's WordNet IDs and the first of the names torchvision's Imagenette gives each
IMAGENETTE_CLASSES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888257": "parachute",
}  # fmt: skip

Archive = tuple[str, str]  # (URL, MD5)
# as torchvision.datasets.Imagenette and OxfordIIITPet (torchvision 0.29) list them
IMAGENETTE_160 = ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
                  "e793b78cc4c9e9a4ccc0c1155377a412")  # fmt: skip
IMAGENETTE_320 = ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",
                  "3df6f0d01a2c9592104656642f5e78a3")  # fmt: skip
OXFORD_PETS = (
    ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
     "5c4f3ee8e5d25df40f4fd59a7f44e54c"),
    ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
     "95a8c909bbe2e81eed6a22bccdf3f68f"),
)  # fmt: skip


def matches(root: Path, archives: tuple[Archive, ...]) -> bool:
    """Whether `root` holds a tree laid out from exactly these archives."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("archives") == [list(a) for a in archives]


def fetch(name: str, root: Path, archives: tuple[Archive, ...], *, progress: bool = True) -> Path:
    """Download, check and extract `archives`, then lay them out as `root` (which must not exist).

    Archives are kept in a hidden folder beside `root` until the tree is in place, so a failed
    later step does not download them again; a checksum mismatch leaves nothing.
    """
    if root.exists():
        raise ConvlensError(f"{root}: exists but holds no manifest of {name}'s archives; move it")
    stash = root.parent / f".{root.name}.download"
    work = root.parent / f".{root.name}.{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    try:
        for url, md5 in archives:
            path = stash / Path(urlparse(url).path).name
            if not path.is_file():
                download(url, path, md5, progress=progress, algorithm="md5")
            _extract(path, url, work / "raw")
        try:
            LAYOUTS[name](work / "raw", work / "tree")
        except (DatasetFormatError, OSError) as e:
            raise DatasetFormatError(f"{archives[0][0]}: unexpected contents: {e}") from None
        (work / "tree" / MANIFEST).write_text(
            json.dumps({"dataset": name, "archives": [list(a) for a in archives]}, indent=2) + "\n"
        )
        os.replace(work / "tree", root)
    except BaseException:
        if stash.is_dir() and not any(stash.iterdir()):
            stash.rmdir()  # nothing checked to keep
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(stash, ignore_errors=True)
    return root


def _extract(path: Path, url: str, dest: Path) -> None:
    """Unpack a tar archive; the "data" filter refuses links and paths that leave `dest`."""
    try:
        with tarfile.open(path) as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        path.unlink(missing_ok=True)  # checked, yet unreadable: fetch it afresh next time
        raise DatasetFormatError(f"{url}: cannot extract {path.name}: {e}") from None


def _imagenette(raw: Path, tree: Path) -> None:
    """imagenette2-*/{train,val}/<wnid>/ -> {train,val}/<name>/ (no test split published)."""
    tops = [d for d in raw.iterdir() if d.is_dir()]
    if len(tops) != 1 or not (tops[0] / "train").is_dir():
        raise DatasetFormatError("expected one imagenette2-* folder holding train/")
    top = tops[0]
    for split in ("train", "val"):
        (tree / split).mkdir(parents=True)
        for folder in sorted((top / split).iterdir()):
            os.replace(folder, tree / split / IMAGENETTE_CLASSES.get(folder.name, folder.name))


def _oxford_pets(raw: Path, tree: Path) -> None:
    """images/<Breed_name>_<n>.jpg -> {train,test}/<Breed Name>/, as trainval.txt, test.txt say."""
    for split, listing in (("train", "trainval.txt"), ("test", "test.txt")):
        for line in (raw / "annotations" / listing).read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            image_id = line.split()[0]
            breed = " ".join(p.title() for p in image_id.rsplit("_", 1)[0].split("_"))  # as tv
            src = raw / "images" / f"{image_id}.jpg"
            if not src.is_file():
                raise DatasetFormatError(f"{listing} lists {image_id} but {src.name} is missing")
            (tree / split / breed).mkdir(parents=True, exist_ok=True)
            os.replace(src, tree / split / breed / src.name)


LAYOUTS: dict[str, Callable[[Path, Path], None]] = {
    "imagenette-160": _imagenette,
    "imagenette-320": _imagenette,
    "oxford-pets": _oxford_pets,
}
