"""Evaluate a trained run on a data split: metrics, and (for a run folder) its figures."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from convlens.config import make_config
from convlens.data import Dataset, load_dataset
from convlens.errors import ConvlensError
from convlens.evaluation.metrics import classification_metrics
from convlens.models.infer import predict_proba
from convlens.models.loading import load_model
from convlens.runs.folder import Run

__all__ = ["check_compatible", "classification_metrics", "evaluate_run", "load_run_data"]


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
    """Metrics of RUN's best weights on `split` of its data (or of `data`).

    Two-class runs add detection metrics at a threshold chosen on the validation split (Youden's
    J, or `target_sensitivity`, by default the run's own setting).
    """
    model, meta, weights = load_model(run)
    model = model.to(device)
    run = Run.of_weights(weights)
    run_dir = run.path if run else None
    if dataset is None:
        dataset = load_run_data(data, run_dir)
    if split == "test" and dataset.test is None:
        split = "val"  # the source has no test split; say which split was used in the result
    task = meta.get("task", "classify")
    if task != "classify":  # multilabel, anomaly, embed: the task measures itself
        from convlens.training.tasks import task_class

        return task_class(task).evaluate(
            model, meta, weights, run_dir, dataset, split=split, write=write, device=device
        )
    part = dataset.split(split)
    check_compatible(meta, dataset, weights)
    probs = _probs(model, meta, part.images, device)
    metrics = {"data": dataset.name, "split": split, "weights": str(weights)}
    metrics.update(classification_metrics(part.labels, probs, meta["classes"]))
    if "calibration" in meta:  # the temperature folded into the weights, fitted on val
        metrics["calibration"] = meta["calibration"]
    if len(meta["classes"]) == 2:  # a finding or not: the clinical view, threshold from val
        from convlens.medical.evaluate import add_detection

        val_probs = _probs(model, meta, dataset.val.images, device)
        add_detection(metrics, meta, run_dir, dataset.val, val_probs, part, probs,
                      target_sensitivity, write=write)  # fmt: skip
    if write and run_dir is not None:
        _write_outputs(run_dir, metrics, part, probs)
        if dataset.name.endswith(".npz"):  # MedMNIST: a score file its evaluator reads
            from convlens.medical.scores import write_scores

            write_scores(run_dir / "medmnist", dataset.name, split, run_dir.name,
                         part.labels.numpy(), probs.numpy())  # fmt: skip
    return metrics


def _probs(model, meta: dict, images, device: str):
    """Class probabilities (N, K) of uint8 images (N, C, H, W), preprocessed as in training."""
    return predict_proba(
        model,
        images,
        mean=meta["normalize"]["mean"],
        std=meta["normalize"]["std"],
        tta=meta.get("tta", "none"),
        device=device,
    )


def load_run_data(data: str | None, run_dir: Path | None, download: bool = True) -> Dataset:
    """`data` (or, by default, the dataset the run in `run_dir` trained on), split as that run
    split it (its seed and val share).

    The default comes from the run folder's own config.yaml, never from the weights header: a
    weights file is data, and must not choose what is read, written or downloaded."""
    run = Run(run_dir) if run_dir else None
    own = run is not None and run.is_run()
    cfg = make_config(run.config) if own else make_config()
    spec = data or (cfg.data if own else None)
    if not spec:
        raise ConvlensError("a weights file outside its run folder: pass --data")
    return load_dataset(
        spec,
        data_dir=cfg.data_dir,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        image_size=cfg.image_size,
        download=download,
    )


def check_compatible(meta: dict, ds: Dataset, weights: Path) -> None:
    """Refuse data whose classes or image shape differ from what the weights expect."""
    classes = meta["classes"]
    if len(classes) != ds.num_classes:
        raise ConvlensError(
            f"class-count mismatch: {weights} predicts {len(classes)} classes, "
            f"data {ds.name} has {ds.num_classes}"
        )
    if list(classes) != list(ds.classes):
        raise ConvlensError(f"class names differ between {weights} and data {ds.name}")
    want = (meta["input"]["channels"], meta["input"]["height"], meta["input"]["width"])
    have = (ds.channels, *ds.image_size)
    if want != have:
        raise ConvlensError(f"{weights} expects images of {want}, data {ds.name} has {have}")


def _write_outputs(run_dir: Path, metrics: dict, part=None, probs=None) -> None:
    from convlens.evaluation.plots import save_confusion_matrix, save_curves, save_reliability
    from convlens.evaluation.report import write_report

    run = Run(run_dir)
    run.write_metrics(metrics)
    cm = metrics["confusion_matrix"]
    classes = [c["class"] for c in metrics["per_class"]]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true \\ predicted", *classes])
    writer.writerows([c, *row] for c, row in zip(classes, cm, strict=True))
    (run_dir / "confusion_matrix.csv").write_text(buf.getvalue())
    save_confusion_matrix(cm, classes, run_dir / "confusion_matrix.png")
    if rows := run.read_results():
        save_curves(rows, run_dir / "curves.png")
    if probs is not None:  # the evaluated split's predictions: the same bins as metrics' ECE
        save_reliability(part.labels, probs, run_dir / "reliability.png")
    write_report(run_dir, metrics, part, probs)
