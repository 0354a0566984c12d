"""--mix mixup|cutmix|both: photo batches mixed by torchvision v2 (soft targets summing to 1),
trained with soft-target cross-entropy, recorded in config.yaml; refused in one line where it
cannot apply (small images in memory, multi-label, tasks other than classify, the NumPy engine)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from convlens.config import make_config
from convlens.data.loader import photo_loader
from convlens.data.stream import RamImages
from convlens.data.transforms import eval_transform
from convlens.errors import ConfigError
from convlens.training.data import load_data
from convlens.training.lifecycle import TrainBatches
from convlens.training.progress import Progress
from tests.helpers import convlens as cli
from tests.test_photo_runs import age, photo_tree, small_tree


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A tiny photo tree: 3 classes x (8 train, 2 val, 2 test) JPEGs of 72-160 px."""
    root = photo_tree(tmp_path_factory.mktemp("mix") / "set", (8, 2, 2))
    age(root)
    return root


def test_mixed_batches_carry_soft_targets_summing_to_one():
    n, classes = 16, 4
    images = np.random.default_rng(0).integers(0, 256, (n, 3, 40, 40), dtype=np.uint8)
    labels = np.arange(n) % classes
    source = RamImages(images, labels, np.arange(n))
    runs = []
    for workers in (0, 1):
        loader = photo_loader(
            source, eval_transform(32), 8, workers, 0, 0, True, mix=(0.0, 1.0, classes)
        )  # fmt: skip  cutmix alone
        runs.append([(x.clone(), y.clone()) for x, y in loader])
    for x, y in runs[0]:
        assert x.dtype == torch.uint8 and x.shape == (8, 3, 32, 32)
        assert y.dtype == torch.float32 and y.shape == (8, classes)
        assert torch.allclose(y.sum(1), torch.ones(8)) and (y >= 0).all()
    soft = torch.cat([y for _, y in runs[0]])
    assert ((soft > 0).sum(1) == 2).any()  # two classes in one target: mixed, not one-hot
    assert all(
        torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(*runs, strict=True)
    )  # fmt: skip  seeded per batch


def test_a_cutmix_run_trains_with_soft_targets_and_records_it(photos, tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--data", photos, "--model", "textbook", "--image-size", 48, "--epochs", 1,
            "--batch-size", 8, "--mix", "cutmix", "--calibrate", "none", "--run", run)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--mix cutmix: each batch mixed" in r.stdout
    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["mix"] == "cutmix" and saved["cutmix_alpha"] == 1.0
    cfg = make_config(overrides={"data": str(photos), "image_size": 48, "batch_size": 8,
                                 "mix": "both"})  # fmt: skip
    ds, _, _, hflip = load_data(cfg, Progress(enabled=False))
    _, y = next(iter(TrainBatches(cfg, ds, hflip, True)(0)))
    assert y.shape == (8, 3) and torch.allclose(y.sum(1), torch.ones(8))


def test_mix_is_refused_in_one_line_where_it_cannot_apply(tmp_path):
    small = small_tree(tmp_path / "small")  # 28 px: the in-memory path, shifts and flips
    cfg = make_config(overrides={"data": str(small), "batch_size": 8, "mix": "mixup"})
    with pytest.raises(ConfigError, match="mix photo batches .*'light'"):
        load_data(cfg, Progress(enabled=False))
    for overrides, why in (
        ({"task": "multilabel"}, "single-label classifiers: multilabel"),
        ({"task": "anomaly"}, "single-label classifiers: anomaly"),
        ({"engine": "numpy", "model": "textbook"}, "NumPy engine"),
        ({"mix": "blend"}, "must be one of none, mixup, cutmix, both"),
    ):
        with pytest.raises(ConfigError, match=why):
            make_config(overrides={"mix": "cutmix", **overrides})
    r = cli("train", "--data", small, "--mix", "cutmix", "--epochs", 1)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "mix photo batches" in r.stderr


def test_shard_batches_are_mixed_too(photos, tmp_path):
    from convlens.data.shards import write_shards

    write_shards(photos, tmp_path / "shards", maxcount=8)
    cfg = make_config(overrides={"data": str(tmp_path / "shards"), "image_size": 48,
                                 "batch_size": 8, "mix": "mixup"})  # fmt: skip
    ds, _, _, hflip = load_data(cfg, Progress(enabled=False))
    batches = TrainBatches(cfg, ds, hflip, True)
    epochs = [list(batches(e)) for e in (0, 0)]
    x, y = epochs[0][0]
    assert x.dtype == torch.uint8 and x.shape == (8, 3, 48, 48)
    assert y.shape == (8, 3) and torch.allclose(y.sum(1), torch.ones(8))
    assert ((y > 0).sum(1) == 2).any()  # mixed, not one-hot
    assert all(torch.equal(a[1], b[1]) for a, b in zip(*epochs, strict=True))  # seeded
