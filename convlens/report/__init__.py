"""report.html: one self-contained page per run (images inline, no script, no outside asset).

    html.py       the stylesheet and the page's building blocks
    classify.py   a classifier's page; explained.py its sections drawn with convlens.explain
    medical.py    the pages of multi-label and anomaly runs
    embed.py      the page of a face embedding run

Above evaluation and explain: the caller hands over the model it holds and what its task's
evaluate measured (convlens.api.evaluate writes the page after the metrics and figures).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from convlens.faces.embed import EmbedTask
from convlens.medical.anomaly import AnomalyTask
from convlens.medical.multilabel import MultilabelTask
from convlens.report import classify, embed, medical
from convlens.tasks.base import Evaluation, LoadedRun
from convlens.tasks.classify import ClassifyTask

PAGES: dict[type, Callable[[LoadedRun, Evaluation], str]] = {  # a task's class -> its page
    ClassifyTask: classify.page,
    MultilabelTask: medical.multilabel_page,
    AnomalyTask: medical.anomaly_page,
    EmbedTask: embed.page,
}


def write_report(run: LoadedRun, ev: Evaluation) -> Path | None:
    """Write RUN/report.html for what `ev` measured; None for a task with no page here."""
    page = PAGES.get(run.task)
    if page is None or run.folder is None:
        return None
    run.folder.report.write_text(page(run, ev))
    return run.folder.report
