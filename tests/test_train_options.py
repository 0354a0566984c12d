"""Training options through the Python API, on real (small) data."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import convlens
from convlens.config import make_config
from convlens.errors import ConvlensError, DatasetFormatError, TrainingError
from convlens.training.optim import get_lr

QUICK = {"data": "digits", "model": "mlp", "batch_size": 64, "lr": 0.05}


def _shapes_folder(root, n_per_class=60, size=20, seed=0):
    """RGB images: a red square or a blue disc at a random place, on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for split, n in (("train", n_per_class), ("test", n_per_class // 3)):
        for cls in ("square", "disc"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                cy, cx = rng.integers(5, size - 5, 2)
                if cls == "square":
                    img[cy - 4 : cy + 4, cx - 4 : cx + 4] = (220, 30, 30)
                else:
                    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = (30, 30, 220)
                Image.fromarray(img).save(root / split / cls / f"{i}.png")


def test_rgb_folder_run_lists_bad_files(tmp_path):
    data = tmp_path / "shapes"
    _shapes_folder(data)
    (data / "train" / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    run = convlens.train(data=str(data), model="textbook", epochs=6, batch_size=16, lr=0.05,
                         run=str(tmp_path / "run"))  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["accuracy"] >= 0.9
    rows = list(csv.reader((run / "bad_files.csv").open()))
    assert rows[0] == ["path", "reason"] and rows[1][0].endswith("broken.png")
    model = convlens.load(str(run))
    assert model.channels == 3 and model.size == (20, 20)
    top = model.predict(str(data / "test" / "square" / "0.png"), top_k=1)
    assert top[0]["label"] == "square"

    with pytest.raises(DatasetFormatError, match="broken.png"):
        convlens.train(data=str(data), model="textbook", epochs=1, strict=True,
                       run=str(tmp_path / "strict"))  # fmt: skip


def test_default_model_trains_on_8x8_digits_at_its_default_lr(tmp_path):
    # fastnet used to pool 8x8 inputs down to 1x1 maps, where BatchNorm saw a blank-border
    # channel constant over the batch: gradients ~1e10 and a NaN loss by step 3 at lr 0.75.
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = tmp_path / "digits" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(img * 255 / 16).astype(np.uint8)  # 0..16 -> 0..255
        Image.fromarray(pixels).save(folder / f"{i}.png")
    run = convlens.train(data=str(tmp_path / "digits"), epochs=3, run=str(tmp_path / "run"))
    rows = list(csv.DictReader((run / "results.csv").open()))
    losses = [float(r["train_loss"]) for r in rows]
    assert len(rows) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.3
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.6  # chance is 0.1; 0.76-0.87 over seeds 0-2


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    # epoch 1 at lr 0.05, then the step schedule multiplies it by 1e20: the loss blows up
    with pytest.raises(TrainingError, match="epoch 2.*loss is (nan|inf)"):
        convlens.train(**QUICK, epochs=3, schedule="step", step_size=1, gamma=1e20,
                       run=str(run))  # fmt: skip
    weights = load_file(run / "weights" / "last.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert len((run / "results.csv").read_text().splitlines()) == 2  # header + epoch 1


def test_patience_stops_early(tmp_path):
    run = convlens.train(**{**QUICK, "lr": 1e-9}, epochs=6, schedule="constant", patience=2,
                         run=str(tmp_path / "run"))  # fmt: skip
    epochs = len((run / "results.csv").read_text().splitlines()) - 1
    assert epochs == 3  # epoch 1 is the best; 2 and 3 bring nothing; stop


def test_init_from_another_run_keeps_matching_tensors(tmp_path):
    first = convlens.train(**QUICK, epochs=1, run=str(tmp_path / "a"))
    second = convlens.train(**{**QUICK, "lr": 1e-12}, epochs=1, schedule="constant",
                            init=str(first), run=str(tmp_path / "b"))  # fmt: skip
    a = load_file(first / "weights" / "best.safetensors")
    b = load_file(second / "weights" / "best.safetensors")
    assert torch.allclose(a["features.fc1.weight"], b["features.fc1.weight"], atol=1e-6)
    with pytest.raises(ConvlensError, match="no tensor matches"):
        convlens.train(data="lfw-faces", model="textbook", epochs=1, init=str(first),
                       run=str(tmp_path / "c"))  # fmt: skip


def test_group_lr_scale_and_until():
    from convlens.training.optim import set_lr

    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [w], "lr_scale": 64.0, "until": 0.3}], lr=1.0)
    set_lr(opt, 0.5, progress=0.1)
    assert opt.param_groups[0]["lr"] == 32.0
    set_lr(opt, 0.5, progress=0.3)
    assert opt.param_groups[0]["lr"] == 0.0  # the group stops changing from 30% on


def test_class_weights_auto_runs_and_is_recorded(tmp_path):
    run = convlens.train(**QUICK, epochs=1, class_weights="auto", run=str(tmp_path / "r"))
    assert "class_weights: auto" in (run / "config.yaml").read_text()


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "constant"])
def test_schedules_are_pure_functions_of_the_step(schedule):
    cfg = make_config(None, {"schedule": schedule, "lr": 0.4, "step_size": 2, "gamma": 0.5})
    lrs = [get_lr(s, 100, 10, cfg) for s in range(100)]
    assert lrs == [get_lr(s, 100, 10, cfg) for s in range(100)]
    assert max(lrs) == pytest.approx(0.4, rel=0.02)
    if schedule == "onecycle":
        peak = int(np.argmax(lrs))
        assert peak == 23  # warmup 0.23 of 100 steps
        assert lrs[0] == pytest.approx(0.4 * cfg.lr_start)
        assert lrs[-1] == pytest.approx(0.4 * cfg.lr_end, rel=0.2)  # step 99 of 100
    if schedule == "step":
        assert lrs[19] == 0.4 and lrs[20] == 0.2 and lrs[40] == 0.1
    if schedule == "cosine":
        assert lrs[50] == pytest.approx(0.2, rel=0.05) and lrs[-1] < 0.01
