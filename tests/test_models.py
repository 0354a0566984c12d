"""Every registered model keeps the contract; the plain models are exactly what they claim."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from convlens.errors import ModelError
from convlens.models import (
    count_flops,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
)
from convlens.models.tv import adapt_conv_weight

TV_MODELS = ["tv-resnet18", "tv-mobilenet_v3_small"]
CONFIGS = [(1, 28, 28, 10), (1, 8, 8, 10), (3, 32, 32, 5), (3, 25, 25, 2)]  # C, H, W, classes


def build(name: str, config: tuple[int, int, int, int]) -> tuple[nn.Module, torch.Tensor]:
    """The model and a batch of 3 random images for (C, H, W, classes)."""
    torch.manual_seed(0)
    c, h, w, k = config
    model = create_model(name, in_channels=c, num_classes=k, image_size=(h, w))
    return model, torch.randn(3, c, h, w)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("name", list_models() + TV_MODELS)
def test_forward_is_head_of_features(name: str, config: tuple[int, int, int, int]) -> None:
    model, x = build(name, config)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        embedding = model.forward_head(features, pre_logits=True)
        assert logits.shape == (3, config[3])
        assert features.ndim == (2 if name == "mlp" else 4)
        torch.testing.assert_close(model.forward_head(features), logits)
    assert embedding.shape == (3, model.num_features)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("name", list_models() + TV_MODELS)
def test_backward_gives_finite_gradients(name: str, config: tuple[int, int, int, int]) -> None:
    model, x = build(name, config)
    model.train()
    F.cross_entropy(model(x), torch.arange(3) % config[3]).backward()
    for pname, p in model.named_parameters():
        if not p.requires_grad:  # frozen on purpose (fastnet's whitening stem, BN scales)
            continue
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize(("side", "out"), [(28, 4), (32, 4), (18, 3), (12, 3), (8, 4), (5, 4)])
def test_fastnet_pools_only_while_maps_stay_3x3(side: int, out: int) -> None:
    # 28x28 keeps Fashion-MNIST's three pools (27 -> 14 -> 7 -> 4); 8x8 stops at 4x4, not 1x1
    model = create_model("fastnet", image_size=side)
    assert model.forward_features(torch.zeros(2, 1, side, side)).shape == (2, 128, out, out)


def test_duplicate_registration_is_an_error() -> None:
    list_models()  # the built-in models are registered
    with pytest.raises(ModelError, match="'textbook' is already registered"):
        register_model("textbook")(lambda **kwargs: nn.Identity())


@pytest.mark.parametrize("name", ["no-such-net", "tv-no_such_net"])
def test_unknown_name_is_named(name: str) -> None:
    with pytest.raises(ModelError, match=name.removeprefix("tv-")):
        create_model(name)


@pytest.mark.parametrize(
    "kwargs",
    [{"depth": 3}, {"image_size": (0, 28)}, {"image_size": 28.0}, {"in_channels": 0}]
    + [{"kernel_size": 4}, {"widths": []}],
)
def test_bad_arguments_are_model_errors(kwargs: dict) -> None:
    with pytest.raises(ModelError):
        create_model("textbook", **kwargs)


def test_image_size_may_be_one_side() -> None:
    assert count_parameters(create_model("lenet5", image_size=32)) == count_parameters(
        create_model("lenet5", image_size=(32, 32))
    )


def test_textbook_is_the_hand_built_network() -> None:
    model = create_model("textbook", in_channels=3, num_classes=2, image_size=(25, 25))
    hand = nn.Sequential(
        nn.Conv2d(3, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),  # 25 -> 13
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),  # 13 -> 7
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 2),
    )
    assert count_parameters(model) == sum(p.numel() for p in hand.parameters())
    assert list(model.state_dict()) == [
        "features.conv1.weight",
        "features.conv1.bias",
        "features.conv2.weight",
        "features.conv2.bias",
        "classifier.fc.weight",
        "classifier.fc.bias",
    ]
    hand.load_state_dict(dict(zip(hand.state_dict(), model.state_dict().values(), strict=True)))
    x = torch.randn(4, 3, 25, 25)
    torch.testing.assert_close(model(x), hand(x))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "x".join(map(str, c)))
def test_textbook_flops_match_the_formula(config: tuple[int, int, int, int]) -> None:
    c, h, w, k = config
    h2, w2 = -(-h // 2), -(-w // 2)  # after the first ceil-mode pool
    h4, w4 = -(-h2 // 2), -(-w2 // 2)
    expected = (
        2 * 16 * c * 5 * 5 * h * w  # conv1: one multiply-add per weight per output pixel
        + 2 * 32 * 16 * 5 * 5 * h2 * w2  # conv2
        + 2 * (32 * h4 * w4) * k  # fc; biases, ReLU and pooling are not counted
    )
    model = create_model("textbook", in_channels=c, num_classes=k, image_size=(h, w))
    assert count_flops(model, c, (h, w)) == expected


def test_lenet5_has_the_classic_shapes() -> None:
    model = create_model("lenet5")
    assert model.forward_features(torch.zeros(1, 1, 28, 28)).shape == (1, 16, 5, 5)
    assert model.num_features == 84
    assert [n for n, _ in model.named_parameters()] == [
        f"{part}.{layer}.{kind}"
        for part, layer in [("features", "conv1"), ("features", "conv2")]
        + [("classifier", f"fc{i}") for i in (1, 2, 3)]
        for kind in ("weight", "bias")
    ]
    assert count_parameters(model) == 61_706  # the paper's 60k, with 28x28 padded to 32x32


def test_mlp_names_do_not_depend_on_dropout() -> None:
    plain = create_model("mlp", hidden=[64, 32])
    dropped = create_model("mlp", hidden=[64, 32], dropout=0.5)
    assert list(plain.state_dict()) == list(dropped.state_dict())
    assert list(plain.state_dict())[::2] == [
        "features.fc1.weight",
        "features.fc2.weight",
        "classifier.fc.weight",
    ]
    assert plain.num_features == 32


@pytest.mark.parametrize(("name", "depth"), [("resnet8", 8), ("resnet20", 20)])
def test_resnet_depth_counts_weighted_layers(name: str, depth: int) -> None:
    model = create_model(name)
    three_by_three = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert len(three_by_three) + 1 == depth  # + fc; 1x1 projections are not counted (He et al.)
    assert model.forward_features(torch.zeros(2, 1, 28, 28)).shape == (2, 64, 7, 7)


def test_model_info_for_the_models_command() -> None:
    for name in list_models():
        for channels, size in [(1, 28), (3, 32)]:
            info = model_info(name, in_channels=channels, image_size=(size, size))
            model = create_model(name, in_channels=channels, image_size=(size, size))
            assert info["name"] == name
            assert info["params"] == count_parameters(model) > 0
            assert info["flops"] > 0
            assert info["description"] and "\n" not in info["description"]
    assert model_info("tv-resnet18", in_channels=3, image_size=(32, 32))["flops"] > 0


def test_tv_model_keeps_torchvision_names_and_class() -> None:
    model = create_model("tv-resnet18", in_channels=1, num_classes=7)
    reference = torchvision.models.resnet18(num_classes=7)
    assert isinstance(model, torchvision.models.ResNet)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert model.conv1.weight.shape == (64, 1, 7, 7)


def test_tv_pretrained_offline_is_one_line_model_error(monkeypatch, tmp_path, capfd) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights to fall back on
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # offline connections are refused fast; never hang regardless
    try:
        with pytest.raises(ModelError) as error:
            create_model("tv-resnet18", pretrained=True)
    finally:
        socket.setdefaulttimeout(old_timeout)
    message = str(error.value)
    assert message.startswith("cannot download pretrained weights for resnet18: ")
    assert message.endswith("use --init FILE with a local weights file")
    assert "\n" not in message
    assert "Downloading" not in capfd.readouterr().err  # torch.hub's line, for a failed download


def test_tv_pretrained_adapts_first_conv_and_last_layer(monkeypatch, tmp_path) -> None:
    # A state dict in torch hub's cache stands in for the download (this machine is offline).
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    published = torchvision.models.resnet18().state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(published, cache / weights.url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = create_model("tv-resnet18", in_channels=1, num_classes=7, pretrained=True)
    loaded = model.state_dict()
    torch.testing.assert_close(loaded["conv1.weight"], published["conv1.weight"].sum(1, True))
    torch.testing.assert_close(loaded["layer4.1.bn2.weight"], published["layer4.1.bn2.weight"])
    assert loaded["fc.weight"].shape == (7, 512)


def test_tv_family_without_a_split_is_named() -> None:
    model = create_model("tv-googlenet", in_channels=3, image_size=(64, 64)).eval()
    x = torch.zeros(1, 3, 64, 64)
    assert model(x).shape == (1, 10)  # training works; only the split is missing
    with pytest.raises(ModelError, match="googlenet"):
        model.forward_features(x)


def test_tv_images_too_small_are_named() -> None:
    with pytest.raises(ModelError, match="tv-densenet121 cannot take 3x16x16 images"):
        create_model("tv-densenet121", in_channels=3, image_size=(16, 16))


def test_rgb_filters_adapt_to_other_channel_counts() -> None:
    weight = torch.randn(8, 3, 3, 3)
    torch.testing.assert_close(adapt_conv_weight(weight, 1), weight.sum(1, keepdim=True))
    assert adapt_conv_weight(weight, 4).shape == (8, 4, 3, 3)
    six = adapt_conv_weight(weight, 6)  # RGBRGB at half strength
    torch.testing.assert_close(six.sum((1, 2, 3)), weight.sum((1, 2, 3)))  # flat image: same


@pytest.mark.parametrize(("saved_by", "pools"), [("0.1.0", [True] * 3), ("0.2.0", None)])
def test_fastnet_weights_load_with_the_pooling_they_were_trained_with(tmp_path, saved_by, pools):
    """Before 0.2 fastnet pooled three times at any size: 8x8 weights from then keep that."""
    from convlens.models.fastnet import pool_plan
    from convlens.runs.weights import save_weights
    from convlens.tasks.loading import load_model

    torch.manual_seed(0)
    plan = pools or list(pool_plan((8, 8)))
    model = create_model("fastnet", image_size=8, pools=plan).eval()
    meta = {"task": "classify", "classes": [str(i) for i in range(10)],
            "input": {"channels": 1, "height": 8, "width": 8},
            "normalize": {"mean": [0.5], "std": [0.5]}, "tta": "none",
            "model": {"name": "fastnet", "args": {}},
            "versions": {"convlens": saved_by}}  # fmt: skip
    save_weights(tmp_path / "w.safetensors", model.state_dict(), meta)
    loaded, _, _ = load_model(tmp_path / "w.safetensors")
    x = torch.randn(3, 1, 8, 8)
    assert loaded.forward_features(x).shape == model.forward_features(x).shape
    assert torch.allclose(loaded(x), model(x))


def test_fastnets_stride_2_stem_sees_every_pixel_once_at_half_the_side() -> None:
    from convlens.models.fastnet import pool_plan

    wide = create_model("fastnet", in_channels=3, image_size=96, stem_stride=2)
    assert wide.conv1(torch.zeros(1, 3, 96, 96)).shape[-2:] == (48, 48)  # 95 x 95 at stride 1
    assert wide.forward_features(torch.zeros(2, 3, 96, 96)).shape == (2, 128, 6, 6)
    assert pool_plan((96, 96), 2, 2) == pool_plan((48, 48), 1, 1)
    x = torch.zeros(1, 3, 96, 96, requires_grad=True)
    out = wide.conv1(x)
    hits = torch.zeros(96, 96)
    for i, j in [(0, 0), (10, 31), (47, 47)]:  # each stem position reads its own 2x2 patch
        (g,) = torch.autograd.grad(out[0, :, i, j].sum(), x, retain_graph=True)
        seen = g.abs().sum(1)[0] > 0
        assert seen.sum() == 4 and seen[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].all()
        hits += seen
    assert hits.max() == 1
    with pytest.raises(ValueError, match="stem_stride must be 1 to whiten_kernel"):
        create_model("fastnet", image_size=96, stem_stride=3)  # would skip pixels
