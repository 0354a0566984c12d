"""Inference batches: test-time views made dense in the inference layout, and each epoch's
validation scored on one view (the views run once, after training)."""

import csv

import pytest
import torch
import torch.nn.functional as F

import convlens
from convlens.models.infer import predict_proba, tta_views
from convlens.tasks.loading import load_run
from convlens.training.data import load_run_data


@pytest.mark.parametrize("mode", ["none", "flip", "flip-shift"])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_views_are_dense_in_the_layout_and_hold_the_shifted_mirrors(mode, layout):
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    views = tta_views(x, mode, layout)
    assert sum(w for _, w in views) == pytest.approx(1.0)
    for v, _ in views:  # a strided view would run the convolutions 2-6x slower
        assert v.shape == x.shape and v.is_contiguous(memory_format=layout)
    expected = {"none": [x], "flip": [x, x.flip(3)]}.get(mode)
    if expected is None:  # 1 px down-right and up-left, zero-filled, each with its mirror
        padded = F.pad(x, (1, 1, 1, 1))
        shifted = [padded[:, :, :4, :5], padded[:, :, 2:, 2:]]
        expected = [x, x.flip(3)] + [v for s in shifted for v in (s, s.flip(3))]
    assert len(views) == len(expected)
    for (v, _), e in zip(views, expected, strict=True):
        assert torch.equal(v, e)


def test_each_epoch_is_validated_on_one_view(tmp_path):
    run = convlens.train(data="digits", model="textbook", epochs=1, tta="flip-shift",
                         calibrate="none", run=str(tmp_path / "run"))  # fmt: skip
    with (run / "results.csv").open() as f:
        row = list(csv.DictReader(f))[-1]
    loaded = load_run(run, "cpu")
    assert loaded.meta.tta == "flip-shift"  # the test split still sees the six views
    val = load_run_data(None, run, meta=loaded.meta).val
    norm = loaded.meta.normalize
    losses = {}
    for tta in ("none", "flip-shift"):
        probs = predict_proba(loaded.net, val.images, mean=norm.mean, std=norm.std, tta=tta)
        losses[tta] = F.nll_loss(probs.clamp_min(1e-12).log(), val.labels).item()
    assert losses["none"] != pytest.approx(losses["flip-shift"], rel=1e-4)  # the test can tell
    assert float(row["val_loss"]) == pytest.approx(losses["none"], rel=1e-4)
