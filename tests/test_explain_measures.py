"""Parameter sharing counts, stages and receptive fields, shifted and rotated test images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens.data.dataset import Split
from convlens.explain import (
    find_stages,
    first_conv,
    invariance_curves,
    parameter_sharing,
    rotate_images,
    shift_images,
    stage_outputs,
)
from convlens.explain.hierarchy import crop, receptive_field
from convlens.models import create_model, list_models

MODELS = list_models() + ["tv-resnet18", "tv-mobilenet_v3_small"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["1x28", "3x32"])
def test_parameter_counts_are_the_real_layers(name, shape):
    model = create_model(name, in_channels=shape[0], num_classes=10, image_size=shape[1:])
    s = parameter_sharing(model, shape)
    assert s["total"] == sum(p.numel() for p in model.parameters())
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert {r["layer"] for r in s["layers"]} <= set(convs)
    for row in s["layers"]:
        assert row["conv"] == sum(p.numel() for p in convs[row["layer"]].parameters())
        assert row["conv"] <= row["locally_connected"]  # unshared: never fewer
    assert s["conv"] + s["other"] == s["total"] <= s["locally_connected_total"]
    if name == "mlp":
        assert s["layers"] == [] and s["fully_connected_total"] == s["total"]


def test_the_fully_connected_equivalent_is_a_real_linear_layer():
    model = create_model("textbook", in_channels=1, num_classes=10, image_size=8)
    s = parameter_sharing(model, (1, 8, 8))
    conv1, conv2 = s["layers"]
    assert (conv1["in"], conv1["out"]) == ([1, 8, 8], [16, 8, 8])
    assert (conv2["in"], conv2["out"]) == ([16, 4, 4], [32, 4, 4])
    for row in (conv1, conv2):
        ins, outs = torch.Size(row["in"]).numel(), torch.Size(row["out"]).numel()
        assert row["fully_connected"] == sum(p.numel() for p in nn.Linear(ins, outs).parameters())
    # locally connected: 16 filters of 1x5x5 at each of 8x8 places, one bias per output unit
    assert conv1["locally_connected"] == 8 * 8 * 16 * 25 + 16 * 8 * 8
    assert conv1["conv"] == 16 * 25 + 16 and conv1["ratio"] == conv1["fully_connected"] / 416


@pytest.mark.parametrize(
    "name, expected",
    [
        ("textbook", [("features.relu1", (16, 28, 28)), ("features.relu2", (32, 14, 14)),
                      ("features.pool2", (32, 7, 7))]),
        ("lenet5", [("features.relu1", (6, 28, 28)), ("features.relu2", (16, 10, 10)),
                    ("features.pool2", (16, 5, 5))]),
        ("resnet8", [("layer1", (16, 28, 28)), ("layer2", (32, 14, 14)), ("layer3", (64, 7, 7))]),
    ],
)  # fmt: skip
def test_stages_are_the_last_module_at_each_resolution(name, expected):
    model = create_model(name, in_channels=1, num_classes=10, image_size=28)
    stages = find_stages(model, (1, 28, 28))
    assert [(s.name, s.shape) for s in stages] == expected
    x = torch.randn(2, 1, 28, 28)
    outs = stage_outputs(model, x, stages)
    assert [tuple(o.shape[1:]) for o in outs] == [s.shape for s in stages]
    with torch.no_grad():  # the last stage is what forward_features returns
        torch.testing.assert_close(outs[-1], model.eval().forward_features(x))
    assert first_conv(model, (1, 28, 28))[0] in ("features.conv1", "conv1")


@pytest.mark.parametrize("name", [m for m in list_models() if m != "mlp"] + ["tv-resnet18"])
def test_every_cnn_has_stages_ending_at_its_feature_map(name):
    model = create_model(name, in_channels=3, num_classes=5, image_size=32).eval()
    stages = find_stages(model, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    assert len(stages) >= 2
    with torch.no_grad():
        assert stage_outputs(model, x, stages)[-1].shape == model.forward_features(x).shape


def test_mlp_has_no_stages():
    model = create_model("mlp", in_channels=1, num_classes=3, image_size=8)
    assert find_stages(model, (1, 8, 8)) == [] and first_conv(model, (1, 8, 8)) is None


def test_receptive_fields_grow_as_the_textbook_net_says():
    torch.manual_seed(0)
    model = create_model("textbook", in_channels=1, num_classes=10, image_size=28).eval()
    stages = find_stages(model, (1, 28, 28))
    x = torch.nn.functional.pad(torch.rand(8, 1, 28, 28), (28, 28, 28, 28))
    rf = [receptive_field(model, s, x) for s in stages]
    # conv 5x5: 5; pool 2 then conv 5x5 at stride 2: 6 + 4 * 2 = 14; pool 2: 14 + 2 = 16
    assert rf[0] == (5, 5) and rf[1] == (14, 14)
    assert 14 < rf[2][0] <= 16 and 14 < rf[2][1] <= 16  # max-pool passes gradient to one winner


def test_crop_stays_inside_the_image():
    image = torch.arange(100, dtype=torch.uint8).view(1, 10, 10)
    assert crop(image, (4.5, 4.5), (4, 4)).tolist() == image[:, 3:7, 3:7].tolist()
    assert crop(image, (0, 0), (4, 4)).tolist() == image[:, :4, :4].tolist()
    assert crop(image, (5, 5), (30, 30)).shape == (1, 10, 10)


def test_shift_moves_pixels_and_fills_with_zeros():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    x[0, 0, 2, 2] = 9
    assert shift_images(x, 1, -2)[0, 0].nonzero().tolist() == [[3, 0]]
    assert shift_images(x, 0, 3).sum() == 0  # moved out of the picture
    assert torch.equal(shift_images(x, 0, 0), x)


def test_rotation_by_90_degrees_turns_the_image():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    x[0, 0, 0, 2] = 200  # top centre
    turned = rotate_images(x, 90)  # counter-clockwise: top centre goes to left centre
    assert turned[0, 0].argmax().item() == 2 * 5 + 0
    assert torch.equal(rotate_images(x, 0), x)


def test_invariance_curves_tell_a_shift_invariant_model_from_a_fixed_one():
    torch.manual_seed(0)
    images = torch.zeros(40, 1, 12, 12, dtype=torch.uint8)
    labels = torch.arange(40) % 2
    for i in range(40):  # class 0: a dot, class 1: a bar of 3, inside the middle 4x4 window
        y, x = torch.randint(4, 8, ()).item(), torch.randint(4, 6, ()).item()
        images[i, 0, y, x : x + (1 if labels[i] == 0 else 3)] = 255
    split = Split(images, labels)

    def invariant(u8):  # counts lit pixels: the same wherever the shape is
        lit = (u8 > 0).flatten(1).sum(1)
        return torch.stack([(lit == 1).float(), (lit > 1).float()], 1)

    def fixed(u8):  # looks only at the middle 4x4 window
        lit = (u8[..., 4:8, 4:8] > 0).flatten(1).sum(1)
        return torch.stack([(lit <= 1).float(), (lit > 1).float()], 1)

    a = invariance_curves(invariant, split, max_shift=3, angles=(0,))
    b = invariance_curves(fixed, split, max_shift=3, angles=(0, 10))
    assert a["shift"]["pixels"] == [0, 1, 2, 3]
    assert a["shift"]["accuracy"] == [1.0, 1.0, 1.0, 1.0]
    assert b["shift"]["accuracy"][0] == 1.0 and b["shift"]["accuracy"][3] < 0.8
    assert b["rotation"]["degrees"] == [0, 10] and len(b["rotation"]["accuracy"]) == 2
    assert a["shift"]["true_class_prob"] == a["shift"]["accuracy"]  # one-hot "probabilities"


def test_rotation_agrees_with_torchvision():
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import rotate

    torch.manual_seed(0)
    x = (torch.rand(3, 2, 20, 28) * 255).to(torch.uint8)
    for angle in (5, -20, 30):
        oracle = rotate(x, angle, interpolation=InterpolationMode.BILINEAR, fill=0).float()
        assert (rotate_images(x, angle).float() - oracle).abs().mean() < 3  # of 255 levels
