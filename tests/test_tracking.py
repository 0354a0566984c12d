"""--log tensorboard,mlflow: one tiny digits run, read back with tensorboard's EventAccumulator
and MLflow's client (the real libraries, no mock)."""

import csv
import json
from pathlib import Path

import pytest

from tests.helpers import convlens_warm as convlens

pytest.importorskip("tensorboard", reason="the track extra (tensorboard) is not installed")
pytest.importorskip("mlflow", reason="the track extra (mlflow) is not installed")

ARGS = ["--data", "digits", "--model", "textbook", "--epochs", "2", "--batch-size", "128",
        "--amp", "off", "--lr", "0.05"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run logged to both trackers, then exported (the export joins its MLflow run)."""
    run = tmp_path_factory.mktemp("tracking") / "run"
    out = convlens("train", *ARGS, "--log", "tensorboard,mlflow", "--run", run)
    assert out.returncode == 0, out.stderr
    out = convlens("export", run, "--format", "torchscript")
    assert out.returncode == 0, out.stderr
    return run


def _results(run) -> list[dict]:
    with open(run / "results.csv") as f:
        return list(csv.DictReader(f))


def test_tensorboard_has_epochs_figures_and_hparams(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    rows = _results(run)
    for column in ("train_loss", "val_loss", "val_acc", "lr"):
        logged = events.Scalars(column)
        assert [e.step for e in logged] == [int(r["epoch"]) for r in rows]
        assert [e.value for e in logged] == pytest.approx([float(r[column]) for r in rows], 1e-5)
    metrics = json.loads((run / "metrics.json").read_text())
    assert events.Scalars("test/accuracy")[0].value == pytest.approx(metrics["accuracy"])
    assert {"confusion_matrix", "curves"} <= set(events.Tags()["images"])
    image = events.Images("confusion_matrix")[0]
    assert image.width > 100 and image.height > 100
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.05)
    assert hparams["model"].string_value == "textbook"


def test_mlflow_run_has_params_metrics_and_artifacts(run):
    from mlflow.tracking import MlflowClient

    record = json.loads((run / "mlflow.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{(run / 'mlflow.db').resolve()}"  # in the run
    client = MlflowClient(record["tracking_uri"])
    logged = client.get_run(record["run_id"])
    assert logged.info.status == "FINISHED"
    assert logged.data.params["lr"] == "0.05" and logged.data.params["model"] == "textbook"
    assert logged.data.params["epochs"] == "2"
    history = client.get_metric_history(record["run_id"], "val_acc")
    rows = _results(run)
    assert [m.step for m in history] == [int(r["epoch"]) for r in rows]
    assert [m.value for m in history] == pytest.approx([float(r["val_acc"]) for r in rows], 1e-5)
    metrics = json.loads((run / "metrics.json").read_text())
    assert logged.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    files = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"config.yaml", "results.csv", "metrics.json", "report.html"} <= files
    weights = {a.path for a in client.list_artifacts(record["run_id"], "weights")}
    assert "weights/best.safetensors" in weights
    assert "weights/best.pt" in weights  # `convlens export` added it to the same run
    local = client.download_artifacts(record["run_id"], "config.yaml", str(run.parent))
    assert Path(local).read_text() == (run / "config.yaml").read_text()
    assert (run / "mlartifacts").is_dir()  # the artifacts stay in the run folder


def test_unknown_tracker_is_one_line(tmp_path):
    out = convlens("train", *ARGS, "--log", "tensorboard,wandb", "--run", tmp_path / "r")
    assert out.returncode == 1
    assert out.stderr.strip() == ("convlens: error: setting 'log' takes none or a comma list of "
                                  "tensorboard, mlflow, not 'wandb'")  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_continues_its_mlflow_run(run):
    """Resuming the finished run evaluates it again: into the same MLflow run, not a new one."""
    from mlflow.tracking import MlflowClient

    record = json.loads((run / "mlflow.json").read_text())
    out = convlens("train", "--resume", "--run", run)
    assert out.returncode == 0, out.stderr
    assert json.loads((run / "mlflow.json").read_text()) == record
    client = MlflowClient(record["tracking_uri"])
    runs = client.search_runs([record["experiment_id"]])
    assert [r.info.run_id for r in runs] == [record["run_id"]]
    assert runs[0].info.status == "FINISHED"
