"""An embed run's report.html: the verification numbers, the ROC, the curves and the settings."""

from __future__ import annotations

import html

from convlens.report.html import STYLE, img_file, settings_table, table
from convlens.tasks.base import Evaluation, LoadedRun


def page(run: LoadedRun, ev: Evaluation) -> str:
    """A self-contained page: the numbers, the ROC, the training curves and the settings."""
    metrics, run_dir = ev.metrics, run.folder.path
    names = {
        "auc": "AUC", "eer": "EER", "tar@far=0.01": "TAR at FAR 1e-2",
        "tar@far=0.001": "TAR at FAR 1e-3", "threshold": "threshold (chosen on val pairs)",
        "accuracy": "accuracy at that threshold", "best_accuracy": "best accuracy on these pairs",
        "rank1": "rank-1 (5-image gallery)", "rank5": "rank-5", "pairs": "pairs",
        "embedding_size": "embedding size",
    }  # fmt: skip
    rows = [
        f'<tr><td class="left">{html.escape(label)}</td><td>{_fmt(metrics[key])}</td></tr>'
        for key, label in names.items()
        if key in metrics
    ]
    cfg = run.folder.settings()
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>convlens report: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head><body>
<header><div class="wrap"><div class="kicker">convlens face embedding report</div>
<h1>{html.escape(run_dir.name)}</h1><p class="sub">{html.escape(str(metrics["data"]))},
{html.escape(metrics["split"])} split, {metrics["n"]:,} images</p></div></header>
<main class="wrap">
<section id="verification"><h2>Verification</h2>{table(["measure", "value"], rows, left=(0,))}
{img_file(run_dir / "roc.png", "ROC curve")}</section>
<section id="curves"><h2>Training curves</h2>{img_file(run_dir / "curves.png", "curves")}</section>
<section id="settings"><h2>Settings</h2>{settings_table(cfg)}</section>
</main></body></html>
"""


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))
