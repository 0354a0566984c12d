"""convlens: convolutional neural networks for image recognition, trained, explained, served.

Public API (mirrors the command line): train, load, evaluate, create_model, load_dataset.
Heavy modules are imported on first use, so `import convlens` stays fast.
"""

from __future__ import annotations

from typing import Any

from convlens.version import __version__ as __version__

__all__ = ["create_model", "evaluate", "list_models", "load", "load_dataset", "train", "tune"]


def train(config: str | None = None, **settings: Any):
    """Train as `convlens train` does: settings as keyword arguments; returns the run folder."""
    from convlens.api.train import train as _train
    from convlens.config import make_config

    return _train(make_config(config, settings))


def load(run: str, device: str = "cpu", engine: str = "torch"):
    """A trained model ready to predict: `convlens.load("runs/train").predict("shoe.png")`."""
    from convlens.predict import load as _load

    return _load(run, device=device, engine=engine)


def evaluate(
    run: str, data: str | None = None, split: str = "test", target_sensitivity: float | None = None
) -> dict:
    """Metrics of a run on a split, as `convlens evaluate RUN --json` prints them."""
    from convlens.api.evaluate import evaluate_run

    return evaluate_run(run, data=data, split=split, target_sensitivity=target_sensitivity)


def create_model(name: str, **kwargs: Any):
    """A registered model by name (see `convlens models`)."""
    from convlens.models import create_model as _create

    return _create(name, **kwargs)


def list_models() -> list[str]:
    """Names of the registered models."""
    from convlens.models import list_models as _list

    return _list()


def load_dataset(spec: str, **kwargs: Any):
    """A dataset by name, folder, .npz or IDX prefix, held in memory."""
    from convlens.data import load_dataset as _load

    return _load(spec, **kwargs)


def tune(
    space: str,
    *,
    trials: int = 20,
    out: str = "runs/tune",
    storage: str | None = None,
    study_name: str = "convlens",
    pruner: Any = "median",
    startup_trials: int = 5,
    warmup_epochs: int = 0,
    config: str | None = None,
    **settings: Any,
) -> dict:
    """Sweep settings with Optuna as `convlens tune` does (needs the tune extra): `space` is the
    YAML space file, `settings` fix the rest; `pruner` is median, none or an Optuna pruner.
    Returns {"best": {"number", "value", "params", "run", "config"}, "trials": [...], ...}."""
    from convlens.api.tune import tune as _tune

    return _tune(space, trials=trials, out=out, storage=storage, study_name=study_name,
                 pruner=pruner, startup_trials=startup_trials, warmup_epochs=warmup_epochs,
                 config=config, **settings)  # fmt: skip
