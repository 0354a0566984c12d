"""WebDataset shards (`convlens shards`) as a training Dataset: the training split read in order,
each torchrun rank and DataLoader worker its own shards (data/shardsamples.py), val and test
centre-cropped at the model's size in memory; the input size chosen from the first training
samples as data/photoset.py chooses it for a folder. Needs the shards extra (webdataset).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from convlens.data.augment import seeded
from convlens.data.dataset import Dataset, Split
from convlens.data.photoset import PhotoOptions, PhotoSplit
from convlens.data.preprocess import Preprocess, check_photo, choose_input_size
from convlens.data.shards import ShardSet, open_shards
from convlens.data.shardsamples import ShardSamples
from convlens.errors import ConfigError, ConvlensError, DatasetFormatError

SIZE_SAMPLES = 200  # training samples whose sizes choose the input size (the same on every rank)


class ShardImages:
    """The shape of a shard split's images: they are read in order, never by index."""

    dtype = torch.uint8

    def __init__(self, shape: tuple[int, int, int, int]) -> None:
        self.shape = torch.Size(shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> torch.Tensor:
        raise ConvlensError("training images in shards are read in order, not picked by index: "
                            "use the folder the shards were written from")  # fmt: skip


@dataclass(kw_only=True)
class ShardSplit(PhotoSplit):
    """The training split of a ShardSet, `count` samples (before bad ones are skipped); its
    labels are not known before it is read (`labels` is empty)."""

    shards: ShardSet
    count: int
    per_rank: ClassVar[bool] = True

    def __len__(self) -> int:
        return self.count

    def loader(
        self, transform: Callable, batch_size: int, *, workers: int, seed: int, drop_last: bool,
        strict: bool, mix: tuple[float, float, int] | None = None,
    ) -> ShardLoader:  # fmt: skip
        """This rank's batches of batch_size: its own shards, read by its own workers; `mix`:
        photo_loader's (mixed in this process)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's, as split_by_node reads it
        if world > len(self.shards.shards["train"]):
            raise ConfigError(f"{self.shards.source}: {len(self.shards.shards['train'])} train "
                              f"shard(s) for {world} processes; each process reads whole shards: "
                              "write smaller ones (convlens shards --maxcount)")  # fmt: skip
        data = self.samples(transform, seed=seed, strict=strict)
        mixer = None
        if mix:
            from convlens.data.transforms import mix_collate  # torchvision v2's MixUp, CutMix

            mixer = mix_collate(*mix)
        return ShardLoader(data, batch_size, workers, seed, drop_last, mixer)

    def samples(self, transform: Callable, **options: Any) -> ShardSamples:
        """This rank's and worker's share of each epoch (ShardSamples' options)."""
        return self.shards.samples("train", photo_checked(transform), **options)

    def sample(self, n: int) -> Iterator[torch.Tensor]:
        """The first n centre crops of the shards, in a fixed order read by this process alone."""
        data = self.samples(centre_crop(self.prep), by_rank=False, shuffle=0)
        return (x for x, _ in islice(data, n))


class ShardLoader:
    """A DataLoader over ShardSamples made each epoch (its workers read that epoch's shards)."""

    def __init__(self, data: ShardSamples, batch_size: int, workers: int, seed: int,
                 drop_last: bool, mix: Callable | None = None) -> None:  # fmt: skip
        self.data, self.batch_size, self.workers = data, batch_size, workers
        self.seed, self.drop_last, self.epoch, self.mix = seed, drop_last, 0, mix

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.data.set_epoch(epoch)

    @property
    def bad(self) -> list[tuple[str, str]]:
        return self.data.bad

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)  # workers' seeds
        batches = DataLoader(self.data, batch_size=self.batch_size, num_workers=self.workers,
                             drop_last=self.drop_last, generator=g)  # fmt: skip
        # Each worker ends on its own short batch: kept, so that every sample is read once an
        # epoch, but for a batch of one (BatchNorm cannot train on it).
        kept = (batch for batch in batches if len(batch[1]) > 1)
        if self.mix is None:
            return kept
        return self._mixed(kept)

    def _mixed(self, batches: Iterator[tuple]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each batch mixed under its own seed: (epoch, rank, batch), as photo_loader's are."""
        rank = int(os.environ.get("RANK", "0"))
        for i, (images, labels) in enumerate(batches):
            with seeded(self.seed, self.epoch, rank << 32 | i, "batch"):
                yield self.mix(images, labels)


def load_shard_set(
    spec: str, options: PhotoOptions, *, strict: bool = False, image_size: int | None = None
) -> Dataset:
    """A Dataset of the shards `spec` names (a folder, a brace pattern, a list of URLs)."""
    shards = open_shards(spec)
    prep = options.preprocess
    if prep is None:
        first = shards.samples("train", by_rank=False, shuffle=0)
        shapes = [tuple(x.shape[1:]) for x, _ in islice(first, SIZE_SAMPLES)]
        if not shapes:
            raise DatasetFormatError(f"{spec}: no readable training sample in its first shards")
        choice = choose_input_size(shapes, image_size=image_size, device=options.device,
                                   pretrained=options.pretrained,
                                   backbone=options.backbone)  # fmt: skip
        photo = choice._replace(photo=True)  # shards always stream: the photo path's cut
        prep = photo.preprocess(shards.channels)
        notes = [f"input size: {choice.reason}"]
    else:
        notes = [f"input: the run's own {prep.size[0]}x{prep.size[1]} centre crop"]
    c, (h, w) = prep.channels, prep.size
    count = shards.counts["train"]
    train = ShardSplit(ShardImages((count, c, h, w)), torch.zeros(0, dtype=torch.int64), prep=prep,
                       shards=shards, count=count)  # fmt: skip
    notes.append(f"train: {count} samples in {len(shards.shards['train'])} shards, read in order")
    parts, bad = {}, []
    for split in ("val", "test"):
        if split in shards.shards:
            data = shards.samples(split, photo_checked(centre_crop(prep)), by_rank=False,
                                  shuffle=0, strict=strict)  # fmt: skip
            pairs = list(data)
            parts[split] = Split(
                torch.stack([x for x, _ in pairs]) if pairs else torch.zeros(0, c, h, w),
                torch.tensor([y for _, y in pairs], dtype=torch.int64),
            )
            bad += data.bad  # skipped and listed, as the training shards' are
            if not pairs:
                raise DatasetFormatError(f"{spec}: no readable sample in the {split} shards")
    if "test" not in parts:
        notes.append("no test shards: there is no test split; final metrics use validation")
    return Dataset(name=str(spec), classes=shards.classes, train=train, val=parts["val"],
                   test=parts.get("test"), source=shards.source, notes=notes,
                   bad_files=bad)  # fmt: skip


def centre_crop(prep: Preprocess) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (C, H, W) -> the model's crop, exactly as Preprocess.apply cuts the decoded image."""
    return lambda x: prep.apply(F.to_pil_image(x))  # the PIL path: predict's own pixels


def photo_checked(transform: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    """`transform`, after preprocess.check_photo: a strip or an icon is skipped and listed."""

    def checked(x: torch.Tensor) -> torch.Tensor:
        try:
            check_photo(x.shape[2], x.shape[1], "")
        except DatasetFormatError as e:  # ShardSamples names the shard and key
            raise DatasetFormatError(str(e).removeprefix(": ")) from None
        return transform(x)

    return checked
