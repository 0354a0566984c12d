"""Face protocols and metrics: the LFW pairs reader and 10-fold accuracy on a generated LFW tree,
ROC/EER/TAR, rank-k and open-set DIR on hand-computed examples, the ArcFace logits."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.errors import DatasetFormatError
from convlens.faces.head import margin_logits
from convlens.faces.lfw import read_pairs, ten_fold_accuracy
from convlens.faces.metrics import (
    best_threshold,
    dir_at_far,
    rank_k,
    roc,
    sample_pairs,
    verification_metrics,
)

PEOPLE = {"Ann_Lee": 3, "Bo_Chen": 2, "Cy_Diaz": 1}


def make_lfw(root, people=PEOPLE):
    """root/Name/Name_0001.jpg ..., as the LFW archive unpacks; each image a flat grey."""
    for name, n in people.items():
        (root / name).mkdir(parents=True)
        for k in range(1, n + 1):
            Image.new("L", (8, 8), 40 * k).save(root / name / f"{name}_{k:04d}.jpg")
    return root


def write_pairs(path, folds, per, lines):
    path.write_text(f"{folds}\t{per}\n" + "\n".join("\t".join(map(str, ln)) for ln in lines) + "\n")
    return path


def test_read_pairs_follows_the_lfw_layout(tmp_path):
    root = make_lfw(tmp_path / "lfw")
    lines = [
        ("Ann_Lee", 1, 2), ("Bo_Chen", 1, 2),  # fold 1: matched
        ("Ann_Lee", 1, "Cy_Diaz", 1), ("Bo_Chen", 2, "Ann_Lee", 3),  # fold 1: mismatched
        ("Ann_Lee", 2, 3), ("Ann_Lee", 1, 3),
        ("Cy_Diaz", 1, "Bo_Chen", 1), ("Ann_Lee", 2, "Bo_Chen", 2),
    ]  # fmt: skip
    pairs = read_pairs(write_pairs(tmp_path / "pairs.txt", 2, 2, lines), root)
    assert pairs.left[0] == root / "Ann_Lee" / "Ann_Lee_0001.jpg"
    assert pairs.right[3] == root / "Ann_Lee" / "Ann_Lee_0003.jpg"
    assert pairs.same.tolist() == [True, True, False, False] * 2
    assert pairs.fold.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize(
    "head, lines, message",
    [
        ("1 1", [("Ann_Lee", 1, 2), ("Ann_Lee", 1, "Bo_Chen")], "line 3"),  # 3 fields, needs 4
        ("1 1", [("Ann_Lee", 1, "Bo_Chen", 1), ("Ann_Lee", 1, "Bo_Chen", 1)], "line 2"),
        ("1 2", [("Ann_Lee", 1, 2), ("Ann_Lee", 1, "Bo_Chen", 1)], "announces 1 folds"),
        ("1 1", [("Ann_Lee", 1, 9), ("Ann_Lee", 1, "Bo_Chen", 1)], "Ann_Lee_0009.jpg"),
        ("1 1", [("Ann_Lee", 1, "x"), ("Ann_Lee", 1, "Bo_Chen", 1)], "'x' is not a whole"),
        ("ten", [], "line 1"),
    ],
)
def test_bad_pairs_files_name_the_line(tmp_path, head, lines, message):
    root = make_lfw(tmp_path / "lfw")
    path = tmp_path / "pairs.txt"
    path.write_text(head + "\n" + "\n".join(" ".join(map(str, ln)) for ln in lines) + "\n")
    with pytest.raises(DatasetFormatError, match=message):
        read_pairs(path, root)


def test_ten_fold_accuracy_chooses_each_threshold_on_the_other_nine(tmp_path):
    # 10 folds of 1 matched + 1 mismatched pair. Folds 1-9 score 0.9 (matched) and 0.1; fold 10
    # scores 0.3 and 0.2. Folds 1-9 are judged at 0.25 (the lowest threshold that separates the
    # other folds, fold 10 included): all right. Fold 10 is judged at 0.5, learnt from scores 0.1
    # and 0.9 only: its matched pair (0.3) is rejected, so it scores 1/2. Mean: 9.5 / 10.
    root = make_lfw(tmp_path / "lfw")
    lines = [("Ann_Lee", 1, 2), ("Ann_Lee", 1, "Bo_Chen", 1)] * 10
    pairs = read_pairs(write_pairs(tmp_path / "pairs.txt", 10, 1, lines), root)
    scores = np.array([0.9, 0.1] * 9 + [0.3, 0.2])
    result = ten_fold_accuracy(scores, pairs.same, pairs.fold)
    assert result["fold_accuracy"] == [1.0] * 9 + [0.5]
    assert result["accuracy"] == pytest.approx(0.95)
    assert result["fold_threshold"] == pytest.approx([0.25] * 9 + [0.5])
    assert result["std"] == pytest.approx(np.std([1.0] * 9 + [0.5]))


def test_verification_metrics_on_a_hand_example():
    # matched pairs score 0.9 0.8 0.4, mismatched 0.7 0.3 0.2: 8 of the 9 (matched, mismatched)
    # orderings are right (0.4 < 0.7), so AUC = 8/9. At FAR 0 the TAR is 2/3; at FAR 1/3 the
    # FRR is 1/3: EER = 1/3. Best accuracy 5/6, first reached at the threshold 0.35.
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    m = verification_metrics(scores, same)
    assert m["auc"] == pytest.approx(8 / 9)
    assert m["eer"] == pytest.approx(1 / 3)
    assert m["tar@far=0.01"] == pytest.approx(2 / 3)
    assert m["best_accuracy"] == pytest.approx(5 / 6)
    assert m["best_threshold"] == pytest.approx(0.35)
    far, tar, _ = roc(scores, same)
    assert far[0] == 0 and far[-1] == 1 and tar[-1] == 1


def test_separable_scores_are_perfect():
    scores = np.array([0.95, 0.9, 0.6, 0.5, 0.1])
    same = np.array([1, 1, 1, 0, 0], bool)
    m = verification_metrics(scores, same)
    assert (m["auc"], m["eer"], m["tar@far=0.001"], m["best_accuracy"]) == (1.0, 0.0, 1.0, 1.0)
    assert best_threshold(scores, same)[0] == pytest.approx(0.55)


def test_rank_k_uses_each_identitys_best_image():
    gallery = np.array([0, 0, 1, 2])  # identity of each gallery image
    sim = np.array(
        [
            [0.1, 0.9, 0.5, 0.2],  # probe of 0: its best image (0.9) wins -> rank 1
            [0.8, 0.1, 0.6, 0.7],  # probe of 1: 0 (0.8) and 2 (0.7) beat it -> rank 3
            [0.3, 0.2, 0.9, 0.4],  # probe of 2: 1 beats it -> rank 2
        ]
    )
    assert rank_k(sim, np.array([0, 1, 2]), gallery, ks=(1, 2, 3)) == pytest.approx(
        {"rank1": 1 / 3, "rank2": 2 / 3, "rank3": 1.0}
    )


def test_dir_at_far_sets_the_threshold_on_unknown_probes():
    gallery = np.array([0, 1])
    # 2 known probes (identities 0, 1), 4 unknown ones (labels 9) whose best scores are
    # 0.7, 0.5, 0.4, 0.2. FAR 0.25 allows one false alarm: threshold = the second-best, 0.5.
    sim = np.array(
        [[0.8, 0.1], [0.45, 0.3],  # known: 0 identified above 0.5; 1 wrong (0.45 for 0)
         [0.7, 0.1], [0.2, 0.5], [0.4, 0.3], [0.1, 0.2]]  # unknown
    )  # fmt: skip
    labels = np.array([0, 1, 9, 9, 9, 9])
    known = np.array([True, True, False, False, False, False])
    out = dir_at_far(sim, labels, gallery, known, far=0.25)
    assert out["threshold"] == 0.5
    assert out["false_alarm_rate"] == 0.25
    assert out["dir"] == 0.5


def test_sample_pairs_are_balanced_seeded_and_distinct():
    labels = np.repeat(np.arange(5), [2, 3, 4, 1, 6])
    i, j, same = sample_pairs(labels, 200, seed=3)
    assert same.sum() == 100 and len(same) == 200
    assert (i != j).all()
    assert ((labels[i] == labels[j]) == same).all()
    again = sample_pairs(labels, 200, seed=3)
    assert all((a == b).all() for a, b in zip((i, j, same), again, strict=True))


def test_arcface_logits_add_the_margin_to_the_true_angle_only():
    cos = torch.tensor([[0.6, 0.2, -0.3], [0.1, 0.9, -0.99]])
    target = torch.tensor([0, 2])
    out = margin_logits(cos, target, scale=30.0, margin=0.5)
    assert out[0, 0] == pytest.approx(30 * math.cos(math.acos(0.6) + 0.5), abs=1e-4)
    # theta = acos(-0.99) > pi - 0.5: the fallback cos(theta) - m sin(m) keeps it decreasing
    assert out[1, 2] == pytest.approx(30 * (-0.99 - 0.5 * math.sin(0.5)), abs=1e-4)
    others = torch.tensor([[False, True, True], [True, True, False]])
    assert torch.allclose(out[others], 30 * cos[others])
    assert torch.allclose(margin_logits(cos, target, 30.0, 0.0), 30 * cos)  # plain softmax
