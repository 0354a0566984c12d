"""report.html of a multi-label run: the averaged metrics, a per-label table, ROC curves."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from convlens.evaluation.report_html import STYLE, img_file, table


def write_multilabel_report(
    run_dir: Path, metrics: dict, labels: np.ndarray, scores: np.ndarray
) -> Path:
    """Write run_dir/report.html (and roc_labels.png) from the metrics and the (N, L) scores."""
    from convlens.evaluation.plots import save_label_rocs

    names = [p["label"] for p in metrics["per_label"]]
    save_label_rocs(labels, scores, names, run_dir / "roc_labels.png")
    cards = [("macro AUC", metrics["macro_auc"]), ("micro AUC", metrics["micro_auc"]),
             ("mAP", metrics["map"])]  # fmt: skip
    cards_html = "".join(
        f'<div class="card"><span>{k}</span><b>{v:.3f}</b></div>' for k, v in cards
    )
    rows = [
        f"<tr><td>{html.escape(p['label'])}</td><td>{p['support']:,}</td>{_cell(p['auc'])}"
        f"{_cell(p['ap'])}{_cell(p['threshold'])}{_cell(p['sensitivity'])}"
        f"{_cell(p['specificity'])}</tr>"
        for p in metrics["per_label"]
    ]
    head = ["label", "positives", "AUC", "AP", "threshold (val)", "sensitivity", "specificity"]
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>convlens report: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head><body>
<header><div class="wrap"><div class="kicker">convlens report &middot; multi-label</div>
<h1>{html.escape(run_dir.name)}</h1>
<p class="sub">{html.escape(str(metrics["data"]))} &middot; {html.escape(metrics["split"])}
split, {metrics["n"]:,} images</p><div class="cards">{cards_html}</div></div></header>
<main class="wrap">
<section id="curves"><h2>Training curves</h2>{img_file(run_dir / "curves.png", "curves")}</section>
<section id="per-label"><h2>Per label</h2><p>Each label is flagged at its own threshold, chosen
on the validation split by Youden's J (or the run's target sensitivity).</p>
{table(head, rows)}</section>
<section id="roc"><h2>ROC curves</h2>{img_file(run_dir / "roc_labels.png", "ROC per label")}
</section></main></body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _cell(value: float | None) -> str:
    return "<td>&ndash;</td>" if value is None else f"<td>{value:.3f}</td>"
