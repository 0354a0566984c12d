"""`--log mlflow`: an MLflow run per training, through MlflowClient.

The store is `--mlflow-uri`, else $MLFLOW_TRACKING_URI, else RUN/mlflow.db (SQLite; MLflow 3
keeps its file store in maintenance mode), with artifacts in RUN/mlartifacts. Logged: every
resolved setting as a param, each epoch's results.csv row as metrics (step = epoch), the final
metrics, and as artifacts config.yaml, results.csv, metrics.json, report.html, the figures, the
best weights and any export. RUN/mlflow.json names the store and run, so a resumed run and a
later `convlens export` log into the same MLflow run. The experiment is
$MLFLOW_EXPERIMENT_NAME, else "convlens".
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from convlens.config import to_dict
from convlens.errors import ConvlensError
from convlens.runs.atomic import atomic_write_bytes
from convlens.runs.folder import Run
from convlens.track.scalars import scalars

RECORD = "mlflow.json"  # in the run folder: {"tracking_uri", "experiment_id", "run_id"}
STORE = "mlflow.db"  # the default store, in the run folder
ARTIFACTS = "mlartifacts"  # beside a SQLite store: its experiments' artifacts
EXPERIMENT = "convlens"
FILES = (".yaml", ".csv", ".json", ".html", ".png")  # the run folder's own files, logged
EXPORTS = (".onnx", ".pt")  # files in RUN/weights that `convlens export` writes
BATCH = 100  # MLflow takes at most 100 params in one log_batch


class MlflowTracker:
    """One training's MLflow run (a resumed training continues the run it started)."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        from mlflow.entities import Param

        self.run_dir = run_dir
        record = run_dir / RECORD
        if entry := read_record(run_dir):  # resumed: the same MLflow run goes on
            self.client, self.run_id = _client(entry["tracking_uri"]), entry["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        uri = cfg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or _sqlite(run_dir / STORE)
        self.client = _client(uri)
        experiment = _experiment(self.client, uri)
        run = self.client.create_run(experiment, run_name=run_dir.name,
                                     tags={"convlens.run": str(run_dir.resolve())})  # fmt: skip
        self.run_id = run.info.run_id
        entry = {"tracking_uri": uri, "experiment_id": experiment, "run_id": self.run_id}
        atomic_write_bytes(record, (json.dumps(entry, indent=2) + "\n").encode())
        params = [Param(k, str(v)) for k, v in flat_settings(cfg).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])

    def epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        self._metrics({k: v for k, v in row.items() if k != "epoch"}, step)

    def finish(self, metrics: dict) -> None:
        split = metrics.get("split", "test")
        self._metrics({f"{split}_{k}": v for k, v in scalars(metrics, sep="_").items()}, 0)
        for path, folder in artifacts(self.run_dir):
            self.client.log_artifact(self.run_id, str(path), folder)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)

    def _metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in values.items()]
        for i in range(0, len(rows), 1000):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=rows[i : i + 1000])


def flat_settings(cfg: Any) -> dict[str, Any]:
    """The resolved settings, model_args as model_args.KEY."""
    out: dict[str, Any] = {}
    for key, value in to_dict(cfg).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def artifacts(run_dir: Path) -> list[tuple[Path, str | None]]:
    """(file, artifact folder) of a finished run's own files, best weights and exports."""
    run = Run(run_dir)
    own = [(p, None) for p in sorted(run_dir.iterdir())
           if p.is_file() and p.suffix in FILES and p.name != RECORD]  # fmt: skip
    weights = [run.best] if run.best.is_file() else []
    if run.weights_dir.is_dir():
        weights += sorted(p for p in run.weights_dir.iterdir() if p.suffix in EXPORTS)
    return own + [(p, "weights") for p in weights]


def add_artifact(run_dir: Path, path: Path) -> bool:
    """Log `path` into the weights/ artifacts of the MLflow run of `run_dir`, if it has one."""
    entry = read_record(run_dir)
    if entry is None:
        return False
    _client(entry["tracking_uri"]).log_artifact(entry["run_id"], str(path), "weights")
    return True


def read_record(run_dir: Path) -> dict | None:
    """RUN/mlflow.json (None if the run logs to no MLflow run), or one line naming the fault."""
    record = run_dir / RECORD
    if not record.is_file():
        return None
    try:
        entry = json.loads(record.read_text())
        if all(isinstance(entry.get(k), str) for k in ("tracking_uri", "run_id")):
            return entry
    except (ValueError, AttributeError):
        pass
    raise ConvlensError(f"{record}: not an MLflow record (tracking_uri and run_id as text)")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # the store's INFO lines about its tables
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _sqlite(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def _experiment(client, uri: str) -> str:
    """The id of the experiment runs log to, made if missing (a SQLite store keeps its
    artifacts beside the database, not in the working directory's ./mlruns)."""
    from mlflow.exceptions import MlflowException

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another process made it meanwhile
        return client.get_experiment_by_name(name).experiment_id
