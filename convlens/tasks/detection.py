"""A two-class run's clinical view: the operating threshold chosen on validation, detection
metrics with CIs on the evaluated split, the ROC/PR figure, and the decision predict flags by."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from convlens.data import Split
from convlens.errors import ConfigError, ConvlensError
from convlens.evaluation.detection import curves, detection_block, positive_index
from convlens.evaluation.plots import save_roc_pr
from convlens.runs.checks import validate_operating_point
from convlens.runs.meta import WeightsMeta
from convlens.tasks.base import LoadedRun
from convlens.tasks.loading import read_side_file

OLD_FILE = "threshold.json"  # beside the weights of older runs: the operating point


def add_detection(
    metrics: dict,
    run: LoadedRun,
    val: Split,
    val_probs: torch.Tensor,
    part: Split,
    probs: torch.Tensor,
    *,
    write: bool = False,
) -> None:
    """Put metrics["detection"] (or the reason it is missing) and, with write, save the
    operating point with the weights and draw roc_pr.png."""
    target = run.setting("target_sensitivity")  # the caller's, else the run's own
    if target is not None and not 0 < target <= 1:  # a setting error, not a data problem
        raise ConfigError(f"setting 'target_sensitivity' must be in (0, 1], got {target}")
    classes = run.meta.classes
    try:
        block = detection_block(
            classes,
            (val.labels.numpy(), val_probs.numpy()),
            (part.labels.numpy(), probs.numpy()),
            target,
        )
    except ConvlensError as e:  # e.g. a split without positives: say so, keep the other metrics
        metrics["detection"] = {"skipped": str(e)}
        return
    metrics["detection"] = block
    if write and run.folder is not None:
        point = {"positive_class": block["positive_class"], **block["operating_point"]}
        decisions = dataclasses.replace(run.meta.decisions, operating_point=point)
        if decisions != run.meta.decisions:  # chosen on the same val again: the file stays
            run.save_meta(run.meta.replace(decisions=decisions))
        pos = positive_index(classes)
        points = curves(part.labels.numpy() == pos, probs[:, pos].numpy())
        save_roc_pr(points, block, run.folder.path / "roc_pr.png")


def read_old_operating_point(meta: WeightsMeta, weights: Path) -> None:
    """A two-class run's operating point from the threshold.json beside its weights (runs
    older runs), checked, when its header holds none."""
    path = weights.parent / OLD_FILE
    if len(meta.classes) != 2 or meta.decisions.operating_point is not None or not path.is_file():
        return
    point = validate_operating_point(read_side_file(path), meta.classes, path)
    meta.decisions.operating_point = point


def flag(predictions: list[dict], point: dict) -> dict:
    """{"positive_score", "flag"} of one image's top-k predictions at a two-class run's
    operating point."""
    scores = {p["label"]: p["score"] for p in predictions}
    # two classes: p(positive) = 1 - p(other) when top-k left the positive class out
    score = scores.get(point["positive_class"], 1 - next(iter(scores.values())))
    return {"positive_score": score, "flag": score >= point["threshold"]}


def detection_lines(block: dict) -> list[str]:
    """The detection block for the console: the operating point, then metric [95% CI] lines."""
    if "skipped" in block:
        return [f"detection metrics skipped: {block['skipped']}"]
    point = block["operating_point"]
    how = "Youden's J" if point["method"] == "youden" else (
        f"target sensitivity {point['target_sensitivity']}")  # fmt: skip
    lines = [
        f"detection (positive: {block['positive_class']}): threshold {point['threshold']:.4f} "
        f"chosen on val by {how} (val sensitivity {point['val_sensitivity']:.3f}, "
        f"specificity {point['val_specificity']:.3f})"
    ]
    for name in ("sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc"):
        m = block[name]
        if m["value"] is None:
            lines.append(f"  {name:<12} undefined")
            continue
        low, high = ("?" if v is None else f"{v:.3f}" for v in m["ci"])
        lines.append(f"  {name:<12} {m['value']:.3f}  [{low}, {high}]")
    return lines
