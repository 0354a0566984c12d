"""Two-point face alignment: the closed-form similarity, eyes of posed lfw-faces faces brought
onto ArcFace's template (rotation undone), RGB and grey, the fallback, and `--align eyes`
carried from training into the weights and applied by verify and predict."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from convlens.faces import poses
from convlens.faces.align import (
    NO_EYES,
    SIZE,
    TEMPLATE,
    align_face,
    align_images,
    find_eyes,
    similarity,
    transform,
)
from convlens.faces.detect import crop_face, detect_faces
from tests.helpers import convlens_warm as convlens
from tests.test_faces_detect import astronaut

FACES = poses.lfw_faces()[:10]
TURNS = [20.0, -20.0, 25.0, -15.0, 18.0, -22.0, 16.0, -24.0, 21.0, -17.0]  # degrees, per face


def turned(angle: float, scale: float = 1.0, shift=(0.0, 0.0)) -> np.ndarray:
    """A pose matrix of the protocol's kind, chosen rather than drawn."""
    import cv2

    matrix = cv2.getRotationMatrix2D((poses.CANVAS / 2, poses.CANVAS / 2), angle, scale)
    matrix[:, 2] += shift
    return matrix


def eyes_in(photo: Image.Image):
    """The eyes of the largest detected face (None: no face, or no two eyes)."""
    boxes = detect_faces(photo)
    return find_eyes(photo, boxes[0]) if boxes else None


def test_the_similarity_takes_two_points_exactly_and_is_a_rotation_with_scale():
    src = np.array([[10.0, 20.0], [50.0, 35.0]])
    m = similarity(src, TEMPLATE)
    assert np.allclose(transform(m, src), TEMPLATE)
    assert m[0, 0] == pytest.approx(m[1, 1]) and m[0, 1] == pytest.approx(-m[1, 0])  # no shear
    import cv2

    fitted, _ = cv2.estimateAffinePartial2D(src, TEMPLATE)  # OpenCV's fit agrees
    assert np.allclose(fitted, m, atol=1e-6)


def test_posed_faces_eyes_land_on_the_template():
    # the eyes found on the upright photo, moved by the known seeded pose, then by the
    # alignment fitted on the posed photo: where alignment puts the true eyes (rotation undone)
    rng, errors = np.random.default_rng(0), []
    for face in poses.lfw_faces()[:24]:
        pose = poses.pose_matrix(rng)
        truth, eyes = eyes_in(poses.upright(face)), eyes_in(poses.posed(face, pose))
        if truth is not None and eyes is not None:
            landed = transform(similarity(eyes.as_array(), TEMPLATE),
                               transform(pose, truth.as_array()))  # fmt: skip
            errors.append(np.abs(landed - TEMPLATE).max())  # px on the 112 px face
    assert len(errors) >= 16, errors  # the rest: no two eyes found (20 of 24 here)
    assert np.median(errors) <= 2.5 and np.mean(np.array(errors) <= 3.0) >= 0.6, errors


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_the_astronaut_turned_is_aligned_like_the_upright_one(mode):
    import cv2

    upright = astronaut().convert(mode)
    pixels = np.asarray(upright)
    turn = cv2.getRotationMatrix2D((256, 256), 20, 1.0)
    tilted = Image.fromarray(
        cv2.warpAffine(pixels, turn, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    )
    a, info_a = align_face(upright, detect_faces(upright)[0])
    boxes = detect_faces(tilted)
    b, info_b = align_face(tilted, boxes[0] if boxes else None)
    assert info_a["aligned"] and info_b["aligned"], (info_a, info_b)
    assert a.size == b.size == (SIZE, SIZE) and a.mode == b.mode == mode
    again = find_eyes(a)  # the aligned face's own eyes sit on the template
    assert again is not None and np.abs(again.as_array() - TEMPLATE).max() <= 6
    aligned_gap = np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()
    # unaligned: the tilted photo's crop around the same box, against the upright crop
    box = detect_faces(upright)[0]
    plain = [np.asarray(crop_face(im, box).resize((SIZE, SIZE)), float) for im in (upright, tilted)]
    assert aligned_gap < 0.6 * np.abs(plain[0] - plain[1]).mean()


def test_aligned_posed_faces_are_closer_to_their_upright_selves_than_unaligned_ones():
    gaps = {"eyes": [], "none": []}
    for face, angle in zip(FACES, TURNS, strict=True):
        photos = [poses.upright(face), poses.posed(face, turned(angle, 0.9))]
        boxes = [detect_faces(p) for p in photos]
        if not all(boxes):
            continue
        aligned = [align_face(p, b[0]) for p, b in zip(photos, boxes, strict=True)]
        if not all(info["aligned"] for _, info in aligned):
            continue
        plain = [
            crop_face(p, b[0]).resize((SIZE, SIZE)) for p, b in zip(photos, boxes, strict=True)
        ]
        for kind, (u, v) in (("eyes", [a for a, _ in aligned]), ("none", plain)):
            gaps[kind].append(np.abs(np.asarray(u, float) - np.asarray(v, float)).mean())
    assert len(gaps["eyes"]) >= 5, gaps
    assert np.mean(gaps["eyes"]) < 0.7 * np.mean(gaps["none"]), gaps


def test_without_two_eyes_the_face_is_left_unaligned_and_says_so():
    blank = Image.new("RGB", (120, 120), (128, 128, 128))
    face, info = align_face(blank)
    assert info == {"aligned": False, "align_note": NO_EYES}
    assert face.size == (SIZE, SIZE)  # framed like an aligned face
    assert np.asarray(face).min() == np.asarray(face).max() == 128
    crops = torch.full((2, 1, 32, 32), 128, dtype=torch.uint8)
    out, aligned = align_images(crops, "eyes")
    assert aligned == 0 and torch.equal(out, crops)


# --- `--align eyes` through training, the weights and the face commands ---------------------
PEOPLE = 6  # lfw-faces' first six faces as people, each in posed copies


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory):
    """A 1-epoch embed run trained with --align eyes on posed crops, and two posed photos."""
    root = tmp_path_factory.mktemp("align")
    photos = poses.posed_set(poses.lfw_faces()[:PEOPLE], 11, seed=0)
    for k, copies in enumerate(photos):
        person = root / "train" / f"person{k}"
        person.mkdir(parents=True)
        for n, photo in enumerate(copies[:10]):
            boxes = detect_faces(photo)
            crop = crop_face(photo, boxes[0]) if boxes else photo
            crop.resize((48, 48)).save(person / f"{n}.png")
    test = root / "photos"
    test.mkdir()
    poses.upright(poses.lfw_faces()[0]).save(test / "a.png")
    poses.posed(poses.lfw_faces()[0], turned(-20)).save(test / "b.png")
    run = root / "run"
    result = convlens("train", "--data", root / "train", "--task", "embed", "--align", "eyes",
                      "--embedding-size", 16, "--epochs", 1, "--val-fraction", 0.3,
                      "--batch-size", 16, "--lr", 0.02, "--threads", 1, "--amp", "off",
                      "--run", run)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {"run": run, "root": root, "photos": test, "log": result.stdout + result.stderr}


def test_the_align_setting_reaches_the_weights_and_the_log(aligned_run):
    with safe_open(aligned_run["run"] / "weights" / "best.safetensors", "pt") as f:
        meta = json.loads(f.metadata()["convlens"])
    assert meta["align"] == "eyes"
    assert "align eyes:" in aligned_run["log"] and "train and" in aligned_run["log"]
    assert "align: eyes" in (aligned_run["run"] / "config.yaml").read_text()


def test_verify_aligns_each_detected_face(aligned_run):
    a, b = aligned_run["photos"] / "a.png", aligned_run["photos"] / "b.png"
    result = convlens("verify", aligned_run["run"], a, b, "--json")
    assert result.returncode == 0, result.stderr
    faces = json.loads(result.stdout)["faces"]
    assert faces[str(a)]["aligned"] is True and faces[str(b)]["aligned"] is True, faces
    assert len(faces[str(b)]["eyes"]) == 2


def test_predict_and_no_detect_align_as_training_did(aligned_run):
    from convlens.faces.recogniser import FaceRecogniser
    from convlens.predict.recogniser import Recogniser

    rec = FaceRecogniser(aligned_run["run"], detect=False)
    for crop in sorted((aligned_run["root"] / "train" / "person0").iterdir()):
        plain = Recogniser.preprocess(rec, crop)  # the input before alignment
        expected, n = align_images(plain[None], "eyes")
        if n:  # a crop whose eyes are found at the model's input size
            break
    assert n == 1 and not torch.equal(expected[0], plain)
    assert torch.equal(rec.preprocess(crop), expected[0])
    x, info = rec.face(crop)
    assert torch.equal(x, expected[0]) and info["aligned"] is True
    result = convlens("predict", aligned_run["run"], crop, "--json")
    assert result.returncode == 0, result.stderr


def test_an_unknown_align_is_refused_by_name(tmp_path):
    result = convlens("train", "--data", tmp_path, "--task", "embed", "--align", "landmarks")
    assert result.returncode != 0
    assert "setting 'align' must be one of none, eyes, not 'landmarks'" in result.stderr


def test_weights_with_a_crafted_align_are_refused_and_old_ones_load_unaligned(
    aligned_run, tmp_path
):
    from safetensors.torch import save_file

    from convlens.errors import ModelError
    from convlens.faces.recogniser import FaceRecogniser
    from convlens.runs.weights import META_KEY, read_safetensors

    tensors, raw = read_safetensors(aligned_run["run"] / "weights" / "best.safetensors")
    header = json.loads(raw[META_KEY])
    crafted, old = tmp_path / "crafted.safetensors", tmp_path / "old.safetensors"
    save_file(tensors, crafted, metadata={META_KEY: json.dumps({**header, "align": "mouth"})})
    with pytest.raises(ModelError, match="metadata field 'align' must be one of none, eyes"):
        FaceRecogniser(crafted)
    before = {k: v for k, v in header.items() if k != "align"}  # weights from before the field
    save_file(tensors, old, metadata={META_KEY: json.dumps(before)})
    assert FaceRecogniser(old).align == "none"
