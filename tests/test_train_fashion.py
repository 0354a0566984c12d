"""A small real Fashion-MNIST training (a subset, through the NPZ reader) must beat 80%."""

import json
from pathlib import Path

import numpy as np
import pytest

from convlens.data.idx import read_idx
from tests.helpers import convlens

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not here"),
]


def test_fashion_mnist_subset_beats_80_percent(tmp_path):
    x = read_idx(FMNIST / "train-images-idx3-ubyte.gz")
    y = read_idx(FMNIST / "train-labels-idx1-ubyte.gz")
    xt = read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")
    yt = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")
    npz = tmp_path / "fmnist-small.npz"
    np.savez_compressed(
        npz,
        train_images=x[:6000], train_labels=y[:6000, None],
        val_images=x[-1000:], val_labels=y[-1000:, None],
        test_images=xt[:2000], test_labels=yt[:2000, None],
    )  # fmt: skip
    run = tmp_path / "run"
    out = convlens("train", "--data", str(npz), "--epochs", "3", "--run", str(run))
    assert out.returncode == 0, out.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == 2000
    assert metrics["accuracy"] > 0.80
