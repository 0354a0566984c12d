"""A class-folder tree of photos as a Dataset: the input size chosen and said, the training split
left where stream.open_split stores it (RAM, a .npy cache or the files themselves), val and test
centre-cropped at the model's size in memory. Folders of small images (<= 64 px) are not photos
here: `load_photo_folder` gives None and data/folder.py's in-memory path loads them as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from convlens.data.batches import channel_stats, pixel_stats
from convlens.data.dataset import Dataset, Split
from convlens.data.images import is_colour, open_image, shown_size
from convlens.data.loader import PhotoLoader, photo_loader
from convlens.data.preprocess import BackboneInput, Preprocess, choose_input_size
from convlens.data.stream import Item, Stored, check_bad, decode_all, folder_items, open_split
from convlens.errors import DatasetFormatError

HEADERS = 2000  # files whose headers choose the input size and channels (a fixed sample)
STATS_IMAGES = 500  # a streamed split's mean and std come from a seeded sample of this many
# a data-based init's sample: fastnet whitens 5,000 28x28 grey images; a third of those pixels
# per channel keeps its float patch copies of colour photos the size of Fashion-MNIST's
INIT_PIXELS = 5000 * 28 * 28 // 3


@dataclass(frozen=True)
class PhotoOptions:
    """What the photo path needs besides the folder: where the run trains and what it may hold."""

    device: str = "cpu"  # the run's device: 224 px on a GPU, smaller on a CPU
    pretrained: bool = False  # pretrained weights: 224 px
    cache_ram: int | None = None  # bytes for the decoded training split (None: half the free)
    workers: int = 0  # processes decoding (0: this one)
    preprocess: Preprocess | None = None  # a trained run's own: nothing is chosen
    source: str = "auto"  # where train is kept (stream.SOURCES); "decode": nothing decoded now
    backbone: BackboneInput | None = None  # pretrained weights' input (without --image-size)


class CroppedImages:
    """Reads like a uint8 (N, C, side, side) tensor: item i is stored image i centre-cropped,
    as evaluation and predict cut it; indexing reads (or decodes) only the items asked for."""

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, stored: TorchDataset, prep: Preprocess) -> None:
        from convlens.data.transforms import eval_transform  # torchvision: photo runs only

        side = prep.size[0]
        self.stored, self.crop = stored, eval_transform(side, prep.resize)
        self.shape = torch.Size((len(stored), prep.channels, side, side))

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        return self.shape.numel()

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, int | np.integer) and not isinstance(index, bool):
            return self.crop(self.stored[int(index)][0])  # (C, side, side)
        if isinstance(index, slice):
            rows = list(range(*index.indices(len(self))))
        else:
            index = torch.as_tensor(index)
            rows = (index.nonzero().flatten() if index.dtype == torch.bool else index).tolist()
        if not rows:
            return torch.zeros((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.stack([self.crop(self.stored[i][0]) for i in rows])  # (n, C, side, side)


@dataclass(kw_only=True)  # its fields follow Split's defaulted ones (groups)
class PhotoSplit(Split):
    """A training split of photos not held in memory at the model's size; `prep` is the model's
    cut (the centre crop evaluation and predict take)."""

    prep: Preprocess
    per_rank: ClassVar[bool] = False  # each torchrun rank reads its own samples, not a share

    def sample(self, n: int) -> Iterator[torch.Tensor]:
        """Up to n centre crops (C, H, W) for statistics and an init; bad ones left out."""
        raise NotImplementedError

    def loader(self, transform: Callable, batch_size: int, **options: Any) -> Any:
        """Each epoch's batches (uint8 (B, C, H, W), labels): `set_epoch`, iterate, `.bad`;
        options: workers, seed, drop_last, strict, mix (photo_loader's)."""
        raise NotImplementedError


@dataclass(kw_only=True)
class StreamedSplit(PhotoSplit):
    """A training split left where stream.open_split stored it (at storage size): batches come
    from data/loader.py's photo_loader; `images` (CroppedImages) crops what is asked for."""

    stored: Stored

    def loader(
        self, transform: Callable, batch_size: int, *, workers: int, seed: int, drop_last: bool,
        strict: bool, mix: tuple[float, float, int] | None = None,
    ) -> PhotoLoader:  # fmt: skip
        """photo_loader over the stored images (at storage size: random crops have room)."""
        return photo_loader(self.stored.dataset, transform, batch_size, workers, seed, 0,
                            drop_last, strict=strict, mix=mix)  # fmt: skip

    def sample(self, n: int) -> Iterator[torch.Tensor]:
        """A seeded n of its centre crops (C, H, W), bad files left out."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:n]
        for i in order.sort().values.tolist():
            try:
                yield self.images[i]
            except DatasetFormatError:
                continue  # the files source meets them here first; photo_loader lists them


def streamed(split: Split) -> bool:
    """Whether a split's photos are not held in memory (photo_loader's or shards')."""
    return isinstance(split, PhotoSplit)


def load_photo_folder(
    root: str | Path,
    options: PhotoOptions,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    strict: bool = False,
    image_size: int | None = None,
) -> Dataset | None:
    """The photo path's Dataset of `root/<class>/*` or `root/{train,val,test}/<class>/*`, or None
    where its images are small (then data/folder.py's load_folder loads them, bit for bit)."""
    root, prep = Path(root), options.preprocess
    if prep is not None and prep.legacy:
        return None
    classes, items, notes = folder_items(root, seed=seed, val_fraction=val_fraction)
    if prep is None:
        heads = sample_headers([path for path, _ in items["train"]])
        if not heads:
            return None  # nothing readable: load_folder says so, naming the files
        shapes = [(h, w) for h, w, _ in heads]
        choice = choose_input_size(shapes, image_size=image_size, device=options.device,
                                   pretrained=options.pretrained,
                                   backbone=options.backbone)  # fmt: skip
        if not choice.photo:
            return None
        prep = choice.preprocess(3 if any(colour for _, _, colour in heads) else 1)
        notes.append(f"input size: {choice.reason}")
    else:
        notes.append(f"input: the run's own {prep.size[0]}x{prep.size[1]} centre crop of a "
                     f"shorter side of {prep.resize} px")  # fmt: skip
    work = {"workers": options.workers, "strict": strict}
    stored = open_split(items["train"], prep, root=root, cache_ram=options.cache_ram,
                        source=options.source, **work)  # fmt: skip
    notes.append(f"stored {stored.note}")
    labels = torch.from_numpy(np.asarray(stored.dataset.labels, np.int64))
    train = StreamedSplit(CroppedImages(stored.dataset, prep), labels, prep=prep, stored=stored)
    bad, parts = list(stored.bad), {}
    for split in ("val", "test"):
        if split in items:
            parts[split], more = centre_cropped(items[split], prep, root, **work)
            bad += more
    _check_classes(root, classes, {"train": train, **parts}, notes)
    if "test" not in parts:
        notes.append("no test/ folder: there is no test split; final metrics use validation")
    return Dataset(name=str(root), classes=classes, train=train, val=parts["val"],
                   test=parts.get("test"), source=str(root.resolve()), notes=notes,
                   bad_files=bad)  # fmt: skip


def centre_cropped(
    items: list[Item], prep: Preprocess, root: Path, *, workers: int = 0, strict: bool = False
) -> tuple[Split, list[tuple[str, str]]]:
    """A split decoded to `prep`'s centre crop in memory, and its unreadable files.

    PIL decodes it, as predict and serve do: evaluation sees their pixels bit for bit (the
    training split's faster JPEG decoder is within a grey level of them, data/jpeg.py).
    """
    c, (h, w) = prep.channels, prep.size
    images = torch.zeros(len(items), c, h, w, dtype=torch.uint8)  # (N, C, H, W)
    rows, bad = decode_all(items, prep, workers, strict, images.__setitem__, decoder="pil")
    check_bad(root, bad, len(items))
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    if bad:
        keep = torch.from_numpy(rows)
        images, labels = images[keep], labels[keep]
    return Split(images, labels), bad


def sample_headers(paths: list[str], limit: int = HEADERS) -> list[tuple[int, int, bool]]:
    """(H, W as shown, colour) from the headers of a fixed sample of `paths`; bad ones left out.

    The sample does not follow the run's seed: every seed trains at the same input size.
    """
    if len(paths) > limit:
        pick = np.random.default_rng(0).choice(len(paths), limit, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    heads = []
    for path in paths:
        try:
            img = open_image(path)
            w, h = shown_size(img, path)
        except DatasetFormatError:
            continue  # listed when it is decoded
        heads.append((h, w, is_colour(img)))
    return heads


def split_stats(split: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (batches.channel_stats): of a split in memory, all of it; of
    photos not in memory, a sample of STATS_IMAGES, read one image at a time."""
    if not isinstance(split, PhotoSplit):
        return channel_stats(split)
    n = min(len(split), STATS_IMAGES)
    return pixel_stats((x[None] for x in _readable(split, n)), split.images.shape[1])


def init_images(split: Split, n: int = 5000) -> torch.Tensor:
    """uint8 images (n, C, H, W) for a data-based init: the first n of a split in memory."""
    if not isinstance(split, PhotoSplit):
        return split.images[:n]
    _, _, h, w = split.images.shape
    return torch.stack(list(_readable(split, max(1, min(len(split), INIT_PIXELS // (h * w))))))


def _readable(split: PhotoSplit, n: int) -> Iterator[torch.Tensor]:
    """split.sample(n), or one line if none of them could be read."""
    found = 0
    for x in split.sample(n):
        found += 1
        yield x
    if not found:
        raise DatasetFormatError(f"no readable training image in a sample of {n}")


def _check_classes(root: Path, classes: list[str], parts: dict[str, Split], notes: list) -> None:
    """load_folder's rule: every class in train, a note for one missing from val or test."""
    for name, part in parts.items():
        missing = sorted(set(range(len(classes))) - set(part.labels.tolist()))
        if name == "train" and missing:
            raise DatasetFormatError(
                f"{root}: class folder {classes[missing[0]]!r} holds no readable images"
            )
        if missing:
            notes.append(f"{name} split has no images of {', '.join(classes[i] for i in missing)}")
