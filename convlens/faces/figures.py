"""An embed run's files after its evaluation: metrics.json, the verification ROC (roc.png as face
papers draw it, roc.csv) and the training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convlens.evaluation.plots import _pyplot, save_curves
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


def write_outputs(run: Run, metrics: dict, scores: np.ndarray, same: np.ndarray) -> None:
    """Write the run's metrics.json, ROC (PNG and CSV) and curves.png."""
    run.write_metrics(metrics)
    far, tar, thresholds = roc(scores, same)
    lines = "\n".join(
        f"{t:.6g},{f:.6g},{r:.6g}" for t, f, r in zip(thresholds, far, tar, strict=True)
    )
    (run.path / "roc.csv").write_text("threshold,far,tar\n" + lines + "\n")
    save_roc({f"AUC {metrics['auc']:.4f}": (far, tar)}, run.path / "roc.png",
             f"verification ROC, {metrics['split']} pairs")  # fmt: skip
    if rows := run.read_results():
        save_curves(rows, run.path / "curves.png")
