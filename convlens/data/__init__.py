"""Data: named datasets, folders, IDX and NPZ files -> uint8 tensors; batches and augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from convlens.data.batches import channel_stats, iterate_batches, normalize
from convlens.data.dataset import Dataset, Split, hold_out_val, stratified_split
from convlens.data.folder import IMAGE_EXTENSIONS, load_folder
from convlens.data.idx import find_idx_folder, find_idx_prefix, load_idx, read_idx, write_idx
from convlens.data.images import decode_image, to_tensor
from convlens.data.labelcsv import is_label_csv, load_label_csv
from convlens.data.mvtec import is_mask_set, load_mask_set
from convlens.data.named import DATASETS, list_datasets, load_named, name_tree, tree_root
from convlens.data.npz import load_npz
from convlens.errors import ConvlensError

if TYPE_CHECKING:
    from convlens.data.photoset import PhotoOptions

__all__ = [
    "IMAGE_EXTENSIONS",
    "Dataset",
    "PhotoOptions",
    "Split",
    "channel_stats",
    "decode_image",
    "hold_out_val",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
    "normalize",
    "read_idx",
    "stratified_split",
    "to_tensor",
    "write_idx",
]


def __getattr__(name: str) -> Any:
    """PhotoOptions on first use: the photo path imports torchvision (about 150 MB resident),
    which loading a run for predict does not need."""
    if name == "PhotoOptions":
        from convlens.data.photoset import PhotoOptions

        return PhotoOptions
    raise AttributeError(f"module 'convlens.data' has no attribute {name!r}")


def load_dataset(
    spec: str,
    *,
    data_dir: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    strict: bool = False,
    image_size: int | None = None,
    download: bool = True,
    workers: int = 0,
    photo: PhotoOptions | None = None,
    group_by: str | None = None,
) -> Dataset:
    """A dataset name, a folder of class folders (or of MVTec AD's defects and masks), an .npz,
    a label .csv or an IDX prefix; `group_by`: a label CSV's column kept with each image
    (Split.groups), for k-fold.

    With `photo`, a folder (or named folder set) of photos takes the photo path
    (data/photoset.py: aspect-true crops, the training split streamed); small images and every
    other source load in memory as without it.
    """
    split_args = {"seed": seed, "val_fraction": val_fraction}
    folder_args = {"strict": strict, "image_size": image_size, "workers": workers}
    path = Path(spec).expanduser()
    is_file = path.exists() and not path.is_dir()  # FIFOs too: their loader names what they are
    csv_file = is_file and path.suffix.lower() == ".csv" and is_label_csv(path)
    if group_by is not None and not csv_file:  # workflow (issue 18): only a CSV has columns
        raise ConvlensError(f"{spec}: --group-by needs a label CSV (path,labels,...,{group_by}); "
                            "this source has no column to group by")  # fmt: skip
    if spec in DATASETS:  # names win over same-named folders: write ./digits for the folder
        root = tree_root(spec, data_dir, download) if photo is not None else None
        if root is not None and (ds := _photos(root, photo, folder_args, split_args)):
            return name_tree(ds, spec)
        ds = load_named(spec, data_dir=data_dir, download=download, **split_args)
    elif photo is not None and _names_shards(spec, path):
        from convlens.data.shardset import load_shard_set  # webdataset: an optional extra

        return load_shard_set(spec, photo, strict=strict, image_size=image_size)
    elif path.is_dir() and (pairs := find_idx_folder(path)):
        ds = load_idx(pairs, name=spec, **split_args)
    elif path.is_dir() and is_mask_set(path):  # MVTec AD's layout: defect masks beside train/
        return load_mask_set(path, image_size=image_size, **split_args)
    elif path.is_dir():
        if photo is not None and (ds := _photos(path, photo, folder_args, split_args)):
            return ds
        return load_folder(path, **folder_args, **split_args)
    elif is_file and path.suffix.lower() == ".npz":
        ds = load_npz(path, **split_args)
    elif csv_file:
        return load_label_csv(path, strict=strict, image_size=image_size, group_by=group_by,
                              **split_args)  # fmt: skip
    elif pairs := find_idx_prefix(path):
        ds = load_idx(pairs, name=spec, **split_args)
    else:
        what = "does not exist"
        if path.exists():
            what = "is not an .npz, a label .csv (header path,labels), a folder or an IDX prefix"
        raise ConvlensError(
            f"unknown dataset {spec!r}: not a name ({', '.join(DATASETS)}) and the path {what}"
        )
    if image_size is not None and ds.image_size != (image_size, image_size):
        _resize(ds, image_size)
    return ds


def _names_shards(spec: str, path: Path) -> bool:
    """shards.is_shards without importing webdataset: a folder with dataset.json, a .tar spec."""
    return (
        (path / "dataset.json").is_file() if path.is_dir() else spec.split("?")[0].endswith(".tar")
    )


def _photos(root: Path, photo: PhotoOptions, folder_args: dict, split_args: dict):
    """The photo path's Dataset of a folder, or None for small images."""
    from convlens.data.photoset import load_photo_folder

    strict, image_size = folder_args["strict"], folder_args["image_size"]
    return load_photo_folder(root, photo, strict=strict, image_size=image_size, **split_args)


def _resize(ds: Dataset, size: int, chunk: int = 8192) -> None:
    """Resize every split in place (antialiased bilinear, as PIL does for folders), noting it."""
    h, w = ds.image_size
    for split in (ds.train, ds.val, ds.test):
        if split is None:
            continue
        parts = []
        for x in split.images.split(chunk):  # (n, C, H, W) uint8
            y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
            parts.append(y.round().clamp(0, 255).to(torch.uint8))  # (n, C, size, size)
        if parts:
            split.images = torch.cat(parts)
        else:
            split.images = split.images.new_zeros(0, ds.channels, size, size)
    ds.notes.append(f"images resized from {h}x{w} to {size}x{size} (image_size setting)")
