"""ONNX export: checked model, metadata, dynamic batch, and the same answers as torch."""

import json

import numpy as np
import pytest
import torch

from convlens.export import OnnxModel, export_onnx
from convlens.models import create_model, list_models
from convlens.training.checkpoint import save_weights
from tests.helpers import convlens

pytestmark = pytest.mark.xdist_group("export")


def _weights(tmp_path, name: str, tta: str = "flip-shift"):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=10, image_size=(28, 28)).eval()
    meta = {
        "task": "classify", "classes": [str(i) for i in range(10)],
        "input": {"channels": 1, "height": 28, "width": 28},
        "normalize": {"mean": [0.3], "std": [0.3]}, "tta": tta,
        "model": {"name": name, "args": {}},
    }  # fmt: skip
    path = tmp_path / f"{name}.safetensors"
    save_weights(path, model.state_dict(), meta)
    return path


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_with_parity(tmp_path, name):
    result = export_onnx(_weights(tmp_path, name), tmp_path / f"{name}.onnx")
    assert result["images"] == 100 and result["max_abs_diff"] <= 1e-4
    onnx_model = OnnxModel(result["onnx"])
    assert onnx_model.meta["model"]["name"] == name
    images = np.random.default_rng(1).integers(0, 256, (7, 1, 28, 28), dtype=np.uint8)
    assert onnx_model.predict_proba(images).shape == (7, 10)  # any batch size
    assert onnx_model.predict_proba(images[:1]).shape == (1, 10)


def test_cli_export_and_predict_through_onnxruntime(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    run = tmp_path / "run"
    out = convlens("train", "--data", "digits", "--model", "lenet5", "--epochs", "2", "--run", run)
    assert out.returncode == 0, out.stderr
    out = convlens("export", run, "--format", "onnx")
    assert out.returncode == 0, out.stderr
    assert "digits validation split" in out.stdout
    onnx_file = run / "weights" / "best.onnx"
    images = load_digits().images[-5:]
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"d{i}.png")
        Image.fromarray((img * 255 / 16).astype(np.uint8)).save(paths[-1])
    rows = {}
    for target in (run, onnx_file):
        out = convlens("predict", target, *paths, "--json", "--top-k", "10")
        assert out.returncode == 0, out.stderr
        rows[target] = json.loads(out.stdout)
    for a, b in zip(rows[run], rows[onnx_file], strict=True):
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"]
        theirs = {p["index"]: p["score"] for p in b["predictions"]}
        assert all(abs(p["score"] - theirs[p["index"]]) < 1e-5 for p in a["predictions"])


def test_not_an_onnx_model_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf")
    out = convlens("predict", bad, tmp_path)
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1 and "bad.onnx" in out.stderr
