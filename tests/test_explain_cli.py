"""`convlens explain` and `convlens report` end to end: an RGB folder model and grayscale digits."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

import convlens
from convlens.cli import main
from convlens.explain import object_scenes
from tests.helpers import convlens as cli

CLASSES = ["plus", "cross", "diamond", "empty"]  # object_scenes' glyph order, then "empty"
QUICK = {"epochs": 4, "batch_size": 32, "lr": 0.05}


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """textbook trained on a folder of 24x24 RGB PNGs: coloured glyphs and a disc distractor."""
    root = tmp_path_factory.mktemp("rgb")
    x, y, _ = object_scenes(720, size=24, channels=3, glyph=7, seed=3)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        folder = root / "data" / ("test" if i >= 600 else "train") / CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return convlens.train(data=str(root / "data"), model="textbook", run=str(root / "run"),
                          **QUICK)  # fmt: skip


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """(textbook, mlp) trained on grayscale 8x8 digits with the same budget."""
    root = tmp_path_factory.mktemp("digits")
    cnn = convlens.train(data="digits", model="textbook", run=str(root / "cnn"), **QUICK)
    mlp = convlens.train(data="digits", model="mlp", run=str(root / "mlp"), **QUICK)
    return cnn, mlp


def _png_ok(path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 100 and im.height >= 50, path


def test_explain_rgb_folder_model_with_images_and_invariance(rgb_run, tmp_path):
    images = sorted((rgb_run.parent / "data" / "test" / "cross").glob("*.png"))[:2]
    out = cli("explain", rgb_run, *images, "--invariance", "--max-shift", "3",
              "--n-images", "120")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "summary.json" in out.stdout and "mlp: accuracy (%) at shifts 0..3 px" in out.stdout
    summary = json.loads((rgb_run / "explain" / "summary.json").read_text())
    assert summary["input"] == [3, 24, 24] and summary["classes"] == sorted(CLASSES)
    for file in summary["figures"].values():
        _png_ok(rgb_run / "explain" / file)
    names = [row["name"] for row in summary["images"]]
    assert names == [p.stem for p in images]
    assert {"sharing", "filters", "patches", "invariance"} <= set(summary["figures"])
    assert [s["name"] for s in summary["hierarchy"]["stages"]] == [
        "features.relu1", "features.relu2", "features.pool2"]  # fmt: skip
    assert len(summary["hierarchy"]["patches"][0]["channels"]) == 4
    assert summary["sharing"]["layers"][0]["in"] == [3, 24, 24]

    inv = summary["invariance"]
    assert inv["model"]["name"] == "textbook" and inv["baseline"]["name"] == "mlp"
    assert inv["baseline"]["trained_for_this"] and inv["n_images"] == 120
    assert inv["model"]["curves"]["shift"]["pixels"] == [0, 1, 2, 3]
    # the baseline is trained like the run: same data, epochs, batch size, learning rate
    run_cfg = yaml.safe_load((rgb_run / "config.yaml").read_text())
    mlp_cfg = yaml.safe_load((rgb_run / "mlp-baseline" / "config.yaml").read_text())
    same = ("data", "epochs", "batch_size", "lr", "schedule", "translate", "seed")
    assert mlp_cfg["model"] == "mlp" and all(mlp_cfg[k] == run_cfg[k] for k in same)

    out = cli("report", rgb_run)
    assert out.returncode == 0, out.stderr
    page = (rgb_run / "report.html").read_text()
    assert "Training patches that excite" in page and "difference</th>" in page

    mtime = (rgb_run / "mlp-baseline" / "weights" / "best.safetensors").stat().st_mtime
    assert (
        _main("explain", rgb_run, "--invariance", "--out", tmp_path / "x", "--n-images", "60") == 0
    )
    assert (rgb_run / "mlp-baseline" / "weights" / "best.safetensors").stat().st_mtime == mtime
    assert not (rgb_run / "mlp-baseline2").exists()  # the baseline is reused, not retrained


def test_explain_grayscale_digits_with_a_layer_and_a_baseline(digits_runs, tmp_path):
    cnn, mlp = digits_runs
    out = cli("explain", cnn, "--out", tmp_path / "ex", "--layer", "features.relu2",
              "--invariance", "--baseline", mlp, "--max-shift", "2")  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "ex" / "summary.json").read_text())
    assert summary["input"] == [1, 8, 8] and len(summary["images"]) == 8  # one per class
    assert all(row["gradcam_peak"] is not None for row in summary["images"])
    inv = summary["invariance"]
    assert (
        inv["baseline"]["weights"].startswith(str(mlp)) and not inv["baseline"]["trained_for_this"]
    )
    acc = inv["model"]["curves"]["shift"]["accuracy"]
    assert len(acc) == 3 and acc[0] > 0.8
    assert not (cnn / "mlp-baseline").exists()
    assert _main("report", cnn) == 0
    assert (cnn / "report.html").stat().st_size > 10_000


def test_explain_an_mlp_has_saliency_but_no_filters(digits_runs, tmp_path):
    _, mlp = digits_runs
    assert _main("explain", mlp, "--out", tmp_path / "ex") == 0
    summary = json.loads((tmp_path / "ex" / "summary.json").read_text())
    assert summary["sharing"]["layers"] == [] and summary["hierarchy"]["stages"] == []
    assert "filters" not in summary["figures"] and "patches" not in summary["figures"]
    assert all(row["gradcam_peak"] is None for row in summary["images"])
    _png_ok(tmp_path / "ex" / summary["images"][0]["gradcam"])


def _main(*args) -> int:
    """The command line in this process (the same code path as the installed `convlens`)."""
    return main([str(a) for a in args])


def _one_line_error(capsys, args: tuple, needle: str) -> None:
    assert _main(*args) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert needle in lines[0], lines[0]


def test_explain_errors_are_one_line(rgb_run, digits_runs, tmp_path, capsys):
    cnn, _ = digits_runs
    loose = tmp_path / "loose.safetensors"
    loose.write_bytes((cnn / "weights" / "best.safetensors").read_bytes())
    for args, needle in [
        (("explain", cnn, "--layer", "features.conv9"), "no layer 'features.conv9'"),
        (("explain", cnn, "--invariance", "--baseline", rgb_run), "trained for other classes"),
        (("explain", tmp_path / "nope"), "nope"),
        (("explain", cnn, tmp_path / "missing.png"), "missing.png"),
        (("report", tmp_path / "nope"), "nope"),
        (("report", loose), "needs a run folder"),
    ]:
        _one_line_error(capsys, (*args, "--out", tmp_path / "o") if args[0] == "explain" else args,
                        needle)  # fmt: skip
    assert not (tmp_path / "o").exists()  # inputs are checked before anything is written
