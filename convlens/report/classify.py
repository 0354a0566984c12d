"""A classifier's report.html: images inline (base64), no script, no outside asset.

Sections: summary cards, training curves, per-class table, confusion matrix, reliability diagram,
the most confident mistakes with their Grad-CAM, filters and feature maps, parameter sharing,
translation invariance and settings. The explanation sections come from
convlens.report.explained; the costly ones (top-activating patches, invariance) only when
`convlens explain` has written them into RUN/explain/, so the report takes seconds at the end
of training.
"""

from __future__ import annotations

import datetime
import html
import json
from pathlib import Path

from convlens.report import explained as explain
from convlens.report.html import STYLE, cards, img_file, note, settings_table, table
from convlens.runs.folder import score_column
from convlens.tasks.base import Evaluation, LoadedRun
from convlens.version import __version__

SECTIONS = {  # id -> title, in page order
    "curves": "Training curves",
    "per-class": "Per class",
    "confusion": "Confusion matrix",
    "calibration": "Calibration",
    "mistakes": "Most confident mistakes",
    "hierarchy": "Filters and feature maps",
    "sharing": "Parameter sharing",
    "invariance": "Translation invariance",
    "settings": "Settings",
}
TITLES = {**SECTIONS, "detection": "Detection (threshold chosen on validation)"}  # + by run


def page(run: LoadedRun, ev: Evaluation) -> str:
    """The report page as one HTML string, from the run's files, the model the caller holds and
    what ClassifyTask.evaluate measured (the evaluated split and its probabilities)."""
    metrics, split, probs = ev.metrics, ev.details.get("split"), ev.details.get("probs")
    run_dir = run.folder.path
    cfg = run.folder.settings()
    explained_dir = run_dir / "explain"
    explained = _read_json(explained_dir / "summary.json")
    body = {
        "curves": img_file(run_dir / "curves.png", "training curves")
        or note("no results.csv: this run has no per-epoch results"),
        "detection": _detection(metrics, run_dir),
        "per-class": _per_class(metrics),
        "confusion": img_file(run_dir / "confusion_matrix.png", "confusion matrix"),
        "calibration": _calibration(metrics, run_dir),
        "mistakes": _guard(explain.mistakes, run, metrics, split, probs),
        "hierarchy": _guard(explain.hierarchy, run, split, explained and explained_dir),
        "sharing": _guard(explain.sharing, run),
        "invariance": _guard(explain.invariance, explained),
        "settings": settings_table(cfg),
    }
    body = {k: v for k, v in body.items() if v is not None}  # None: not for this run
    nav = "".join(f'<a href="#{k}">{html.escape(TITLES[k])}</a>' for k in body)
    sections = "".join(
        f'<section id="{k}"><h2>{html.escape(TITLES[k])}</h2>{v}</section>' for k, v in body.items()
    )
    name = html.escape(str(cfg.get("model") or run.meta.model.name))
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>convlens report: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head><body>
<header><div class="wrap"><div class="kicker">convlens report</div>
<h1>{html.escape(run_dir.name)}</h1>
<p class="sub">{name} on {html.escape(str(metrics["data"]))} &middot;
{html.escape(metrics["split"])} split, {metrics["n"]:,} images</p>
{_cards(metrics, run)}</div></header>
<nav><div class="wrap">{nav}</div></nav>
<main class="wrap">{sections}</main>
<footer class="wrap">convlens {html.escape(__version__)} &middot; {when} &middot;
{html.escape(str(metrics.get("weights", "")))}</footer>
</body></html>
"""


def _guard(section, *args) -> str:
    """A section's HTML, or a visible note saying why it could not be drawn."""
    try:
        return section(*args)
    except Exception as e:  # written after training: one bad section must not cost the run
        return note(f"this section could not be drawn: {type(e).__name__}: {e}")


def _cards(metrics: dict, run: LoadedRun) -> str:
    items = [("accuracy", f"{100 * metrics['accuracy']:.2f}%")]
    if len(metrics["per_class"]) > 5:
        items.append(("top-5 accuracy", f"{100 * metrics['top5']:.2f}%"))
    items.append(("macro F1", f"{metrics['macro_f1']:.3f}"))
    if "ece" in metrics:  # older metrics.json files have none
        items.append(("calibration error (ECE)", f"{100 * metrics['ece']:.1f}%"))
    if "calibration" in metrics:  # val ECE without and with the fitted temperature
        cal = metrics["calibration"]
        ece = " &rarr; ".join(f"{100 * e:.1f}%" for e in cal["val_ece"])
        items.append(("temperature (val ECE)", f"{cal['temperature']:.3f} ({ece})"))
    if "openset" in metrics:  # open-set rejection: what the val threshold keeps of this split
        o = metrics["openset"]
        kept = f"{100 * o['kept']:.1f}% at {o['score']} &ge; {o['threshold']:.4g}"
        items.append(("kept as known", kept))
    rows = run.folder.read_results()
    if rows:
        items += [
            ("best val accuracy", f"{100 * max(r[score_column(r)] for r in rows):.2f}%"),
            ("epochs", f"{int(rows[-1]['epoch'])}"),
            ("training time", _duration(rows[-1]["seconds"])),
        ]
    items.append(("parameters", f"{sum(p.numel() for p in run.net.parameters()):,}"))
    return cards(items)


def _per_class(metrics: dict) -> str:
    cm = metrics["confusion_matrix"]  # rows: true class, columns: predicted
    classes = [c["class"] for c in metrics["per_class"]]
    f1 = [c["f1"] for c in metrics["per_class"]]
    worst = f1.index(min(f1)) if min(f1) < max(f1) else -1  # marked only when it stands out
    rows = []
    for i, c in enumerate(metrics["per_class"]):
        off = max(((n, j) for j, n in enumerate(cm[i]) if j != i and n > 0), default=None)
        taken = f"{html.escape(classes[off[1]])} ({off[0]:,})" if off else "&ndash;"
        mark = ' class="worst"' if i == worst else ""
        rows.append(
            f"<tr{mark}><td>{html.escape(c['class'])}</td><td>{c['precision']:.3f}</td>"
            f'<td>{c["recall"]:.3f}</td><td class="barcell">{_bar(c["f1"])}</td>'
            f'<td>{c["support"]:,}</td><td class="left">{taken}</td></tr>'
        )
    head = ["class", "precision", "recall", "F1", "support", "most often taken for"]
    return table(head, rows, left=(3, 5))


def _calibration(metrics: dict, run_dir: Path) -> str:
    """The reliability diagram, what it shows, and the temperature fitted on validation."""
    figure = img_file(run_dir / "reliability.png", "reliability diagram")
    if not figure:
        return note("no reliability.png: evaluate the run again (convlens report RUN) to draw it")
    text = (
        f"The {html.escape(metrics['split'])} images grouped by confidence (the probability of "
        "the predicted class): each bar is how often the model was right in that group, the "
        "number above it how many images fell there. A calibrated model's bars reach the "
        "dashed diagonal. The shading is the gap to the group's mean confidence: above a bar "
        "the model was more confident than right (over-confident), inside it less "
        "(under-confident). The ECE in the title is that gap averaged over all the images."
    )
    cal = metrics.get("calibration")
    if cal:
        before, after = (f"{100 * e:.1f}%" for e in cal["val_ece"])
        text += (
            f" These probabilities are temperature-scaled: the logits are divided by "
            f"T = {cal['temperature']:.3f}, fitted on the validation split "
            f"({'softer' if cal['temperature'] > 1 else 'sharper'} than the raw softmax), "
            f"which took the validation ECE from {before} to {after}."
        )
    else:
        text += " These are the raw softmax probabilities: no temperature was fitted for this run."
    return f"<p>{text}</p>{figure}"


def _detection(metrics: dict, run_dir: Path) -> str | None:
    """Two-class runs: each detection metric with its bootstrap CI, and the ROC/PR figure."""
    block = metrics.get("detection")
    if block is None:
        return None
    if "skipped" in block:
        return note(block["skipped"])
    point = block["operating_point"]
    how = "Youden's J" if point["method"] == "youden" else (
        f"sensitivity >= {point['target_sensitivity']}")  # fmt: skip
    text = (
        f"Positive class {html.escape(block['positive_class'])}: a case is flagged when its "
        f"probability is at least {point['threshold']:.4f}, chosen on the validation split "
        f"({point['val_n']} images) by {how}. 95% CIs: {block['bootstrap']['resamples']} "
        "bootstrap resamples of the evaluated cases."
    )
    rows = []
    names = {"sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV",
             "npv": "NPV", "f1": "F1", "roc_auc": "ROC AUC", "pr_auc": "PR AUC (AP)"}  # fmt: skip
    for name, label in names.items():
        m = block[name]
        value = "&ndash;" if m["value"] is None else f"{m['value']:.3f}"
        ci = "&ndash;" if None in m["ci"] else f"{m['ci'][0]:.3f} &ndash; {m['ci'][1]:.3f}"
        rows.append(f"<tr><td>{label}</td><td>{value}</td><td>{ci}</td></tr>")
    figure = img_file(run_dir / "roc_pr.png", "ROC and precision-recall curves")
    head = ["metric", "value", "95% CI"]
    return f"<p>{text}</p>{table(head, rows, cls='grid narrow')}{figure}"


def _bar(value: float) -> str:
    return (
        f'<div class="bar"><i style="width:{100 * value:.1f}%"></i><span>{value:.3f}</span></div>'
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
