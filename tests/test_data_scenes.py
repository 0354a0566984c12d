"""fashion-scenes (generated photo-like JPEGs) and the photo sets downloaded as archives."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import convlens
from PIL import Image

from convlens.data import load_dataset, named, scenes
from convlens.errors import ConvlensError, DatasetFormatError

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's Fashion-MNIST (make data)"),
]
SMALL = (3, 2, 2)  # images per class in train, val, test
FOLDERS = sorted(scenes.folder_name(c) for c in named.DATASETS["fashion-mnist"].classes)


@functools.cache
def fashion() -> tuple:
    """Fashion-MNIST's items, read once for the module's generate calls."""
    return named.fashion_items()


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """A home of its own: no ~/.cache/convlens or $CONVLENS_DATA but Debian's Fashion-MNIST."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CONVLENS_DATA", raising=False)
    return tmp_path / "home" / ".cache" / "convlens"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """One small tree, made by two processes."""
    out = tmp_path_factory.mktemp("scenes") / "set"
    scenes.generate(out, fashion(), seed=0, per_class=SMALL, workers=2)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_same_seed_same_bytes_whatever_the_workers(tree, tmp_path):
    scenes.generate(tmp_path / "again", fashion(), seed=0, per_class=SMALL, workers=0)
    scenes.generate(tmp_path / "other", fashion(), seed=1, per_class=SMALL, workers=0)
    first, again, other = (_files(p) for p in (tree, tmp_path / "again", tmp_path / "other"))
    assert len(first) == 10 * sum(SMALL) and first == again
    assert first.keys() == other.keys()
    assert sum(first[k] != other[k] for k in first) == len(first)  # every image differs


def test_a_class_folder_tree_of_mixed_size_jpegs(tree):
    assert sorted(p.name for p in tree.iterdir()) == ["manifest.json", "test", "train", "val"]
    assert "T-shirt-top" in FOLDERS and "Ankle boot" in FOLDERS
    sizes, aspects = [], []
    for split, n in zip(scenes.SPLITS, SMALL, strict=True):
        assert sorted(p.name for p in (tree / split).iterdir()) == FOLDERS
        counts = Counter(p.parent.name for p in (tree / split).rglob("*") if p.is_file())
        assert counts == {c: n for c in FOLDERS}  # balanced, nothing but the images
        for path in (tree / split).rglob("*.jpg"):
            with Image.open(path) as img:
                assert img.format == "JPEG" and img.mode == "RGB"
                sizes.append(min(img.size))
                aspects.append(img.width / img.height)
    assert min(sizes) >= 160 and max(sizes) <= 480 and max(sizes) - min(sizes) > 100
    assert min(aspects) >= 0.6 - 0.01 and max(aspects) <= 1.8 + 0.01
    assert min(aspects) < 0.9 and max(aspects) > 1.2  # portrait and landscape both
    manifest = json.loads((tree / "manifest.json").read_text())
    assert manifest["version"] == scenes.VERSION and manifest["seed"] == 0
    assert manifest["counts"] == {"train": 30, "val": 20, "test": 20}


def test_test_items_and_backgrounds_are_never_seen_in_training(tmp_path, monkeypatch):
    train, test, _ = fashion()
    key = {
        name: {bytes(x) for x in np.asarray(part.images)}
        for name, part in zip(("train", "test"), (train, test), strict=True)
    }
    jobs = scenes._jobs(train, test, 10, seed=0, per_class=(50, 20, 20))
    items = {split: [bytes(item) for _, _, item in jobs[split]] for split in scenes.SPLITS}
    assert all(x in key["train"] for x in items["train"] + items["val"])
    assert all(x in key["test"] for x in items["test"])
    assert not set(items["train"]) & set(items["val"])  # distinct Fashion-MNIST items

    # which photos each split draws on, backgrounds and textures: the real _photo, watched
    used: dict[str, set] = {split: set() for split in scenes.SPLITS}
    now, photo, write = [], scenes._photo, scenes._write
    monkeypatch.setattr(scenes, "_photo", lambda source: used[now[-1]].add(source) or photo(source))

    def watched_write(task):  # task: (path, item, key); path is .../<split>/<class>/<n>.jpg
        now.append(Path(task[0]).parts[-3])
        write(task)

    monkeypatch.setattr(scenes, "_write", watched_write)
    scenes.generate(tmp_path / "t", fashion(), seed=0, per_class=(4, 2, 6), workers=0)
    assert set(now) == set(scenes.SPLITS)
    assert used["train"] | used["val"] <= set(scenes.TRAIN_PHOTOS)
    assert used["test"] <= set(scenes.TEST_PHOTOS) and len(used["test"]) > 3
    assert not set(scenes.TRAIN_PHOTOS) & set(scenes.TEST_PHOTOS)


def test_generate_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConvlensError, match="mine: already exists and is not an empty folder"):
        scenes.generate(tmp_path / "mine", fashion(), per_class=SMALL, workers=0)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with pytest.raises(ConvlensError, match="per_class"):
        scenes.generate(tmp_path / "x", fashion(), per_class=(1, 0, 1), workers=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no half tree


def test_named_set_is_made_once_then_reused(isolated, monkeypatch, capfd):
    monkeypatch.setattr(named, "SCENES_WORKERS", 0)
    ds = load_dataset("fashion-scenes-mini")
    root = isolated / "fashion-scenes-mini"
    assert "generating 300 JPEGs" in capfd.readouterr().err
    assert ds.name == "fashion-scenes-mini" and ds.source == str(root.resolve())
    assert ds.classes == FOLDERS == named.DATASETS["fashion-scenes-mini"].classes and ds.hflip
    assert (len(ds.train), len(ds.val), len(ds.test)) == (200, 50, 50)
    assert ds.channels == 3 and "seed 0" in ds.notes[0]
    row = next(r for r in named.list_datasets() if r["name"] == "fashion-scenes-mini")
    assert row["found"] == str(root)

    stamp = (root / "manifest.json").stat().st_mtime_ns
    again = load_dataset("fashion-scenes-mini", seed=3)
    assert "generating" not in capfd.readouterr().err
    assert (root / "manifest.json").stat().st_mtime_ns == stamp  # reused, not made again
    assert again.test.images.equal(ds.test.images)  # the set's seed is fixed, not the run's


@pytest.fixture
def tiny(monkeypatch) -> str:
    """A registered fashion-scenes of 2 + 1 + 1 images per class, made in this process."""
    monkeypatch.setattr(named, "SCENES_WORKERS", 0)
    entry = dataclasses.replace(named.DATASETS["fashion-scenes-mini"], scenes=(2, 1, 1))
    monkeypatch.setitem(named.DATASETS, "fashion-scenes-tiny", entry)
    return "fashion-scenes-tiny"


def test_a_new_version_is_made_again_in_data_dir(isolated, tiny, tmp_path, monkeypatch, capfd):
    mine = tmp_path / "mine"
    ds = load_dataset(tiny, data_dir=str(mine))
    root = mine / tiny  # each size of the set apart, beside whatever else is in data_dir
    assert ds.source == str(root.resolve()) and len(ds.test) == 10
    assert "generating 40 JPEGs" in capfd.readouterr().err
    monkeypatch.setattr(scenes, "VERSION", scenes.VERSION + 1)
    load_dataset(tiny, data_dir=str(mine))
    assert "generating 40 JPEGs" in capfd.readouterr().err
    assert json.loads((root / "manifest.json").read_text())["version"] == scenes.VERSION
    assert sorted(p.name for p in mine.iterdir()) == [tiny]  # no leftovers
    assert not isolated.exists()


def test_two_processes_at_once_make_it_once(isolated):
    code = (
        "import dataclasses, sys; from convlens.data import load_dataset, named\n"
        "d = named.DATASETS['fashion-scenes-mini']\n"
        "named.DATASETS['tiny'] = dataclasses.replace(d, scenes=(2, 1, 1))\n"
        "print(len(load_dataset('tiny').test))"
    )
    args = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen([sys.executable, "-c", code], **args) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o.strip() for o, _ in outs] == ["10", "10"]
    assert sum("generating" in e for _, e in outs) == 1
    assert sorted(p.name for p in isolated.iterdir()) == ["tiny"]


def test_cli_writes_a_tree_and_lists_the_sets(tmp_path, isolated):
    out = tmp_path / "made"
    r = convlens("scenes", out, "--per-class", 2, 1, 1, "--seed", 5, "--workers", 0)
    assert r.returncode == 0, r.stderr
    assert (
        r.stdout.strip()
        == f"wrote 20 train, 10 val, 10 test images to {out}/{{train,val,test}}/<class>/"
    )
    assert json.loads((out / "manifest.json").read_text())["seed"] == 5
    r = convlens("scenes", out)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "already exists" in r.stderr
    r = convlens("scenes", tmp_path / "x", "--per-class", 2, 0, 1)
    assert r.returncode == 2 and "--per-class" in r.stderr
    r = convlens("datasets", env={"COLUMNS": "400"})
    assert r.returncode == 0
    for name in ("fashion-scenes", "fashion-scenes-mini", "imagenette-160", "oxford-pets"):
        assert f"│ {name} " in r.stdout
    assert "generated on first use into" in r.stdout and "imagenette2-160.tgz" in r.stdout


# ---- photo sets downloaded as archives, against a real HTTP server on 127.0.0.1 ----


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.endswith("/cut.tgz"):  # says 10000 bytes, sends 10, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "10000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(folder served, its base URL)"""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


def _tgz(path: Path, files: dict[str, bytes]) -> str:
    """Write a .tgz of `files` (name -> bytes); returns its MD5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (value, 50, 100)).save(buf, "JPEG")
    return buf.getvalue()


def _imagenette(root: Path, url: str, monkeypatch, name: str = "imagenette2-160.tgz") -> str:
    files = {
        f"imagenette2-160/{split}/{wnid}/{i}.JPEG": _jpeg(i * 40)
        for split, n in (("train", 5), ("val", 2))
        for wnid in ("n01440764", "n03888257")
        for i in range(n)
    }
    files["imagenette2-160/noisy_imagenette.csv"] = b"path,noisy_labels_0\n"
    md5 = _tgz(root / name, files)
    entry = dataclasses.replace(named.DATASETS["imagenette-160"], archives=((url + name, md5),))
    monkeypatch.setitem(named.DATASETS, "imagenette-160", entry)
    return md5


def test_archive_is_downloaded_checked_extracted_and_kept(served, isolated, monkeypatch):
    root, url = served
    _imagenette(root, url, monkeypatch)
    ds = load_dataset("imagenette-160")
    assert ds.name == "imagenette-160" and ds.classes == ["parachute", "tench"] and ds.hflip
    assert (len(ds.train) + len(ds.val), ds.test) == (14, None)  # Imagenette: train and val
    assert sorted(p.name for p in isolated.iterdir()) == ["imagenette-160"]  # archive gone
    (root / "imagenette2-160.tgz").unlink()  # a second use needs no server
    assert load_dataset("imagenette-160", download=False).classes == ["parachute", "tench"]


def test_checksum_mismatch_leaves_nothing(served, isolated, monkeypatch):
    root, url = served
    md5 = _imagenette(root, url, monkeypatch)
    wrong = ((url + "imagenette2-160.tgz", "0" * 32),)
    entry = dataclasses.replace(named.DATASETS["imagenette-160"], archives=wrong)
    monkeypatch.setitem(named.DATASETS, "imagenette-160", entry)
    with pytest.raises(ConvlensError, match=f"MD5 mismatch, expected {'0' * 32} but got {md5}"):
        load_dataset("imagenette-160")
    assert list(isolated.iterdir()) == []


def test_missing_and_cut_downloads_leave_nothing(served, isolated, monkeypatch):
    _, url = served
    entry = named.DATASETS["imagenette-160"]
    for file, why in (("gone.tgz", "HTTP 404"), ("cut.tgz", "connection closed after 10 of 10000")):
        bad = dataclasses.replace(entry, archives=((url + file, "0" * 32),))
        monkeypatch.setitem(named.DATASETS, "imagenette-160", bad)
        with pytest.raises(ConvlensError, match=f"could not download {url}{file}: {why}") as e:
            load_dataset("imagenette-160")
        assert "\n" not in str(e.value)
        assert list(isolated.iterdir()) == []


def test_downloads_off_names_the_places(isolated):
    with pytest.raises(ConvlensError, match="imagenette-320 not found .* downloads are off"):
        load_dataset("imagenette-320", download=False)


def test_oxford_pets_split_by_its_lists(served, isolated, monkeypatch):
    root, url = served
    ids = ["great_pyrenees_1", "great_pyrenees_2", "Abyssinian_1", "Abyssinian_2"]
    ids += ["great_pyrenees_3", "Abyssinian_3"]
    images = _tgz(
        root / "images.tar.gz", {f"images/{i}.jpg": _jpeg(9 * n) for n, i in enumerate(ids)}
    )
    lists = {
        "annotations/trainval.txt": "".join(f"{i} 1 1 1\n" for i in ids[:4]).encode(),
        "annotations/test.txt": "".join(f"{i} 1 1 1\n" for i in ids[4:]).encode(),
    }
    notes = _tgz(root / "annotations.tar.gz", lists)
    pair = ((url + "images.tar.gz", images), (url + "annotations.tar.gz", notes))
    entry = dataclasses.replace(named.DATASETS["oxford-pets"], archives=pair)
    monkeypatch.setitem(named.DATASETS, "oxford-pets", entry)
    ds = load_dataset("oxford-pets", val_fraction=0.5)
    assert ds.classes == ["Abyssinian", "Great Pyrenees"]
    assert len(ds.train) + len(ds.val) == 4 and len(ds.test) == 2
    tree = isolated / "oxford-pets"
    assert sorted(p.name for p in (tree / "test" / "Great Pyrenees").iterdir()) == [
        "great_pyrenees_3.jpg"
    ]


def test_an_archive_reaching_outside_is_refused(served, isolated, monkeypatch):
    root, url = served
    md5 = _tgz(
        root / "evil.tgz", {"../../escaped.txt": b"x", "imagenette2-160/train/a/1.JPEG": b""}
    )
    entry = dataclasses.replace(
        named.DATASETS["imagenette-160"], archives=((url + "evil.tgz", md5),)
    )
    monkeypatch.setitem(named.DATASETS, "imagenette-160", entry)
    with pytest.raises(DatasetFormatError, match="cannot extract evil.tgz"):
        load_dataset("imagenette-160")
    assert not list(isolated.parent.rglob("escaped.txt"))
    assert list(isolated.iterdir()) == []


def _item_share(item_scale: tuple[float, float], monkeypatch) -> float:
    """The mean share of a scene's pixels an item covers, rendered on black photos."""
    black = Image.new("RGB", (400, 300))
    monkeypatch.setattr(scenes, "_photo", lambda source: black)
    train, _, _ = fashion()
    shares = []
    for i in range(24):  # the same items and draws at either scale
        jpeg = scenes.render(np.asarray(train.images)[i, 0], np.random.default_rng([i, 7]),
                             item_scale=item_scale)  # fmt: skip
        with Image.open(io.BytesIO(jpeg)) as img:
            grey = np.asarray(img.convert("L"), dtype=np.int16)
        shares.append(np.mean(grey > np.median(grey) + 40))  # the item: brighter than the black
    return float(np.mean(shares))


def test_small_items_cover_a_fraction_of_the_default_scene(monkeypatch):
    default, small = (
        _item_share(scenes.ITEM_SCALE, monkeypatch),
        _item_share(scenes.SMALL_ITEMS, monkeypatch),
    )
    assert default > 0.08  # the item is found at all
    assert small < 0.35 * default  # (0.25 / 0.675)^2 = 0.14 of the area, on average


def test_item_scale_is_in_the_manifest_and_told_apart(tmp_path):
    made = scenes.generate(tmp_path / "s", fashion(), per_class=(1, 1, 1), workers=0,
                           item_scale=scenes.SMALL_ITEMS)  # fmt: skip
    assert made["item_scale"] == [0.15, 0.35]
    assert scenes.matches(made, 0, (1, 1, 1), scenes.SMALL_ITEMS)
    assert not scenes.matches(made, 0, (1, 1, 1))  # the default set is another set
    before = {k: v for k, v in made.items() if k != "item_scale"}  # written before the option
    assert scenes.matches(before, 0, (1, 1, 1))
    assert not scenes.matches(before, 0, (1, 1, 1), scenes.SMALL_ITEMS)
    with pytest.raises(ConvlensError, match=r"item_scale \(0.5, 0.2\) needs 0 < low <= high"):
        scenes.generate(tmp_path / "bad", fashion(), per_class=(1, 1, 1), item_scale=(0.5, 0.2))
    assert not (tmp_path / "bad").exists()


def test_the_small_items_set_is_its_own_named_tree(isolated, tiny, monkeypatch, tmp_path):
    entry = dataclasses.replace(named.DATASETS["fashion-scenes-small"], scenes=(2, 1, 1))
    monkeypatch.setitem(named.DATASETS, "small-tiny", entry)
    mine = str(tmp_path / "mine")
    small, default = load_dataset("small-tiny", data_dir=mine), load_dataset(tiny, data_dir=mine)
    manifests = {
        name: json.loads((tmp_path / "mine" / name / "manifest.json").read_text())
        for name in ("small-tiny", tiny)
    }
    assert manifests["small-tiny"]["item_scale"] == list(scenes.SMALL_ITEMS)
    assert manifests[tiny]["item_scale"] == list(scenes.ITEM_SCALE)
    assert len(small.test) == len(default.test) == 10
    assert not small.test.images.equal(default.test.images)  # the same draws, smaller items


def test_cli_item_scale(tmp_path, isolated):
    out = tmp_path / "made"
    r = convlens("scenes", out, "--per-class", 1, 1, 1, "--workers", 0, "--item-scale", 0.15, 0.35)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["item_scale"] == [0.15, 0.35]
    r = convlens("scenes", tmp_path / "x", "--item-scale", 0.5, 0.2)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "item_scale" in r.stderr
    r = convlens("scenes", tmp_path / "y", "--item-scale", 0, 0.3)
    assert r.returncode == 2 and "--item-scale" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
