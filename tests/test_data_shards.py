"""WebDataset shards: written from a class folder, read back once per epoch under torchrun."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import convlens, free_port
from PIL import Image
from torch.utils.data import DataLoader

from convlens.data.images import decode_image, to_tensor
from convlens.data.shards import is_shards, open_shards, write_shards
from convlens.errors import ConvlensError, DatasetFormatError

CLASSES = ("cat", "dog", "owl")
PER_CLASS = {"train": 8, "val": 2, "test": 2}


def _image(path: Path, n: int, label: int) -> Path:
    """A small RGB image whose colour says which file it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (n * 9 % 256, label * 80, 7)).save(path)
    return path


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]  # the header reads; the pixels do not


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """train/val/test/<class>/<class><n>.png: 24 + 6 + 6 images, names unique per split."""
    root = tmp_path_factory.mktemp("tree") / "photos"
    for split, n in PER_CLASS.items():
        for label, name in enumerate(CLASSES):
            for i in range(n):
                _image(root / split / name / f"{name}{i}.png", i, label)
    return root


@pytest.fixture(scope="module")
def written(tree, tmp_path_factory) -> Path:
    """`tree` in shards of at most 5 images: train in 5 shards (5, 5, 5, 5, 4)."""
    out = tmp_path_factory.mktemp("shards") / "out"
    write_shards(tree, out, maxcount=5, seed=1)
    return out


def _tar_samples(folder: Path, split: str) -> dict[str, tuple[str, dict[str, bytes]]]:
    """key -> (shard name, {extension: bytes}) for every sample in `folder`'s `split` shards."""
    found: dict[str, tuple[str, dict[str, bytes]]] = {}
    for shard in sorted(folder.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                found.setdefault(key, (shard.name, {}))[1][ext] = tar.extractfile(member).read()
    return found


def test_shards_hold_each_file_once_with_its_bytes_and_class(tree, written):
    index = json.loads((written / "dataset.json").read_text())
    assert index["classes"] == list(CLASSES) and index["channels"] == 3
    assert index["counts"] == {"train": 24, "val": 6, "test": 6} and index["bad_files"] == 0
    assert [e["count"] for e in index["shards"]["train"]] == [5, 5, 5, 5, 4]
    for split in PER_CLASS:
        samples = _tar_samples(written, split)
        sources = {p.stem: p for p in (tree / split).glob("*/*.png")}
        stems = [key.split("-", 1)[1] for key in samples]
        assert sorted(stems) == sorted(sources)  # every file once, nothing else
        for key, (_, fields) in samples.items():
            source = sources[key.split("-", 1)[1]]
            assert fields["png"] == source.read_bytes()  # the original bytes, not re-encoded
            assert fields["cls"] == str(CLASSES.index(source.parent.name)).encode()
    first = _tar_samples(written, "train")
    in_first = [f["cls"] for shard, f in first.values() if shard == "train-000000.tar"]
    assert len(set(in_first)) > 1  # a seeded order mixes the classes across shards


def test_the_same_seed_writes_the_same_bytes(tree, written, tmp_path):
    write_shards(tree, tmp_path / "again", maxcount=5, seed=1)
    write_shards(tree, tmp_path / "other", maxcount=5, seed=2)
    for shard in written.glob("*.tar"):
        assert (tmp_path / "again" / shard.name).read_bytes() == shard.read_bytes()
    order = list(_tar_samples(written, "train"))
    other = list(_tar_samples(tmp_path / "other", "train"))
    assert [k.split("-", 1)[1] for k in order] != [k.split("-", 1)[1] for k in other]


def test_every_sample_is_read_once_decoded_with_its_label(tree, written):
    shards = open_shards(written)
    assert shards.classes == list(CLASSES) and shards.counts == {"train": 24, "val": 6, "test": 6}
    data = shards.samples("train", keys=True)
    read = list(data)
    assert sorted(key for _, _, key in read) == sorted(_tar_samples(written, "train"))
    for image, label, key in read:
        source = next((tree / "train").glob(f"*/{key.split('-', 1)[1]}.png"))
        assert label == CLASSES.index(source.parent.name)
        assert torch.equal(image, to_tensor(decode_image(source), channels=3))  # (3, 6, 8)
    assert data.rank_counts() == [24] and data.bad == []
    flipped = shards.samples("val", lambda x: x.flip(-1))  # any (C, H, W) -> (C, H, W) callable
    assert all(image.shape == (3, 6, 8) for image, _ in flipped)


TORCHRUN_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from convlens.data.shards import open_shards

class Tagged(IterableDataset):  # which DataLoader worker read each sample
    def __init__(self, inner):
        self.inner = inner
    def __iter__(self):
        for _, label, key in self.inner:
            yield key, label, get_worker_info().id

dist.init_process_group("gloo")
rank = dist.get_rank()
data = open_shards(sys.argv[1]).samples("train", keys=True, seed=5)
loader = DataLoader(Tagged(data), batch_size=None, num_workers=2)
epochs = []
for epoch in range(2):
    data.set_epoch(epoch)
    epochs.append({"read": [list(x) for x in loader], "given": data.rank_counts()[rank]})
val = open_shards(sys.argv[1]).samples("val", keys=True, by_rank=False)  # one rank reads all
epochs.append(sorted(key for _, _, key in val))
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
    json.dump(epochs, f)
dist.destroy_process_group()
"""


def test_torchrun_ranks_and_workers_read_disjoint_shards_once_per_epoch(written, tmp_path):
    script = tmp_path / "read.py"
    script.write_text(TORCHRUN_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script),
           str(written), str(tmp_path)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    labels = {k: int(f["cls"]) for k, (_, f) in _tar_samples(written, "train").items()}
    orders = []
    for epoch in (0, 1):
        read = {r: ranks[r][epoch]["read"] for r in (0, 1)}
        keys = [key for r in (0, 1) for key, _, _ in read[r]]
        assert Counter(keys) == Counter(
            list(labels)
        )  # all 24, each once: ranks and workers disjoint
        assert all(labels[key] == label for r in (0, 1) for key, label, _ in read[r])
        readers = {(r, worker) for r in (0, 1) for _, _, worker in read[r]}
        assert readers == {(0, 0), (0, 1), (1, 0), (1, 1)}  # 5 shards kept all four busy
        for r in (0, 1):
            assert len(read[r]) == ranks[r][epoch]["given"]  # rank_counts says what each reads
        orders.append([key for key, _, _ in read[0]])
    assert orders[0] != orders[1]  # the shard order is drawn again each epoch
    assert ranks[0][2] == ranks[1][2] == sorted(_tar_samples(written, "val"))  # by_rank=False


@pytest.fixture
def served(written, monkeypatch):
    """The base URL of a real HTTP server on 127.0.0.1 serving the shards folder."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # curl would ask a proxy
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(written))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_brace_pattern_and_http_urls_name_the_shards(written, served):
    every = sorted(_tar_samples(written, "train"))
    pattern = f"{written}/train-{{000001..000002}}.tar"
    assert is_shards(str(written)) and is_shards(pattern) and is_shards(served + "x.tar")
    assert not is_shards(str(written.parent)) and not is_shards("digits")
    some = open_shards(pattern)
    assert some.counts == {"train": 10, "val": 6, "test": 6}  # val and test from dataset.json
    chosen = _tar_samples(written, "train")
    wanted = sorted(
        k for k, (s, _) in chosen.items() if s in ("train-000001.tar", "train-000002.tar")
    )
    assert sorted(key for _, _, key in some.samples("train", keys=True)) == wanted

    remote = open_shards(served + "train-{000000..000004}.tar")
    assert remote.source == served + "dataset.json" and remote.counts["train"] == 24
    assert sorted(key for _, _, key in remote.samples("train", keys=True)) == every
    listed = open_shards([served + f"train-00000{i}.tar" for i in range(5)])
    assert sorted(key for _, _, key in listed.samples("train", keys=True)) == every
    assert remote.urls["val"] == [served + "val-000000.tar", served + "val-000001.tar"]

    gone = open_shards([served + "train-000000.tar"])
    gone.shards["train"].append((served + "train-000099.tar", 5))  # listed, but not served
    data = gone.samples("train")
    assert len(list(data)) == 5
    assert data.bad == [(served + "train-000099.tar", "cannot download (the server answered "
                         "an HTTP error)")]  # fmt: skip


@pytest.fixture(scope="module")
def with_truncated(tmp_path_factory) -> tuple[Path, str, str]:
    """Shards (3 train) where a truncated JPEG sits inside a shard: (folder, shard, key)."""
    root = tmp_path_factory.mktemp("trunc") / "photos"
    for label, name in enumerate(CLASSES):
        for i in range(4):
            _image(root / "train" / name / f"{name}{i}.png", i, label)
        _image(root / "val" / name / f"{name}.png", 0, label)
    (root / "train" / "dog" / "cut.jpg").write_bytes(_truncated_jpeg())
    out = root.parent / "out"
    write_shards(root, out, maxcount=4, seed=3)
    samples = _tar_samples(out, "train")
    key = next(k for k in samples if k.endswith("-cut"))
    shard = samples[key][0]
    in_shard = [k for k, (s, _) in samples.items() if s == shard]
    assert in_shard.index(key) not in (0, len(in_shard) - 1)  # in the middle of its shard
    return out, str(out / shard), key


def test_a_truncated_jpeg_mid_shard_is_skipped_and_listed(with_truncated, tmp_path):
    out, shard, key = with_truncated
    data = open_shards(out).samples("train", keys=True, bad_log=tmp_path / "bad")
    read = [key for batch in DataLoader(data, batch_size=4, num_workers=2) for key in batch[2]]
    every = set(_tar_samples(out, "train"))
    assert sorted(read) == sorted(every - {key})  # the rest of its shard is still read
    assert [where for where, _ in data.bad] == [f"{shard}: {key}.jpg"]  # from a worker process
    assert data.bad[0][1].startswith("corrupt or truncated image")


def test_strict_stops_at_the_truncated_jpeg_naming_shard_and_key(with_truncated):
    out, shard, key = with_truncated
    with pytest.raises(DatasetFormatError) as e:
        list(open_shards(out).samples("train", strict=True))
    assert str(e.value).startswith(f"{shard}: {key}.jpg: corrupt or truncated image")


def test_a_shard_that_is_not_a_tar_is_skipped_or_named(written, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(written, broken)
    (broken / "train-000001.tar").write_bytes(b"not a tar at all\n" * 100)
    huge = tarfile.TarInfo("00000010-huge.png")
    huge.size = 600 << 20  # a member said to be 600 MiB (gzipped zeros could be): not read
    (broken / "train-000002.tar").write_bytes(huge.tobuf() + b"\x89PNG" * 100)
    cut = {3: 2600, 4: 2048}  # bytes kept: inside the second sample; just after the first
    for n, size in cut.items():
        shard = broken / f"train-00000{n}.tar"
        shard.write_bytes(shard.read_bytes()[:size])
    data = open_shards(broken).samples("train", keys=True, shuffle=0)
    read = {key for _, _, key in data}
    shards = _tar_samples(written, "train")
    first = {n: next(k for k, (s, _) in shards.items() if s == f"train-00000{n}.tar") for n in cut}
    whole = {k for k, (s, _) in shards.items() if s == "train-000000.tar"}
    assert read == whole | set(first.values())  # the whole shards, and what came before a cut
    assert data.bad == [
        (str(broken / "train-000001.tar"), "not a tar file (invalid header)"),
        (str(broken / "train-000002.tar"), "tar file cut short (unexpected end of data)"),
        (f"{broken}/train-000002.tar: 00000010-huge.png",
         "629145600 bytes, over the 512 MiB limit for one file"),
        (str(broken / "train-000003.tar"), "tar file cut short (unexpected end of data)"),
        (str(broken / "train-000004.tar"),
         "holds 1 samples, not the 4 its dataset.json lists (cut short?)"),
    ]  # fmt: skip
    with pytest.raises(DatasetFormatError) as e:
        list(open_shards(f"{broken}/train-000001.tar").samples("train", strict=True))
    assert str(e.value) == f"{broken}/train-000001.tar: not a tar file (invalid header)"
    (broken / "extra.tar").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match="not one of the shards .*dataset.json lists"):
        open_shards(str(broken / "extra.tar"))


def test_special_and_bad_source_files_are_skipped_and_listed(tmp_path):
    root = tmp_path / "photos"
    for label, name in enumerate(CLASSES):
        for i in range(3):
            _image(root / name / f"{name}{i}.png", i, label)
    os.mkfifo(root / "cat" / "pipe.png")  # opened blocking, it would hang the writer
    (root / "cat" / "zero.png").symlink_to("/dev/zero")
    (root / "dog" / "gone.png").symlink_to(root / "nowhere.png")
    (root / "owl" / "text.jpg").write_text("not a picture")
    index = write_shards(root, tmp_path / "out")
    assert index["counts"] == {"train": 8, "val": 1} and index["bad_files"] == 4
    rows = (tmp_path / "out" / "bad_files.csv").read_text().splitlines()
    reasons = {Path(row.split(",")[0]).name: row.split(",", 1)[1] for row in rows[1:]}
    assert reasons == {
        "pipe.png": "not a regular file (a FIFO)",
        "zero.png": "not a regular file (a character device)",
        "gone.png": "cannot read (No such file or directory)",
        "text.jpg": "not an image format PIL can read",
    }
    with pytest.raises(DatasetFormatError, match="(pipe|zero|gone|text).*: "):
        write_shards(root, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict*"))
    os.mkfifo(tmp_path / "out" / "fifo.tar")  # a shard path that is a FIFO: refused, not opened
    with pytest.raises(DatasetFormatError, match="fifo.tar: not a regular file \\(a FIFO\\)"):
        open_shards(str(tmp_path / "out" / "fifo.tar"))


def test_the_shards_command(tree, tmp_path):
    out = tmp_path / "out"
    r = convlens("shards", tree, out, "--maxcount", "7", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (
        f"wrote 6 shards and dataset.json to {out}: train 24 images in 4, val 6 images in 1, "
        "test 6 images in 1"
    )
    again = convlens("shards", tree, out)
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert "already exists and is not an empty folder" in again.stderr


def test_a_crafted_index_or_spec_is_one_line(written, tmp_path):
    folder = tmp_path / "crafted"
    shutil.copytree(written, folder)
    index = json.loads((folder / "dataset.json").read_text())
    for field, value, message in [
        ("channels", 5, "field 'channels' must be 1 or 3"),
        ("classes", ["a", "a"], "field 'classes' must hold distinct strings"),
        ("shards", {"train": [{"name": "../etc.tar", "count": 1}]}, "field 'shards.train'"),
        ("version", 99, "field 'version' must be an integer up to 1"),
    ]:
        (folder / "dataset.json").write_text(json.dumps({**index, field: value}))
        with pytest.raises(DatasetFormatError) as e:
            open_shards(folder)
        assert str(e.value).startswith(f"{folder}/dataset.json: {message}")
    with pytest.raises(ConvlensError, match="pipe: URLs are not read"):
        open_shards("pipe:cat train-000000.tar")
    with pytest.raises(ConvlensError, match="names shard train-000000.tar twice"):
        open_shards([f"{written}/train-000000.tar"] * 2)
    with pytest.raises(ConvlensError, match="dataset.json: cannot read"):
        open_shards(f"{tmp_path}")
