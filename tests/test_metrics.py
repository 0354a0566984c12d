"""Classification metrics against cases with answers worked out by hand."""

import numpy as np
import pytest
import torch

from convlens.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
    reliability_bins,
)


def test_ece_of_overconfident_and_calibrated_predictions():
    labels = torch.tensor([0, 1, 0, 1])
    sure = torch.tensor([[1.0, 0.0]] * 4)  # confidence 1 everywhere, right half the time
    assert expected_calibration_error(labels, sure) == 0.5
    # two bins: confidence 0.75 right 3 times of 4, confidence 0.55 right 1 time of 2 (gap 0.05)
    probs = torch.tensor([[0.75, 0.25]] * 4 + [[0.55, 0.45]] * 2)
    labels = torch.tensor([0, 0, 0, 1, 0, 1])
    assert abs(expected_calibration_error(labels, probs) - (4 * 0 + 2 * 0.05) / 6) < 1e-6


def test_ece_of_a_sampled_calibrated_model_is_small():
    gen = torch.Generator().manual_seed(0)
    confidence = 0.5 + 0.5 * torch.rand(20_000, generator=gen)
    right = torch.rand(20_000, generator=gen) < confidence  # right exactly as often as it says
    labels = torch.where(right, 0, 1)
    probs = torch.stack([confidence, 1 - confidence], 1)
    assert expected_calibration_error(labels, probs) < 0.02
    assert classification_metrics(labels, probs, ["a", "b"])["ece"] < 0.02


def test_reliability_bins_of_a_tiny_case_worked_by_hand():
    probs = torch.tensor([
        [0.50, 0.30, 0.20],  # confidence 0.50, right    -> bin [0.4, 0.6)
        [0.45, 0.35, 0.20],  # confidence 0.45, wrong    -> bin [0.4, 0.6)
        [0.20, 0.70, 0.10],  # confidence 0.70, wrong    -> bin [0.6, 0.8)
        [0.90, 0.05, 0.05],  # confidence 0.90, right    -> bin [0.8, 1]
        [0.85, 0.10, 0.05],  # confidence 0.85, wrong    -> bin [0.8, 1]
        [1.00, 0.00, 0.00],  # confidence 1: the top edge belongs to the last bin, right
    ])  # fmt: skip
    labels = torch.tensor([0, 1, 2, 0, 1, 0])
    rel = reliability_bins(labels, probs, bins=5)
    assert rel["bins"] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1])
    assert rel["count"] == [0, 0, 2, 1, 3]
    assert rel["confidence"][:2] == [None, None] and rel["accuracy"][:2] == [None, None]
    assert rel["confidence"][2:] == pytest.approx([0.475, 0.7, 2.75 / 3])
    assert rel["accuracy"][2:] == pytest.approx([0.5, 0, 2 / 3])
    # (2 * |0.475 - 0.5| + 1 * |0.7 - 0| + 3 * |0.9167 - 0.6667|) / 6 = (0.05 + 0.7 + 0.75) / 6
    assert expected_calibration_error(labels, probs, bins=5) == pytest.approx(0.25)


def test_ece_is_the_count_weighted_gap_of_the_reliability_bins():
    gen = torch.Generator().manual_seed(1)
    probs = (3 * torch.randn(500, 4, generator=gen)).softmax(1)
    labels = torch.randint(0, 4, (500,), generator=gen)
    metrics = classification_metrics(labels, probs, ["a", "b", "c", "d"])
    rel = metrics["reliability"]
    assert len(rel["bins"]) == 16 and sum(rel["count"]) == 500
    # the same bins and gaps recomputed per image with NumPy, bin by bin
    confidence, right = probs.max(1).values.numpy(), (probs.argmax(1) == labels).numpy()
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    bins = zip(rel["count"], rel["confidence"], rel["accuracy"], strict=True)
    for i, (n, conf, acc) in enumerate(bins):
        inside = (confidence >= edges[i]) & ((confidence < edges[i + 1]) | (i == 14))
        assert n == inside.sum()
        if n:
            assert conf == pytest.approx(confidence[inside].mean())
            assert acc == pytest.approx(right[inside].mean())
            ece += n * abs(conf - acc) / 500
    assert metrics["ece"] == pytest.approx(ece)
    assert expected_calibration_error(labels, probs) == pytest.approx(ece)
    assert ece > 0.05  # random labels: far from calibrated, so the check above has teeth
