"""Transfer learning: timm models, --init from .pth state dicts (never unpickling code), grey and
RGB first convs adapted, the weights' own preprocessing in the metadata, and the fine-tuning
recipe (the head alone with the body and its BatchNorm statistics frozen, then a lower lr for
the body). No weights can be downloaded here: the hub tests pre-fill torch's and Hugging Face's
caches with generated weights, named as the hubs name them."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file

import convlens
from convlens.config import make_config
from convlens.errors import ModelError
from convlens.faces.head import EmbeddingNet
from convlens.models import create_model
from convlens.models.pretrained import BackboneDefaults
from convlens.runs.weights import load_state
from convlens.training.finetune import Recipe, resolve
from convlens.training.mapping import map_onto
from convlens.training.optim import build_optimizer, set_lr
from convlens.training.start import read_state_dict
from tests.helpers import convlens as cli

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SMALL = {"batch_size": 16, "lr": 0.05, "threads": 1}  # 48 training images: 3 steps an epoch


def _npz(path, channels: int, size: int = 32, per_class: int = 16, seed: int = 0):
    """Three classes of noisy images, told apart by where a bright band lies."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", per_class), ("val", per_class // 2), ("test", per_class // 2)):
        shape = (3 * n, size, size) + ((channels,) if channels > 1 else ())
        images = rng.integers(0, 80, shape, dtype=np.uint8)
        labels = np.repeat(np.arange(3), n)
        for i, c in enumerate(labels):
            images[i, c * size // 3 : (c + 1) * size // 3 - 2] += 150
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"rgb": _npz(root / "rgb.npz", 3), "grey": _npz(root / "grey.npz", 1)}


@pytest.fixture(scope="module")
def source_run(data, tmp_path_factory):
    """A resnet8 run on the grey images: the weights the fine-tuning tests start from."""
    root = tmp_path_factory.mktemp("source")
    return convlens.train(data=str(data["grey"]), model="resnet8", epochs=1, run=str(root / "a"),
                          **SMALL)  # fmt: skip


# --- timm models ------------------------------------------------------------------------------


def test_timm_model_keeps_the_features_head_split_and_trains_a_step():
    torch.manual_seed(0)
    model = create_model("timm-resnet18", in_channels=1, num_classes=3, image_size=32)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 3
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    feats = model.forward_features(x)  # (4, 512, 1, 1)
    assert feats.ndim == 4
    assert model.forward_head(feats, pre_logits=True).shape == (4, model.num_features)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(model.fc.weight, before["fc.weight"])
    assert not torch.equal(model.conv1.weight, before["conv1.weight"])
    convnext = create_model("timm-convnext_atto", in_channels=3, num_classes=5, image_size=32)
    assert convnext(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_an_unknown_timm_name_is_one_line_with_close_names():
    with pytest.raises(ModelError, match=r"unknown timm model 'resnet1'; did you mean resnet18"):
        create_model("timm-resnet1")


def test_without_timm_the_error_says_how_to_install(data, tmp_path):
    shim = ("import sys; sys.modules['timm'] = None; from convlens.cli import main; "
            "sys.exit(main(sys.argv[1:]))")  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", shim, "train", "--data", str(data["grey"]), "--model",
         "timm-resnet18", "--epochs", "1", "--run", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "convlens: error: timm-resnet18 needs timm, which is not installed: "
        "pip install convlens[timm]"
    ]


def _hf_cache(home, repo: str, tensors: dict) -> None:
    """A Hugging Face hub cache holding `tensors` as `repo`'s model.safetensors."""
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    save_file(tensors, folder / "snapshots" / commit / "model.safetensors")


def test_timm_pretrained_comes_from_the_hub_with_its_preprocessing(data, tmp_path):
    import timm

    torch.manual_seed(1)
    published = timm.create_model("resnet18").state_dict()  # the hub's stand-in
    _hf_cache(tmp_path / "hf", "timm/resnet18.a1_in1k", published)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = cli("train", "--data", data["grey"], "--model", "timm-resnet18", "--pretrained",
              "--epochs", 1, "--freeze-epochs", 1, "--batch-size", 16, "--threads", 1,
              "--run", tmp_path / "run", env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "normalised as timm resnet18.a1_in1k expects" in out.stdout
    weights = tmp_path / "run" / "weights" / "last.safetensors"
    tensors = load_file(weights)
    torch.testing.assert_close(tensors["conv1.weight"], published["conv1.weight"].sum(1, True))
    for key in ("layer3.1.conv2.weight", "layer4.0.bn1.running_var", "bn1.running_mean"):
        assert torch.equal(tensors[key], published[key]), key  # frozen epoch: body untouched
    meta = convlens.load(str(tmp_path / "run")).meta
    assert meta["normalize"]["mean"] == pytest.approx([sum(IMAGENET_MEAN) / 3])  # grey: R=G=B
    assert meta["normalize"]["std"] == pytest.approx([sum(IMAGENET_STD) / 3])

    script = (
        "from convlens.models import create_model\n"
        "try:\n    create_model('timm-resnet18', pretrained=True)\n"
        "except Exception as e:\n    print(type(e).__name__, e)"
    )
    empty = {**os.environ, **env, "HF_HOME": str(tmp_path / "empty")}  # offline, nothing cached
    offline = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=empty
    )
    (line,) = offline.stdout.strip().splitlines()
    assert line.startswith("ModelError cannot download pretrained weights for timm-resnet18")
    assert line.endswith("use --init FILE with a local weights file")


# --- .pth state dicts -------------------------------------------------------------------------


def test_torchvision_state_dict_maps_onto_a_grey_model_with_a_new_head(tmp_path):
    torch.manual_seed(2)
    published = torchvision.models.resnet18().state_dict()  # 1000 classes, RGB
    torch.save(published, tmp_path / "resnet18.pth")
    tensors = read_state_dict(tmp_path / "resnet18.pth")
    model = create_model("tv-resnet18", in_channels=1, num_classes=3, image_size=32)
    mapped = map_onto(model, model, tensors)
    torch.testing.assert_close(
        mapped.tensors["conv1.weight"], published["conv1.weight"].sum(1, True)
    )
    assert mapped.adapted == ["conv1.weight"]
    assert mapped.head == ["fc.weight", "fc.bias"] and "fc.weight" not in mapped.tensors
    assert len(mapped.tensors) == len(published) - 2
    assert "the head (fc.weight, fc.bias) starts new" in mapped.describe(len(published), "x")


def test_timm_checkpoint_with_ddp_prefixes_and_settings_maps_onto_a_task_wrapper(tmp_path):
    import timm

    torch.manual_seed(3)
    published = timm.create_model("resnet18", num_classes=3).state_dict()
    checkpoint = {"epoch": 7, "arch": "resnet18", "args": argparse.Namespace(lr=0.1),
                  "state_dict": {f"module.{k}": v for k, v in published.items()}}  # fmt: skip
    torch.save(checkpoint, tmp_path / "checkpoint-7.pth.tar")
    tensors = read_state_dict(tmp_path / "checkpoint-7.pth.tar")
    assert set(tensors) == {f"module.{k}" for k in published}
    net = create_model("timm-resnet18", in_channels=3, num_classes=3, image_size=32)
    mapped = map_onto(net, net, tensors)
    assert set(mapped.tensors) == set(published) and not mapped.unused
    # an embed run's backbone sits under `backbone.`; its head (fc: the embedding) fits too
    wrapped = EmbeddingNet(net, identities=4, size=3)
    mapped = map_onto(wrapped, net, tensors)
    assert set(mapped.tensors) == {f"backbone.{k}" for k in published}


def test_a_pickle_payload_is_refused_and_runs_no_code(data, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"conv1.weight": torch.zeros(1), "x": Payload()}, tmp_path / "evil.pth")
    out = cli("train", "--data", data["grey"], "--model", "resnet8", "--epochs", 1,
              "--init", tmp_path / "evil.pth", "--run", tmp_path / "run")  # fmt: skip
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"convlens: error: --init {tmp_path / 'evil.pth'}: refused: ")
    assert "system" in line and "weights_only=True" in line
    assert not marker.exists()
    assert not (tmp_path / "run" / "weights").exists()
    (tmp_path / "junk.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(ModelError, match=r"junk.pth: not a torch state dict file"):
        read_state_dict(tmp_path / "junk.pth")


# --- grey <-> RGB -----------------------------------------------------------------------------


def test_grey_and_rgb_first_convs_keep_the_output():
    torch.manual_seed(4)
    rgb = create_model("tv-resnet18", in_channels=3, num_classes=3, image_size=32).eval()
    grey = create_model("tv-resnet18", in_channels=1, num_classes=3, image_size=32).eval()
    grey.load_state_dict(map_onto(grey, grey, rgb.state_dict()).tensors)
    g = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # a grey image is R = G = B: the summed filters see the same
        torch.testing.assert_close(grey(g), rgb(g.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)

    small = create_model("resnet8", in_channels=1, num_classes=3, image_size=32).eval()
    colour = create_model("resnet8", in_channels=3, num_classes=3, image_size=32).eval()
    mapped = map_onto(colour, colour, small.state_dict())
    assert mapped.adapted == ["conv1.weight"] and len(mapped.tensors) == len(small.state_dict())
    colour.load_state_dict(mapped.tensors)
    torch.testing.assert_close(colour.conv1.weight, small.conv1.weight.repeat(1, 3, 1, 1) / 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # repeated / 3: the grey net on the channels' mean
        torch.testing.assert_close(colour(x), small(x.mean(1, keepdim=True)), atol=1e-5, rtol=1e-4)
    stats = BackboneDefaults(tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), "imagenet")
    assert stats.normalize(1) == ([pytest.approx(sum(IMAGENET_MEAN) / 3)],
                                  [pytest.approx(sum(IMAGENET_STD) / 3)])  # fmt: skip
    assert BackboneDefaults((0.3,), (0.2,), "grey").normalize(3) == ([0.3] * 3, [0.2] * 3)


def test_a_grey_convlens_run_starts_an_rgb_one(data, source_run, tmp_path):
    grey = source_run
    rgb = convlens.train(data=str(data["rgb"]), model="resnet8", epochs=1, freeze_epochs=1,
                         init=str(grey), run=str(tmp_path / "rgb"), **SMALL)  # fmt: skip
    a = load_file(grey / "weights" / "best.safetensors")
    b = load_file(rgb / "weights" / "last.safetensors")
    torch.testing.assert_close(b["conv1.weight"], a["conv1.weight"].repeat(1, 3, 1, 1) / 3)
    grey_norm = convlens.load(str(grey)).meta["normalize"]
    rgb_norm = convlens.load(str(rgb)).meta["normalize"]
    assert rgb_norm["mean"] == grey_norm["mean"] * 3 and rgb_norm["std"] == grey_norm["std"] * 3


# --- the fine-tuning recipe -------------------------------------------------------------------


def test_the_frozen_phase_moves_the_head_alone(data, source_run, tmp_path):
    run = convlens.train(data=str(data["grey"]), model="resnet8", epochs=1, freeze_epochs=1,
                         init=str(source_run), run=str(tmp_path / "b"), **SMALL)  # fmt: skip
    start = load_file(source_run / "weights" / "best.safetensors")
    after = load_file(run / "weights" / "last.safetensors")
    body = [k for k in start if not k.startswith("fc.")]
    assert any("running_mean" in k for k in body) and any("num_batches" in k for k in body)
    for key in body:  # weights and BatchNorm statistics, bit for bit
        assert torch.equal(after[key], start[key]), key
    assert not torch.equal(after["fc.weight"], start["fc.weight"])  # the same classes: kept, moved
    settings = (run / "config.yaml").read_text()
    assert "transfer: fine-tune" in settings and "freeze_epochs: 1" in settings
    assert "fine-tune" in (run / "report.html").read_text()


def test_an_explain_baseline_of_a_fine_tuned_run_trains_from_scratch(data, tmp_path):
    from convlens.api.explain import train_baseline

    config = tmp_path / "config.yaml"  # a fine-tuned run's resolved settings
    config.write_text(f"data: {data['grey']}\nmodel: resnet8\nepochs: 1\nbatch_size: 16\n"
                      "init: elsewhere\ntransfer: fine-tune\nfreeze_epochs: 1\n")  # fmt: skip
    baseline = train_baseline(tmp_path, str(data["grey"]), config)
    settings = (baseline / "config.yaml").read_text()
    assert "model: mlp" in settings and "transfer: full" in settings


def test_the_body_trains_at_a_share_of_the_head_lr_once_unfrozen(data, source_run, tmp_path):
    run = convlens.train(data=str(data["grey"]), model="resnet8", epochs=2, body_lr_mult=0.25,
                         init=str(source_run), run=str(tmp_path / "c"), **SMALL)  # fmt: skip
    groups = load_state(run / "state" / "last.safetensors")[1]["optimizer"]["param_groups"]
    head = {g["weight_decay"]: g["lr"] for g in groups if "body_share" not in g}
    assert len(head) == 2 and min(head.values()) > 0  # decayed weights, and biases and norms
    body = [g for g in groups if "body_share" in g]
    for g in body:  # the head's lr (same weight decay: the same default group) x the share
        assert g["lr"] == pytest.approx(g["body_share"] * head[g["weight_decay"]])
    # resnet8's 5 body stages (conv1, bn1, layer1-3) rise geometrically from 0.25x towards 1x
    assert sorted({g["body_share"] for g in body}) == pytest.approx([0.25 ** (k / 5) for k in
                                                                      (5, 4, 3, 2, 1)])  # fmt: skip
    start = load_file(source_run / "weights" / "best.safetensors")
    after = load_file(run / "weights" / "last.safetensors")
    assert not torch.equal(after["layer1.0.conv1.weight"], start["layer1.0.conv1.weight"])


def test_recipe_phases_each_run_their_own_schedule_and_freeze_the_body():
    cfg = resolve(make_config(None, {"model": "resnet8", "init": "x", "epochs": 4, "lr": 0.1}))
    assert (cfg.transfer, cfg.freeze_epochs) == ("fine-tune", 1)
    assert resolve(make_config(None, {"model": "resnet8", "epochs": 4})).transfer == "full"
    model = create_model("resnet8", in_channels=1, num_classes=3, image_size=16)
    recipe = Recipe(cfg, model)
    shares = recipe.body_shares
    assert shares[id(model.conv1.weight)] == pytest.approx(0.3)  # the first stage: body_lr_mult
    assert shares[id(model.layer3[0].conv1.weight)] == pytest.approx(0.3**0.2)
    assert id(model.fc.weight) not in shares  # the head: the full lr
    opt = build_optimizer(model, cfg, shares)
    assert recipe.lr(0, 10) == (pytest.approx(0.1 * 0.2), True)  # onecycle starts at 20%
    assert recipe.lr(10, 10) == (pytest.approx(0.1 * 0.2), False)  # and again when unfrozen
    recipe.begin_epoch(model, 0)
    assert not model.conv1.weight.requires_grad and model.fc.weight.requires_grad
    assert not model.bn1.training and model.training
    set_lr(opt, 0.1, progress=0.5, body_frozen=recipe.lr(5, 10)[1])  # step 5: frozen
    assert {g["lr"] for g in opt.param_groups if "body_share" in g} == {0.0}
    assert {g["lr"] for g in opt.param_groups if "body_share" not in g} == {0.1}
    assert recipe.begin_epoch(model, 1)  # what trains changed: DDP must be made again
    assert model.conv1.weight.requires_grad and model.bn1.training


# --- the hub (torchvision) and the other tasks ------------------------------------------------


def test_tv_pretrained_from_the_hub_cache_brings_its_normalisation_to_onnx(
    data, tmp_path, monkeypatch, capsys
):
    from convlens.export import export_onnx

    weights = torchvision.models.ResNet18_Weights.DEFAULT
    torch.manual_seed(5)
    published = torchvision.models.resnet18().state_dict()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(published, cache / weights.url.rsplit("/", 1)[1])  # resnet18-f37072fd.pth
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub reads it per call
    run = convlens.train(data=str(data["rgb"]), model="tv-resnet18", pretrained=True, epochs=1,
                         freeze_epochs=1, run=str(tmp_path / "run"), **SMALL)  # fmt: skip
    said = capsys.readouterr().out
    assert "normalised as torchvision ResNet18_Weights.IMAGENET1K_V1 expects" in said
    assert "224x224 images cut from a 256 px shorter side (bilinear)" in said
    tensors = load_file(run / "weights" / "last.safetensors")
    assert torch.equal(tensors["layer2.0.conv1.weight"], published["layer2.0.conv1.weight"])
    export_onnx(str(run), str(tmp_path / "m.onnx"))
    torch_model, onnx_model = convlens.load(str(run)), convlens.load(str(tmp_path / "m.onnx"))
    for m in (torch_model, onnx_model):
        assert m.meta["normalize"]["mean"] == pytest.approx(IMAGENET_MEAN)
        assert m.meta["normalize"]["std"] == pytest.approx(IMAGENET_STD)
    images = np.load(data["rgb"])["test_images"][:6]
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        a = torch_model.predict(str(tmp_path / f"{i}.png"), top_k=3)
        b = onnx_model.predict(str(tmp_path / f"{i}.png"), top_k=3)
        assert [p["label"] for p in a] == [p["label"] for p in b]
        assert [p["score"] for p in a] == pytest.approx([p["score"] for p in b], abs=1e-4)


def test_a_multilabel_run_fine_tunes_a_torchvision_state_dict_on_grey_images(tmp_path):
    from convlens.medical.synthetic import finding_images

    arrays = {}
    for i, (split, n) in enumerate((("train", 48), ("val", 24), ("test", 24))):
        images, labels = finding_images(n, size=32, seed=20 + i)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    torch.manual_seed(6)
    published = torchvision.models.resnet18().state_dict()
    torch.save(published, tmp_path / "resnet18.pth")
    run = convlens.train(data=str(tmp_path / "chestmnist.npz"), task="multilabel",
                         model="tv-resnet18", init=str(tmp_path / "resnet18.pth"), epochs=1,
                         freeze_epochs=1, run=str(tmp_path / "run"), **SMALL)  # fmt: skip
    tensors = load_file(run / "weights" / "last.safetensors")
    torch.testing.assert_close(tensors["conv1.weight"], published["conv1.weight"].sum(1, True))
    assert torch.equal(tensors["layer4.1.bn2.running_var"], published["layer4.1.bn2.running_var"])
    meta = convlens.load(str(run)).meta
    assert meta["task"] == "multilabel"
    assert meta["normalize"]["mean"] == pytest.approx([sum(IMAGENET_MEAN) / 3])
    assert "transfer: fine-tune" in (run / "config.yaml").read_text()
