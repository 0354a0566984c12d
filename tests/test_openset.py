"""Open-set rejection (--reject): the val threshold saved with the weights, "unknown" for a
held-out class through predict --json, serve, the Python API, the NumPy engine and ONNX."""

import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from convlens.runs.weights import load_weights, save_weights
from tests.helpers import convlens_warm as convlens
from tests.helpers import start_server

KNOWN = 5  # digits 0-4 are the classes; 8s are the held-out class


def _digits():
    """sklearn's digits at 32 px (uint8 (N, 32, 32)) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron((d.images * 255 / 16).astype(np.uint8), np.ones((1, 4, 4), np.uint8))
    return x, d.target


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One textbook run on digits 0-4 (3 epochs, ~99% val), rejecting by energy; held-out 8s."""
    root = tmp_path_factory.mktemp("openset")
    x, y = _digits()
    rng = np.random.default_rng(0)
    known = rng.permutation(np.flatnonzero(y < KNOWN))
    a, b = 450, 580  # 450 train, 130 val, the rest test
    parts = {"train": known[:a], "val": known[a:b], "test": known[b:]}
    arrays = {f"{s}_images": x[i] for s, i in parts.items()}
    arrays.update({f"{s}_labels": y[i, None] for s, i in parts.items()})
    np.savez(root / "known.npz", **arrays)
    held = []
    for n, img in enumerate(x[y == 8][:30]):
        held.append(root / "held" / f"eight{n}.png")
        held[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(held[-1])
    run = root / "run"
    out = convlens("train", "--data", root / "known.npz", "--model", "textbook", "--epochs", "3",
                   "--reject", "energy", "--run", run)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return {"root": root, "run": run, "held": held, "val": x[parts["val"]], "out": out.stdout}


def _rows(target, paths, *extra):
    out = convlens("predict", target, *paths, "--json", "--top-k", "2", *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_threshold_is_saved_and_keeps_the_target_share_of_val(trained):
    import convlens as api

    _, meta = load_weights(trained["run"] / "weights" / "best.safetensors")
    point = meta.decisions.openset
    assert point["score"] == "energy" and point["target_tpr"] == 0.95
    rec = api.load(trained["run"])
    import torch

    scores = rec.predict_tensor(torch.from_numpy(trained["val"])[:, None])  # (N, K + 1)
    assert scores.shape == (130, KNOWN + 1)
    kept = float((scores[:, -1] >= point["threshold"]).float().mean())
    assert 0.95 <= kept <= 0.95 + 2 / 130 and kept == pytest.approx(point["val_tpr"])
    metrics = json.loads((trained["run"] / "metrics.json").read_text())
    assert metrics["openset"]["threshold"] == point["threshold"]
    assert 0.8 <= metrics["openset"]["kept"] <= 1  # the test split is in-distribution too
    assert "known at energy >= " in trained["out"]  # the console's summary line
    assert "kept as known" in (trained["run"] / "report.html").read_text()


def test_a_held_out_class_is_unknown_in_predict_serve_the_api_and_numpy(trained):
    import convlens as api

    rows = _rows(trained["run"], trained["held"])
    unknown = [r["unknown"] for r in rows]
    assert sum(unknown) >= len(rows) // 2  # most 8s fall below the threshold: not a 0-4
    lowest = min(rows, key=lambda r: r["openset"]["value"])
    assert lowest["unknown"] and lowest["openset"]["value"] < lowest["openset"]["threshold"]
    assert lowest["openset"]["score"] == "energy" and len(lowest["predictions"]) == 2
    held = [str(p) for p in trained["held"]]
    numpy_rows = api.load(trained["run"], engine="numpy").predict_files(held, top_k=2)
    assert [r["unknown"] for r in numpy_rows] == unknown
    for a, b in zip(rows, numpy_rows, strict=True):
        assert a["openset"]["value"] == pytest.approx(b["openset"]["value"], rel=1e-4, abs=1e-5)
    answer = api.load(trained["run"]).predict(lowest["file"])
    assert (
        answer["unknown"] and answer["predictions"][0]["label"] == lowest["predictions"][0]["label"]
    )
    text = convlens("predict", trained["run"], lowest["file"])
    assert "unknown (energy" in text.stdout
    proc, url = start_server(trained["run"])
    try:
        with open(lowest["file"], "rb") as f:
            reply = httpx.post(f"{url}/predict", files={"file": f.read()}).json()
        verdict = _page_verdict(url, lowest["file"]) if shutil.which("chromium") else "Unknown"
    finally:
        proc.kill()
        proc.wait()
    assert reply["unknown"] and reply["openset"]["threshold"] == lowest["openset"]["threshold"]
    assert verdict == "Unknown"


def _page_verdict(url: str, image) -> str:
    """The verdict serve's page shows for an uploaded image, in a real browser."""
    from playwright.sync_api import sync_playwright

    from tests.helpers import launch_chromium, open_page

    with sync_playwright() as p:
        browser = launch_chromium(p)
        page, errors = open_page(browser, url + "/")
        page.set_input_files("#file", str(image))
        page.wait_for_selector(".verdict")
        text = page.locator(".verdict").first.text_content()
        browser.close()
    assert not errors, errors
    return text


def test_mahalanobis_decides_the_same_in_torch_and_onnx(trained):
    import convlens as api
    from convlens.data import load_dataset
    from convlens.errors import ConvlensError
    from convlens.export import OnnxModel, export_onnx
    from convlens.tasks.loading import load_run

    run = trained["root"] / "maha"
    shutil.copytree(trained["run"], run)
    loaded = load_run(run, reject="mahalanobis")  # as evaluate_run passes a caller's setting
    ds = load_dataset(str(trained["root"] / "known.npz"))
    loaded.task.evaluate(loaded, ds, "test", write=True)  # the Gaussians fitted, the threshold
    tensors, meta = load_weights(run / "weights" / "best.safetensors")
    assert meta.decisions.openset["score"] == "mahalanobis"
    assert tensors["openset_means"].shape[0] == KNOWN  # the class means, saved with the weights
    assert export_onnx(run)["max_abs_diff"] <= 1e-4
    held = [str(p) for p in trained["held"]]
    torch_rows = api.load(run).predict_files(held, top_k=2)
    onnx_rows = _rows(run / "weights" / "best.onnx", held)
    assert [r["unknown"] for r in onnx_rows] == [r["unknown"] for r in torch_rows]
    assert sum(r["unknown"] for r in torch_rows) >= len(torch_rows) // 2
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert a["openset"]["value"] == pytest.approx(b["openset"]["value"], rel=1e-4)
        assert a["openset"]["threshold"] == b["openset"]["threshold"]
    eights = np.stack([np.asarray(Image.open(p))[None] for p in held])  # (N, 1, 32, 32)
    assert OnnxModel(run / "weights" / "best.onnx").unknown(eights).tolist() == [
        r["unknown"] for r in torch_rows
    ]
    with pytest.raises(ConvlensError, match="torch engine"):
        api.load(run, engine="numpy")
    from convlens.export import export_torchscript

    with pytest.raises(ConvlensError, match="does not export to TorchScript"):
        export_torchscript(run)
    assert not (run / "weights" / "best.pt").exists()  # refused before anything was written


def test_without_a_threshold_predict_answers_as_before(trained, tmp_path):
    import convlens as api

    tensors, meta = load_weights(trained["run"] / "weights" / "best.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_weights(plain, tensors, meta.replace(decisions=type(meta.decisions)()))
    rows = _rows(plain, trained["held"][:3])
    before = api.load(trained["run"]).predict_files([str(p) for p in trained["held"][:3]], top_k=2)
    assert all(set(r) == {"file", "predictions"} for r in rows)
    assert [r["predictions"] for r in rows] == [r["predictions"] for r in before]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--reject", "maybe"), "setting 'reject' must be one of msp, energy, mahalanobis, off"),
        (("--reject", "energy", "--task", "anomaly"), "setting 'reject' is for classifiers"),
    ],
)
def test_a_bad_setting_is_one_line(tmp_path, flags, says):
    out = convlens("train", "--data", "digits", "--epochs", "1", "--run", tmp_path / "r", *flags)
    assert out.returncode != 0 and says in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
