"""Temperature scaling: the fitted T, folded into the weights, gives calibrated probabilities."""

import json
import math

import pytest
import torch
from torch import nn

from convlens.evaluation.calibration import fit_temperature, fold_temperature, nll, probs_at
from convlens.models import create_model, list_models
from convlens.tasks.loading import load_model
from tests.helpers import convlens


@pytest.mark.parametrize("true_t", [0.3, 1.0, 2.5])
def test_fit_recovers_the_temperature_that_made_the_labels(true_t):
    """Labels drawn from softmax(z / T): the NLL-optimal temperature is T."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 1, 5, generator=g) * 3  # (N, 1 view, K)
    labels = torch.multinomial((z[:, 0] / true_t).softmax(1), 1, generator=g)[:, 0]
    t = fit_temperature(z, torch.ones(1), labels)
    assert t == pytest.approx(true_t, rel=0.05)
    assert nll(z, torch.ones(1), labels, t) <= nll(z, torch.ones(1), labels, 1.0)


def test_views_are_averaged_after_each_softmax():
    z = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])  # (1, 2 views, 2)
    p = probs_at(z, torch.tensor([0.75, 0.25]), 2.0)
    s = 1 / (1 + math.exp(-1))  # softmax([1, 0])[0]
    assert p[0].tolist() == pytest.approx([0.75 * s + 0.25 * (1 - s), 0.75 * (1 - s) + 0.25 * s])


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_takes_the_temperature_in_its_last_layer(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=10, image_size=(28, 28)).eval()
    x = torch.randn(4, 1, 28, 28)
    before = model(x)
    assert fold_temperature(model, 0.5, x)
    assert torch.allclose(model(x), before / 0.5, rtol=1e-4, atol=1e-5)


def test_a_model_whose_logits_are_not_linear_in_the_layer_is_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.BatchNorm1d(3)).eval()
    model[2].running_mean.fill_(1.0)
    x = torch.randn(5, 1, 4, 4)
    before = model(x)
    assert not fold_temperature(model, 0.5, x)
    assert torch.equal(model(x), before)


def test_training_stores_the_temperature_in_the_weights(tmp_path):
    """Two runs alike but for --calibrate: the calibrated run's logits are the other's / T, its
    test ECE is lower and its accuracy the same (digits: one test view, the argmax is kept)."""
    args = ["train", "--data", "digits", "--model", "textbook", "--epochs", "3", "--amp", "off",
            "--threads", "1", "--seed", "3"]  # fmt: skip
    for name, flag in (("plain", "none"), ("calibrated", "temperature")):
        out = convlens(*args, "--calibrate", flag, "--run", tmp_path / name)
        assert out.returncode == 0, out.stderr
    assert "calibration: temperature" in out.stdout
    plain, cal = (json.loads((tmp_path / n / "metrics.json").read_text())
                  for n in ("plain", "calibrated"))  # fmt: skip
    t = cal["calibration"]["temperature"]
    assert "calibration" not in plain and t != pytest.approx(1.0, abs=0.05)
    before, after = cal["calibration"]["val_ece"]
    assert after < before
    assert cal["ece"] < plain["ece"] and cal["accuracy"] == plain["accuracy"]

    (m0, _, _), (m1, meta, _) = load_model(tmp_path / "plain"), load_model(tmp_path / "calibrated")
    assert meta["calibration"]["temperature"] == t
    x = torch.randn(8, 1, 8, 8)
    assert torch.allclose(m1(x), m0(x) / t, rtol=1e-4, atol=1e-5)
    lasts = [
        load_model(tmp_path / n / "weights" / "last.safetensors")[0]
        for n in ("plain", "calibrated")
    ]
    assert torch.allclose(lasts[1](x), lasts[0](x), rtol=1e-5, atol=1e-6)  # training state kept


def test_a_second_finish_does_not_fold_the_temperature_twice(tmp_path):
    """A run killed after calibrating and resumed calibrates again: the weights must not move."""
    from safetensors.torch import load_file

    from convlens.tasks.classify import calibrate_run
    from convlens.training.data import load_run_data

    run = tmp_path / "run"
    out = convlens("train", "--data", "digits", "--model", "textbook", "--epochs", "2",
                   "--threads", "1", "--run", run)  # fmt: skip
    assert out.returncode == 0, out.stderr
    best = run / "weights" / "best.safetensors"
    before = load_file(best)
    assert "already holds" in calibrate_run(run, load_run_data("digits", run))
    after = load_file(best)
    assert all(torch.equal(before[k], after[k]) for k in before)
