"""Figures of a run: confusion matrix, training curves, reliability diagram and more (matplotlib,
imported when used)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convlens.evaluation.metrics import ece_of_bins, reliability_bins
from convlens.runs.folder import score_column


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain(text: object) -> str:
    """`text` drawn as it is: its $ signs escaped (matplotlib reads $...$ as math and refuses
    what does not parse); characters it cannot draw (controls but newline, lone surrogates) as
    U+FFFD."""
    shown = "".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in str(text))
    return shown.replace("$", r"\$")


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
    names = [plain(c) for c in classes]
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
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


def save_reliability(labels, probs, path: Path, bins: int = 15) -> None:
    """Reliability diagram (Guo et al. 2017) of labels (N,) and probabilities (N, K): per
    confidence bin the accuracy as a bar, the gap to the bin's mean confidence shaded, the image
    count above; a calibrated model's bars reach the diagonal. ECE in the title."""
    plt = _pyplot()
    rel = reliability_bins(labels, probs, bins)
    width = 1 / bins
    fig, ax = plt.subplots(figsize=(5.2, 4.8), dpi=110)
    ax.plot([0, 1], [0, 1], "--", color="black", lw=1, label="calibrated", zorder=3)  # over bars
    filled = [i for i, n in enumerate(rel["count"]) if n]
    left = [rel["bins"][i] for i in filled]
    acc = [rel["accuracy"][i] for i in filled]
    conf = [rel["confidence"][i] for i in filled]
    ax.bar(left, acc, width, align="edge", color="tab:blue", edgecolor="white",
           label="accuracy")  # fmt: skip
    gap = [c - a for c, a in zip(conf, acc, strict=True)]  # > 0: over-confident
    ax.bar(left, gap, width, bottom=acc, align="edge", color="tab:red", alpha=0.3,
           edgecolor="tab:red", hatch="//", label="gap to mean confidence")  # fmt: skip
    for x, a, c, i in zip(left, acc, conf, filled, strict=True):
        ax.text(x + width / 2, max(a, c) + 0.01, rel["count"][i], ha="center", va="bottom",
                fontsize=6.5)  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability, ECE {100 * ece_of_bins(rel):.1f}% ({sum(rel['count']):,} images)")
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_curves(rows: list[dict], path: Path) -> None:
    """Loss and validation accuracy (or the task's score) per epoch."""
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


def save_roc_pr(points: dict, block: dict, path: Path) -> None:
    """ROC and precision-recall curves of a two-class run, the operating point marked on both."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4), dpi=110)
    sens, spec, ppv = (block[k]["value"] for k in ("sensitivity", "specificity", "ppv"))
    auc, ap = block["roc_auc"], block["pr_auc"]
    a.plot(points["fpr"], points["tpr"], color="tab:blue")
    a.plot([0, 1], [0, 1], ":", color="grey")
    a.plot([1 - spec], [sens], "o", color="tab:red", label="threshold chosen on val")
    a.set_xlabel("1 - specificity")
    a.set_ylabel("sensitivity")
    a.set_title(f"ROC, AUC {auc['value']:.3f} [{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}]")
    a.legend(loc="lower right")
    b.plot(points["recall"], points["precision"], color="tab:blue")
    b.axhline(block["positives"] / block["n"], linestyle=":", color="grey")  # chance: prevalence
    if ppv is not None:
        b.plot([sens], [ppv], "o", color="tab:red")
    b.set_xlabel("recall (sensitivity)")
    b.set_ylabel("precision (PPV)")
    b.set_title(f"PR, AP {ap['value']:.3f} [{ap['ci'][0]:.3f}, {ap['ci'][1]:.3f}]")
    for ax in (a, b):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    fig.suptitle(f"positive class: {plain(block['positive_class'])}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_label_rocs(labels, scores, names: list[str], path: Path) -> None:
    """One ROC curve per label of a multi-label run (labels, scores: (N, L) arrays)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    for j, name in enumerate(names):
        y = labels[:, j] > 0.5
        if 0 < y.sum() < len(y):  # a curve needs positives and negatives
            fpr, tpr, _ = roc_curve(y, scores[:, j])
            ax.plot(fpr, tpr, label=f"{plain(name)} ({roc_auc_score(y, scores[:, j]):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC per label (AUC)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_score_histogram(
    raw: np.ndarray, anomalous: np.ndarray, threshold: float, xlabel: str, path: Path
) -> None:
    """Histograms of the scores (N,) of normal and `anomalous` (N,) bool cases, each group's bars
    summing to 1 (the groups differ in size), with the threshold line; log x for wide ranges."""
    plt = _pyplot()
    lo, hi = float(raw.min()), float(raw.max())
    log = lo > 0 and threshold > 0 and hi / lo > 100  # Mahalanobis scores can span decades
    bins = np.geomspace(lo, hi, 41) if log else np.linspace(lo, hi if hi > lo else lo + 1, 41)
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    for label, mask, colour in (("normal", ~anomalous, "tab:blue"),
                                ("anomalous", anomalous, "tab:orange")):  # fmt: skip
        n = int(mask.sum())
        if n:
            ax.hist(raw[mask], bins, weights=np.full(n, 1 / n), alpha=0.6, color=colour,
                    label=f"{label} ({n:,})")  # fmt: skip
    ax.axvline(threshold, color="tab:red", linestyle="--", label="threshold (val)")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of the group")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
