"""Scenes geometry: a copy of a scenes tree re-cut, to screen what the photo recipe's crop costs.

The photo recipe keeps the aspect ratio and centre-crops (torchvision's presets), so an item
near the side of a wide scene can fall outside what the model sees; today's pipeline squashes
the whole frame. This writes a copy of a class-folder tree (train/val/test, e.g. the generated
fashion-scenes-small) with every image re-cut, as lossless PNG, so `convlens train --data COPY`
runs the photo path on the same scenes with another geometry:

- `--fit pad`: letterboxed, the longer side kept and the shorter padded black to a square
  (aspect true, nothing cut: the centre crop then drops only its 11% margin);
- `--fit squash --side N`: the whole frame squashed to N x N, as today's pipeline does at 64
  px (with `--image-size S` at N a little over S the photo path then sees the squash).

    .venv/bin/python benchmarks/scenes_geometry.py fashion-scenes-small /tmp/pad --fit pad
    .venv/bin/python benchmarks/scenes_geometry.py fashion-scenes-small /tmp/sq128 \\
        --fit squash --side 128
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from convlens.data.named import tree_root


def recut(image: Image.Image, fit: str, side: int | None) -> Image.Image:
    """`image` letterboxed to a square (fit "pad") or squashed to side x side ("squash")."""
    image = image.convert("RGB")
    if fit == "squash":
        return image.resize((side, side), Image.Resampling.BILINEAR)
    w, h = image.size
    square = Image.new("RGB", (max(w, h), max(w, h)))  # black
    square.paste(image, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
    return square


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="a named scenes set (generated on first use) or a tree")
    parser.add_argument("out", type=Path, help="the copy's folder (must not exist)")
    parser.add_argument("--fit", choices=("pad", "squash"), required=True)
    parser.add_argument("--side", type=int, help="squash: the square's side, px")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if args.fit == "squash" and not args.side:
        parser.error("--fit squash needs --side")
    src = Path(args.data) if Path(args.data).is_dir() else tree_root(args.data, args.data_dir)
    args.out.mkdir(parents=True, exist_ok=False)
    paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for path in paths:
        out = args.out / path.relative_to(src).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            recut(image, args.fit, args.side).save(out, compress_level=1)
    print(f"{len(paths)} images re-cut ({args.fit}) into {args.out}")


if __name__ == "__main__":
    main()
