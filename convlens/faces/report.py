"""An embed run's files after training: metrics.json, roc.png, roc.csv, curves.png, report.html."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from convlens.evaluation.plots import _pyplot, save_curves
from convlens.evaluation.report import settings_table
from convlens.evaluation.report_html import STYLE, img_file, table
from convlens.faces.metrics import FARS, roc
from convlens.runs.folder import Run


def save_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """ROC curves (log FAR axis, as face papers draw them), one per name in `curves`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.2), dpi=110)
    for name, (far, tar) in curves.items():
        keep = far > 0  # log axis: the far = 0 points sit at the left edge
        ax.plot(far[keep], tar[keep], label=name)
    for f in FARS:
        ax.axvline(f, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(run_dir: Path, metrics: dict, scores: np.ndarray, same: np.ndarray) -> None:
    """Write the run's metrics.json, ROC (PNG and CSV), curves.png and report.html."""
    run = Run(run_dir)
    run.write_metrics(metrics)
    far, tar, thresholds = roc(scores, same)
    rows = "\n".join(
        f"{t:.6g},{f:.6g},{r:.6g}" for t, f, r in zip(thresholds, far, tar, strict=True)
    )
    (run_dir / "roc.csv").write_text("threshold,far,tar\n" + rows + "\n")
    save_roc({f"AUC {metrics['auc']:.4f}": (far, tar)}, run_dir / "roc.png",
             f"verification ROC, {metrics['split']} pairs")  # fmt: skip
    if rows := run.read_results():
        save_curves(rows, run_dir / "curves.png")
    (run_dir / "report.html").write_text(build_report(run_dir, metrics))


def build_report(run_dir: Path, metrics: dict) -> str:
    """A self-contained page: the numbers, the ROC, the training curves and the settings."""
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
    cfg = Run(run_dir).settings()
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
