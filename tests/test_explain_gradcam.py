"""Grad-CAM follows what the model learned: the pointing game on scenes with a known object."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convlens
from convlens.data.batches import normalize
from convlens.errors import ConvlensError
from convlens.explain import grad_cam, object_scenes, peak, pointing_game, saliency
from convlens.models import create_model, list_models
from convlens.tasks.loading import load_model

N_TRAIN, N_TEST = 1500, 300


@pytest.fixture(scope="module")
def scenes_run(tmp_path_factory):
    """resnet8 trained on 28x28 scenes: plus, cross, diamond or empty, with a disc distractor."""
    x, y, boxes = object_scenes(N_TRAIN + N_TEST, size=28, glyph=9, seed=0)
    hwc = x.permute(0, 2, 3, 1).numpy()  # (N, H, W, 1)
    root = tmp_path_factory.mktemp("scenes")
    np.savez(root / "scenes.npz",
             train_images=hwc[:N_TRAIN], train_labels=y[:N_TRAIN].numpy(),
             test_images=hwc[N_TRAIN:], test_labels=y[N_TRAIN:].numpy())  # fmt: skip
    run = convlens.train(data=str(root / "scenes.npz"), model="resnet8", epochs=6, batch_size=32,
                         lr=0.05, run=str(root / "run"))  # fmt: skip
    model, meta, _ = load_model(run)
    test = slice(N_TRAIN, None)
    xt = normalize(x[test], meta["normalize"]["mean"], meta["normalize"]["std"])
    return model, xt, y[test], boxes[test]


def test_scenes_put_the_glyph_in_its_box():
    x, y, boxes = object_scenes(50, size=28, glyph=9, seed=1)
    assert x.dtype == torch.uint8 and x.shape == (50, 1, 28, 28)
    for img, label, (y0, x0, y1, x1) in zip(x, y, boxes, strict=True):
        if label < 3:
            assert (y1 - y0, x1 - x0) == (9, 9)
            assert img[0, y0:y1, x0:x1].max() >= 150  # the glyph is drawn there
        else:
            assert (y1 - y0) * (x1 - x0) == 0  # "empty": no glyph, no box


def test_trained_gradcam_points_at_the_object(scenes_run):
    model, x, y, boxes = scenes_run
    cam, probs = grad_cam(model, x, y)
    assert cam.shape == (len(x), 28, 28) and cam.min() >= 0 and cam.max() <= 1
    assert (probs.argmax(1) == y).float().mean() >= 0.95
    glyphs = y < 3
    hits = pointing_game(cam, boxes)[glyphs].float().mean().item()
    assert hits >= 0.9, f"Grad-CAM peak inside the object for only {hits:.0%} of test images"


def test_randomised_weights_fail_the_pointing_game(scenes_run):
    model, x, y, boxes = scenes_run
    torch.manual_seed(0)
    random = create_model("resnet8", in_channels=1, num_classes=4, image_size=28).eval()
    assert random.state_dict().keys() == model.state_dict().keys()  # same net, untrained
    cam, _ = grad_cam(random, x, y)
    hits = pointing_game(cam, boxes)[y < 3].float().mean().item()
    assert hits < 0.5, f"a randomised model's Grad-CAM points at the object {hits:.0%} of the time"


def test_saliency_and_a_named_layer(scenes_run):
    model, x, y, boxes = scenes_run
    sal = saliency(model, x[:20], y[:20])
    assert sal.shape == (20, 28, 28) and sal.max() == pytest.approx(1.0)
    cam, _ = grad_cam(model, x[:20], y[:20], layer="layer2")  # 14x14 map, finer than layer3
    assert cam.shape == (20, 28, 28)
    hits = pointing_game(cam, boxes[:20])[y[:20] < 3].float().mean().item()
    assert hits >= 0.5
    with pytest.raises(ConvlensError, match="no layer 'layer9'"):
        grad_cam(model, x[:2], layer="layer9")


@pytest.mark.parametrize("name", [m for m in list_models() if m != "mlp"] + ["tv-resnet18"])
def test_every_cnn_gives_a_heatmap(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=5, image_size=32)
    x = torch.randn(2, 3, 32, 32)
    cam, probs = grad_cam(model, x)
    assert cam.shape == (2, 32, 32) and probs.shape == (2, 5)
    assert torch.isfinite(cam).all() and peak(cam).shape == (2, 2)
    assert model.training  # the model's mode is left as it was


def test_mlp_has_no_feature_map_but_has_saliency():
    model = create_model("mlp", in_channels=1, num_classes=3, image_size=8)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ConvlensError, match="Grad-CAM needs a convolutional feature map"):
        grad_cam(model, x)
    assert saliency(model, x).shape == (2, 8, 8)
