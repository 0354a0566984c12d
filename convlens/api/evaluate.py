"""`convlens evaluate` and `convlens report`: a trained run measured on a split of its data."""

from __future__ import annotations

from pathlib import Path

from convlens.data import Dataset
from convlens.errors import ConvlensError
from convlens.report import write_report
from convlens.runs.folder import resolve_weights
from convlens.tasks.loading import load_run
from convlens.training.data import load_run_data


def evaluate_run(
    run: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    dataset: Dataset | None = None,
    write: bool = False,
    device: str = "cpu",
    target_sensitivity: float | None = None,
) -> dict:
    """Metrics of RUN's best weights on `split` of its data (or of `data`), as its task
    measures them; with write, the run folder's metrics.json, figures and report.html.

    Two-class runs add detection metrics at a threshold chosen on the validation split (Youden's
    J, or `target_sensitivity`, by default the run's own setting).
    """
    loaded = load_run(run, device, target_sensitivity=target_sensitivity)
    if dataset is None:
        dataset = load_run_data(data, loaded.folder.path if loaded.folder else None,
                                meta=loaded.meta)  # fmt: skip
    if split == "test" and dataset.test is None:
        split = "val"  # the source has no test split; say which split was used in the result
    ev = loaded.task.evaluate(loaded, dataset, split, write)
    if write:
        write_report(loaded, ev)
    return ev.metrics


def report_run(run: str | Path, data: str | None = None) -> Path:
    """Rewrite RUN/report.html (and metrics.json, figures) from its best weights; the page."""
    weights = resolve_weights(run)
    if weights.parent.name != "weights":
        raise ConvlensError(f"{run}: a report needs a run folder, not a loose weights file")
    evaluate_run(run, data=data, write=True)
    return weights.parent.parent / "report.html"
