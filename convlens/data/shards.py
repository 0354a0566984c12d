"""WebDataset tar shards of a class-folder tree: write them, and find them from a spec.

`write_shards` stores each image's original bytes (`KEY.jpg`, `KEY.png`, ...) with its class
index (`KEY.cls`) in `{split}-NNNNNN.tar`, in a seeded order that mixes the classes, and a
`dataset.json` beside them (classes, channels, each shard's sample count). `open_shards` takes
that folder, a brace pattern or a list of paths or URLs; its `samples(split)` reads them
(convlens.data.shardsamples).
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse
from urllib.request import url2pathname

import torch

from convlens.data.badfiles import write_bad_files
from convlens.data.dataset import MAX_CLASSES, stratified_split
from convlens.data.files import KINDS, read_regular
from convlens.data.folder import WORKERS, list_folder
from convlens.data.images import is_colour, open_image
from convlens.data.shardsamples import INDEX, ShardSamples, open_shard, shard_error, wds
from convlens.errors import ConvlensError, DatasetFormatError
from convlens.runs.atomic import check_new_folder, new_tree
from convlens.version import __version__

FORMAT = "convlens-shards"
VERSION = 1
SPLITS = ("train", "val", "test")
MAXCOUNT = 1000  # samples per shard: ~110 MB of ImageNet-sized JPEGs, and shards to share
MAXSIZE = 1e9  # bytes per shard (phone photos reach this first)
READ_AHEAD = 64  # files read at once while writing: the bytes of one such chunk are in memory
MAX_SHARDS = 100_000  # a brace pattern expanding past this is a typo, not a dataset
MAX_INDEX_BYTES = 64 << 20
NAME = re.compile(r"(train|val|test)-\d{6}\.tar")  # what write_shards names a shard
REMOTE = frozenset(wds.gopen_schemes) - {"pipe", "__default__"}  # pipe: runs a shell command


def write_shards(
    source: str | Path,
    out: str | Path,
    *,
    maxcount: int = MAXCOUNT,
    maxsize: float = MAXSIZE,
    seed: int = 0,
    val_fraction: float = 0.1,
    strict: bool = False,
) -> dict:
    """Write `source` (as load_folder reads it) as tar shards and dataset.json in new folder `out`.

    Files that are not readable images are skipped and listed in `out/bad_files.csv` (`strict`:
    the first one stops it). Without a val/ folder a seeded, stratified share of train becomes
    the val shards. Built beside `out` and renamed into place; returns the dataset.json content.
    """
    root, out = Path(source), Path(out)
    if maxcount < 1 or maxsize < 1:
        raise ConvlensError(f"maxcount {maxcount} and maxsize {maxsize} must be at least 1")
    check_new_folder(out)
    notes: list[str] = []
    _, classes, items = list_folder(root, notes)
    if "val" not in items:
        labels = torch.tensor([label for _, label in items["train"]])
        rest, val = stratified_split(labels, [val_fraction], seed)
        items["val"] = [items["train"][i] for i in val.tolist()]
        items["train"] = [items["train"][i] for i in rest.tolist()]
        notes.append(f"no val/ folder: {val_fraction:.0%} of train (seed {seed}) is the val split")
    if "test" not in items:
        notes.append("no test/ folder: no test shards")
    with new_tree(out) as tmp:
        bad: list[tuple[str, str]] = []
        shards, colour = {}, False
        for n, split in enumerate(s for s in SPLITS if s in items):
            order = random.Random(f"{seed}:{n}").sample(items[split], len(items[split]))
            shards[split], more = _write_split(tmp, split, order, maxcount, maxsize, bad, strict)
            colour |= more
            if not shards[split]:
                raise DatasetFormatError(f"{root}: no readable images in the {split} split")
        index = {"format": FORMAT, "version": VERSION, "convlens": __version__,
                 "source": str(root.resolve()), "seed": seed, "classes": classes,
                 "channels": 3 if colour else 1, "shards": shards, "bad_files": len(bad),
                 "counts": {s: sum(e["count"] for e in v) for s, v in shards.items()},
                 "notes": notes}  # fmt: skip
        if bad:
            write_bad_files(tmp / "bad_files.csv", bad)
        (tmp / INDEX).write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    return index


def _write_split(
    folder: Path, split: str, items: list[tuple[str, int]], maxcount: int, maxsize: float,
    bad: list[tuple[str, str]], strict: bool,
) -> tuple[list[dict], bool]:  # fmt: skip
    """Shards of `items` in this order: [{name, count}], and whether any image is in colour."""
    counts: dict[str, int] = {}
    colour = False
    pattern = str(folder).replace("%", "%%") + f"/{split}-%06d.tar"
    with (
        wds.ShardWriter(pattern, maxcount=maxcount, maxsize=maxsize, verbose=0,
                        encoder=False, mtime=0) as sink,  # mtime 0: the same bytes every time
        ThreadPoolExecutor(WORKERS) as pool,
    ):  # fmt: skip
        for start in range(0, len(items), READ_AHEAD):
            chunk = items[start : start + READ_AHEAD]
            for (path, label), (data, error) in zip(chunk, pool.map(_read, chunk), strict=True):
                if error is not None:
                    if strict:
                        raise error
                    bad.append((path, str(error).removeprefix(f"{path}: ")))
                    continue
                stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem)[:40]  # keys have no dot
                ext = Path(path).suffix.lower().lstrip(".")
                key = f"{sum(counts.values()):08d}-{stem}"
                sink.write({"__key__": key, ext: data[0], "cls": b"%d" % label})
                counts[Path(sink.fname).name] = counts.get(Path(sink.fname).name, 0) + 1
                colour |= data[1]
    if not counts:
        Path(sink.fname).unlink()  # ShardWriter opens its first shard before any sample
    return [{"name": name, "count": n} for name, n in counts.items()], colour


def _read(item: tuple[str, int]) -> tuple[tuple[bytes, bool] | None, DatasetFormatError | None]:
    """(the file's bytes, is it in colour) once its header reads as an image; or the error."""
    try:
        data = read_regular(item[0])  # never a FIFO or a device
        return (data, is_colour(open_image(data, name=item[0]))), None
    except DatasetFormatError as e:
        return None, e


@dataclass
class ShardSet:
    """Shards a dataset.json describes: class names, channels, shard URLs and sample counts."""

    source: str  # where dataset.json was read
    classes: list[str]
    channels: int  # 1 or 3: images are decoded to this
    shards: dict[str, list[tuple[str, int]]]  # split -> [(url or path, samples)]

    @property
    def urls(self) -> dict[str, list[str]]:
        return {split: [url for url, _ in part] for split, part in self.shards.items()}

    @property
    def counts(self) -> dict[str, int]:
        return {split: sum(n for _, n in part) for split, part in self.shards.items()}

    def samples(
        self,
        split: str,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **options: Any,
    ) -> ShardSamples:
        """(uint8 (C, H, W) image, label) of `split`, this rank's and worker's share, per epoch.

        `transform` maps each decoded image (the photo pipeline's train transform, say);
        `options` are ShardSamples' (seed, epoch, strict, shuffle, keys, by_rank, bad_log).
        """
        if split not in self.shards:
            raise ConvlensError(f"{self.source}: no {split!r} shards")
        return ShardSamples(
            self.shards[split], self.channels, len(self.classes), transform, **options
        )


def is_shards(spec: str) -> bool:
    """Whether `spec` names shards: a folder holding dataset.json, a .tar pattern or URL list."""
    path = Path(spec).expanduser()
    return (path / INDEX).is_file() if path.is_dir() else spec.split("?")[0].endswith(".tar")


def open_shards(spec: str | Path | list[str]) -> ShardSet:
    """Shards from a folder write_shards made, a brace pattern, or a list of paths or URLs.

    `OUT/train-{000000..000009}.tar` names some train shards; splits it does not name come from
    the dataset.json beside the first shard. URLs are any webdataset opens except `pipe:`.
    """
    urls = None
    if isinstance(spec, list | tuple):
        urls = [str(u) for u in spec]
    elif Path(spec).is_dir():
        index_url = str(Path(spec) / INDEX)
    else:
        import braceexpand  # webdataset's own

        urls = list(islice(braceexpand.braceexpand(str(spec)), MAX_SHARDS + 1))
    if urls is not None:
        if not 1 <= len(urls) <= MAX_SHARDS:
            raise ConvlensError(f"{str(spec)[:200]}: names {len(urls)} shards, not 1-{MAX_SHARDS}")
        for url in urls:
            _check_url(url)
        first = urls[0]
        index_url = (
            urljoin(first, INDEX) if urlparse(first).scheme else str(Path(first).parent / INDEX)
        )
    index = _check_index(_read_index(index_url), index_url)
    base = index_url[: -len(INDEX)]
    shards = {split: [(base + e["name"], e["count"]) for e in part]
              for split, part in index["shards"].items()}  # fmt: skip
    listed = {Path(url).name: (split, n) for split, part in shards.items() for url, n in part}
    names = [Path(urlparse(url).path).name for url in urls or []]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ConvlensError(f"{str(spec)[:200]}: names shard {twice} twice")
    named: dict[str, list[tuple[str, int]]] = {}
    for url in urls or []:
        split, n = listed.get(Path(urlparse(url).path).name, (None, 0))
        if split is None:
            raise DatasetFormatError(f"{url}: not one of the shards {index_url} lists")
        named.setdefault(split, []).append((url, n))
    return ShardSet(index_url, index["classes"], index["channels"], {**shards, **named})


def _check_url(url: str) -> None:
    """A URL scheme webdataset opens (but pipe:), or a local path that is a regular file."""
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        if parsed.scheme not in REMOTE:
            raise ConvlensError(f"{url}: {parsed.scheme}: URLs are not read; use a path or "
                                f"{', '.join(sorted(REMOTE))}")  # fmt: skip
        return
    try:
        mode = os.stat(url2pathname(parsed.path) if parsed.scheme else url).st_mode
    except OSError as e:
        raise ConvlensError(f"{url}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = KINDS.get(stat.S_IFMT(mode), "not a file")
        raise DatasetFormatError(f"{url}: not a regular file ({kind})")


def _read_index(url: str) -> Any:
    """dataset.json, parsed: a local regular file or a download, at most MAX_INDEX_BYTES."""
    try:
        with open_shard(url) as f:
            data = f.read(MAX_INDEX_BYTES + 1)
    except Exception as e:  # a missing file, a FIFO, a 404, a refused connection
        raise ConvlensError(
            f"{url}: {shard_error(e, url)}; shards are read with the {INDEX} beside them "
            "that `convlens shards` writes"
        ) from None
    if len(data) > MAX_INDEX_BYTES:
        raise DatasetFormatError(f"{url}: over {MAX_INDEX_BYTES >> 20} MiB, not a shard index")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise DatasetFormatError(f"{url}: not JSON ({str(e)[:100]})") from None


def _check_index(index: Any, where: str) -> dict:
    """`index` itself once each field open_shards reads has its type and lies in its limits."""

    def fail(field: str, problem: str) -> None:
        raise DatasetFormatError(f"{where}: field {field!r} {problem}")

    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DatasetFormatError(f'{where}: not a shard index (no "format": "{FORMAT}")')
    if not isinstance(index.get("version"), int) or index["version"] > VERSION:
        fail("version", f"must be an integer up to {VERSION} (a newer convlens wrote it?)")
    classes = index.get("classes")
    if not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES:
        fail("classes", f"must be a list of 1 to {MAX_CLASSES} class names")
    if not all(isinstance(c, str) for c in classes) or len(set(classes)) < len(classes):
        fail("classes", "must hold distinct strings")
    if index.get("channels") not in (1, 3):
        fail("channels", "must be 1 or 3")
    shards = index.get("shards")
    if not isinstance(shards, dict) or "train" not in shards or not set(shards) <= set(SPLITS):
        fail("shards", "must map train (and val, test) to lists of shards")
    for split, part in shards.items():
        if not isinstance(part, list) or not part:
            fail(f"shards.{split}", "must be a non-empty list")
        for e in part:
            name = e.get("name") if isinstance(e, dict) else None
            count = e.get("count") if isinstance(e, dict) else None
            ok = isinstance(name, str) and NAME.fullmatch(name) and name.startswith(split + "-")
            if not ok or not isinstance(count, int) or isinstance(count, bool) or count < 0:
                fail(f"shards.{split}", f"must hold {{name: {split}-NNNNNN.tar, count: n >= 0}}")
    return index
