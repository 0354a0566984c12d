"""Photo runs end to end: a folder of mixed-size JPEGs trains through the photo path (said in
the log), its preprocessing is recorded in the weights and applied the same way by training's
evaluation, predict, serve, the ONNX export and the NumPy engine; hostile files are skipped and
listed (or stop a --strict run); the split streams under a tiny --cache-ram; small images keep
the in-memory path of before."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import v2

import convlens
from convlens.config import make_config
from convlens.data import PhotoOptions, load_dataset, load_folder
from convlens.data.images import decode_image, to_tensor
from convlens.data.photoset import streamed
from convlens.errors import ConvlensError, ModelError
from convlens.predict import Recogniser
from convlens.runs.meta import PreprocessSpec, WeightsMeta
from convlens.runs.weights import META_KEY, read_safetensors, read_weights
from convlens.tasks import make_task
from convlens.training.build import weights_meta
from convlens.training.data import load_data
from convlens.training.lifecycle import (
    TrainBatches,
    epoch_batches,
    note_bad_files,
    resolve_batch,
)
from convlens.training.progress import Progress
from tests.helpers import PEAK_RSS_CODE, free_port, start_server
from tests.helpers import convlens_warm as cli

OLD = 10**9 * 3600  # ns: files an hour old are past the caches' racy window
CLASSES = 3


def picture(h: int, w: int, label: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A smooth random picture whose strongest channel is its class (learnable, not noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 120, (max(h // 16, 2), max(w // 16, 2), 3)).astype(np.uint8)
    small[..., label % 3] += 120
    return Image.fromarray(small).resize((w, h), Image.BICUBIC).convert(mode)


def photo_tree(root: Path, per_class: tuple[int, int, int]) -> Path:
    """root/{train,val,test}/c<k>/<i>.jpg: JPEGs of 72-160 px a side, aspect 0.6-1.8."""
    rng = np.random.default_rng(len(str(root)))
    for split, n in zip(("train", "val", "test"), per_class, strict=True):
        for i in range(n * CLASSES):
            short = int(rng.integers(72, 110))
            aspect = float(rng.uniform(0.6, 1.8))
            h, w = (short, int(short * aspect)) if aspect > 1 else (int(short / aspect), short)
            path = root / split / f"c{i % CLASSES}" / f"{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            picture(h, w, i % CLASSES, seed=i + 1000 * len(split)).save(path, quality=90)
    return root


def hostile(folder: Path) -> dict[str, str]:
    """Files a photo folder meets: the decodable ones and three to skip (name -> a reason word)."""
    picture(90, 120, 0, 1).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    ramp = (np.arange(90 * 120, dtype=np.uint32).reshape(90, 120) * 6).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "deep.png")  # 16-bit grey
    picture(90, 120, 0, 2).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    picture(90, 120, 0, 3).save(folder / "rotated.jpg", exif=exif.tobytes())
    picture(1, 1, 0, 4).save(folder / "tiny.png")
    picture(100, 20000, 0, 5).save(folder / "panorama.png")
    buf = io.BytesIO()
    picture(120, 160, 0, 6).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return {"tiny.png": "too small", "panorama.png": "aspect 200:1", "truncated.jpg": "truncated"}


def age(root: Path) -> None:
    past = os.stat(root).st_mtime_ns - OLD
    for p in root.rglob("*"):
        os.utime(p, ns=(past, past))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """A photo tree of 300 train (3 of them unreadable: 1 %), 9 val and 9 test images + a wide
    one; the bad files' names and reasons; the wide test image."""
    root = photo_tree(tmp_path_factory.mktemp("photos") / "set", (99, 3, 3))
    skipped = hostile(root / "train" / "c0")
    wide = root / "test" / "c1" / "wide.jpg"
    picture(90, 200, 1, 7).save(wide, quality=90)
    age(root)
    return root, skipped, wide


@pytest.fixture(scope="module")
def run(photos, tmp_path_factory) -> tuple[Path, str]:
    """One textbook run (the NumPy engine runs textbook too) at 64 px, 1 epoch; its stdout."""
    out = tmp_path_factory.mktemp("runs") / "photo"
    r = cli("train", "--data", photos[0], "--model", "textbook", "--image-size", 64,
            "--epochs", 1, "--batch-size", 32, "--calibrate", "none", "--run", out)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


def test_a_photo_folder_takes_the_photo_path_and_says_so(photos, run):
    out, stdout = run
    assert "input size: images of" in stdout
    assert "--image-size 64, shorter side resized, centre-cropped" in stdout
    assert "stored train: 304 images" in stdout and "held in memory" in stdout
    assert "augmentation: random resized crops" in stdout and "3x64x64" in stdout
    meta = read_weights(out / "weights" / "best.safetensors").meta
    assert meta.preprocess == PreprocessSpec((64, 64), 3, resize=72)
    with open(out / "bad_files.csv") as f:
        listed = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(f)}
    assert listed.keys() == photos[1].keys()
    assert all(why in listed[name] for name, why in photos[1].items())


def test_strict_stops_at_the_first_bad_file_naming_it(photos, tmp_path):
    r = cli("train", "--data", photos[0], "--image-size", 64, "--strict", "--run", tmp_path / "r")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert "panorama.png: 20000x100 pixels, aspect 200:1" in r.stderr  # the first, sorted
    assert not (tmp_path / "r" / "weights").exists()


def test_a_wide_image_is_centre_cropped_as_torchvision_does(photos, run):
    wide = photos[2]
    x = convlens.load(str(run[0])).preprocess(str(wide))  # (3, 64, 64)
    preset = v2.Compose([v2.Resize(72, antialias=True), v2.CenterCrop(64), v2.PILToTensor()])
    assert torch.equal(x, preset(Image.open(wide).convert("RGB")))
    squashed = to_tensor(decode_image(wide), channels=3, size=(64, 64))
    assert not torch.equal(x, squashed)  # the aspect is kept: not the whole image squashed


def test_one_image_scores_the_same_in_torch_onnx_numpy_and_serve(photos, run):
    out, wide = run[0], photos[2]
    r = cli("export", out)
    assert r.returncode == 0, r.stderr
    assert "validation split" in r.stdout  # checked on the run's own images, cut as it trained
    onnx = out / "weights" / "best.onnx"

    def scores(rows: list[dict]) -> dict[str, float]:
        return {p["label"]: p["score"] for p in rows}

    engines = {
        "torch": scores(convlens.load(str(out)).predict(str(wide), top_k=CLASSES)),
        "numpy": scores(convlens.load(str(out), engine="numpy").predict(str(wide), top_k=3)),
        "onnx": scores(Recogniser(onnx).predict(str(wide), top_k=CLASSES)),
    }
    assert Recogniser(onnx).meta.preprocess == PreprocessSpec((64, 64), 3, resize=72)
    proc, url = start_server(out, "--engine", "torch")
    try:
        with open(wide, "rb") as f:
            reply = httpx.post(
                f"{url}/predict", files={"file": f}, data={"top_k": "3"}, timeout=60
            ).json()
    finally:
        proc.kill()
        proc.wait()
    engines["serve"] = scores(reply["predictions"])
    for name, got in engines.items():
        assert got.keys() == engines["torch"].keys(), name
        assert all(abs(got[k] - engines["torch"][k]) < 1e-4 for k in got), (name, got)
    # training's own test evaluation cut the test images as predict does: the same answers
    metrics = json.loads((out / "metrics.json").read_text())
    files = sorted(str(p) for p in (photos[0] / "test").rglob("*.jpg"))
    rows = convlens.load(str(out)).predict_files(files, top_k=1)
    right = [row["predictions"][0]["label"] == Path(row["file"]).parent.name for row in rows]
    assert metrics["n"] == len(files) and metrics["accuracy"] == pytest.approx(np.mean(right))
    r = cli("evaluate", out, "--json")  # the run's data again, cut by its weights' preprocess
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] == metrics["accuracy"]


def test_metadata_round_trips_and_a_crafted_preprocess_is_refused(photos, run, tmp_path):
    best = run[0] / "weights" / "best.safetensors"
    meta = read_weights(best).meta
    assert WeightsMeta.from_header(json.loads(json.dumps(meta.to_dict())), best) == meta
    tensors, raw = read_safetensors(best)
    header = json.loads(raw[META_KEY])
    for field, value, words in [
        ("resize", 40, "'preprocess.resize' is 40, under the 64x64 crop"),
        ("size", [72, 72], "'preprocess' gives 3x72x72 images, but 'input' is 3x64x64"),
        ("antialias", "yes", "'preprocess.antialias' must be true or false"),
    ]:
        crafted = tmp_path / f"{field}.safetensors"
        bad = {**header, "preprocess": {**header["preprocess"], field: value}}
        save_file(tensors, crafted, metadata={META_KEY: json.dumps(bad)})
        with pytest.raises(ModelError) as err:
            convlens.load(str(crafted))
        assert str(err.value).startswith(f"{crafted}: ") and words in str(err.value)
    r = cli("predict", crafted, photos[2])  # the command line: that one line, exit status 1
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and str(crafted) in r.stderr
    # a file from before the field: the whole image squashed to the input, as it was trained
    old = tmp_path / "old.safetensors"
    save_file(tensors, old, metadata={META_KEY: json.dumps({**header, "preprocess": None})})
    rec = convlens.load(str(old))
    assert rec.prep.legacy and rec.meta.preprocess is None
    wide = decode_image(photos[2])
    assert torch.equal(rec.preprocess(photos[2]), to_tensor(wide, channels=3, size=(64, 64)))


def test_a_resumed_run_keeps_its_own_cut_and_the_choice_is_not_the_seeds(photos, run):
    own = {"data": str(photos[0]), "run": str(run[0]), "resume": True, "device": "cpu"}
    ds = load_data(make_config(overrides=own), Progress(enabled=False))[0]
    assert ds.image_size == (64, 64)  # as it trained (--image-size 64), though not asked now
    assert any("the run's own 64x64 centre crop" in n for n in ds.notes)
    fresh = load_data(make_config(overrides={"data": str(photos[0]), "seed": 5}),
                      Progress(enabled=False))[0]  # fmt: skip
    assert fresh.image_size == (88, 88)  # not above the median shorter side, whatever the seed


def test_photo_and_no_augmentation_on_small_images_in_memory(tmp_path):
    root = small_tree(tmp_path / "small")
    for policy, changes in (("photo", True), ("none", False)):
        cfg = make_config(overrides={"data": str(root), "batch_size": 8, "augment": policy})
        ds, _, _, hflip = load_data(cfg, Progress(enabled=False))
        assert hflip == "off" or policy != "none"
        epochs = [list(TrainBatches(cfg, ds, hflip, True)(e)) for e in (0, 0, 1)]
        assert all(x.dtype == torch.uint8 and x.shape == (8, 1, 28, 28) for x, _ in epochs[0])
        same = [torch.equal(a[0], b[0]) for a, b in zip(epochs[0], epochs[1], strict=True)]
        assert all(same)  # seeded: the same epoch twice gives the same batches
        seen = torch.cat([x for x, _ in epochs[0]])
        order = torch.cat([y for _, y in epochs[0]])
        if not changes:  # no augmentation: the images themselves, in the epoch's order
            found = {tuple(ds.train.images[i].flatten().tolist()) for i in range(len(ds.train))}
            assert all(tuple(x.flatten().tolist()) in found for x in seen)
        else:
            assert len(order) == len(ds.train) and not all(
                any(torch.equal(x, y) for y in ds.train.images) for x in seen
            )


def test_files_decoded_every_epoch_skip_bad_ones_and_list_them(photos, tmp_path):
    root = tmp_path / "set"
    shutil.copytree(photos[0], root, ignore=shutil.ignore_patterns(".convlens-cache"))
    (root / ".convlens-cache").mkdir()
    (root / ".convlens-cache" / "stream").symlink_to(tmp_path)  # refused: no cache here
    cfg = make_config(overrides={"data": str(root), "image_size": 64, "cache_ram": "1K",
                                 "batch_size": 32, "run": str(tmp_path / "run")})  # fmt: skip
    ds, _, _, hflip = load_data(cfg, Progress(enabled=False))
    assert ds.train.stored.kind == "decode" and len(ds.train) == 304  # bad ones not known yet
    assert any("the cache cannot be written" in n for n in ds.notes)
    batches = TrainBatches(cfg, ds, hflip, drop_last=False)
    assert sum(len(y) for _, y in batches(0)) == 304 - 3
    (tmp_path / "run").mkdir()
    note_bad_files(tmp_path / "run", ds, batches.bad, Progress(enabled=False))
    with open(tmp_path / "run" / "bad_files.csv") as f:
        listed = {Path(row["path"]).name for row in csv.DictReader(f)}
    assert listed == photos[1].keys()


def test_two_processes_over_shards_read_each_sample_once_an_epoch(tmp_path):
    root = photo_tree(tmp_path / "set", (10, 2, 2))
    age(root)
    r = cli("shards", root, tmp_path / "shards", "--maxcount", 6)  # 5 train shards of 6
    assert r.returncode == 0, r.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "convlens", "train",
           "--data", str(tmp_path / "shards"), "--image-size", "64", "--epochs", "2",
           "--batch-size", "8", "--amp", "off", "--calibrate", "none",
           "--run-dir", str(tmp_path / "run")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # 3 shards to one rank, 2 to the other: 18 and 12 samples in batches of 4, each rank's
    # short last batch kept (5 and 3 batches: DDP's join), none read twice
    for epoch in (1, 2):
        assert f"epoch {epoch}: 30 of 30 training samples read by 2 process(es)" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "set", "shards"]
    assert out.stdout.count("test: accuracy") == 1  # rank 0 alone evaluated and wrote
    meta = read_weights(tmp_path / "run" / "weights" / "best.safetensors").meta
    assert meta.preprocess == PreprocessSpec((64, 64), 3, resize=72)


def test_bad_samples_and_a_shard_that_is_not_a_tar_are_skipped_and_listed(tmp_path, monkeypatch):
    from convlens.data.shards import write_shards

    root = photo_tree(tmp_path / "set", (10, 3, 1))
    picture(1, 1, 0, 1).save(root / "train" / "c0" / "tiny.png")
    buf = io.BytesIO()
    picture(120, 160, 0, 2).save(buf, "JPEG")
    (root / "train" / "c0" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    age(root)
    index = write_shards(root, tmp_path / "shards", maxcount=8)
    assert index["counts"] == {"train": 32, "val": 9, "test": 3}  # both written: headers read
    not_tar = tmp_path / "shards" / index["shards"]["val"][1]["name"]  # the val shard of 1
    not_tar.write_bytes(b"this is not a tar file" * 100)
    cfg = make_config(overrides={"data": str(tmp_path / "shards"), "image_size": 64,
                                 "batch_size": 4})  # fmt: skip
    ds, _, _, hflip = load_data(cfg, Progress(enabled=False))
    assert len(ds.val) == 8 and len(ds.bad_files) == 1  # the other val shard's 8 are read
    assert ds.bad_files[0][0].endswith(not_tar.name) and "not a tar file" in ds.bad_files[0][1]
    batches = TrainBatches(cfg, ds, hflip, drop_last=False)
    assert sum(len(y) for _, y in batches(0)) == 30
    reasons = sorted(why for _, why in batches.bad)
    assert len(reasons) == 2 and "too small" in reasons[0] and "truncated" in reasons[1]
    monkeypatch.setenv("WORLD_SIZE", "9")  # as torchrun would say: more processes than shards
    with pytest.raises(ConvlensError, match="4 train shard.s. for 9 processes"):
        TrainBatches(cfg, ds, hflip, drop_last=False, world=9)
    monkeypatch.delenv("WORLD_SIZE")
    strict = make_config(overrides={**dataclasses.asdict(cfg), "strict": True})
    with pytest.raises(ConvlensError, match="not a tar file"):
        load_data(strict, Progress(enabled=False))


STREAM = """
import json, sys
import torch, torchvision.transforms.v2  # the libraries' own footprint is not the split's
from convlens.config import make_config
from convlens.training.data import load_data
from convlens.training.lifecycle import TrainBatches
from convlens.training.progress import Progress
torch.set_num_threads(1)
root, budget = sys.argv[1], sys.argv[2]
for cache_ram in (budget, "1G"):
    cfg = make_config(overrides={"data": root, "image_size": 448, "cache_ram": cache_ram,
                                 "augment": "none", "batch_size": 8})
    reset_peak_rss()
    base = peak_rss_mb()
    ds, _, _, hflip = load_data(cfg, Progress(enabled=False))
    seen = sum(len(y) for _, y in TrainBatches(cfg, ds, hflip, False)(0))
    print(json.dumps({"kind": ds.train.stored.kind, "seen": seen, "note": ds.notes,
                      "grew_mb": peak_rss_mb() - base}))
"""


def test_a_split_four_times_the_cache_ram_streams_under_it(tmp_path):
    root = photo_tree(tmp_path / "big", (40, 1, 1))  # 120 train images, stored at 512 px
    age(root)
    decoded_mb = 120 * 3 * 512 * 512 / 2**20  # 90 MiB
    budget = int(decoded_mb / 4 * 2**20)
    footprint_mb = 40  # batches of 8 at 448 px, the stats sample, val and test, code pages
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_CODE + STREAM, str(root), str(budget)],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    streamed_run, held = (json.loads(line) for line in out.stdout.splitlines()[-2:])
    assert streamed_run["kind"] == "cache" and streamed_run["seen"] == 120
    assert any("read from a .npy cache on disk" in n for n in streamed_run["note"])
    assert list((root / ".convlens-cache" / "stream").glob("train-*.npy"))
    assert streamed_run["grew_mb"] < budget / 2**20 + footprint_mb, streamed_run
    assert held["kind"] == "ram" and held["grew_mb"] > decoded_mb, held  # the check can fail


def small_tree(root: Path) -> Path:
    """28 px grey PNGs of three sizes (the median is kept, squashed): today's in-memory path."""
    for i in range(36):
        h, w = [(28, 28), (30, 26), (24, 32)][i % 3]
        path = root / "train" / f"k{i % CLASSES}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture(h, w, i % CLASSES, seed=i, mode="L").save(path)
    age(root)
    return root


def test_small_images_keep_the_in_memory_path(tmp_path):
    root = small_tree(tmp_path / "small")
    cfg = make_config(overrides={"data": str(root), "batch_size": 8})
    ds, mean, std, hflip = load_data(cfg, Progress(enabled=False))
    before = load_folder(root, cache=False)  # the loader of before, as it was
    assert not streamed(ds.train) and torch.equal(ds.train.images, before.train.images)
    assert torch.equal(ds.val.images, before.val.images) and ds.image_size == (28, 28)
    for epoch in (0, 1):
        ours = list(TrainBatches(cfg, ds, hflip, True)(epoch))
        old = list(epoch_batches(cfg, ds, epoch, hflip, True))
        assert len(ours) == len(old) == 4
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            for a, b in zip(ours, old, strict=True)
        )
    task = make_task(cfg)
    assert "preprocess" not in weights_meta(cfg, ds, mean, std, hflip, task)
    # --image-size above 64 asks for a big input: the photo path, even for small images
    big = make_config(overrides={"data": str(root), "image_size": 72})
    photo_ds = load_data(big, Progress(enabled=False))[0]
    assert streamed(photo_ds.train) and photo_ds.image_size == (72, 72)


def test_photos_on_a_cpu_train_at_batch_64_unless_told_and_config_yaml_says_so(photos, tmp_path):
    root = small_tree(tmp_path / "small")
    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # a device object: no GPU needed
    chosen = {}
    for name, data, given in [("photo", photos[0], {}), ("small", root, {}),
                              ("batch given", photos[0], {"batch_size": 128}),
                              ("lr given", photos[0], {"lr": 0.1})]:  # fmt: skip
        cfg = make_config(overrides={"data": str(data), **given})
        assert (cfg.batch_size, cfg.lr) == (given.get("batch_size"), given.get("lr"))
        ds = load_data(cfg, Progress(enabled=False))[0]
        for device in (cpu, gpu):
            done, note = resolve_batch(cfg, ds, device)
            chosen[name, device.type] = (done.batch_size, done.lr)
            assert (note is not None) == (name != "batch given" and done.batch_size == 64)
    assert chosen == {
        ("photo", "cpu"): (64, 0.25), ("photo", "cuda"): (512, 0.75),
        ("small", "cpu"): (512, 0.75), ("small", "cuda"): (512, 0.75),  # as before
        ("batch given", "cpu"): (128, 0.75), ("batch given", "cuda"): (128, 0.75),
        ("lr given", "cpu"): (64, 0.1), ("lr given", "cuda"): (512, 0.1),
    }  # fmt: skip
    out = tmp_path / "run"  # a real run records what it chose
    r = cli("train", "--data", photos[0], "--image-size", 32, "--epochs", 1, "--calibrate",
            "none", "--run", out)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    saved = make_config(out / "config.yaml")
    assert (saved.batch_size, saved.lr) == (64, 0.25)
    assert "batch 64, lr 0.25: photos on a CPU (--batch-size, --lr choose)" in r.stdout
    # fastnet on photos: the stride-2 stem, recorded where the model is rebuilt from
    assert saved.model_args == {"stem_stride": 2} and "whitening stem at stride 2" in r.stdout
    from convlens.tasks.loading import load_model

    model, meta, _ = load_model(out / "weights" / "best.safetensors")  # as predict rebuilds it
    assert meta.model.args == {"stem_stride": 2}
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.stride == (2, 2)


def test_named_folder_sets_take_the_photo_path(tmp_path, monkeypatch):
    from convlens.data import named

    monkeypatch.setattr(named, "SCENES_WORKERS", 0)
    entry = dataclasses.replace(named.DATASETS["fashion-scenes-mini"], scenes=(2, 1, 1))
    monkeypatch.setitem(named.DATASETS, "fashion-scenes-tiny", entry)
    ds = load_dataset("fashion-scenes-tiny", data_dir=str(tmp_path), photo=PhotoOptions())
    assert streamed(ds.train) and ds.name == "fashion-scenes-tiny" and ds.hflip
    assert ds.image_size == (96, 96) and len(ds.test) == 10  # a CPU run from scratch
    assert ds.notes[0].startswith("generated by convlens.data.scenes")
    assert any("96x96 for a CPU run from scratch" in n for n in ds.notes)
