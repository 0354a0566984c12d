"""A pretrained backbone's input into a photo run's preprocessing: without --image-size, the
weights' crop, shorter side and interpolation (torchvision's preset for them) become the run's
Preprocess, recorded in the weights and applied by predict; --image-size still chooses; small
images keep their path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

import convlens
from convlens.config import make_config
from convlens.data.images import decode_image
from convlens.data.photoset import streamed
from convlens.data.preprocess import Preprocess
from convlens.training.data import load_data
from convlens.training.progress import Progress
from convlens.training.start import start_weights
from tests.helpers import convlens as cli
from tests.test_photo_runs import age, photo_tree, small_tree

# EfficientNet_B0_Weights.IMAGENET1K_V1: a 224 crop of a 256 px shorter side, bicubic
EFFNET = Preprocess((224, 224), 3, resize=256, interpolation="bicubic")


@pytest.fixture(scope="module")
def effnet(tmp_path_factory) -> tuple[Path, Path]:
    """A photo tree (3 classes x 4/2/2 JPEGs, 72-160 px) and an efficientnet_b0 state dict."""
    tmp = tmp_path_factory.mktemp("backbone")
    root = photo_tree(tmp / "set", (4, 2, 2))
    age(root)
    torch.manual_seed(0)
    torch.save(torchvision.models.efficientnet_b0().state_dict(), tmp / "effnet.pth")
    return root, tmp / "effnet.pth"


def prep_of(overrides: dict) -> Preprocess | None:
    """The training split's Preprocess as load_data cuts it for `overrides` (None: in memory)."""
    cfg = make_config(overrides=overrides)
    start = start_weights(cfg)
    ds = load_data(cfg, Progress(enabled=False), backbone=start and start.defaults)[0]
    return ds.train.prep if streamed(ds.train) else None


def test_the_backbones_crop_resize_and_interpolation_cut_the_photos(effnet, tmp_path):
    root, pth = effnet
    run = tmp_path / "run"
    r = cli("train", "--data", root, "--model", "tv-efficientnet_b0", "--init", pth,
            "--epochs", 1, "--freeze-epochs", 1, "--batch-size", 6, "--calibrate", "none",
            "--tta", "none", "--run", run)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "224x224 as torchvision EfficientNet_B0_Weights.IMAGENET1K_V1 expects" in r.stdout
    assert "resized to 256 (bicubic)" in r.stdout
    model = convlens.load(str(run))
    assert model.meta["preprocess"] == EFFNET.to_dict()
    image = next((root / "test" / "c1").iterdir())
    fed = model.preprocess(image.read_bytes())  # what every engine and serve are given
    assert torch.equal(fed, EFFNET.apply(decode_image(image)))
    bilinear = Preprocess.photo(224, 3).apply(decode_image(image))  # the check can fail
    assert not torch.equal(fed, bilinear)


def test_image_size_still_chooses_and_small_images_keep_their_path(effnet, tmp_path):
    root, pth = effnet
    own = {"data": str(root), "model": "tv-efficientnet_b0", "init": str(pth)}
    assert prep_of(own) == EFFNET
    assert prep_of({**own, "image_size": 64}) == Preprocess.photo(64, 3)
    scratch = prep_of({"data": str(root)})  # from scratch: the photo path's own choice
    assert scratch == Preprocess.photo(scratch.size[0], 3) and scratch.interpolation == "bilinear"
    small = small_tree(tmp_path / "small")  # 28 px: squashed in memory, as before
    assert prep_of({**own, "data": str(small)}) is None
