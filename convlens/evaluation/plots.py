"""Figures of a run: confusion matrix and training curves (matplotlib, imported when used)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_confusion_matrix(cm: list[list[int]], classes: list[str], path: Path) -> None:
    """Rows are true classes, columns predictions; colour is the row share, text the count."""
    import numpy as np

    plt = _pyplot()
    m = np.asarray(cm, dtype=float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(classes)
    size = max(4.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_curves(rows: list[dict], path: Path) -> None:
    """Loss and validation accuracy (or the task's score) per epoch."""
    from convlens.training.progress import score_column

    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    a.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    a.plot(epochs, [r["val_loss"] for r in rows], "o-", label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    score = score_column(rows[0])
    b.plot(epochs, [100 * r[score] for r in rows], "o-", color="tab:green")
    b.set_xlabel("epoch")
    b.set_ylabel("val accuracy (%)" if score == "val_acc" else f"{score} (x100)")
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
