"""Read WebDataset shards as one epoch of (image, label) samples: each rank and worker its own.

Every torchrun rank, then every DataLoader worker, takes its share of one shard order that all
ranks draw alike from (seed, epoch) (webdataset's split_by_node, split_by_worker), so each sample
is read once per epoch. Images are decoded in the workers by convlens.data.images (pixel cap,
EXIF). A bad shard or sample is skipped and appended to a log folder that every process writes
to (`.bad` reads it), or stops the run under `strict` with the shard and key.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import tarfile
import tempfile
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch
from torch.utils.data import IterableDataset

from convlens.data.files import MAX_FILE_BYTES, open_regular
from convlens.data.folder import IMAGE_EXTENSIONS
from convlens.data.images import decode_image, to_tensor
from convlens.errors import ConvlensError, DatasetFormatError

try:
    import webdataset as wds
except ImportError:  # an optional extra
    raise ConvlensError("shards need webdataset: pip install 'convlens[shards]'") from None

INDEX = "dataset.json"  # beside the shards: classes, channels, each shard's sample count
SHUFFLE = 64  # samples a worker shuffles among (undecoded: 64 phone photos are ~200 MB)
CURL_EXITS = {6: "no such host", 7: "cannot connect", 22: "the server answered an HTTP error",
              28: "timed out"}  # fmt: skip
FIELDS = frozenset(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)  # jpg, png, ..., dcm


class ShardSamples(IterableDataset):
    """One epoch of one split's shards, as this rank and DataLoader worker reads them.

    `seed` and `epoch` draw the shard order; `shuffle` samples are mixed in each worker; `keys`
    adds each sample's key to what it yields; `by_rank=False` reads every shard in this process
    (rank 0 evaluating alone); skipped samples go to the folder `bad_log` (default: a temporary
    one), which every rank and worker appends to and `.bad` reads.
    """

    def __init__(
        self, shards: list[tuple[str, int]], channels: int, num_classes: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None, *, seed: int = 0,
        epoch: int = 0, strict: bool = False, shuffle: int = SHUFFLE, keys: bool = False,
        by_rank: bool = True, bad_log: str | Path | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.shards = shards  # [(url or path, samples)]
        self.channels, self.num_classes, self.transform = channels, num_classes, transform
        self.seed, self.epoch, self.strict, self.shuffle, self.keys, self.by_rank = (
            seed, epoch, strict, shuffle, keys, by_rank
        )  # fmt: skip
        if bad_log is None:  # removed with this object, by the process that made it
            bad_log = tempfile.mkdtemp(prefix="convlens-shards-")
            weakref.finalize(self, _remove_own, bad_log, os.getpid())
        self.bad_log = Path(bad_log)
        self.bad_log.mkdir(parents=True, exist_ok=True)

    def set_epoch(self, epoch: int) -> None:
        """Read epoch `epoch`'s shard order from the next iteration (a DataLoader's next epoch)."""
        self.epoch = epoch

    def order(self) -> list[tuple[str, int]]:
        """This epoch's shard order, alike on every rank: rank r takes shards r, r + world, ..."""
        return random.Random(f"{self.seed}:{self.epoch}").sample(self.shards, len(self.shards))

    def rank_counts(self, world_size: int | None = None) -> list[int]:
        """Samples each rank is given this epoch (before bad ones are skipped)."""
        world_size = world_size or (wds.utils.pytorch_worker_info()[1] if self.by_rank else 1)
        order = self.order()
        return [sum(n for _, n in order[rank::world_size]) for rank in range(world_size)]

    def __iter__(self) -> Iterator[tuple]:
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        mix = f"{self.seed}:{self.epoch}:{rank}:{worker}"
        shuffle = (
            wds.shuffle(self.shuffle, initial=self.shuffle, seed=mix) if self.shuffle else None
        )
        return iter(
            wds.DataPipeline(
                wds.SimpleShardList([url for url, _ in self.order()]),
                wds.split_by_node if self.by_rank else None,  # torchrun's RANK, WORLD_SIZE
                wds.split_by_worker,
                self._tar_samples,
                shuffle,
                self._decoded,
            )
        )

    def _tar_samples(self, shards: Iterator[dict]) -> Iterator[dict]:
        """webdataset's samples ({__key__, __url__, jpg, cls}) of each shard; a bad one skipped.

        (Not WebDataset's own opener and tar reader: they open a FIFO named x.tar blocking,
        read a member of any size whole, and do not tell the error handler which shard failed.)
        """
        listed = dict(self.shards)
        for shard in shards:
            url, n = shard["url"], 0
            try:
                with open_shard(url) as stream:
                    for sample in wds.tariterators.group_by_keys(self._files(stream, url)):
                        n += 1
                        yield sample
                if n != listed[url]:  # tarfile takes a tar cut at a header for a whole one
                    raise DatasetFormatError(
                        f"{url}: holds {n} samples, not the {listed[url]} its {INDEX} lists "
                        "(cut short?)"
                    )
            except Exception as e:  # untrusted bytes: tarfile, curl and OSError raise many kinds
                self._skip(url, shard_error(e, url))

    def _files(self, stream, url: str) -> Iterator[dict]:
        """The regular files of a tar stream as {fname, data, __url__}, each at most 512 MiB."""
        with tarfile.open(fileobj=stream, mode="r|*") as tar:  # a gzipped tar too
            for info in tar:
                if info.isreg() and info.size > MAX_FILE_BYTES:  # gzipped, it can be a bomb
                    self._skip(f"{url}: {info.name}", f"{info.size} bytes, over the "
                               f"{MAX_FILE_BYTES >> 20} MiB limit for one file")  # fmt: skip
                elif info.isreg():
                    data = tar.extractfile(info).read()
                    yield {"fname": info.name, "data": data, "__url__": url}
                tar.members = []  # stream mode would keep every header

    def _decoded(self, samples: Iterator[dict]) -> Iterator[tuple]:
        for sample in samples:
            fields = sorted(FIELDS & sample.keys())
            name = f"{sample['__url__']}: {sample['__key__']}.{fields[0] if fields else 'cls'}"
            try:
                if len(fields) != 1:
                    raise DatasetFormatError(f"{name}: holds {len(fields)} images, not 1")
                label = _label(sample.get("cls"), self.num_classes, name)
                image = to_tensor(
                    decode_image(sample[fields[0]], name=name), channels=self.channels
                )
                if self.transform is not None:  # it may refuse an image (a 1x1 icon) too
                    image = self.transform(image)  # (C, H, W) uint8 -> (C, size, size) uint8
            except DatasetFormatError as e:
                self._skip(name, str(e).removeprefix(f"{name}: "))
                continue
            yield (image, label, sample["__key__"]) if self.keys else (image, label)

    def _skip(self, where: str, why: str) -> None:
        if self.strict:
            raise DatasetFormatError(f"{where}: {why}")
        log = self.bad_log / f"{socket.gethostname()}-{os.getpid()}.jsonl"  # one per process
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps([where, why]) + "\n")

    @property
    def bad(self) -> list[tuple[str, str]]:
        """(shard or sample, reason) for everything skipped so far, by any process, sorted."""
        found = set()
        for log in self.bad_log.glob("*.jsonl"):
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    where, why = json.loads(line)
                except ValueError:  # a line cut short by a killed worker
                    continue
                found.add((str(where), str(why)))
        return sorted(found)


def open_shard(url: str):
    """A shard or its index opened for reading: a local file only if regular (never a FIFO)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return open_regular(url2pathname(parsed.path) if parsed.scheme else url, name=url)
    return wds.gopen(url)  # curl for http(s); closing it raises if curl failed


def shard_error(e: Exception, url: str) -> str:
    """One line for an error reading `url` (group_by_keys appends objects to e.args)."""
    if isinstance(e, DatasetFormatError):
        return str(e).removeprefix(f"{url}: ")
    text = str(e.args[0]) if e.args else type(e).__name__
    if isinstance(e, tarfile.TarError):
        return (
            f"tar file cut short ({text})" if "end of data" in text else f"not a tar file ({text})"
        )
    if exit_code := re.search(r"exit (\d+) \(read\)", text):
        why = CURL_EXITS.get(int(exit_code[1]), f"curl exit status {exit_code[1]}")
        return f"cannot download ({why})"
    return f"unreadable ({type(e).__name__}: {text[:200]})"


def _label(raw: bytes | None, num_classes: int, name: str) -> int:
    text = raw.decode("ascii", "replace").strip() if raw is not None else ""
    if not text.isdigit() or int(text) >= num_classes:
        shown = "no .cls" if raw is None else f"class {text[:20]!r}"
        raise DatasetFormatError(f"{name}: {shown}, not a class index below {num_classes}")
    return int(text)


def _remove_own(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # not a DataLoader worker's copy of the dataset
        shutil.rmtree(folder, ignore_errors=True)
