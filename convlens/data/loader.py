"""photo_loader: batches of augmented uint8 photos from a stored split, seeded per sample.

Sample i of epoch e is transformed under augment.seeded(seed, e, i), so the batches do not
depend on the number of worker processes and come again the same after a resume. The sampler
hands (epoch, index) keys to the workers, so persistent workers follow `set_epoch`. Files that
fail to decode (the "decode" source) are skipped and listed, never crashing a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler, get_worker_info
from torch.utils.data import Dataset as TorchDataset

from convlens.data.augment import sample_seed, seeded
from convlens.data.folder import MAX_BAD_FRACTION
from convlens.data.stream import SkipBad, check_bad
from convlens.errors import ConvlensError, DatasetFormatError


def photo_loader(
    dataset: TorchDataset,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    workers: int,
    seed: int,
    epoch: int,
    drop_last: bool,
    *,
    shuffle: bool = True,
    mix: tuple[float, float, int] | None = None,
    strict: bool = False,
    max_bad: float = MAX_BAD_FRACTION,
    pin_memory: bool | None = None,
) -> PhotoLoader:
    """A DataLoader of (uint8 (B, C, size, size), labels): seeded order and draws per epoch.

    Sample i of epoch e is transformed under augment.seeded(seed, e, i): the same batches with
    any number of workers, and again after a resume. Call `set_epoch` to move on; with workers
    the worker processes persist across epochs. `mix` = (alpha_mixup, alpha_cutmix, classes)
    mixes each batch (labels become float (B, K)). Bad files are skipped and listed in `.bad`;
    strict stops at the first, and more than `max_bad` of them in an epoch is an error.
    """
    if batch_size < 1:
        raise ConvlensError(f"batch_size must be at least 1, got {batch_size}")
    order = _EpochOrder(len(dataset), seed, epoch, shuffle)
    mixer = None
    if mix:
        from convlens.data.transforms import mix_collate  # torchvision: photo runs only

        mixer = mix_collate(*mix)
    return PhotoLoader(
        _Transformed(dataset, transform, seed),
        batch_size=batch_size,
        sampler=order,
        num_workers=workers,
        collate_fn=_Collate(mixer, seed),
        drop_last=drop_last,
        persistent_workers=workers > 0,  # no restart (and re-open of files) every epoch
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        generator=torch.Generator().manual_seed(seed),  # else DataLoader draws from global RNG
        strict=strict,
        max_bad=max_bad,
    )


class PhotoLoader(DataLoader):
    """photo_loader's DataLoader: yields (images, labels), collects skipped files in `.bad`."""

    def __init__(self, *args: Any, strict: bool, max_bad: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.strict, self.max_bad = strict, max_bad
        self._bad: dict[str, str] = {}  # path -> reason, each file once over the epochs

    @property
    def bad(self) -> list[tuple[str, str]]:
        """(path, reason) of every file skipped so far."""
        return list(self._bad.items())

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's order and augmentations."""
        self.sampler.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, bad in super().__iter__():
            if bad and self.strict:
                raise DatasetFormatError(f"{bad[0][0]}: {bad[0][1]}")
            self._bad.update(bad)
            if len(images):
                yield images, labels
        check_bad("the training files", self.bad, len(self.dataset), self.max_bad)


class _EpochOrder(Sampler):
    """Keys (epoch, index) in a seeded order per epoch: the epoch travels to the workers."""

    def __init__(self, n: int, seed: int, epoch: int, shuffle: bool) -> None:
        self.n, self.seed, self.epoch, self.shuffle = n, seed, epoch, shuffle

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self.shuffle:
            return ((self.epoch, i) for i in range(self.n))
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, 0, "order"))
        return ((self.epoch, i) for i in torch.randperm(self.n, generator=g).tolist())


class _Transformed(TorchDataset):
    """Item (epoch, i): (transformed x, label, None, i), or (None, -1, (path, reason), i)."""

    def __init__(self, base: TorchDataset, transform: Any, seed: int) -> None:
        self.safe, self.transform, self.seed = SkipBad(base), transform, seed

    def __len__(self) -> int:
        return len(self.safe)

    def __getitem__(self, key: tuple[int, int]) -> tuple:
        epoch, i = key
        with one_thread():
            x, y, bad = self.safe[i]
            if x is not None:
                with seeded(self.seed, epoch, i):
                    x = self.transform(x)
        return x, y, bad, key


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch thread (DataLoader workers already do).

    One image's ops are too small to share: on this 2-core machine under load, the photo
    augmentation of one 108 px image took 43 ms on two threads and 3.3 ms on one.
    """
    n = torch.get_num_threads()
    if n == 1 or get_worker_info() is not None:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _Collate:
    """Stack the good samples, list the bad ones; mix under the batch's own seed."""

    def __init__(self, mix: Any, seed: int) -> None:
        self.mix, self.seed = mix, seed

    def __call__(self, samples: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list]:
        good = [(x, y) for x, y, bad, _ in samples if bad is None]
        bad = [bad for _, _, bad, _ in samples if bad is not None]
        if not good:
            return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), bad
        images = torch.stack([x for x, _ in good])  # (B, C, size, size) uint8
        labels = torch.tensor([y for _, y in good], dtype=torch.int64)
        if self.mix is not None:
            epoch, first = samples[0][3]
            with seeded(self.seed, epoch, first, "batch"):
                images, labels = self.mix(images, labels)
        return images, labels, bad
