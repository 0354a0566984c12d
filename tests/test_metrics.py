"""Classification metrics against cases with answers worked out by hand."""

import torch

from convlens.evaluation.metrics import classification_metrics, expected_calibration_error


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
