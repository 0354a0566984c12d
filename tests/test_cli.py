"""The command line end to end on real data (digits), and its one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.helpers import convlens_warm as convlens


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "digits"
    out = convlens("train", "--data", "digits", "--model", "textbook", "--epochs", "8",
                   "--batch-size", "32", "--lr", "0.05", "--run", str(run))  # fmt: skip
    assert out.returncode == 0, out.stderr
    return run


def test_train_writes_the_run_folder(digits_run):
    for name in ("config.yaml", "results.csv", "metrics.json", "weights/best.safetensors",
                 "weights/last.safetensors", "state/last.safetensors", "confusion_matrix.png",
                 "confusion_matrix.csv", "curves.png", "report.html"):  # fmt: skip
        assert (digits_run / name).is_file(), name
    lines = (digits_run / "results.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,val_acc,lr,seconds"
    assert len(lines) == 9


def test_evaluate_json_reaches_95_percent(digits_run):
    out = convlens("evaluate", str(digits_run), "--json")
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)  # stdout holds one JSON document and nothing else
    assert metrics["accuracy"] >= 0.95
    assert {"accuracy", "top5", "macro_f1", "per_class", "n"} <= set(metrics)
    assert metrics["n"] == sum(c["support"] for c in metrics["per_class"])
    assert metrics["top5"] >= metrics["accuracy"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_evaluate_device_auto_is_the_cpu_here_and_cuda_is_refused(digits_run):
    auto = convlens("evaluate", str(digits_run), "--json", "--device", "auto")
    cpu = convlens("evaluate", str(digits_run), "--json")
    assert json.loads(auto.stdout)["confusion_matrix"] == json.loads(cpu.stdout)["confusion_matrix"]
    out = convlens("evaluate", str(digits_run), "--device", "cuda")
    assert out.returncode != 0 and "--device cuda: no CUDA GPU is available here" in out.stderr


def test_predict_on_png_files(digits_run, tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    paths = []
    for i in range(10):
        idx = int(np.flatnonzero(d.target == i)[-1])  # the last of each class: in the test split
        img = (d.images[idx] * 255 / 16).astype(np.uint8)
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = convlens("predict", str(digits_run), *paths, str(tmp_path / "broken.png"),
                   "--top-k", "3", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 11
    assert "broken.png" in rows[-1]["error"]
    good = rows[:10]
    assert all(len(r["predictions"]) == 3 for r in good)
    correct = sum(r["predictions"][0]["label"] == str(i) for i, r in enumerate(good))
    assert correct >= 8
    scores = [p["score"] for p in good[0]["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6

    import convlens as api

    model = api.load(str(digits_run))
    same = model.predict(paths[3], top_k=3)
    assert [p["label"] for p in same] == [p["label"] for p in good[3]["predictions"]]
    assert same[0]["score"] == pytest.approx(good[3]["predictions"][0]["score"], abs=1e-6)

    csv_file = tmp_path / "out.csv"
    out = convlens("predict", str(digits_run), str(tmp_path / "digit*.png"), "--csv", str(csv_file))
    assert out.returncode == 0, out.stderr
    assert len(csv_file.read_text().splitlines()) == 1 + 10 * 5


def test_run_folders_are_never_overwritten(digits_run, tmp_path):
    run = tmp_path / "r"
    args = ("train", "--data", "digits", "--model", "mlp", "--epochs", "1", "--run", str(run))
    assert convlens(*args).returncode == 0
    out = convlens(*args)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r2" / "weights" / "best.safetensors").is_file()


def _one_line_error(out, *needles):
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_errors_are_one_line(digits_run, tmp_path):
    _one_line_error(convlens("train", "--data", "no-such-data"), "no-such-data")
    _one_line_error(convlens("train", "--data", str(tmp_path / "missing")), "missing")
    _one_line_error(convlens("train", "--model", "nonet", "--data", "digits"), "nonet")
    _one_line_error(convlens("train", "--data", "digits", "--epochz", "3"), "--epochz")
    _one_line_error(convlens("train", "--data", "digits", "--epochs", "x"), "epochs")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": __import__("torch").zeros(3)}, plain)
    _one_line_error(convlens("predict", str(plain), str(tmp_path)), "not a convlens model")
    _one_line_error(convlens("evaluate", str(tmp_path / "nope")), "nope")
    _one_line_error(convlens("evaluate", str(digits_run), "--data", "lfw-faces"), "class-count")
    _one_line_error(convlens("predict", str(digits_run), str(tmp_path / "x.png")), "x.png")


def test_debug_shows_the_traceback():
    out = convlens("--debug", "train", "--data", "no-such-data")
    assert out.returncode != 0
    assert "Traceback" in out.stderr


def test_models_and_datasets_list():
    out = convlens("models")
    assert out.returncode == 0, out.stderr
    for name in ("textbook", "lenet5", "mlp", "fastnet", "resnet8", "resnet20"):
        assert name in out.stdout
    out = convlens("datasets")
    assert out.returncode == 0, out.stderr
    for name in ("fashion-mnist", "mnist", "digits", "lfw-faces"):
        assert name in out.stdout
