"""End to end through the command line: train an embedding on generated identities, verify,
enroll a gallery, identify known and unknown people, run the LFW protocol; and bad input."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from sklearn.datasets import load_digits

from convlens.errors import ConvlensError
from convlens.faces import gallery
from convlens.faces.detect import FaceConfirmer, iou
from convlens.faces.recogniser import FaceRecogniser
from tests.helpers import convlens_warm as convlens
from tests.test_faces_detect import ASTRONAUT_FACE, astronaut, two_faces
from tests.test_faces_protocols import write_pairs

TRAINED = range(8)  # "people" 0-7 are handwritten digit classes, 16x16 (8x8 scaled up)
ENROLLED = range(6)  # 0-5 enrolled in the gallery; 6 was trained on but is not enrolled
QUICK = ["--task", "embed", "--embedding-size", "32", "--batch-size", "64", "--lr", "0.02",
         "--threads", "1", "--amp", "off"]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Training folder, gallery folder, held-out probes (by person) and a trained embed run."""
    root = tmp_path_factory.mktemp("faces")
    digits = load_digits()
    seen: dict[int, int] = {}
    probes = {}
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = int(label)
        n = seen[label] = seen.get(label, 0) + 1
        image = Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8)).resize((16, 16))
        name = f"person{label}"
        if n <= 150 and label in TRAINED:
            path = root / "train" / name / f"{i:04d}.png"
        elif n <= 154 and label in ENROLLED:
            path = root / "gallery" / name / f"{i:04d}.png"
        elif n == 160:  # one held-out image of everyone
            path = probes[name] = root / "probes" / f"{name}.png"
        else:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    run = root / "run"
    result = convlens("train", "--data", root / "train", "--epochs", 8, "--run", run, *QUICK)
    assert result.returncode == 0, result.stderr
    return {"root": root, "run": run, "probes": probes}


def ok_json(*args):
    """Run a --json command that must succeed; its parsed output."""
    result = convlens(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_run_folder_records_embedding_threshold_and_roc(world):
    run = world["run"]
    with safe_open(run / "weights" / "best.safetensors", "pt") as f:
        meta = json.loads(f.metadata()["convlens"])
    assert meta["task"] == "embed" and meta["embedding_size"] == 32
    assert 0 < meta["threshold"] < 1  # chosen on validation pairs
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["threshold"] == meta["threshold"]
    assert metrics["auc"] > 0.95 and metrics["rank1"] > 0.9
    assert {"eer", "tar@far=0.01", "tar@far=0.001", "accuracy"} <= set(metrics)
    assert (run / "roc.png").stat().st_size > 1000
    assert "ROC curve" in (run / "report.html").read_text()
    assert "val_auc" in (run / "results.csv").read_text().splitlines()[0]


def test_enroll_then_identify_known_people_and_an_unknown_one(world):
    run, root, probes = world["run"], world["root"], world["probes"]
    gallery = root / "gallery.npz"
    enrolled = ok_json("enroll", run, root / "gallery", "--out", gallery, "--no-detect")
    assert (enrolled["people"], enrolled["images"], enrolled["skipped"]) == (6, 24, [])
    with np.load(gallery, allow_pickle=False) as z:
        assert z["embeddings"].shape == (24, 32) and str(z["model"]) == enrolled["model"]
    for k in ENROLLED:
        name = f"person{k}"
        answer = ok_json("identify", run, gallery, probes[name], "--no-detect", "--top-k", 3)
        assert answer["identity"] == name, answer
        assert len(answer["candidates"]) == 3
    stranger = ok_json("identify", run, gallery, probes["person6"], "--no-detect")
    assert stranger["identity"] == "unknown"
    assert stranger["similarity"] < stranger["threshold"]


def test_verify_same_and_different_people(world):
    run, probes = world["run"], world["probes"]
    gallery = world["root"] / "gallery" / "person3"
    same = ok_json("verify", run, probes["person3"], next(gallery.iterdir()), "--no-detect")
    assert same["verified"] is True and same["similarity"] >= same["threshold"]
    other = ok_json("verify", run, probes["person3"], probes["person1"], "--no-detect")
    assert other["verified"] is False and other["similarity"] < other["threshold"]
    assert set(other) >= {"verified", "similarity", "threshold", "faces", "model"}


def test_detection_finds_the_face_and_says_when_there_were_two(world, tmp_path):
    photo, pair = tmp_path / "astronaut.jpg", tmp_path / "two.png"
    astronaut().save(photo)
    image, big, _ = two_faces()
    image.save(pair)
    out = ok_json("verify", world["run"], photo, pair)
    one, two = out["faces"][str(photo)], out["faces"][str(pair)]
    assert one["faces_found"] == 1 and "note" not in one
    assert iou(type(big)(*one["box"]), ASTRONAUT_FACE) >= 0.5
    assert two["faces_found"] == 2 and two["note"] == "2 faces found; the largest was used"
    assert iou(type(big)(*two["box"]), big) >= 0.5


def test_bad_input_is_one_clear_line(world, tmp_path):
    run, probes = world["run"], world["probes"]
    blank, text = tmp_path / "blank.png", tmp_path / "notes.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    text.write_text("not a picture")
    for args, message in (
        (("verify", run, blank, blank), "blank.png: no face found"),
        (("verify", run, text, probes["person1"], "--no-detect"), "notes.png: not an image"),
    ):
        result = convlens(*args)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_enroll_reports_images_without_a_face(world, tmp_path):
    people = tmp_path / "people"
    (people / "ann").mkdir(parents=True)
    (people / "bob").mkdir()
    astronaut().save(people / "ann" / "1.jpg")
    Image.new("RGB", (200, 200), (90, 90, 90)).save(people / "bob" / "1.png")
    result = convlens("enroll", world["run"], people, "--out", tmp_path / "g.npz")
    assert result.returncode == 0, result.stderr
    assert "enrolled 1 images of 1 people" in result.stdout
    assert "bob/1.png: no face found" in result.stderr
    assert "bob: no usable image, not enrolled" in result.stderr


def test_a_gallery_from_another_model_is_refused_by_name(world, tmp_path):
    other = tmp_path / "other"
    trained = convlens("train", "--data", world["root"] / "train", "--epochs", 1, "--seed", 1,
                       "--run", other, *QUICK)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    gallery = tmp_path / "other.npz"
    made = ok_json("enroll", other, world["root"] / "gallery", "--out", gallery, "--no-detect")
    result = convlens("identify", world["run"], gallery, world["probes"]["person0"], "--no-detect")
    assert result.returncode == 1
    assert f"enrolled with model {made['model']}, not with fastnet@" in result.stderr


def test_lfw_protocol_on_a_generated_lfw_tree(world, tmp_path):
    # persons 0-5 as LFW people: two folds of 3 matched + 3 mismatched pairs each
    lfw = tmp_path / "lfw"
    for k in ENROLLED:
        name = f"Person_{k}"
        (lfw / name).mkdir(parents=True)
        files = sorted((world["root"] / "gallery" / f"person{k}").iterdir())
        for n, f in enumerate(files[:3], start=1):
            Image.open(f).save(lfw / name / f"{name}_{n:04d}.jpg", quality=95)
    lines = [(f"Person_{k}", 1, 2) for k in (0, 1, 2)]
    lines += [("Person_0", 3, "Person_1", 3), ("Person_2", 1, "Person_3", 1),
              ("Person_4", 1, "Person_5", 1)]  # fmt: skip
    lines += [(f"Person_{k}", 2, 3) for k in (3, 4, 5)]
    lines += [("Person_1", 2, "Person_4", 2), ("Person_5", 3, "Person_0", 1),
              ("Person_3", 2, "Person_2", 3)]  # fmt: skip
    write_pairs(lfw / "pairs.txt", 2, 3, lines)
    out = ok_json("lfw", world["run"], lfw, "--no-detect")
    assert out["images"] == 18 and out["pairs"] == 12
    assert len(out["fold_accuracy"]) == 2
    assert out["accuracy"] == pytest.approx(np.mean(out["fold_accuracy"]))
    assert out["accuracy"] >= 5 / 6 and out["auc"] >= 0.9


def test_only_a_face_nonface_classifier_can_confirm_faces(world):
    with pytest.raises(ConvlensError, match="must be trained on lfw-faces"):
        FaceConfirmer(world["run"])


def test_an_embedding_run_exports_but_explain_refuses_it_by_name(world, tmp_path):
    exported = convlens("export", world["run"], "--out", tmp_path / "faces.onnx")
    assert exported.returncode == 0, exported.stderr
    assert "embedding difference" in exported.stdout and (tmp_path / "faces.onnx").is_file()
    explained = convlens("explain", world["run"])
    assert explained.returncode != 0 and "explain is for classify runs" in explained.stderr


def test_identify_answers_the_same_through_torch_and_faiss(world, tmp_path):
    pytest.importorskip("faiss")
    rec = FaceRecogniser(world["run"], detect=False)
    made = gallery.enroll(rec, world["root"] / "gallery", tmp_path / "gallery.npz")
    for probe in world["probes"].values():
        ours, theirs = (gallery.identify(rec, made["gallery"], str(probe), 3, search)
                        for search in ("torch", "faiss"))  # fmt: skip
        assert theirs["identity"] == ours["identity"]
        names = [[c["identity"] for c in answer["candidates"]] for answer in (ours, theirs)]
        assert names[0] == names[1] and len(names[0]) == 3
        assert theirs["similarity"] == pytest.approx(ours["similarity"], abs=1e-5)
