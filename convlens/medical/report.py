"""report.html of multi-label and anomaly runs: headline metrics, tables, ROC curves, scores."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

from convlens.evaluation.report_html import cards, img, img_file, note, page, table

GALLERY = 8  # images per gallery: the normal images scored highest, the anomalies scored lowest
METHODS = {"geom": "GEOM", "mahalanobis": "Mahalanobis"}  # raw score name -> shown name
DETECTION = {"sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV",
             "npv": "NPV", "f1": "F1", "pr_auc": "PR AUC (AP)"}  # fmt: skip


def write_multilabel_report(
    run_dir: Path, metrics: dict, labels: np.ndarray, scores: np.ndarray
) -> Path:
    """Write run_dir/report.html (and roc_labels.png) from the metrics and the (N, L) scores."""
    from convlens.evaluation.plots import save_label_rocs

    names = [p["label"] for p in metrics["per_label"]]
    save_label_rocs(labels, scores, names, run_dir / "roc_labels.png")
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
    return _write(run_dir, page(run_dir.name, "convlens report · multi-label", sub, top, sections))


def write_anomaly_report(
    run_dir: Path,
    metrics: dict,
    raw: dict[str, np.ndarray],  # score name -> (N,) raw scores of the split, high = anomalous
    classes: list[str],  # (N,) the class name of each image of the split
    images: torch.Tensor | None = None,  # (N, C, H, W) uint8, the split's images for the gallery
) -> Path:
    """Write run_dir/report.html (and curves.png, roc_pr.png, anomaly_scores.png) of an anomaly
    run from what AnomalyTask.evaluate measured."""
    from convlens.evaluation.plots import save_curves, save_roc_pr, save_score_histogram
    from convlens.evaluation.report import settings_table
    from convlens.medical.anomaly_score import to_unit
    from convlens.medical.metrics import curves
    from convlens.runs.folder import Run

    method, calibration, block = metrics["method"], metrics["calibration"], metrics.get("detection")
    scores = raw[method]  # (N,)
    anomalous = np.array([c not in metrics["normal"] for c in classes], dtype=bool)  # (N,)
    run = Run(run_dir)
    if rows := run.read_results():
        save_curves(rows, run_dir / "curves.png")
    if block is not None:  # the split holds normal and anomalous images
        positive = f"anomalous (not {', '.join(metrics['normal'])})"
        save_roc_pr(
            curves(anomalous, scores), {**block, "positive_class": positive}, run_dir / "roc_pr.png"
        )
    save_score_histogram(
        scores,
        anomalous,
        calibration["threshold"],
        f"raw {METHODS[method]} score (higher: more anomalous)",
        run_dir / "anomaly_scores.png",
    )
    unit = to_unit(torch.from_numpy(scores), calibration).numpy()  # (N,) what predict reports
    cfg = run.settings()
    top = [("AUROC", _num(metrics["auroc"]))]
    top += [(f"AUROC {name}", _num(v)) for name, v in _other_aurocs(metrics)]
    top += [(k, _num(metrics[k])) for k in ("sensitivity", "specificity")]
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
    model = f"{html.escape(str(cfg['model']))} on " if cfg.get("model") else ""
    sub = (
        f"{model}{_sub(metrics)}<br>normal: {html.escape(', '.join(metrics['normal']))} &middot; "
        f"method: {METHODS[method]} score over GEOM's 72 transformations"
    )
    kicker = "convlens report · anomaly detection"
    return _write(run_dir, page(run_dir.name, kicker, sub, cards(top), sections))


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
    from convlens.explain.figures import png_image, to_rgb

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


def _other_aurocs(metrics: dict) -> list[tuple[str, float]]:
    """("GEOM", AUROC) etc.: each score measured beside the run's own (auroc_geom in metrics)."""
    others = [(k.removeprefix("auroc_"), v) for k, v in metrics.items() if k.startswith("auroc_")]
    return [(METHODS.get(k, k), v) for k, v in others if v is not None]


def _sub(metrics: dict) -> str:
    return (
        f"{html.escape(str(metrics['data']))} &middot; {html.escape(metrics['split'])} split, "
        f"{metrics['n']:,} images"
    )


def _write(run_dir: Path, text: str) -> Path:
    out = run_dir / "report.html"
    out.write_text(text)
    return out


def _row(label: str, value: float | None, ci: list | None) -> str:
    interval = "&ndash;" if ci is None or None in ci else f"{ci[0]:.3f} &ndash; {ci[1]:.3f}"
    return f"<tr><td>{html.escape(label)}</td>{_cell(value)}<td>{interval}</td></tr>"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(value: float | None) -> str:
    return "<td>&ndash;</td>" if value is None else f"<td>{value:.3f}</td>"
