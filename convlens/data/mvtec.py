"""Folders of images with defect masks in MVTec AD's layout: write them, read them, load them.

    ROOT/train/good/0000.png                     normal images only (what a method fits on)
    ROOT/val/good/0200.png, ROOT/val/<defect>/   not in MVTec AD: thresholds are chosen here
    ROOT/test/good/0260.png, ROOT/test/<defect>/0301.png
    ROOT/ground_truth/<defect>/0301_mask.png     255 on the defect, 0 elsewhere (MVTec's names)

File names are numbered over the whole tree, so val and test masks share ground_truth/.
`load_mask_set` gives such a tree as a Dataset (classes "good" then the defects) whose splits
carry their masks (`MaskedSplit`); `load_dataset` takes a folder this way when it has
ground_truth/ and train/good/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convlens.data.dataset import Dataset, Split, complete_splits
from convlens.errors import ConvlensError, DatasetFormatError

GOOD = "good"
SPLITS = ("train", "val", "test")
MASKS = "ground_truth"


@dataclass
class MaskSplit:
    """One split's images (N, C, H, W) uint8, their kinds ("good" or a defect), masks (N, H, W)."""

    images: torch.Tensor
    kinds: list[str]
    masks: torch.Tensor  # bool, all False for good images
    files: list[str]

    @property
    def anomalous(self) -> torch.Tensor:
        """(N,) bool: the image has a defect."""
        return torch.tensor([k != GOOD for k in self.kinds], dtype=torch.bool)


def write_mask_set(
    root: str | Path, images: np.ndarray, kinds: list[str], masks: np.ndarray, splits: list[str]
) -> Path:
    """Write images (N, H, W) or (N, H, W, 3) uint8 with their kinds, masks (N, H, W) bool and
    splits into ROOT in the layout above; returns ROOT."""
    from PIL import Image

    root = Path(root)
    if not len(images) == len(kinds) == len(masks) == len(splits):
        raise ConvlensError(f"{root}: {len(images)} images, {len(kinds)} kinds, {len(masks)} "
                            f"masks and {len(splits)} splits must be as many")  # fmt: skip
    for i, (img, kind, mask, split) in enumerate(zip(images, kinds, masks, splits, strict=True)):
        if split not in SPLITS or (split == "train" and kind != GOOD):
            raise ConvlensError(
                f"{root}: image {i} is {kind!r} in split {split!r}; splits are "
                f"{', '.join(SPLITS)} and train holds good images only"
            )
        folder = root / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
        if kind != GOOD:
            (root / MASKS / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).save(
                root / MASKS / kind / f"{i:04d}_mask.png"
            )
    return root


def read_mask_set(root: str | Path, split: str) -> MaskSplit:
    """One split of a tree in the layout above (MVTec AD's own for train and test)."""
    from PIL import Image

    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise ConvlensError(f"{folder}: no such split folder (expected {', '.join(SPLITS)})")
    images, kinds, masks, files = [], [], [], []
    for kind_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(kind_dir.glob("*.png")):
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB" if im.mode in ("RGB", "RGBA", "P") else "L"))
            mask = np.zeros(img.shape[:2], bool)
            if kind_dir.name != GOOD:
                mask = _mask(root / MASKS / kind_dir.name / f"{path.stem}_mask.png", img.shape[:2])
            if images and img.shape != images[0].shape:
                raise DatasetFormatError(
                    f"{path}: {img.shape} differs from {files[0]}'s {images[0].shape}; "
                    "images of one set must share their size and channels"
                )
            images.append(img)
            kinds.append(kind_dir.name)
            masks.append(mask)
            files.append(str(path))
    if not images:
        raise ConvlensError(f"{folder}: no PNG images in its class folders")
    x = torch.from_numpy(np.stack(images))  # (N, H, W) or (N, H, W, 3)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return MaskSplit(x.contiguous(), kinds, torch.from_numpy(np.stack(masks)), files)


def _mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A mask PNG as bool (H, W): nonzero is the defect; it must exist and fit its image."""
    from PIL import Image

    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing, the mask of a defective image")
    with Image.open(path) as im:
        mask = np.asarray(im.convert("L")) > 0
    if mask.shape != shape:
        raise DatasetFormatError(f"{path}: mask is {mask.shape[::-1]} px, its image {shape[::-1]}")
    return mask


@dataclass
class MaskedSplit(Split):
    """A split whose images carry defect masks (N, H, W) bool, all False on normal images."""

    masks: torch.Tensor = field(kw_only=True)  # after Split's fields with defaults (groups)

    def subset(self, index: torch.Tensor) -> MaskedSplit:
        return MaskedSplit(self.images[index], self.labels[index], masks=self.masks[index])


def is_mask_set(root: Path) -> bool:
    """Whether `root` is laid out as above: ground_truth/ beside train/good/."""
    return (root / MASKS).is_dir() and (root / "train" / GOOD).is_dir()


def load_mask_set(
    root: str | Path, *, seed: int = 0, val_fraction: float = 0.1, image_size: int | None = None
) -> Dataset:
    """The tree at `root` as a Dataset: class 0 "good", then the defects in name order; a
    seeded share of train/good is held out for val when there is no val/ (MVTec AD's own)."""
    root = Path(root)
    read = {s: read_mask_set(root, s) for s in SPLITS if (root / s).is_dir()}
    if bad := [k for k in read["train"].kinds if k != GOOD]:
        raise DatasetFormatError(f"{root / 'train'}: holds {bad[0]!r} images; train/ of a mask "
                                 f"set holds {GOOD}/ only")  # fmt: skip
    classes = [GOOD, *sorted({k for part in read.values() for k in part.kinds} - {GOOD})]
    shape = tuple(read["train"].images.shape[1:])
    splits: dict[str, Split] = {}
    for name, part in read.items():
        if tuple(part.images.shape[1:]) != shape:
            raise DatasetFormatError(f"{root / name}: images are {tuple(part.images.shape[1:])} "
                                     f"(C, H, W), train's {shape}")  # fmt: skip
        labels = torch.tensor([classes.index(k) for k in part.kinds], dtype=torch.long)
        images, masks = part.images, part.masks
        if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
            images, masks = _resized(images, masks, image_size)
        splits[name] = MaskedSplit(images, labels, masks=masks)
    notes = [f"mask set: {', '.join(classes[1:]) or 'no'} defects with masks in ground_truth/"]
    if image_size is not None and shape[1:] != (image_size, image_size):
        notes.append(f"images and masks resized from {shape[1]}x{shape[2]} to "
                     f"{image_size}x{image_size} (image_size setting)")  # fmt: skip
    complete_splits(splits, val_fraction, seed, notes, missing_test="no test/ folder")
    return Dataset(name=str(root), classes=classes, train=splits["train"], val=splits["val"],
                   test=splits.get("test"), source=str(root.resolve()), notes=notes)  # fmt: skip


def _resized(images: torch.Tensor, masks: torch.Tensor, size: int):
    """Images resized as load_dataset resizes (antialiased bilinear), masks by nearest pixel."""
    import torch.nn.functional as F

    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    m = F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest")[:, 0] > 0.5
    return x.round().clamp(0, 255).to(torch.uint8), m
