"""TorchScript export: every model traces with ONNX's parity check, the metadata rides in the
archive and is checked like a weights header, and predict and serve take the .pt file."""

import json

import httpx
import numpy as np
import pytest
import torch

import convlens as api
from convlens.errors import ModelError
from convlens.export import export_torchscript
from convlens.models import create_model
from convlens.runs.weights import save_weights
from tests.helpers import convlens_warm as convlens
from tests.helpers import start_server

META = {
    "task": "classify", "classes": [str(i) for i in range(10)],
    "input": {"channels": 1, "height": 28, "width": 28},
    "normalize": {"mean": [0.3], "std": [0.3]}, "tta": "flip-shift",
}  # fmt: skip


def _weights(tmp_path, name: str):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=10, image_size=(28, 28)).eval()
    path = tmp_path / f"{name}.safetensors"
    save_weights(path, model.state_dict(), {**META, "model": {"name": name, "args": {}}})
    return path


# one of each kind (data-whitened stem + BN, residual, plain conv): ONNX checks every model
@pytest.mark.parametrize("name", ["fastnet", "resnet8", "textbook"])
def test_models_of_each_kind_trace_with_parity(tmp_path, name):
    weights = _weights(tmp_path, name)
    result = export_torchscript(weights, tmp_path / f"{name}.pt")
    assert result["images"] == 100 and result["max_abs_diff"] <= 1e-4
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (7, 1, 28, 28),
                                                                dtype=np.uint8))  # fmt: skip
    archive, torch_rec = api.load(result["torchscript"]), api.load(weights)
    assert archive.meta.model.name == name
    ours = archive.predict_tensor(images)  # a batch size the trace never saw
    assert ours.shape == (7, 10)
    assert torch.allclose(ours, torch_rec.predict_tensor(images), atol=1e-4)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("torchscript") / "run"
    out = convlens("train", "--data", "digits", "--model", "textbook", "--epochs", "1",
                   "--batch-size", "128", "--amp", "off", "--run", run)  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = convlens("export", run, "--format", "torchscript")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"wrote {run / 'weights' / 'best.pt'}; on 100 digits validation "
                                 "split images the largest score difference")  # fmt: skip
    return run


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digits")
    for i, img in enumerate(load_digits().images[-4:]):
        Image.fromarray((img * 255 / 16).astype(np.uint8)).save(folder / f"d{i}.png")
    return sorted(folder.iterdir())


def test_the_archive_holds_the_run_metadata(run):
    extra = {"convlens.json": ""}
    torch.jit.load(str(run / "weights" / "best.pt"), _extra_files=extra)
    meta = json.loads(extra["convlens.json"])
    assert meta["classes"] == [str(i) for i in range(10)] and meta["task"] == "classify"
    assert meta["exported_from"] == str(run / "weights" / "best.safetensors")
    assert "calibration" in meta  # the temperature folded into the weights, recorded


def test_predict_takes_the_archive(run, pngs):
    rows = {}
    for target in (run, run / "weights" / "best.pt"):
        out = convlens("predict", target, *pngs, "--json", "--top-k", "10")
        assert out.returncode == 0, out.stderr
        rows[target.name] = json.loads(out.stdout)
    for a, b in zip(rows["run"], rows["best.pt"], strict=True):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert [p["score"] for p in a["predictions"]] == pytest.approx(
            [p["score"] for p in b["predictions"]], abs=1e-5)  # fmt: skip


def test_serve_takes_the_archive(run, pngs):
    proc, url = start_server(run / "weights" / "best.pt")
    try:
        assert httpx.get(f"{url}/model").json()["engine"] == "torchscript"
        reply = httpx.post(f"{url}/predict", files={"file": pngs[0].read_bytes()}).json()
    finally:
        proc.kill()
        proc.wait()
    expected = api.load(run).predict(pngs[0])
    assert reply["predictions"][0]["label"] == expected[0]["label"]
    assert reply["predictions"][0]["score"] == pytest.approx(expected[0]["score"], abs=1e-5)


def _traced(extra: dict | None, tmp_path):
    model = create_model("textbook", in_channels=1, num_classes=10, image_size=(28, 28)).eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 28, 28)), str(path),
                   _extra_files=extra or {})  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (None, "not a convlens model (no convlens.json in the archive)"),
        ({"convlens.json": "{not json"}, "convlens metadata is not valid JSON"),
        ({"convlens.json": json.dumps({**META, "classes": ["a", "b"],
                                       "model": {"name": "textbook", "args": {}}})},
         "the network gives (1, 10) per image, but the metadata says (1, 2)"),
        ({"convlens.json": json.dumps({**META, "input": {"channels": 3, "height": 28,
                                                         "width": 28},
                                       "normalize": {"mean": [0.3] * 3, "std": [0.3] * 3},
                                       "model": {"name": "textbook", "args": {}}})},
         "the network does not run on (1, 3, 28, 28) images"),
    ],
)  # fmt: skip
def test_archive_metadata_is_checked_in_one_line(tmp_path, extra, message):
    path = _traced(extra, tmp_path)
    with pytest.raises(ModelError) as e:
        api.load(path)
    assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value)


def test_not_an_archive_is_one_line(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match=r"model\.pt: not a loadable TorchScript archive"):
        api.load(path)
