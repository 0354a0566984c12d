"""convlens train --folds 3 on digits: a run per fold, held-out folds that partition train+val,
a summary of mean and std, out-of-fold predictions, the test split evaluated only at the end."""

import csv
import json
import statistics
from collections import Counter

import pytest
import yaml

from tests.helpers import convlens_warm as convlens

ARGS = ["train", "--data", "digits", "--model", "textbook", "--epochs", "1", "--batch-size",
        "128", "--amp", "off"]  # fmt: skip
N_TRAIN_VAL, N_TEST = 1257 + 270, 270  # digits' fixed 70/15/15 split


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    parent = tmp_path_factory.mktemp("folds") / "cv"
    out = convlens(*ARGS, "--folds", "3", "--seed", "3", "--run", parent)
    assert out.returncode == 0, out.stderr
    assert "3-fold cross-validation: accuracy" in out.stdout
    return parent


def _oof(parent) -> list[dict]:
    with open(parent / "oof.csv") as f:
        return list(csv.DictReader(f))


def test_one_run_per_fold_and_held_out_folds_partition_train_and_val(parent):
    rows = _oof(parent)
    assert sorted(int(r["index"]) for r in rows) == list(range(N_TRAIN_VAL))  # each image once
    for fold in (1, 2, 3):
        cfg = yaml.safe_load((parent / f"fold-{fold}" / "config.yaml").read_text())
        assert (cfg["folds"], cfg["fold"], cfg["seed"]) == (3, fold, 3)
        metrics = json.loads((parent / f"fold-{fold}" / "metrics.json").read_text())
        held = [r for r in rows if r["fold"] == str(fold)]
        assert metrics["n"] == len(held)  # its metrics are on its held-out fold, nothing else
    per_class = [Counter(r["label"] for r in rows if r["fold"] == str(f)) for f in (1, 2, 3)]
    for label in per_class[0]:  # stratified: each class spread evenly over the folds
        counts = [c[label] for c in per_class]
        assert max(counts) - min(counts) <= 1, (label, counts)
    assert yaml.safe_load((parent / "config.yaml").read_text())["fold"] is None


def test_out_of_fold_scores_come_from_the_fold_that_held_the_image_out(parent):
    import torch

    import convlens
    from convlens.data.folds import pooled

    rows = _oof(parent)
    pool = pooled(convlens.load_dataset("digits"))
    picks = [r for r in rows if int(r["index"]) % 97 == 0]
    for r in picks:
        rec = convlens.load(parent / f"fold-{r['fold']}")
        probs = rec.predict_tensor(pool.images[int(r["index"])][None])[0]
        logged = torch.tensor([float(r[f"score_{c}"]) for c in rec.classes])
        assert torch.allclose(probs, logged, atol=1e-5)
        assert r["label"] == rec.classes[int(pool.labels[int(r["index"])])]


def test_summary_holds_mean_and_std_and_the_test_split_at_the_end(parent):
    from convlens.api.evaluate import evaluate_run
    from convlens.data import load_dataset

    summary = json.loads((parent / "summary.json").read_text())
    accs = [json.loads((parent / f"fold-{f}" / "metrics.json").read_text())["accuracy"]
            for f in (1, 2, 3)]  # fmt: skip
    cv = summary["cross_validation"]["accuracy"]
    assert cv["values"] == pytest.approx(accs)
    assert cv["mean"] == pytest.approx(statistics.fmean(accs))
    assert cv["std"] == pytest.approx(statistics.stdev(accs))
    assert {"top5", "macro_f1", "ece"} <= set(summary["cross_validation"])
    digits = load_dataset("digits")
    test = [evaluate_run(parent / f"fold-{f}", dataset=digits, split="test")
            for f in (1, 2, 3)]  # fmt: skip
    assert all(t["n"] == N_TEST for t in test)
    assert summary["test"]["accuracy"]["values"] == pytest.approx([t["accuracy"] for t in test])
    table = (parent / "summary.md").read_text()
    assert f"| accuracy | {cv['mean']:.4f} | {cv['std']:.4f} |" in table


def test_resume_trains_only_the_unfinished_folds(parent):
    done = (parent / "fold-1" / "weights" / "best.safetensors").stat().st_mtime_ns
    (parent / "fold-3" / "metrics.json").unlink()  # as if killed before fold 3 finished
    (parent / "summary.json").unlink()
    out = convlens("train", "--resume", "--run", parent)
    assert out.returncode == 0, out.stderr
    assert "fold 3 of 3" in out.stdout and "fold 1 of 3" not in out.stdout
    assert (parent / "fold-1" / "weights" / "best.safetensors").stat().st_mtime_ns == done
    assert (parent / "fold-3" / "metrics.json").is_file() and (parent / "summary.json").is_file()


def test_fold_split_is_seeded_and_stratified():
    import torch

    from convlens.data import Split
    from convlens.data.folds import fold_of

    labels = torch.arange(60) % 3
    pool = Split(torch.zeros(60, 1, 2, 2, dtype=torch.uint8), labels)
    a, b, c = fold_of(pool, 4, 0), fold_of(pool, 4, 0), fold_of(pool, 4, 1)
    assert (a == b).all() and not (a == c).all()
    for f in range(4):
        assert Counter(labels[torch.from_numpy(a == f)].tolist()) == {0: 5, 1: 5, 2: 5}


def _patients_csv(folder, n=36):
    """A label CSV of n 8x8 images, 3 per patient, labels a or b, with a patient column."""
    import numpy as np
    from PIL import Image

    rows = ["path,labels,patient"]
    for i in range(n):
        Image.fromarray(np.full((8, 8), i * 7 % 256, np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{'a' if i % 2 else 'b'},p{i // 3}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def test_group_by_keeps_each_patient_on_one_side(tmp_path):
    from convlens.data import load_dataset
    from convlens.data.folds import fold_dataset, fold_of, pooled

    ds = load_dataset(str(_patients_csv(tmp_path)), group_by="patient")
    pool = pooled(ds)
    assert sorted(set(pool.groups)) == sorted(f"p{i}" for i in range(12))
    where = fold_of(pool, 3, 0)
    for patient in set(pool.groups):
        assert len(set(where[pool.groups == patient])) == 1, patient
    for fold in (1, 2, 3):
        part = fold_dataset(ds, 3, fold, 0, 0.25)
        train, val, held = (set(s.groups) for s in (part.train, part.val, part.test))
        assert not (held & train) and not (held & val) and not (train & val)
        assert len(part.train) + len(part.val) + len(part.test) == len(pool)


def test_group_by_trains_a_fold_of_a_label_csv(tmp_path):
    csv_file = _patients_csv(tmp_path)
    out = convlens("train", "--data", csv_file, "--task", "multilabel", "--model", "textbook",
                   "--epochs", "1", "--amp", "off", "--folds", "3", "--fold", "2", "--group-by",
                   "patient", "--run", tmp_path / "run")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "fold 2 of 3 (seed 0)" in out.stdout


def test_group_by_needs_a_label_csv_with_that_column(tmp_path):
    from convlens.data import load_dataset
    from convlens.errors import ConvlensError

    with pytest.raises(ConvlensError, match="--group-by needs a label CSV"):
        load_dataset("digits", group_by="patient")
    csv_file = _patients_csv(tmp_path, n=6)
    with pytest.raises(ConvlensError, match="no column 'ward' to group by"):
        load_dataset(str(csv_file), group_by="ward")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"folds": 1}, "setting 'folds' must be 0 (off) or at least 2, got 1"),
        ({"fold": 2}, "setting 'fold' needs 'folds' (e.g. --folds 5 --fold 2)"),
        ({"folds": 3, "fold": 4}, "setting 'fold' must be between 1 and folds (3), got 4"),
        ({"group_by": "patient"}, "setting 'group_by' needs 'folds'"),
    ],
)
def test_fold_settings_are_checked_in_one_line(settings, message):
    from convlens.config import make_config
    from convlens.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        make_config(None, settings)
    assert str(e.value).startswith(message)
