"""Anomaly maps wired in: `--task anomaly --method patchcore|padim` trained (or fitted on given
weights with --epochs 0), saved, predicted, exported, served and reported on a generated
brick-wall set with pasted defects and masks."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import convlens
from convlens.data import mvtec
from convlens.errors import ConfigError, ModelError
from convlens.medical import defects, masks
from convlens.runs.weights import load_weights, save_weights
from tests.helpers import convlens as cli
from tests.helpers import launch_chromium, open_page, start_server

SIZE = 32
FAST = ("--epochs", "1", "--batch-size", "32", "--threads", "1")
# measured with this set and run (seeds 0, 1, 2 of both): pixel AUROC of the predicted map PNGs
# 0.915 / 0.890 / 0.900, within the defective images 0.80 / 0.73 / 0.77, each defective image's
# mask against another one's map 0.55 / 0.46 / 0.51; PRO 0.72 / 0.68 / 0.68
PIXEL_AUROC, WITHIN, SHUFFLED, PRO = 0.85, 0.68, 0.62, 0.55


@pytest.fixture(scope="module")
def brick(tmp_path_factory):
    """40 normal training images, 16 val and 30 test ones, half with a defect and its mask."""
    root = defects.write_defects(tmp_path_factory.mktemp("brick") / "brick", "brick", SIZE,
                                 (40, 16, 30))  # fmt: skip
    return {"root": root, "test": mvtec.read_mask_set(root, "test")}


@pytest.fixture(scope="module")
def run(brick, tmp_path_factory):
    """A PatchCore run trained through the command line: one epoch of GEOM, then the bank."""
    out = tmp_path_factory.mktemp("runs") / "patchcore"
    r = cli("train", "--data", brick["root"], "--task", "anomaly", "--method", "patchcore",
            *FAST, "--run", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return {"dir": out, "stdout": r.stdout}


@pytest.fixture(scope="module")
def predicted(run, brick, tmp_path_factory):
    """`convlens predict RUN test/ --json` run in a fresh folder: its rows by file, the folder."""
    cwd = tmp_path_factory.mktemp("predict")
    r = cli("predict", run["dir"], brick["root"] / "test", "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return {row["file"]: row for row in json.loads(r.stdout)}, cwd


@pytest.fixture(scope="module")
def onnx_file(run, tmp_path_factory):
    from convlens.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "patchcore.onnx"
    result = export_onnx(run["dir"], out)  # the parity check against torch runs inside
    assert result["max_abs_diff"] <= 1e-4 and result["images"] == 16
    return out


def grey(data: bytes) -> np.ndarray:
    """A PNG's pixels as float (H, W)."""
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "L"
        return np.asarray(im, np.float64)


def test_training_fits_the_bank_and_measures_maps_against_the_masks(run, brick):
    metrics = json.loads((run["dir"] / "metrics.json").read_text())
    assert metrics["method"] == "patchcore" and metrics["normal"] == ["good"]  # a mask set's
    assert metrics["masked_images"] == int(brick["test"].anomalous.sum())
    assert metrics["pixel_auroc"] > PIXEL_AUROC and metrics["pro"] > PRO
    assert metrics["auroc"] > 0.85 and "auroc_geom" in metrics  # the backbone's own score too
    assert "validation images" in metrics["calibration"]["rule"]
    assert f"pixel AUROC {metrics['pixel_auroc']:.4f}" in run["stdout"]
    page = (run["dir"] / "report.html").read_text()
    assert "method: PatchCore patch scores" in page and "ground-truth mask" in page
    maps = page.split('<section id="maps">')[1].split("</section>")[0]
    assert maps.count('<figure class="mistake">') == 8  # 6 defective, 2 normal images
    assert f"pixel AUROC</td><td>{metrics['pixel_auroc']:.3f}" in page


def test_predict_json_writes_maps_that_find_the_pasted_defects(predicted, brick):
    rows, cwd = predicted
    test = brick["test"]
    maps = []
    for f in test.files:
        row = rows[f]
        assert row["map"].startswith("maps/") and row["map"].endswith("_map.png")
        assert "map_png" not in row and row["anomaly"] == (row["score"] >= 0.5)
        maps.append(grey((cwd / row["map"]).read_bytes()))
        assert maps[-1].shape == (SIZE, SIZE)
        assert maps[-1].max() <= 255 * row["score"] + 1  # the map never passes the image score
    maps, truth, bad = np.stack(maps), test.masks.numpy(), test.anomalous.numpy()
    assert masks.pixel_auroc(truth, maps) > PIXEL_AUROC
    assert masks.pixel_auroc(truth[bad], maps[bad]) > WITHIN  # where in each defective image
    assert masks.pixel_auroc(truth[bad], np.roll(maps[bad], 1, axis=0)) < SHUFFLED


def test_the_bank_round_trips_through_the_weights_file(run, predicted, brick):
    from convlens.tasks.loading import load_run

    weights = run["dir"] / "weights" / "best.safetensors"
    tensors, meta = load_weights(weights)
    saved = meta["patch"]
    assert saved["settings"]["coreset"] == 0.1
    bank = tensors["patch.bank"]  # (M, D): a tenth of the 40 images' 8 x 8 patches
    assert list(bank.shape) == saved["shapes"]["bank"] and len(bank) == 256 == round(0.1 * 2560)
    loaded = load_run(weights)
    own = loaded.net.fitted().scorer
    assert torch.equal(own.bank, bank) and torch.equal(own.centre, tensors["patch.centre"])
    rows, _ = predicted
    scores = loaded.task.scores(loaded, brick["test"].images)  # (N, 1 + H * W), in process
    cli_scores = torch.tensor([rows[f]["score"] for f in brick["test"].files])
    torch.testing.assert_close(scores[:, 0], cli_scores, rtol=0, atol=1e-6)
    moved = {**tensors, "patch.bank": bank.flip(0)[:128]}  # another bank changes the scores
    settings = {**saved["settings"], "bank_size": 128}
    shapes = {**saved["shapes"], "bank": [128, bank.shape[1]]}
    meta.extras["patch"] = {"settings": settings, "shapes": shapes}
    save_weights(run["dir"] / "half.safetensors", moved, meta)
    half = load_run(run["dir"] / "half.safetensors")
    assert not torch.equal(half.task.scores(half, brick["test"].images), scores)


def test_crafted_patch_metadata_is_refused_in_one_line(run, brick, tmp_path, capsys):
    from convlens.cli import main
    from convlens.tasks.loading import load_run

    tensors, meta = load_weights(run["dir"] / "weights" / "best.safetensors")
    header = meta.to_dict()
    probe = brick["test"].files[0]
    crafted = tmp_path / "bogus.safetensors"
    save_weights(crafted, tensors, {**header, "method": "bogus"})
    assert main(["predict", str(crafted), probe]) == 1  # the command line, in this process
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(crafted) in err
    assert "metadata field 'method' must be one of mahalanobis, geom, patchcore, padim" in err
    shapes = header["patch"]["shapes"]
    cases = {
        "patch.shapes": {**header["patch"], "shapes": {**shapes, "bank": [9, 192]}},
        "patch.settings": {**header["patch"], "settings": {**header["patch"]["settings"],
                                                           "evil": 1}},
        "patch.settings.reduce": {**header["patch"], "settings": {
            **header["patch"]["settings"], "reduce": "pickle"}},
    }  # fmt: skip
    for field, patch in cases.items():
        save_weights(crafted, tensors, {**header, "patch": patch})
        with pytest.raises(ModelError, match=f"metadata field '{field}'") as e:
            load_run(crafted)
        assert "\n" not in str(e.value) and str(crafted) in str(e.value)
    save_weights(crafted, tensors, {k: v for k, v in header.items() if k != "patch"})
    with pytest.raises(ModelError, match="unexpected 'patch.bank'"):  # the bank, undeclared
        load_run(crafted)


def test_onnx_gives_the_same_scores_and_maps_and_serves_them(onnx_file, predicted, brick):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    outputs = session.get_outputs()
    assert [o.name for o in outputs] == ["score", "map"] and outputs[1].shape[1:] == [SIZE, SIZE]
    rows, cwd = predicted
    files = brick["test"].files
    theirs = convlens.load(str(onnx_file)).predict_files(files)  # the ONNX engine
    for f, row in zip(files, theirs, strict=True):
        assert row["score"] == pytest.approx(rows[f]["score"], abs=1e-4)
        diff = grey(base64.b64decode(row["map_png"])) - grey((cwd / rows[f]["map"]).read_bytes())
        assert np.abs(diff).max() <= 1  # one grey level: 1e-4 of the scale, rounded
    proc, url = start_server(onnx_file)
    try:
        assert httpx.get(f"{url}/model").json()["engine"] == "onnxruntime"
        probe = next(f for f in files if "/good/" not in f)
        reply = httpx.post(f"{url}/predict", files={"file": Path(probe).read_bytes()}).json()
        assert reply["score"] == pytest.approx(rows[probe]["score"], abs=1e-4)
        served = grey(base64.b64decode(reply["map_png"]))
        assert np.abs(served - grey((cwd / rows[probe]["map"]).read_bytes())).max() <= 1
        if shutil.which("chromium"):  # the page shows the map it was sent
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                browser = launch_chromium(p)
                page, errors = open_page(browser, url + "/", height=700)
                page.wait_for_function(
                    "document.getElementById('about').textContent.includes('anomaly')"
                )
                page.set_input_files("#file", probe)
                page.wait_for_selector("#amap-box:not([hidden])")
                src = page.get_attribute("#amap", "src")
                browser.close()
            assert src.startswith("data:image/png;base64,") and not errors, errors
            assert np.abs(grey(base64.b64decode(src.split(",")[1])) - served).max() == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_padim_from_the_python_api_keeps_its_gaussians(brick, tmp_path):
    out = convlens.train(data=str(brick["root"]), task="anomaly", method="padim", epochs=1,
                         batch_size=32, threads=1, run=str(tmp_path / "padim"))  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "padim" and metrics["pixel_auroc"] > PIXEL_AUROC
    tensors, meta = load_weights(out / "weights" / "best.safetensors")
    grid = meta["patch"]["settings"]["grid"]
    assert tensors["patch.mean"].shape == (grid[0] * grid[1], 100)  # 100 random channels
    assert tensors["patch.precision"].shape == (grid[0] * grid[1], 100, 100)
    assert tensors["patch.features.channels"].dtype == torch.int64
    rec = convlens.load(str(out))
    answer = rec.predict(brick["test"].files[0])
    assert set(answer) == {"score", "anomaly", "threshold", "map_png"}


def test_padim_fitted_on_a_patchcore_run_keeps_its_network_bit_for_bit(run, brick, tmp_path):
    out = tmp_path / "padim"
    r = cli("train", "--data", brick["root"], "--task", "anomaly", "--method", "padim", "--init",
            run["dir"], "--epochs", "0", "--threads", "1", "--run", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "epochs 0: nothing trains" in r.stdout
    source, _ = load_weights(run["dir"] / "weights" / "best.safetensors")
    tensors, meta = load_weights(out / "weights" / "best.safetensors")
    network = [k for k in source if k.startswith("net.")]  # the 72-way GEOM head too
    assert network and all(torch.equal(tensors[k], source[k]) for k in network)
    assert meta["method"] == "padim" and "patch.mean" in tensors and "patch.bank" not in tensors
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["auroc"] > 0.85 and metrics["pixel_auroc"] > PIXEL_AUROC
    assert f"test: AUROC {metrics['auroc']:.4f}" in r.stdout  # the final line
    assert not (out / "results.csv").exists()  # no epoch: the report says so
    assert "no results.csv" in (out / "report.html").read_text()
    answer = convlens.load(str(out)).predict(brick["test"].files[0])
    assert set(answer) == {"score", "anomaly", "threshold", "map_png"}


@pytest.mark.parametrize(
    "flags",
    [
        ("--task", "anomaly", "--method", "patchcore"),  # no weights to fit on
        ("--task", "anomaly", "--init", "RUN"),  # GEOM's scores need training
        ("--task", "classify", "--init", "RUN"),
    ],
)
def test_epochs_0_without_weights_or_a_patch_method_is_refused_in_one_line(
    flags, run, brick, tmp_path, capsys
):
    from convlens.cli import main

    out = tmp_path / "refused"
    given = [str(run["dir"]) if f == "RUN" else f for f in flags]
    args = ["train", "--data", str(brick["root"]), *given, "--epochs", "0", "--run", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not out.exists()
    assert "setting 'epochs' 0 is only for fitting patchcore or padim on given weights" in err


def test_geom_stays_the_default_and_saves_no_patch_tensors():
    from convlens.config import make_config
    from convlens.data import load_dataset
    from convlens.medical.anomaly import AnomalyTask
    from convlens.medical.anomaly_score import AnomalyNet
    from convlens.models import create_model

    cfg = make_config(overrides={"task": "anomaly", "data": "digits"})
    assert cfg.method == "geom" and cfg.anomaly_method == "mahalanobis"
    task = AnomalyTask(cfg)
    ds = task.prepare(load_dataset("digits"))
    meta = task.meta(ds)
    assert meta["method"] == "mahalanobis" and set(meta) == {"normal", "method", "transformations"}
    net = create_model("fastnet", in_channels=1, num_classes=72, image_size=8)
    wrapped = AnomalyTask.wrap(net, meta)
    assert type(wrapped) is AnomalyNet
    assert {k for k in wrapped.state_dict() if not k.startswith("net.")} == {"centers", "precision"}
    with pytest.raises(ConfigError, match="setting 'method' must be one of geom, patchcore, padim"):
        make_config(overrides={"task": "anomaly", "method": "knn"})
