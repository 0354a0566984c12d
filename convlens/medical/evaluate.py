"""A two-class run's clinical view: the operating threshold chosen on validation, detection
metrics with CIs on the evaluated split, ROC/PR figures, and the threshold saved for predict."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from convlens.data import Split
from convlens.errors import ConfigError, ConvlensError
from convlens.medical.metrics import curves, detection_block, positive_index
from convlens.runs.checks import validate_operating_point
from convlens.runs.folder import Run

THRESHOLD_FILE = "threshold.json"  # beside the weights: what predict needs to flag a case


def add_detection(
    metrics: dict,
    meta: dict,
    run_dir: Path | None,
    val: Split,
    val_probs: torch.Tensor,
    part: Split,
    probs: torch.Tensor,
    target_sensitivity: float | None = None,
    *,
    write: bool = False,
) -> None:
    """Put metrics["detection"] (or the reason it is missing) and, with write, save its files."""
    target = run_setting(run_dir, target_sensitivity)
    if target is not None and not 0 < target <= 1:  # a setting error, not a data problem
        raise ConfigError(f"setting 'target_sensitivity' must be in (0, 1], got {target}")
    try:
        block = detection_block(
            meta["classes"],
            (val.labels.numpy(), val_probs.numpy()),
            (part.labels.numpy(), probs.numpy()),
            target,
        )
    except ConvlensError as e:  # e.g. a split without positives: say so, keep the other metrics
        metrics["detection"] = {"skipped": str(e)}
        return
    metrics["detection"] = block
    if write and run_dir is not None:
        from convlens.evaluation.plots import save_roc_pr

        save_threshold(run_dir / "weights", block)
        pos = positive_index(meta["classes"])
        points = curves(part.labels.numpy() == pos, probs[:, pos].numpy())
        save_roc_pr(points, block, run_dir / "roc_pr.png")


def run_setting(run_dir: Path | None, given: float | None) -> float | None:
    """The target sensitivity: as given, else the run's `target_sensitivity` setting."""
    if given is not None or run_dir is None or not Run(run_dir).is_run():
        return given
    from convlens.config import make_config

    return make_config(Run(run_dir).config).target_sensitivity


def save_threshold(folder: Path, block: dict) -> Path:
    """Write the operating point (chosen on validation) beside the weights, for predict."""
    out = folder / THRESHOLD_FILE
    point = {"positive_class": block["positive_class"], **block["operating_point"]}
    out.write_text(json.dumps(point, indent=2) + "\n")
    return out


def read_threshold(weights: Path, classes: list[str]) -> dict | None:
    """The operating point saved beside `weights`, checked, or None when the run has none."""
    path = Path(weights).parent / THRESHOLD_FILE
    if not path.is_file():
        return None
    return validate_operating_point(read_json(path), classes, path)


def read_json(path: Path) -> object:
    """A small JSON side file of a run (regular files only), or one line saying why not."""
    from convlens.data.files import read_regular

    try:
        return json.loads(read_regular(path, limit=1 << 24))
    except (ValueError, RecursionError):
        raise ConvlensError(f"{path}: not valid JSON") from None


def flag_rows(rows: list[dict], point: dict) -> list[dict]:
    """Add {"flag": bool, "positive_score"} to predict rows of a two-class run."""
    for row in rows:
        scores = {p["label"]: p["score"] for p in row.get("predictions", [])}
        if not scores:
            continue
        # two classes: p(positive) = 1 - p(other) when top-k left the positive class out
        score = scores.get(point["positive_class"], 1 - next(iter(scores.values())))
        row["positive_score"] = score
        row["flag"] = score >= point["threshold"]
    return rows


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
