"""report.html of multi-label and anomaly runs: headline metrics, tables, ROC curves, scores.

The figures are the task's (its evaluate wrote them into the run folder); these pages show them
beside what the evaluation measured.
"""

from __future__ import annotations

import html

import numpy as np
import torch

from convlens.explain.figures import overlay, png_image, to_rgb
from convlens.medical.anomaly_score import SCORE_NAMES as METHODS
from convlens.medical.anomaly_score import to_unit
from convlens.report.html import cards, img, img_file, note, page, settings_table, table
from convlens.tasks.base import Evaluation, LoadedRun

GALLERY = 8  # images per gallery: the normal images scored highest, the anomalies scored lowest
MAP_TILES = (6, 2)  # anomaly maps shown: anomalous and normal images, spread over the split
DETECTION = {"sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV",
             "npv": "NPV", "f1": "F1", "pr_auc": "PR AUC (AP)"}  # fmt: skip


def multilabel_page(run: LoadedRun, ev: Evaluation) -> str:
    """A multi-label run's page: the averaged metrics, each label's, and the ROC curves."""
    metrics, run_dir = ev.metrics, run.folder.path
    shown = (("macro AUC", "macro_auc"), ("micro AUC", "micro_auc"), ("mAP", "map"))
    top = cards([(k, _num(metrics[key])) for k, key in shown])
    rows = [
        f"<tr><td>{html.escape(p['label'])}</td><td>{p['support']:,}</td>{_cell(p['auc'])}"
        f"{_cell(p['ap'])}{_cell(p['threshold'])}{_cell(p['sensitivity'])}"
        f"{_cell(p['specificity'])}</tr>"
        for p in metrics["per_label"]
    ]
    head = ["label", "positives", "AUC", "AP", "threshold (val)", "sensitivity", "specificity"]
    per_label = (
        "<p>Each label is flagged at its own threshold, chosen on the validation split by "
        f"Youden's J (or the run's target sensitivity).</p>{table(head, rows)}"
    )
    sections = {
        "curves": ("Training curves", img_file(run_dir / "curves.png", "curves")),
        "per-label": ("Per label", per_label),
        "roc": ("ROC curves", img_file(run_dir / "roc_labels.png", "ROC per label")),
    }
    sub = _sub(metrics)
    return page(run_dir.name, "convlens report · multi-label", sub, top, sections)


def anomaly_page(run: LoadedRun, ev: Evaluation) -> str:
    """An anomaly run's page from what AnomalyTask.evaluate measured: its details hold "raw"
    {score name: (N,) raw scores, high = anomalous}, "classes" (N,) each image's class name
    and "images" (N, C, H, W) uint8, for the gallery; a patch run's also "maps" (N, H, W) in
    [0, 1] and "masks" (N, H, W) bool or None."""
    metrics, run_dir = ev.metrics, run.folder.path
    raw, classes, images = ev.details["raw"], ev.details["classes"], ev.details.get("images")
    method, calibration = metrics["method"], metrics["calibration"]
    scores = raw[method]  # (N,)
    unit = to_unit(torch.from_numpy(scores), calibration).numpy()  # (N,) what predict reports
    cfg = run.folder.settings()
    top = [("AUROC", _num(metrics["auroc"]))]
    top += [(f"AUROC {name}", _num(v)) for name, v in _other_aurocs(metrics)]
    top += [(k, _num(metrics[k])) for k in ("sensitivity", "specificity")]
    top += [(label, _num(metrics[k])) for k, label in LOCALISATION.items() if k in metrics]
    top.append(("normal / anomalous", f"{metrics['n_normal']:,} / {metrics['n_anomalous']:,}"))
    roc = img_file(run_dir / "roc_pr.png", "ROC and precision-recall curves") or note(
        f"no ROC curve: the {metrics['split']} split needs both normal and anomalous images"
    )
    training = img_file(run_dir / "curves.png", "training curves") or note(
        "no results.csv: this run has no per-epoch results"
    )
    histogram = (
        f"<p>Raw {METHODS[method]} scores of the {metrics['split']} images, each group scaled "
        "to sum to 1; the dashed line is the threshold chosen on validation.</p>"
        f"{img_file(run_dir / 'anomaly_scores.png', 'anomaly scores')}"
    )
    sections = {
        "curves": ("Training curves", training),
        "metrics": ("Metrics", _anomaly_metrics(metrics)),
        "threshold": ("Threshold", _threshold(metrics)),
        "roc": ("ROC curve", roc),
        "scores": ("Anomaly scores", histogram),
        "gallery": ("False alarms and misses", _gallery(images, scores, unit, metrics, classes)),
        "settings": ("Settings", settings_table(cfg)),
    }
    how = f"{METHODS[method]} score over GEOM's 72 transformations"
    if "maps" in ev.details:  # a patch method: its maps, before the settings
        settings = sections.pop("settings")
        sections["maps"] = ("Anomaly maps", _maps(images, ev.details, unit, metrics, classes))
        sections["settings"] = settings
        how = f"{METHODS[method]} patch scores of the GEOM-trained network, with anomaly maps"
    model = f"{html.escape(str(cfg['model']))} on " if cfg.get("model") else ""
    sub = (
        f"{model}{_sub(metrics)}<br>normal: {html.escape(', '.join(metrics['normal']))} &middot; "
        f"method: {how}"
    )
    kicker = "convlens report · anomaly detection"
    return page(run_dir.name, kicker, sub, cards(top), sections)


def _anomaly_metrics(metrics: dict) -> str:
    """AUROC per score, then the flags' metrics, each with the bootstrap CI metrics.json holds."""
    block = metrics.get("detection")
    if block is None:
        return note(
            f"the {metrics['split']} split holds {metrics['n_normal']} normal and "
            f"{metrics['n_anomalous']} anomalous images: AUROC, sensitivity and specificity "
            "need both"
        )
    name = METHODS[metrics["method"]]
    rows = [_row(f"AUROC ({name})", metrics["auroc"], block["roc_auc"]["ci"])]  # the run's score
    others = _other_aurocs(metrics)  # measured, not bootstrapped
    rows += [_row(f"AUROC ({other})", v, None) for other, v in others]
    rows += [_row(label, block[k]["value"], block[k]["ci"]) for k, label in DETECTION.items()]
    rows += [_row(label, metrics[k], None) for k, label in LOCALISATION.items() if k in metrics]
    boot = block["bootstrap"]
    aside = " (none for the AUROC of a second score)" if others else ""
    text = (
        f"<p>Positive: an image of no normal class. {100 * boot['confidence']:.0f}% CIs from "
        f"{boot['resamples']:,} bootstrap resamples of the {block['n']:,} {metrics['split']} "
        f"images{aside}.</p>"
    )
    return text + table(["metric", "value", "95% CI"], rows, cls="grid narrow")


def _threshold(metrics: dict) -> str:
    """The flag's threshold, the rule that chose it on validation, sensitivity/specificity at it."""
    cal, block = metrics["calibration"], metrics.get("detection")
    text = (
        f"<p>An image is flagged anomalous when its score in [0, 1] is at least "
        f"{metrics['threshold']}, that is when its raw {METHODS[metrics['method']]} score is at "
        f"least {cal['threshold']:.4g}. The threshold was chosen by "
        f"{html.escape(cal['rule'])}.</p>"
    )
    rows = []
    if "val_sensitivity" in cal:
        rows.append(
            f"<tr><td>validation</td>{_cell(cal['val_sensitivity'])}"
            f"{_cell(cal['val_specificity'])}</tr>"
        )
    if block is not None:
        c = block["confusion"]
        text += (
            f"<p>On the {metrics['split']} split {c['tp']:,} of {c['tp'] + c['fn']:,} anomalous "
            f"images are flagged and {c['fp']:,} of {c['fp'] + c['tn']:,} normal ones (false "
            "alarms).</p>"
        )
        rows.append(
            f"<tr><td>{html.escape(metrics['split'])}</td>{_cell(metrics['sensitivity'])}"
            f"{_cell(metrics['specificity'])}</tr>"
        )
    return text + (
        table(["split", "sensitivity", "specificity"], rows, cls="grid narrow") if rows else ""
    )


def _gallery(images, raw: np.ndarray, unit: np.ndarray, metrics: dict, classes) -> str:
    """The normal images scored most anomalous and the anomalies scored most normal."""
    if images is None:
        return note("the split's images are not at hand: `convlens report RUN` draws this section")
    anomalous = np.array([c not in metrics["normal"] for c in classes], dtype=bool)  # (N,)
    flagged = raw >= metrics["calibration"]["threshold"]  # (N,) as the metrics flag them
    normal, anomaly = np.flatnonzero(~anomalous), np.flatnonzero(anomalous)
    groups = [
        ("Normal images scored highest", normal[np.argsort(-raw[normal], kind="stable")],
         "false alarm", "not flagged"),
        ("Anomalies scored lowest", anomaly[np.argsort(raw[anomaly], kind="stable")],
         "flagged", "missed"),
    ]  # fmt: skip
    scale = max(1, 112 // max(images.shape[-2:]))  # small images shown at about 112 px
    parts = []
    for title, order, above, below in groups:
        if len(order) == 0:
            continue
        tiles = []
        for i in order[:GALLERY].tolist():
            said = above if flagged[i] else below
            tiles.append(
                f'<figure class="mistake">{img(png_image(to_rgb(images[i]), scale), "image")}'
                f"<figcaption>score <b>{unit[i]:.3f}</b> ({html.escape(said)})<br><span>raw "
                f"{raw[i]:.4g} &middot; class {html.escape(classes[i])}</span></figcaption>"
                "</figure>"
            )
        parts.append(f'<h3>{title}</h3><div class="mistakes">{"".join(tiles)}</div>')
    return "".join(parts)


def _maps(images, details: dict, unit: np.ndarray, metrics: dict, classes) -> str:
    """A few images of the split with their maps over them, beside their defect masks."""
    if images is None:
        return note("the split's images are not at hand: `convlens report RUN` draws this section")
    maps, masks = details["maps"], details["masks"]
    anomalous = np.array([c not in metrics["normal"] for c in classes], dtype=bool)  # (N,)
    picks = []
    for group, count in zip((anomalous, ~anomalous), MAP_TILES, strict=True):
        where = np.flatnonzero(group)
        picks += where[np.linspace(0, len(where) - 1, min(count, len(where))).astype(int)].tolist()
    scale = max(1, 112 // max(images.shape[-2:]))
    tiles = []
    for i in sorted(set(picks)):
        shown = overlay(images[i], torch.from_numpy(maps[i]))  # (H, W, 3) uint8
        right, what = to_rgb(images[i]), "image"
        if masks is not None:
            right, what = np.repeat(masks[i][..., None], 3, axis=2).astype(np.float64), "mask"
        tiles.append(
            f'<figure class="mistake"><div class="pair">{img(png_image(shown, scale), "map")}'
            f"{img(png_image(right, scale), what)}</div><figcaption>score <b>{unit[i]:.3f}</b>"
            f"<br><span>class {html.escape(classes[i])} &middot; max of the map "
            f"{float(maps[i].max()):.3f}</span></figcaption></figure>"
        )
    text = (
        "<p>Each patch's score, upsampled to the image and smoothed (Gaussian, sigma 4 px at "
        "224 px), on the image score's [0, 1] scale: 0.5 is the threshold chosen on validation. "
        + ("Right: the defect's ground-truth mask." if masks is not None else "Right: the image.")
        + "</p>"
    )
    return text + f'<div class="mistakes">{"".join(tiles)}</div>'


def _other_aurocs(metrics: dict) -> list[tuple[str, float]]:
    """("GEOM", AUROC) etc.: each score measured beside the run's own (auroc_geom in metrics)."""
    others = [(k.removeprefix("auroc_"), v) for k, v in metrics.items() if k.startswith("auroc_")]
    return [(METHODS.get(k, k), v) for k, v in others if v is not None]


LOCALISATION = {"pixel_auroc": "pixel AUROC", "pro": "PRO (FPR 0.3)"}  # with masks


def _sub(metrics: dict) -> str:
    return (
        f"{html.escape(str(metrics['data']))} &middot; {html.escape(metrics['split'])} split, "
        f"{metrics['n']:,} images"
    )


def _row(label: str, value: float | None, ci: list | None) -> str:
    interval = "&ndash;" if ci is None or None in ci else f"{ci[0]:.3f} &ndash; {ci[1]:.3f}"
    return f"<tr><td>{html.escape(label)}</td>{_cell(value)}<td>{interval}</td></tr>"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(value: float | None) -> str:
    return "<td>&ndash;</td>" if value is None else f"<td>{value:.3f}</td>"
