"""convlens tune: an Optuna study of tiny digits trials that prunes, resumes from its storage,
and writes a best.yaml that `convlens train --config` trains."""

import csv

import pytest
import yaml

from tests.helpers import convlens_warm as convlens

optuna = pytest.importorskip("optuna", reason="the tune extra (optuna) is not installed")

BASE = {"data": "digits", "model": "textbook", "epochs": 2, "batch_size": 256, "amp": "off"}
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in BASE.items()]
SPACE = "lr: {low: 0.01, high: 0.2, log: true}\nmomentum: [0.8, 0.9]\n"


def _trials(study) -> list[dict]:
    with open(study / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One trial; the same command again with --trials 2 continues the study by one."""
    root = tmp_path_factory.mktemp("tune")
    (root / "space.yaml").write_text(SPACE)
    args = ["tune", *FLAGS, "--space", root / "space.yaml", "--out", root / "study",
            "--pruner", "none"]  # fmt: skip
    out = convlens(*args, "--trials", "1")
    assert out.returncode == 0, out.stderr
    assert [r["state"] for r in _trials(root / "study")] == ["COMPLETE"]
    first = (root / "study" / "trial-000" / "results.csv").stat().st_mtime_ns
    out = convlens(*args, "--trials", "2")
    assert out.returncode == 0, out.stderr
    assert (root / "study" / "trial-000" / "results.csv").stat().st_mtime_ns == first  # kept
    return root / "study"


def test_rerun_continues_the_study(study):
    rows = _trials(study)
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "COMPLETE")]
    loaded = optuna.load_study(study_name="convlens", storage=f"sqlite:///{study / 'study.db'}")
    assert len(loaded.trials) == 2
    for row in rows:  # each trial is a run folder holding the values it sampled
        trial = study / f"trial-{int(row['number']):03d}"
        cfg = yaml.safe_load((trial / "config.yaml").read_text())
        assert cfg["lr"] == pytest.approx(float(row["lr"])) and 0.01 <= cfg["lr"] <= 0.2
        assert cfg["momentum"] == float(row["momentum"]) and cfg["epochs"] == 2
        assert not (trial / "metrics.json").exists()  # chosen on val: the test split untouched


def test_a_forced_pruner_stops_a_trial_after_its_first_epoch(study):
    import convlens

    everything = optuna.pruners.ThresholdPruner(lower=2.0)  # no accuracy reaches 2: prunes all
    result = convlens.tune(study.parent / "space.yaml", trials=3, out=study, pruner=everything,
                           **BASE)  # fmt: skip
    rows = _trials(study)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 2 + ["PRUNED"]
    assert rows[2]["epochs"] == "1"
    assert len((study / "trial-002" / "results.csv").read_text().splitlines()) == 2  # 1 epoch
    assert result["best"]["number"] == max(range(2), key=lambda i: float(rows[i]["value"]))
    again = convlens.tune(study.parent / "space.yaml", trials=3, out=study, **BASE)
    assert len(again["trials"]) == 3  # the study holds 3 finished trials: nothing more to run


def test_best_yaml_trains(study, tmp_path):
    best = yaml.safe_load((study / "best.yaml").read_text())
    rows = _trials(study)
    top = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["value"]))
    assert best["lr"] == pytest.approx(float(top["lr"])) and "run" not in best
    out = convlens("train", "--config", study / "best.yaml", "--epochs", "1", "--run",
                   tmp_path / "best")  # fmt: skip
    assert out.returncode == 0, out.stderr
    trained = yaml.safe_load((tmp_path / "best" / "config.yaml").read_text())
    assert trained["lr"] == best["lr"] and trained["momentum"] == best["momentum"]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("lr: [", "not a readable YAML file"),
        ("- lr\n", "a space file is a mapping of setting: range or choices"),
        ("learning_rate: {low: 0.1, high: 1}", "learning_rate: not a setting"),
        ("run: [a, b]", "run: the sweep sets this itself"),
        ("lr: {low: 0.1}", "lr: a range needs both low and high"),
        ("lr: {low: 0.5, high: 0.1}", "lr: low (0.5) must be below high (0.1)"),
        ("lr: {low: 0, high: 1, log: true}", "lr: a log range needs low above 0"),
        ("lr: {low: 0.1, high: 1, lg: true}", "lr: unknown key 'lg'"),
        ("epochs: {low: 1, high: 2.5}", "epochs: an integer setting takes integer low"),
        ("optimizer: {low: 1, high: 2}", "optimizer: not a numeric setting"),
        ("optimizer: [sgd, lion]", "optimizer: 'lion': setting 'optimizer' must be one of"),
        ("momentum: {low: 0.5, high: 1.5}", "momentum: 1.5: setting 'momentum' must be"),
        ("lr: []", "lr: choices is a non-empty list"),
        (
            "model_args.nope: [1, 2]",
            "model_args.nope: 1: setting 'model_args': model 'textbook' takes no argument 'nope'",
        ),
    ],
)
def test_space_file_errors_name_the_file_and_key(tmp_path, space, message):
    from convlens.api.space import check_space, load_space
    from convlens.errors import ConfigError

    path = tmp_path / "space.yaml"
    path.write_text(space)
    with pytest.raises(ConfigError) as e:
        check_space(path, load_space(path), BASE)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_space_error_is_one_line_before_any_trial(tmp_path):
    (tmp_path / "space.yaml").write_text("lr: {low: 0.5, high: 0.1}\n")
    out = convlens("tune", *FLAGS, "--space", tmp_path / "space.yaml", "--out", tmp_path / "s")
    assert out.returncode == 1
    assert out.stderr.strip() == (f"convlens: error: {tmp_path / 'space.yaml'}: lr: low (0.5) "
                                  "must be below high (0.1)")  # fmt: skip
    assert not (tmp_path / "s").exists()
