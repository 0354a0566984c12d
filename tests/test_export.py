"""ONNX export: checked model, metadata, dynamic batch, and the same answers as torch."""

import json

import numpy as np
import pytest
import torch

from convlens.export import OnnxModel, export_onnx
from convlens.models import create_model, list_models
from convlens.runs.weights import load_weights, save_weights
from tests.helpers import convlens_warm as convlens
from tests.helpers import saved_decision


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


def _png(path, pixels: np.ndarray):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_multilabel_run_exports_scores_and_decisions_as_torch(tmp_path):
    from convlens.medical.synthetic import write_findings
    from convlens.predict import load

    csv_path = write_findings(tmp_path / "data", n=160, size=16, seed=0)
    run = tmp_path / "run"
    out = convlens("train", "--data", csv_path, "--task", "multilabel", "--model", "fastnet",
                   "--model-arg", "widths=[8,16,16]", "--batch-size", 32, "--epochs", 2,
                   "--tta", "flip-shift", "--threads", 1, "--run", run)  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = convlens("export", run, "--format", "onnx")
    assert out.returncode == 0, out.stderr
    assert "validation split" in out.stdout
    onnx_file = run / "weights" / "best.onnx"
    saved = saved_decision(run, "label_thresholds")
    onnx_model = OnnxModel(onnx_file)
    assert onnx_model.task == "multilabel" and onnx_model.meta["tta"] == "flip-shift"
    assert onnx_model.thresholds == saved["thresholds"] and len(set(saved["thresholds"])) > 1

    files = sorted(str(p) for p in (csv_path.parent / "images").glob("*.png"))[:40]
    torch_rec, onnx_rec = load(run), load(onnx_file)
    images = torch.stack([torch_rec.preprocess(f) for f in files])
    ours = torch_rec.predict_tensor(images).numpy()  # sigmoid scores, flip-shift averaged
    theirs = onnx_model.predict_proba(images.numpy())
    assert np.abs(ours - theirs).max() <= 1e-4
    assert (onnx_model.positives(images.numpy()) == (ours >= np.float32(saved["thresholds"]))).all()
    rows = {rec: rec.predict_files(files, top_k=1) for rec in (torch_rec, onnx_rec)}
    for a, b in zip(rows[torch_rec], rows[onnx_rec], strict=True):  # as `convlens predict` shows
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert [p["positive"] for p in a["predictions"]] == [
            p["positive"] for p in b["predictions"]
        ]
        assert all(abs(p["score"] - q["score"]) < 1e-4
                   for p, q in zip(a["predictions"], b["predictions"], strict=True))  # fmt: skip
    assert any(len(r["predictions"]) > 1 for r in rows[onnx_rec])  # positives beyond the top-1


def test_embed_run_exports_unit_embeddings_and_its_threshold(tmp_path):
    from sklearn.datasets import load_digits

    from convlens.errors import ConvlensError
    from convlens.faces.recogniser import FaceRecogniser
    from convlens.predict import load

    digits = load_digits()
    seen: dict[int, int] = {}
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        seen[label] = seen.get(label, 0) + 1
        if label < 6 and seen[label] <= 40:  # six "people", 40 images each, 16x16
            img = np.kron(np.round(pixels * 255 / 16).astype(np.uint8), np.ones((2, 2), np.uint8))
            _png(tmp_path / "people" / f"person{label}" / f"{i:04d}.png", img)
    run = tmp_path / "run"
    out = convlens("train", "--data", tmp_path / "people", "--task", "embed", "--epochs", 2,
                   "--embedding-size", 16, "--batch-size", 64, "--lr", 0.02, "--threads", 1,
                   "--run", run)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = export_onnx(run, tmp_path / "faces.onnx")
    assert result["task"] == "embed" and "validation split" in result["source"]
    assert result["max_abs_diff"] <= 1e-4 and result["min_cosine"] > 1 - 1e-6

    torch_rec = FaceRecogniser(run, detect=False)
    onnx_model = OnnxModel(result["onnx"])
    assert onnx_model.threshold == torch_rec.threshold == torch_rec.meta["threshold"]
    files = sorted((tmp_path / "people").rglob("*.png"))[::8]  # 30 images, every person
    images = torch.stack([torch_rec.preprocess(f) for f in files])
    ours, theirs = torch_rec.embed(images), onnx_model.embed(images.numpy())
    assert theirs.shape == (len(files), 16)
    assert np.allclose(np.linalg.norm(theirs, axis=1), 1, atol=1e-5)
    assert np.abs(ours - theirs).max() <= 1e-4
    same = (ours @ ours.T) >= torch_rec.threshold  # every pair's same-person decision
    assert ((theirs @ theirs.T) >= onnx_model.threshold).tolist() == same.tolist()
    assert same.any() and not same.all()
    with pytest.raises(ConvlensError, match="gives embeddings"):
        onnx_model.predict_proba(images.numpy())
    with pytest.raises(ConvlensError, match="embed export gives embeddings"):
        load(result["onnx"])  # predict / serve over identities need the run's weights


def test_anomaly_runs_are_refused_by_name_with_the_reason(tmp_path):
    weights = _weights(tmp_path, "lenet5")
    tensors, meta = load_weights(weights)
    save_weights(weights, tensors, {**meta, "task": "anomaly", "method": "geom", "normal": ["0"]})
    out = convlens("export", weights, "--format", "onnx")
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1
    assert "anomaly runs do not export to ONNX" in out.stderr and "Mahalanobis" in out.stderr
    assert not weights.with_suffix(".onnx").exists()
