"""`convlens tune`: an Optuna study over TrainConfig settings, each trial a run folder.

OUT/ (default runs/tune)
  study.db          the study (Optuna's RDB storage; --storage for a shared database)
  space.yaml        the space it samples; base.yaml, the settings every trial shares
  trial-000/ ...    each trial's run folder (config.yaml, results.csv, weights/)
  trials.csv        number, state, validation score and values of every trial
  best.yaml         the best trial's settings, for `convlens train --config OUT/best.yaml`
  mlflow.db         with --log mlflow (and no --mlflow-uri): every trial a run of this store

TPE samples the space; the median pruner stops a trial whose validation score at an epoch is
below the median of earlier trials' at that epoch. Trials are chosen on the validation split
alone: they skip calibration, the test split and the report. Running the same command again
continues the study until it holds --trials finished trials; machines sharing one --storage
share the study.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import yaml

from convlens.api.space import check_space, load_space, trial_settings
from convlens.api.train import train
from convlens.config import load_yaml, make_config, to_dict, trackers
from convlens.errors import ConfigError, ConvlensError
from convlens.runs.atomic import atomic_write_bytes
from convlens.runs.folder import Run, score_column

PRUNERS = ("median", "none")
OWN = ("run", "resume", "folds", "fold")  # the sweep's, not the base settings'


def tune(
    space: str | Path,
    *,
    trials: int = 20,
    out: str | Path = "runs/tune",
    storage: str | None = None,
    study_name: str = "convlens",
    pruner: Any = "median",
    startup_trials: int = 5,
    warmup_epochs: int = 0,
    config: str | Path | None = None,
    **settings: Any,
) -> dict:
    """Run trials until the study holds `trials` finished ones; returns {"best", "trials", ...}.

    `settings` (and the YAML `config`) are the base every trial starts from; `pruner` is
    median, none or an Optuna pruner object."""
    import optuna

    base = {**(load_yaml(config) if config else {}),
            **{k: v for k, v in settings.items() if v is not None}}  # fmt: skip
    taken = sorted(set(base) & set(OWN))
    if taken:
        raise ConfigError(f"tune sets {', '.join(taken)} itself: pass --out for the study folder")
    make_config(None, base)  # the base alone is valid
    dims = load_space(space)
    check_space(space, dims, base)
    out = Path(out)
    if (
        "mlflow" in trackers(make_config(None, base))
        and not base.get("mlflow_uri")
        and not (os.environ.get("MLFLOW_TRACKING_URI"))
    ):  # every trial a run of one store, not a store per trial folder
        base["mlflow_uri"] = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    out.mkdir(parents=True, exist_ok=True)
    if Path(space).resolve() != (out / "space.yaml").resolve():
        shutil.copyfile(space, out / "space.yaml")
    atomic_write_bytes(out / "base.yaml", yaml.safe_dump(base, sort_keys=False).encode())

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial prints its own lines
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    # a trial whose process died stops beating: after the grace period it is marked failed
    # (not finished: a rerun trains another in its place)
    with warnings.catch_warnings():  # the heartbeat is marked experimental (optuna 3 to 5)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    seed = make_config(None, base).seed
    study = optuna.create_study(
        study_name=study_name,
        storage=rdb,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=make_pruner(pruner, startup_trials, warmup_epochs),
        direction="maximize",
        load_if_exists=True,
    )
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def objective(trial: optuna.Trial) -> float:
        values = {dim.name: dim.suggest(trial) for dim in dims}
        run_dir = out / f"trial-{trial.number:03d}"
        cfg = make_config(None, {**trial_settings(base, values), "run": str(run_dir)})
        trial.set_user_attr("run", str(run_dir))
        reached = train(cfg, epoch_end=_pruning(trial), evaluate=False)
        trial.set_user_attr("run", str(reached))
        return best_score(reached)

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        write_tables(study, base, out)

    left = trials - len(study.get_trials(deepcopy=False, states=finished))
    if left > 0:
        study.optimize(
            objective,
            n_trials=left,
            catch=(ConvlensError,),  # a trial that fails (a diverging lr, say) is one row
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished), record],
        )
    return write_tables(study, base, out) | {"storage": url, "study": study_name}


def make_pruner(pruner: Any, startup_trials: int = 5, warmup_epochs: int = 0):
    """The pruner by name (median, none), or the Optuna pruner object given."""
    import optuna

    if not isinstance(pruner, str):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                           n_warmup_steps=warmup_epochs)  # fmt: skip
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)}, not {pruner!r}")


def _pruning(trial):
    """The epoch-end hook of a trial: report the validation score; stop if the pruner says so."""
    import optuna

    def epoch_end(cfg: Any, run_dir: Path, row: dict) -> None:
        epoch = int(row["epoch"])
        trial.report(row[score_column(row)], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    return epoch_end


def best_score(run_dir: Path) -> float:
    """The best validation score of a run's epochs (the one its best weights reached)."""
    rows = Run(run_dir).read_results()
    if not rows:
        raise ConvlensError(f"{run_dir}: no epoch finished")
    return max(row[score_column(rows[0])] for row in rows)


def write_tables(study, base: dict[str, Any], out: Path) -> dict:
    """trials.csv and (once a trial completed) best.yaml; the rows and the best trial."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    rows = []
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if (
            t.datetime_complete and t.datetime_start) else None  # fmt: skip
        epochs = max(t.intermediate_values, default=None)
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "epochs": epochs, **{n: t.params.get(n) for n in names},
                     "run": t.user_attrs.get("run"), "seconds": seconds})  # fmt: skip
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["number", "state", "value", "epochs", *names,
                                             "run", "seconds"], lineterminator="\n")  # fmt: skip
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "trials.csv", buf.getvalue().encode())
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return {"out": str(out), "trials": rows, "best": None}
    best = max(complete, key=lambda t: t.value)
    settings = to_dict(make_config(None, trial_settings(base, best.params)))
    for key in ("run", "resume"):
        settings.pop(key)
    atomic_write_bytes(out / "best.yaml", yaml.safe_dump(settings, sort_keys=False).encode())
    best_row = {"number": best.number, "value": best.value, "params": best.params,
                "run": best.user_attrs.get("run"), "config": str(out / "best.yaml")}  # fmt: skip
    return {"out": str(out), "trials": rows, "best": best_row}
