"""Photo pipeline: is the input pipeline the bottleneck, and does streaming stay under its budget?

On a fashion-scenes tree (mixed-size JPEGs, generated here; synthetic JPEGs when Fashion-MNIST
is missing) it measures, with the machine's CPU model and flags (AMX or not):

1. `--sizes`: fastnet training images/s at each input side (synthetic batches, no data
   loading): what preprocess.CPU_SIDE is chosen from;
2. decoders: ms per image to bring one JPEG to storage size: PIL (exactly torchvision's
   preset on a PIL image), torchvision.io.decode_jpeg + tensor resize, PIL draft, and
   stream.load_stored's own choice (data/jpeg.py: "auto", the default);
3. training images/s (fastnet, photo augmentation, `--workers` loader processes) fed by
   photo_loader from (a) the JPEG files, decoded every epoch (a row per `--decoders` entry),
   (b) the .npy cache, the first epoch building it, (c) the same images pre-decoded in RAM
   (build time excluded); each epoch's rate and its ratio to (c) (issue 15's target: at least 0.9);
4. peak RSS of a child training one epoch from a folder whose decoded size is 4x
   `--budget-mb`, next to the model's own footprint (the same child on a tiny in-RAM split),
   with glibc's default malloc and with MALLOC_MMAP_THRESHOLD_ fixed at 1 MiB.

    .venv/bin/python benchmarks/photo_pipeline.py                    # the figures, ~15 min here
    .venv/bin/python benchmarks/photo_pipeline.py --per-class 6 2 2 --epochs 2 --sizes 64 \\
        --image-size 64 --budget-mb 4 --rss-images 40               # a smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fashion_mnist_cpu import cpu_name  # this folder's script: the machine's name
from PIL import Image

from convlens.data.batches import normalize
from convlens.data.images import decode_image
from convlens.data.jpeg import DECODERS
from convlens.data.loader import photo_loader
from convlens.data.preprocess import Preprocess, storage_size
from convlens.data.stream import FileImages, RamImages, folder_items, load_stored, open_split
from convlens.data.transforms import train_transform
from convlens.device import choose_amp
from convlens.models import create_model

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]  # fixed: statistics are not what is measured


def cpu_flags() -> str:
    """The CPU's matrix and vector flags that decide bf16 speed."""
    try:
        line = next(s for s in Path("/proc/cpuinfo").read_text().splitlines() if "flags" in s)
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512f", "avx2")
    have = [f for f in wanted if f in line.split()]
    return ", ".join(have) + ("" if "amx_tile" in have else " (no AMX)")


def amp_on() -> bool:
    """Whether `convlens train --amp auto` autocasts to bf16 here (device.choose_amp)."""
    return choose_amp("auto", torch.device("cpu"))[0] is not None


def model_and_step(side: int, classes: int):
    """fastnet for side x side RGB and one SGD step on a uint8 batch (bf16 where --amp auto)."""
    model = create_model("fastnet", in_channels=3, num_classes=classes, image_size=(side, side))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    amp = amp_on()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x = normalize(x, MEAN, STD).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step


def step_rates(sides: list[int], batch: int, steps: int) -> list[dict]:
    """Training images/s per input side, on synthetic uint8 batches (best of 3 rounds)."""
    rows = []
    for side in sides:
        _, step = model_and_step(side, 10)
        x = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
        y = torch.randint(0, 10, (batch,))
        step(x, y)  # warm-up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(steps):
                step(x, y)
            best = min(best, time.perf_counter() - t0)
        rows.append({"side": side, "images_per_s": round(steps * batch / best, 1)})
        print(rows[-1], flush=True)
    return rows


def decoder_times(paths: list[str], side: int) -> dict:
    """ms per JPEG to storage size: PIL (default), torchvision.io.decode_jpeg, PIL draft."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    s = storage_size(side)
    store = Preprocess((s, s), 3, resize=s)
    blobs = [Path(p).read_bytes() for p in paths]

    def pil(b: bytes) -> torch.Tensor:
        return store.apply(decode_image(b))

    def tv(b: bytes) -> torch.Tensor:
        x = decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8))
        return TF.center_crop(TF.resize(x, [s], antialias=True), [s, s])

    def draft(b: bytes) -> torch.Tensor:
        img = Image.open(io.BytesIO(b))
        img.draft(img.mode, (s, s))  # JPEG DCT scaling: decodes at 1/2, 1/4, 1/8 where it can
        return store.apply(img)

    paths = {b: p for b, p in zip(blobs, paths, strict=True)}

    def auto(b: bytes) -> torch.Tensor:  # the loader's own: the file read included
        return load_stored(paths[b], store)

    out = {}
    fns = (("pil", pil), ("torchvision_decode_jpeg", tv), ("pil_draft", draft), ("auto", auto))
    for name, fn in fns:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for b in blobs:
                fn(b)
            best = min(best, time.perf_counter() - t0)
        out[name + "_ms"] = round(1000 * best / len(blobs), 3)
    out["pil_over_torchvision"] = round(out["pil_ms"] / out["torchvision_decode_jpeg_ms"], 2)
    diff = [(pil(b).int() - tv(b).int()).abs().float().mean().item() for b in blobs[:50]]
    out["torchvision_vs_pil_mean_abs_diff"] = round(float(np.mean(diff)), 3)
    print(out, flush=True)
    return out


def epoch_rate(dataset, side: int, classes: int, args, step) -> list[float]:
    """Training images/s for each of args.epochs epochs fed by photo_loader over `dataset`."""
    t = train_transform("photo", side, 3, hflip=True)
    drop_last = len(dataset) > args.batch_size  # a smoke run's few images: one short batch
    loader = photo_loader(dataset, t, args.batch_size, args.workers, 0, 0, drop_last)
    rates = []
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        n, t0 = 0, time.perf_counter()
        for x, y in loader:
            step(x, y)
            n += len(y)
        rates.append(round(n / (time.perf_counter() - t0), 1))
    return rates


def pipeline(root: Path, side: int, args) -> dict:
    """Images/s from the files, from the .npy cache (first epoch builds it) and from RAM."""
    classes, items, _ = folder_items(root)
    prep = Preprocess.photo(side, 3)
    out = {"images": len(items["train"]), "side": side, "storage": storage_size(side)}
    _, step = model_and_step(side, len(classes))
    files = open_split(items["train"], prep, root=root, source="decode").dataset
    for decoder in args.decoders:  # "files" is the default decoder's row
        key = "files" if decoder == "auto" else f"files_{decoder}"
        dataset = FileImages(files.items, files.prep, decoder)
        out[key] = epoch_rate(dataset, side, len(classes), args, step)
    t0 = time.perf_counter()  # the cache run's first epoch includes building the cache
    cache = open_split(items["train"], prep, root=root, source="cache", workers=args.workers)
    build_s = time.perf_counter() - t0
    rates = epoch_rate(cache.dataset, side, len(classes), args, step)
    first_s = out["images"] / rates[0] + build_s
    out["cache"] = [round(out["images"] / first_s, 1), *rates[1:]]
    out["cache_build_s"] = round(build_s, 2)
    ram = open_split(items["train"], prep, root=root, source="ram", workers=args.workers)
    assert isinstance(ram.dataset, RamImages)
    out["ram"] = epoch_rate(ram.dataset, side, len(classes), args, step)
    best = max(out["ram"])
    for key in [k for k in out if k.startswith("files")] + ["cache"]:
        out[f"{key}_over_ram"] = [round(r / best, 3) for r in out[key]]
    print(out, flush=True)
    return out


RSS_CHILD = """
import json, sys
import torch
import torchvision.transforms.v2
from convlens.data.transforms import train_transform
from convlens.device import choose_amp
from convlens.data.loader import photo_loader
from convlens.data.preprocess import Preprocess
from convlens.data.stream import folder_items, open_split
sys.path.insert(0, sys.argv[5])
from photo_pipeline import model_and_step
def reset():
    open('/proc/self/clear_refs', 'w').write('5')
def peak():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
root, side, budget, workers, batch = sys.argv[1], *map(int, sys.argv[2:5]), int(sys.argv[6])
mode = sys.argv[7]
_, items, _ = folder_items(root)
model, step = model_and_step(side, 10)
prep, t = Preprocess.photo(side, 3), train_transform("photo", side, 3, True)
reset()
base = peak()
if mode == "footprint":  # the model's own: two batches held in RAM, trained on
    store = open_split(items["train"][: 2 * batch], prep, root=root, source="ram")
else:
    store = open_split(items["train"], prep, root=root, cache_ram=budget, workers=workers)
for x, y in photo_loader(store.dataset, t, batch, workers, 0, 0, True):
    step(x, y)
print(json.dumps({"kind": store.kind, "grew_mb": (peak() - base) / 1024}))
"""


def peak_rss(root: Path, side: int, budget_mb: int, workers: int, batch: int) -> dict:
    """Peak RSS growth of a child training one epoch on a split 4x the budget, next to the
    model's own footprint (another child, two batches in RAM); malloc as is and fixed."""
    out = {"budget_mb": budget_mb, "workers_note": "main process only (VmHWM)"}
    fixed = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    for name, extra in (("glibc_default", {}), ("mmap_threshold_1mib", fixed)):
        env = {**os.environ, **extra}
        row = {}
        for mode in ("footprint", "stream"):
            args = [root, side, budget_mb << 20, workers, Path(__file__).parent, batch, mode]
            res = subprocess.run(
                [sys.executable, "-c", RSS_CHILD, *map(str, args)],
                capture_output=True, text=True, env=env, check=False,
            )  # fmt: skip
            if res.returncode:
                raise SystemExit(res.stderr[-3000:])
            row[mode] = json.loads(res.stdout.splitlines()[-1])
        grew, allowed = row["stream"]["grew_mb"], budget_mb + row["footprint"]["grew_mb"]
        out[name] = {**row, "under_budget_plus_footprint": grew < allowed}
    print(out, flush=True)
    return out


def synthetic_tree(root: Path, per_class: tuple[int, int, int], seed: int = 0) -> None:
    """Smooth random JPEGs of 160-480 px and aspect 0.6-1.8 when fashion-scenes cannot be made."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val", "test"), per_class, strict=True):
        for c in range(10):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                short = int(rng.integers(160, 481))
                aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.8))))
                w, h = (
                    (round(short * aspect), short)
                    if aspect >= 1
                    else (short, round(short / aspect))
                )
                small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
                Image.fromarray(small).resize((w, h), Image.BICUBIC).save(folder / f"{i}.jpg")


def make_tree(root: Path, per_class: tuple[int, int, int]) -> str:
    try:
        from convlens.data import scenes
        from convlens.data.named import fashion_items

        scenes.generate(root, fashion_items(download=False), seed=0, per_class=per_class)
        return "fashion-scenes"
    except Exception as e:  # no Fashion-MNIST here: the pipeline's cost is what is measured
        print(f"fashion-scenes unavailable ({e}); synthetic JPEGs instead", flush=True)
        synthetic_tree(root, per_class)
        return "synthetic"


def age(root: Path) -> None:
    """Files an hour old: past data/cache.py's racy window, so the cache manifest is written."""
    past = time.time_ns() - 3600 * 10**9
    for p in root.rglob("*"):
        os.utime(p, ns=(past, past))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, nargs=3, default=[100, 10, 10])
    ap.add_argument("--sizes", type=int, nargs="*", default=[64, 96, 112, 128, 160, 224])
    ap.add_argument("--image-size", type=int, default=128, help="model side for 3 and 4")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--decoders", nargs="+", choices=DECODERS, default=["auto", "pil"],
                    help="the files source's decoders to time (stream.load_stored's)")  # fmt: skip
    ap.add_argument("--budget-mb", type=int, default=64)
    ap.add_argument("--rss-images", type=int, default=0, help="0: 4x the budget")
    ap.add_argument("--out", default="benchmarks/results/photo_pipeline.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}",
        "cpu_flags": cpu_flags(),
        "bf16_autocast": amp_on(),
        "args": vars(args),
    }
    print(report, flush=True)
    report["step_rates"] = step_rates(args.sizes, args.batch_size, steps=5)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "scenes"
        report["dataset"] = make_tree(root, tuple(args.per_class))
        age(root)
        paths = sorted(str(p) for p in (root / "train").rglob("*.jpg"))
        report["decoders"] = decoder_times(paths[:200], args.image_size)
        report["pipeline"] = pipeline(root, args.image_size, args)
        s = storage_size(args.image_size)
        n = args.rss_images or (4 * (args.budget_mb << 20)) // (3 * s * s) + 1
        big = Path(tmp) / "big"
        synthetic_tree(big, (max(1, n // 10), 1, 1), seed=1)
        age(big)
        report["peak_rss"] = peak_rss(
            big, args.image_size, args.budget_mb, args.workers, args.batch_size
        )
        report["peak_rss"]["decoded_mb"] = round(10 * max(1, n // 10) * 3 * s * s / 2**20, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
