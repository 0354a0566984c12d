"""The photo pipeline's building blocks: aspect-true preprocessing (torchvision's presets as the
oracle), photo augmentation, and split storage in RAM, a .npy cache or the files themselves,
with a memory cap measured in a child process and hostile files that must not stop a worker."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms._presets import ImageClassification

from convlens.data import load_dataset
from convlens.data.augment import resolve_augment, seeded
from convlens.data.batches import normalize
from convlens.data.folder import load_folder
from convlens.data.images import decode_image, to_tensor
from convlens.data.loader import photo_loader
from convlens.data.preprocess import (
    CPU_SIDE,
    GPU_SIDE,
    Preprocess,
    choose_input_size,
    storage_size,
)
from convlens.data.stream import choose_storage, folder_items, open_split, storage_preprocess
from convlens.data.transforms import eval_transform, mix_collate, train_transform
from convlens.errors import ConfigError, DatasetFormatError, ModelError
from tests.helpers import PEAK_RSS_CODE

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OLD = 10**9 * 3600  # ns: files an hour old are past the cache's racy window


def photo(h: int, w: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth random picture (JPEG-like content, not noise) of h x w pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC).convert(mode)


def write_tree(root: Path, shapes: list[tuple[int, int]], classes: int = 2, fmt: str = "JPEG"):
    """root/train/c<k>/<i>.jpg (and a val/ with two per class), files an hour old."""
    ext = ".jpg" if fmt == "JPEG" else ".png"
    for split, n in (("train", len(shapes)), ("val", 2 * classes)):
        for i in range(n):
            h, w = shapes[i % len(shapes)]
            path = root / split / f"c{i % classes}" / f"{i:04d}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(h, w, seed=i + 1000 * (split == "val")).save(path, fmt, quality=90)
    age(root)
    return root


def age(root: Path) -> None:
    past = os.stat(root).st_mtime_ns - OLD
    for p in root.rglob("*"):
        os.utime(p, ns=(past, past))


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


# --- preprocess ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(300, 451), (480, 270), (256, 301), (161, 290), (224, 224)])
def test_preprocess_is_torchvisions_classification_preset(shape):
    img = photo(*shape, seed=shape[1])
    ours = Preprocess.photo(224, 3).apply(img)  # (3, 224, 224) uint8
    assert ours.dtype == torch.uint8 and ours.shape == (3, 224, 224)
    expected = ImageClassification(crop_size=224, resize_size=256)(img)
    assert torch.equal(normalize(ours, *IMAGENET), expected)
    # a newer weights' preset: resize 232, bicubic; grey images with their own statistics
    other = Preprocess((224, 224), 1, resize=232, interpolation="bicubic").apply(img)
    preset = ImageClassification(
        crop_size=224, resize_size=232, mean=(0.5,), std=(0.25,),
        interpolation=InterpolationMode.BICUBIC,
    )  # fmt: skip
    assert torch.equal(normalize(other, [0.5], [0.25]), preset(img.convert("L")))


def test_a_wide_photo_is_centre_cropped_not_squashed():
    a = np.zeros((100, 200, 3), np.uint8)
    a[:, :50, 0] = 255  # red left quarter, blue right quarter, green middle
    a[:, 50:150, 1] = 255
    a[:, 150:, 2] = 255
    img = Image.fromarray(a)
    x = Preprocess.photo(64, 3).apply(img)  # resize 72 on the short side, crop 64 of 144
    assert x.shape == (3, 64, 64)
    assert x[0].max() == 0 and x[2].max() == 0 and x[1].min() == 255  # only the middle
    squashed = Preprocess((64, 64), 3).apply(img)  # the old path keeps all three bands
    assert squashed[0, :, :8].min() == 255 and squashed[2, :, -8:].min() == 255


def test_small_images_keep_the_old_path_bit_for_bit(tmp_path):
    files = []
    for i, (h, w, mode) in enumerate([(28, 28, "L"), (30, 26, "L"), (28, 28, "RGB")]):
        path = tmp_path / f"{i}.png"
        photo(h, w, seed=i, mode=mode).save(path)
        files.append(path)
    for path in files:
        img = decode_image(path)
        for channels in (1, 3):
            old = to_tensor(img, channels=channels, size=(28, 28))
            assert torch.equal(Preprocess((28, 28), channels).apply(img), old)
    # and a whole folder: the stream's stored pixels are load_folder's
    root = write_tree(tmp_path / "tree", [(28, 28), (32, 24), (20, 30)] * 2, fmt="PNG")
    ds = load_folder(root, cache=False)
    choice = choose_input_size([(28, 28), (32, 24), (20, 30)])
    assert not choice.photo and choice.size == ds.image_size
    _, items, _ = folder_items(root)
    stored = open_split(items["train"], choice.preprocess(ds.channels), root=root, source="ram")
    xs = torch.stack([stored.dataset[i][0] for i in range(len(stored.dataset))])
    assert torch.equal(xs, ds.train.images)


def test_preprocess_round_trips_through_json_and_names_a_bad_field():
    for prep in (Preprocess.photo(224, 3), Preprocess((28, 28), 1), Preprocess((96, 128), 3, 140)):
        assert Preprocess.from_dict(json.loads(json.dumps(prep.to_dict()))) == prep
    good = Preprocess.photo(224, 3).to_dict()
    bad = {
        "size": {**good, "size": [224]},
        "size ": {**good, "size": [224, 0]},
        "channels": {**good, "channels": 2},
        "resize": {**good, "resize": 200},
        "interpolation": {**good, "interpolation": "cubic"},
        "antialias": {**good, "antialias": "yes"},
        "colour": {**good, "colour": True},
    }
    for field, data in bad.items():
        with pytest.raises(ModelError) as err:
            Preprocess.from_dict(data, source="run/weights.safetensors")
        message = str(err.value)
        assert "\n" not in message and message.startswith("run/weights.safetensors: ")
        assert f"preprocess.{field.strip()}" in message
    with pytest.raises(ModelError, match="must be an object"):
        Preprocess.from_dict([224, 224])


def test_input_size_policy():
    small = choose_input_size([(28, 28)] * 5)
    assert small.size == (28, 28) and not small.photo
    mixed = choose_input_size([(28, 28), (32, 24), (20, 30)])  # folder.py's median rule
    assert mixed.size == (28, 28) and not mixed.photo
    photos = [(300, 400), (480, 270), (320, 320)]
    cpu = choose_input_size(photos)
    assert cpu.size == (CPU_SIDE, CPU_SIDE) and cpu.photo and "CPU" in cpu.reason
    assert choose_input_size(photos, device="cuda").size == (GPU_SIDE, GPU_SIDE)
    faces = [(112, 112)] * 3
    assert choose_input_size(faces, device="cuda").size == (112, 112)  # never upsampled
    assert choose_input_size([(80, 100), (88, 120), (96, 90)]).size == (88, 88)  # median short
    assert choose_input_size(faces, pretrained=True).size == (GPU_SIDE, GPU_SIDE)
    chosen = choose_input_size(photos, image_size=160)
    assert chosen.size == (160, 160) and chosen.photo and "--image-size 160" in chosen.reason
    assert not choose_input_size([(28, 28)], image_size=32).photo  # small: squashed to 32
    assert all("\n" not in c.reason for c in (small, mixed, cpu, chosen))
    with pytest.raises(ConfigError):
        choose_input_size(photos, image_size=0)
    assert cpu.preprocess(3) == Preprocess.photo(CPU_SIDE, 3)


def test_stored_images_crop_to_exactly_the_eval_preprocessing():
    assert storage_size(224) == 256
    assert all((storage_size(s) - s) % 4 == 0 for s in range(8, 600))
    for side in (64, 96, 128, 224):
        prep = Preprocess.photo(side, 3)
        for h, w in [(300, 451), (451, 300), (256, 301), (257, 303), (500, 500)]:
            img = photo(h, w, seed=h + w)
            stored = storage_preprocess(prep).apply(img)  # (3, S, S)
            assert stored.shape == (3, storage_size(side), storage_size(side))
            assert torch.equal(eval_transform(side)(stored), prep.apply(img))


# --- augment ------------------------------------------------------------------------------


def test_auto_augment_is_light_for_small_images_and_photo_for_photos():
    small = resolve_augment("auto", 28, 1)
    assert small.policy == "light" and small.in_batches and not small.grey
    colour = resolve_augment("auto", 128, 3)
    assert colour.policy == "photo" and not colour.in_batches and not colour.grey
    assert resolve_augment("auto", (224, 224), 1).grey
    assert resolve_augment("none", 224, 3).policy == "none"
    with pytest.raises(ConfigError, match="augment must be one of"):
        resolve_augment("heavy", 224, 3)
    assert "TrivialAugment" not in colour.reason  # opt-in, as in torchvision's reference
    assert resolve_augment("auto", 128, 3, auto_augment="trivial").reason.startswith(
        "augmentation: random resized crops, flips where the dataset allows, colour jitter, "
        "TrivialAugment"
    )


@pytest.mark.parametrize("auto_augment", ["trivial", "rand"])
def test_auto_augment_adds_its_op_and_is_refused_where_it_cannot_apply(auto_augment):
    x = storage_preprocess(Preprocess.photo(64, 3)).apply(photo(200, 260))
    plain, extra = (train_transform("photo", 64, 3, False, auto_augment=a)
                    for a in ("none", auto_augment))  # fmt: skip
    op = {"trivial": v2.TrivialAugmentWide, "rand": v2.RandAugment}[auto_augment]
    assert not any(isinstance(t, op) for t in plain.transforms)
    jitter = next(t for t in plain.transforms if isinstance(t, v2.ColorJitter))
    assert jitter.hue is None and jitter.saturation is not None  # hue: the costly one, left out
    assert sum(isinstance(t, op) for t in extra.transforms) == 1
    differ = 0
    for i in range(8):  # the same draws up to the extra op: it changes the pixels
        with seeded(0, 0, i):
            a = plain(x)
        with seeded(0, 0, i):
            differ += not torch.equal(a, extra(x))
    assert differ >= 4
    from convlens.config import make_config
    from convlens.training.data import augment_plan

    small = load_dataset("digits")  # 8x8: the light policy
    cfg = make_config(overrides={"data": "digits", "auto_augment": auto_augment})
    with pytest.raises(ConfigError, match=f"'auto_augment': {auto_augment} applies to colour"):
        augment_plan(cfg, small)


@pytest.mark.parametrize("policy", ["photo", "none", "light"])
@pytest.mark.parametrize("channels", [1, 3])
def test_train_transform_shapes_and_draws_per_seed_epoch_index(policy, channels):
    t = train_transform(policy, 96, channels, hflip=True, erase=0.5)
    x = storage_preprocess(Preprocess.photo(96, channels)).apply(photo(300, 400))
    before = torch.get_rng_state()
    with seeded(0, 1, 7):
        a = t(x)
    with seeded(0, 1, 7):
        b = t(x)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream untouched
    assert a.dtype == torch.uint8 and a.shape == (channels, 96, 96) and torch.equal(a, b)
    if policy != "none":
        others = []
        for key in [(1, 1, 7), (0, 2, 7), (0, 1, 8)]:
            with seeded(*key):
                others.append(t(x))
        assert all(not torch.equal(a, o) for o in others)
    raw = photo(250, 180)  # a shard's decoded photo at its own size
    assert t(torch.from_numpy(np.array(raw.convert("RGB" if channels == 3 else "L")))
             .reshape(250, 180, channels).permute(2, 0, 1)).shape == (channels, 96, 96)  # fmt: skip


def test_grey_policy_never_tints_a_grey_image():
    grey = storage_preprocess(Preprocess.photo(64, 1)).apply(photo(200, 260)).expand(3, -1, -1)
    policy = train_transform("photo", 64, 3, hflip=True, grey=True, erase=0.5)
    means = set()
    for i in range(20):
        with seeded(0, 0, i):
            y = policy(grey)  # (3, 64, 64)
        assert torch.equal(y[0], y[1]) and torch.equal(y[1], y[2])
        means.add(round(y.float().mean().item()))
    assert len(means) > 5  # it does change the intensities: brightness, contrast, gamma
    one = train_transform("photo", 64, 1, hflip=False)  # one channel: grey by default
    with seeded(0, 0, 0):
        assert one(grey[:1]).shape == (1, 64, 64)


def test_mixup_and_cutmix_keep_uint8_and_give_soft_labels():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(8) % 4
    for alphas in ((0.2, 0.0), (0.0, 1.0), (0.2, 1.0)):
        images, soft = mix_collate(*alphas, num_classes=4)(x, y)
        assert images.dtype == torch.uint8 and images.shape == x.shape
        assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
    with pytest.raises(ConfigError):
        mix_collate(0.0, 0.0, 4)


# --- stream -------------------------------------------------------------------------------


def test_storage_choice_by_budget_and_disk():
    assert choose_storage(100, 1000, 10**6)[0] == "ram"
    kind, note = choose_storage(1000, 10**6, 10**8, disk_free=10**10)
    assert kind == "cache" and "over --cache-ram" in note and "\n" not in note
    assert choose_storage(1000, 10**6, 10**8, disk_free=10**8)[0] == "decode"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    shapes = [(120, 180), (200, 130), (150, 150), (97, 211), (160, 120), (131, 173)]
    return write_tree(tmp_path_factory.mktemp("photos") / "set", shapes * 4, classes=3)


def test_same_batches_from_ram_cache_and_files(tree):
    _, items, _ = folder_items(tree)
    prep = Preprocess.photo(64, 3)
    stores = {k: open_split(items["train"], prep, root=tree, source=k) for k in ("ram", "cache")}
    stores["decode"] = open_split(items["train"], prep, root=tree, source="decode")
    assert {s.kind for s in stores.values()} == {"ram", "cache", "decode"}
    views = {"eval": eval_transform(64), "photo": train_transform("photo", 64, 3, hflip=True)}
    for t in views.values():
        runs = [batches(photo_loader(s.dataset, t, 5, 0, 3, 2, False)) for s in stores.values()]
        for run in runs[1:]:
            assert len(run) == len(runs[0]) == 5
            assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                       for a, b in zip(runs[0], run, strict=True))  # fmt: skip
    # the eval batches are the pixels predict will feed the model, in the seeded order
    loader = photo_loader(stores["ram"].dataset, views["eval"], 5, 0, 3, 2, False)
    order = [i for _, i in loader.sampler]
    assert sorted(order) == list(range(24)) and order != list(range(24))
    first = next(iter(loader))
    assert first[1].tolist() == [items["train"][i][1] for i in order[:5]]
    predicted = prep.apply(decode_image(items["train"][order[0]][0]))  # PIL, as predict cuts
    assert (first[0][0].float() - predicted.float()).abs().mean() < 1  # JPEG decoders' tolerance
    # the cache is reused, not rebuilt: the same file (inode) as before
    npy = stores["cache"].dataset.path
    inode = os.stat(npy).st_ino
    again = open_split(items["train"], prep, root=tree, source="cache")
    assert again.dataset.path == npy and os.stat(npy).st_ino == inode


def test_workers_give_the_same_batches_and_epochs_differ(tree):
    _, items, _ = folder_items(tree)
    store = open_split(items["train"], Preprocess.photo(64, 3), root=tree, source="decode")
    t = train_transform("photo", 64, 3, hflip=True)
    alone = batches(photo_loader(store.dataset, t, 6, 0, 1, 0, True))
    loader = photo_loader(store.dataset, t, 6, 2, 1, 0, True)
    together = batches(loader)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(alone, together, strict=True)
    )
    loader.set_epoch(1)  # the same worker processes, the next epoch's order
    later = batches(loader)
    assert [y.tolist() for _, y in later] != [y.tolist() for _, y in together]
    assert sorted(torch.cat([y for _, y in later]).tolist()) == sorted(
        torch.cat([y for _, y in together]).tolist()
    )
    # in a fixed order, each sample's draws change with the epoch too
    fixed = photo_loader(store.dataset, t, 6, 0, 1, 0, True, shuffle=False)
    first = batches(fixed)
    fixed.set_epoch(1)
    second = batches(fixed)
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):
        assert torch.equal(ya, yb)
        assert all(not torch.equal(a, b) for a, b in zip(xa, xb, strict=True))


STREAM_RSS = """
import json, sys
import torch
import torchvision.transforms.v2  # the libraries' own footprint is not the split's
from convlens.data.transforms import eval_transform
from convlens.data.preprocess import Preprocess
from convlens.data.loader import photo_loader
from convlens.data.stream import folder_items, open_split
root, budget = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
_, items, _ = folder_items(root)
prep = Preprocess.photo(448, 3)  # stored at 512 px: 768 KiB an image
for source in ("auto", "ram"):
    reset_peak_rss()
    base = peak_rss_mb()
    store = open_split(items["train"], prep, root=root, cache_ram=budget, source=source)
    loader = photo_loader(store.dataset, eval_transform(448), 8, 0, 0, 0, False)
    seen = sum(len(y) for _, y in loader)
    print(json.dumps({"kind": store.kind, "seen": seen, "grew_mb": peak_rss_mb() - base}))
"""


def test_a_split_four_times_the_budget_streams_under_it(tmp_path):
    root = write_tree(tmp_path / "big", [(128, 160), (150, 120)] * 80)  # 160 train images
    decoded_mb = 160 * 3 * 512 * 512 / 2**20  # 120 MiB at storage size
    budget = int(decoded_mb / 4 * 2**20)
    footprint_mb = 40  # batches of 8 at 448 px (4.6 MiB each), one decoded photo, code pages
    # glibc's sliding mmap threshold keeps freed batch buffers in the heap (16-60 MiB of noise
    # from run to run here); a fixed threshold measures what convlens itself holds
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_CODE + STREAM_RSS, str(root), str(budget)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    streamed, held = (json.loads(line) for line in out.stdout.splitlines()[-2:])
    assert streamed["kind"] == "cache" and streamed["seen"] == 160
    assert streamed["grew_mb"] < budget / 2**20 + footprint_mb, streamed
    assert held["kind"] == "ram" and held["grew_mb"] > decoded_mb, held  # the check can fail


def _hostile(root: Path) -> dict[str, str]:
    """Good and hostile files in root/train/c0 and c1; the bad ones with a word of their reason."""
    for c in ("c0", "c1"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(4):
            photo(120, 160, seed=i).save(root / "train" / c / f"good{i}.jpg")
    folder = root / "train" / "c0"
    photo(1, 1).save(folder / "tiny.png")
    photo(100, 20000).save(folder / "panorama.png")
    photo(120, 160, seed=5).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    ramp = (np.arange(160 * 120, dtype=np.uint32).reshape(120, 160) * 3).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "deep.png")  # 16-bit grey
    photo(120, 160, seed=6).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: 120 wide, 160 tall
    photo(120, 160, seed=7).save(folder / "rotated.jpg", exif=exif.tobytes())
    buf = io.BytesIO()
    photo(120, 160, seed=8).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    age(root)
    return {"tiny.png": "too small", "panorama.png": "aspect 200:1", "truncated.jpg": "truncated"}


def test_hostile_files_are_decoded_or_skipped_and_listed(tmp_path):
    skipped = _hostile(tmp_path)
    _, items, _ = folder_items(tmp_path, val_fraction=0.2)
    train = sorted(items["train"] + items["val"])
    prep = Preprocess.photo(64, 3)
    for source in ("ram", "cache"):
        store = open_split(train, prep, root=tmp_path, source=source, max_bad=1.0)
        assert {Path(p).name: why for p, why in store.bad}.keys() == skipped.keys()
    store = open_split(train, prep, root=tmp_path, source="decode")
    loader = photo_loader(store.dataset, eval_transform(64), 4, 1, 0, 0, False, max_bad=1.0)
    seen = sum(len(y) for _, y in loader)  # a worker process meets every bad file
    assert seen == len(train) - len(skipped)
    reasons = {Path(p).name: why for p, why in loader.bad}
    assert reasons.keys() == skipped.keys()
    for name, why in skipped.items():
        assert why in reasons[name] and "\n" not in reasons[name]
    folder = tmp_path / "train" / "c0"
    rotated = store.dataset.prep.apply(decode_image(folder / "rotated.jpg"))
    pixels = np.asarray(Image.open(folder / "rotated.jpg"))  # as stored: 160 wide, 120 tall
    upright = Image.fromarray(np.rot90(pixels, -1).copy())  # turned 90 degrees clockwise
    assert torch.equal(rotated, storage_preprocess(prep).apply(upright))  # turned as shown
    deep = store.dataset.prep.apply(decode_image(folder / "deep.png"))
    assert deep.min() < 10 and deep.max() > 245  # 16 bits spread over 0..255, not clipped
    cmyk = store.dataset.prep.apply(decode_image(folder / "cmyk.jpg")).float()
    rgb = store.dataset.prep.apply(photo(120, 160, seed=5)).float()
    assert cmyk.shape == (3, 72, 72) and (cmyk - rgb).abs().mean() < 8  # colours as they were
    palette = store.dataset.prep.apply(decode_image(folder / "palette.png")).float()
    assert (palette - store.dataset.prep.apply(photo(120, 160, seed=6)).float()).abs().mean() < 8
    with pytest.raises(DatasetFormatError, match="unreadable"):  # more than 1 % bad
        open_split(train, prep, root=tmp_path, source="ram")
    strict = photo_loader(store.dataset, eval_transform(64), 4, 0, 0, 0, False, strict=True)
    with pytest.raises(DatasetFormatError, match=r"(tiny|panorama|truncated)\."):
        batches(strict)
