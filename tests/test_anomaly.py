"""Anomaly detection: GEOM's 72 transformations, training on normal digits only, predict, errors."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from convlens.data import load_dataset
from convlens.medical import geom
from convlens.medical.anomaly import AnomalyTask
from convlens.runs.weights import load_weights
from tests.helpers import convlens_warm as convlens

TRAIN = ("--task", "anomaly", "--normal", "0", "--anomaly-method", "mahalanobis")
# ~126 images of the digit: small batches and no lookahead averaging, or too few steps to learn
FAST = ("--epochs", "30", "--batch-size", "32", "--lr", "0.3", "--ema", "0", "--threads", "1")


def asymmetric_image(size: int = 8) -> torch.Tensor:
    """(1, 1, size, size) uint8 noise: no flip, shift or rotation maps it onto itself."""
    return torch.randint(0, 256, (1, 1, size, size), generator=torch.Generator().manual_seed(1))


def write_split(root, split, images, labels) -> None:
    for i, (x, y) in enumerate(zip(images, labels, strict=True)):
        folder = root / split / str(int(y))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[0].numpy()).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """scikit-learn's digits as PNG folders: train/, val/, test/ with a folder per digit."""
    root = tmp_path_factory.mktemp("digits")
    ds = load_dataset("digits")
    for name in ("train", "val", "test"):
        write_split(root, name, ds.split(name).images, ds.split(name).labels)
    return root


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    """An anomaly run trained on the digit 0 alone."""
    out = tmp_path_factory.mktemp("runs") / "zero"
    r = convlens("train", "--data", digits, *TRAIN, *FAST, "--run", out)
    assert r.returncode == 0, r.stderr
    return out


def test_72_transformations_are_distinct_and_match_their_definition():
    x = asymmetric_image()
    every = geom.apply_all(x, geom.index_maps(8))  # (72, 1, 8, 8)
    assert len({tuple(v.flatten().tolist()) for v in every}) == geom.COUNT
    one_by_one = geom.apply(x.expand(72, -1, -1, -1), torch.arange(72), geom.index_maps(8))
    assert torch.equal(one_by_one, every)
    # k = ((flip * 3 + ty) * 3 + tx) * 4 + rot, shifts (-t, 0, +t), reflect fill, rot90 last
    t, img = geom.shift_for(8), x[0, 0].numpy()
    padded = np.pad(img, t, mode="reflect")
    for flip in (0, 1):
        base = np.pad(img[:, ::-1], t, mode="reflect") if flip else padded
        for ty, dy in enumerate((-t, 0, t)):
            for tx, dx in enumerate((-t, 0, t)):
                moved = base[t - dy : t - dy + 8, t - dx : t - dx + 8]
                for rot in range(4):
                    k = ((flip * 3 + ty) * 3 + tx) * 4 + rot
                    assert np.array_equal(every[k, 0].numpy(), np.rot90(moved, rot)), k


def test_training_target_is_the_applied_transformation(tmp_path):
    from convlens.config import make_config

    task = AnomalyTask(make_config(overrides={"task": "anomaly", "data": "digits"}))
    task.prepare(load_dataset("digits"))
    images = torch.randint(0, 256, (300, 1, 8, 8), generator=torch.Generator().manual_seed(2))
    x, target = task.batch(images, torch.zeros(300, dtype=torch.long), torch.Generator())
    every = geom.apply_all(images, geom.index_maps(8)).view(300, 72, 1, 8, 8)
    assert torch.equal(x, every[torch.arange(300), target])
    assert target.unique().numel() > 60  # all kinds drawn, not one fixed transformation
    again, _ = task.batch(images, torch.zeros(300, dtype=torch.long), torch.Generator())
    assert torch.equal(x, again)  # the hook's randomness is the generator's


def test_predict_scores_anomalies_higher_than_normal_digits(run, digits):
    files = sorted((digits / "test").rglob("*.png"))
    r = convlens("predict", run, digits / "test", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["file"]: row for row in json.loads(r.stdout)}
    scores = np.array([rows[str(f)]["score"] for f in files])
    anomalous = np.array([f.parent.name != "0" for f in files])
    assert ((scores >= 0) & (scores <= 1)).all()
    assert all(rows[str(f)]["anomaly"] == (rows[str(f)]["score"] >= 0.5) for f in files)
    auroc = roc_auc_score(anomalous, scores)
    assert auroc > 0.8, auroc
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["auroc"] == pytest.approx(auroc, abs=0.02)  # ties where sigmoid saturates
    again = convlens("evaluate", run)  # the run's data again: the same AUROC, one line
    assert again.returncode == 0, again.stderr
    assert f"AUROC {metrics['auroc']:.4f}" in again.stdout
    text = convlens("predict", run, files[0], files[-1])
    assert text.returncode == 0, text.stderr
    assert "anomaly score" in text.stdout and ("normal" in text.stdout or "ANOMAL" in text.stdout)


def test_report_shows_the_metrics_the_threshold_the_figures_and_the_worst_cases(run):
    metrics = json.loads((run / "metrics.json").read_text())
    page = (run / "report.html").read_text()
    assert "normal: 0" in page and "method: Mahalanobis" in page
    assert f"AUROC (Mahalanobis)</td><td>{metrics['auroc']:.3f}</td>" in page
    assert f"AUROC (GEOM)</td><td>{metrics['auroc_geom']:.3f}</td>" in page  # both scores
    low, high = metrics["detection"]["roc_auc"]["ci"]
    assert f"{low:.3f} &ndash; {high:.3f}" in page  # the bootstrap CI of metrics.json
    assert f"at least {metrics['calibration']['threshold']:.4g}." in page
    at_test = f"<td>test</td><td>{metrics['sensitivity']:.3f}</td><td>{metrics['specificity']:.3f}"
    assert at_test in page
    for name in ("roc_pr.png", "anomaly_scores.png", "curves.png"):
        data = (run / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, name
        Image.open(run / name).verify()
        assert base64.b64encode(data).decode() in page, name  # the page shows this very file
    # gallery: the 8 normal digits scored highest (descending), the 8 anomalies scored lowest
    normal, anomalies = page.split("<h3>Normal images scored highest</h3>")[1].split(
        "<h3>Anomalies scored lowest</h3>"
    )
    tiles = [re.findall(r"score <b>([\d.]+)</b> \(([a-z ]+)\).*?class (\w+)</span>", part)
             for part in (normal, anomalies)]  # fmt: skip
    assert [len(t) for t in tiles] == [8, 8]
    assert all(cls == "0" for *_, cls in tiles[0]) and all(cls != "0" for *_, cls in tiles[1])
    scores = [[float(s) for s, *_ in t] for t in tiles]
    assert scores[0] == sorted(scores[0], reverse=True) and scores[1] == sorted(scores[1])
    confusion = metrics["detection"]["confusion"]  # flagged: score >= 0.5, as in the metrics
    assert sum(said == "false alarm" for _, said, _ in tiles[0]) == min(8, confusion["fp"])
    assert sum(said == "missed" for _, said, _ in tiles[1]) == min(8, confusion["fn"])


def test_threshold_and_weights_never_depend_on_the_test_split(run, digits, tmp_path):
    other = tmp_path / "digits"
    shutil.copytree(digits / "train", other / "train")
    shutil.copytree(digits / "val", other / "val")
    ds = load_dataset("digits")
    write_split(other, "test", 255 - ds.test.images[:150], ds.test.labels[:150])  # other test
    r = convlens("train", "--data", other, *TRAIN, *FAST, "--run", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    (a, meta_a), (b, meta_b) = (load_weights(d / "weights/best.safetensors")
                                for d in (run, tmp_path / "run"))  # fmt: skip
    assert meta_a["calibration"] == meta_b["calibration"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (run, tmp_path / "run"))
    assert (first["n"], second["n"]) == (270, 150)  # each run measured its own test split


def test_unknown_normal_class_is_named():
    r = convlens("train", "--data", "digits", "--task", "anomaly", "--normal", "0,cat")
    assert r.returncode != 0
    assert "'cat'" in r.stderr and "0, 1, 2" in r.stderr


def test_non_square_images_are_refused(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(np.full((8, 10), 40 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    r = convlens("train", "--data", tmp_path, "--task", "anomaly")
    assert r.returncode != 0
    assert "square" in r.stderr and "8x10" in r.stderr


def test_threshold_is_a_normal_quantile_without_anomalies_else_youden():
    from convlens.medical.anomaly_score import calibrate, to_unit

    normal = torch.arange(200, dtype=torch.float32)  # raw scores of normal val images
    alone = calibrate(normal, torch.zeros(0), None)
    assert "95% quantile" in alone["rule"]
    assert (normal >= alone["threshold"]).float().mean() == pytest.approx(0.05, abs=0.01)
    mixed = calibrate(normal, torch.arange(150, 400, dtype=torch.float32), None)
    assert "Youden" in mixed["rule"] and 149 < mixed["threshold"] <= 200
    unit = to_unit(torch.tensor([-1e6, mixed["threshold"], 1e6]), mixed)
    assert unit.tolist() == [0.0, 0.5, 1.0]


def test_a_plain_folder_of_normal_images_trains_and_scores(tmp_path):
    ds = load_dataset("digits")
    normal = tmp_path / "zeros"  # no class subfolders: every image is a normal case
    normal.mkdir()
    for i, x in enumerate(ds.train.images[ds.train.labels == 0]):
        Image.fromarray(x[0].numpy()).save(normal / f"{i}.png")
    r = convlens("train", "--data", normal, "--task", "anomaly", *FAST, "--run", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    probes = []
    for digit in (0, 5):
        probes.append(tmp_path / f"digit{digit}.png")
        Image.fromarray(ds.test.images[ds.test.labels == digit][0][0].numpy()).save(probes[-1])
    out = convlens("predict", tmp_path / "run", *probes, "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert all(0.0 <= row["score"] <= 1.0 and isinstance(row["anomaly"], bool) for row in rows)
    page = (tmp_path / "run" / "report.html").read_text()  # no anomalies to measure: said so
    assert "AUROC, sensitivity and specificity need both" in page
    assert not (tmp_path / "run" / "roc_pr.png").exists()
    assert "<h3>Normal images scored highest</h3>" in page and "Anomalies scored" not in page
