"""`convlens train --folds K`: k-fold cross-validation, one run folder per fold.

PARENT/ (the run folder asked for)
  config.yaml            the settings (folds: K; each fold's own adds fold: I)
  fold-1/ ... fold-K/    a whole run each: trained on the other folds (less a val share that
                         picks its best epoch), its metrics.json and report on the held-out fold
  summary.json, .md      mean and sample standard deviation over the folds of every metric;
                         then each fold's model on the source's test split, evaluated at the end
  oof.csv                out-of-fold predictions: each train+val image scored by the fold model
                         that never saw it

`--resume --run PARENT` trains the folds that have not finished.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from convlens.api.evaluate import evaluate_run
from convlens.config import TrainConfig, make_config, save_config
from convlens.data.folds import fold_of, pooled
from convlens.errors import ConfigError, ConvlensError
from convlens.runs.atomic import atomic_write_bytes
from convlens.runs.folder import Run
from convlens.runs.lock import claim_new_run_dir, claim_run_dir_to_resume
from convlens.tasks.loading import load_run
from convlens.track.scalars import scalars
from convlens.training.data import load_run_data
from convlens.training.progress import Progress

SUMMARY, TABLE, OOF = "summary.json", "summary.md", "oof.csv"


def is_folds(cfg: TrainConfig) -> bool:
    """Whether `cfg` asks for every fold: --folds K without --fold, or --resume of such a run."""
    if cfg.resume and cfg.run and Run(cfg.run).is_run():
        saved = Run(cfg.run).settings()
        return bool(saved.get("folds")) and saved.get("fold") is None
    return bool(cfg.folds) and cfg.fold is None


def train_folds(cfg: TrainConfig, train: Callable[[TrainConfig], Path]) -> Path:
    """Train every fold with `train` (api.train: the unfinished folds, resuming), then write
    the summary and oof.csv."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the ranks would each claim a parent
        raise ConfigError("--folds under torchrun: start each fold with --fold I instead")
    claim = claim_run_dir_to_resume if cfg.resume else claim_new_run_dir
    log = Progress()
    with claim(cfg.run) as parent:
        if cfg.resume:
            cfg = dataclasses.replace(make_config(Run(parent).config), resume=False)
        cfg = dataclasses.replace(cfg, run=str(parent))
        if not Run(parent).is_run():
            save_config(cfg, Run(parent).config)
        for fold in range(1, cfg.folds + 1):
            home = Run(parent / f"fold-{fold}")
            if home.metrics.is_file():
                continue  # finished before a resume
            log.note(f"fold {fold} of {cfg.folds}: {home.path}")
            again = home.is_run()
            train(dataclasses.replace(cfg, fold=fold, run=str(home.path), resume=again))
        summary = summarise(cfg, parent)
    log.final(summary_line(summary), parent)
    return parent


def summarise(cfg: TrainConfig, parent: Path) -> dict:
    """summary.json, summary.md and oof.csv of a k-fold run whose folds have all finished."""
    homes = [parent / f"fold-{i}" for i in range(1, cfg.folds + 1)]
    per_fold = [scalars(json.loads(Run(h).metrics.read_text())) for h in homes]
    data = load_run_data(None, parent)  # the whole source, as each fold's was cut from it
    test = None
    if data.test is not None:  # untouched until now: each fold's best weights, once
        test = _spread([scalars(evaluate_run(h, dataset=data, split="test")) for h in homes])
    summary = {
        "folds": cfg.folds,
        "seed": cfg.seed,
        "data": cfg.data,
        "runs": [h.name for h in homes],
        "cross_validation": _spread(per_fold),
        "test": test,
        "oof": OOF,
    }
    write_oof(cfg, parent, data)
    atomic_write_bytes(parent / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
    atomic_write_bytes(parent / TABLE, summary_table(summary).encode())
    return summary


def _spread(rows: list[dict[str, float]]) -> dict:
    """{metric: {"mean", "std", "values"}} over the folds, for the metrics every fold has."""
    names = [k for k in rows[0] if all(k in r for r in rows) and k != "n"]
    out = {}
    for name in names:
        values = [r[name] for r in rows]
        std = statistics.stdev(values) if len(values) > 1 else 0.0  # sample std (n - 1)
        out[name] = {"mean": statistics.fmean(values), "std": std, "values": values}
    return out


def write_oof(cfg: TrainConfig, parent: Path, data) -> None:
    """oof.csv: index (train first, then val), fold, label, the fold model's scores."""
    pool = pooled(data)
    where = fold_of(pool, cfg.folds, cfg.seed)
    names = data.classes
    rows, header = [], None
    for fold in range(1, cfg.folds + 1):
        index = torch.from_numpy((where == fold - 1).nonzero()[0])
        run = load_run(parent / f"fold-{fold}")
        scores = run.task.scores(run, pool.images[index]).reshape(len(index), -1)  # (n, S)
        if header is None:
            columns = names if scores.shape[1] == len(names) else range(scores.shape[1])
            header = ["index", "fold", "label", *(f"score_{c}" for c in columns)]
        for i, s in zip(index.tolist(), scores.tolist(), strict=True):
            rows.append([i, fold, _label(pool.labels[i], names), *(f"{v:.6g}" for v in s)])
    rows.sort()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(parent / OOF, buf.getvalue().encode())


def _label(label: torch.Tensor, names: list[str]) -> str:
    if label.ndim == 0:
        return names[int(label)]
    return ";".join(n for n, on in zip(names, label.tolist(), strict=True) if on > 0.5)


def summary_table(summary: dict) -> str:
    """summary.md: a row per metric, mean +- std and each fold's value."""
    k = summary["folds"]
    lines = [f"# {k}-fold cross-validation of {summary['data']} (seed {summary['seed']})", ""]
    parts = [("held-out folds", summary["cross_validation"])]
    if summary["test"] is not None:
        parts.append(("test split, each fold's model", summary["test"]))
    for title, metrics in parts:
        lines += [f"## {title}", "", "| metric | mean | std | " +
                  " | ".join(f"fold {i}" for i in range(1, k + 1)) + " |",
                  "|---" * (k + 3) + "|"]  # fmt: skip
        for name, m in metrics.items():
            values = " | ".join(f"{v:.4f}" for v in m["values"])
            lines.append(f"| {name} | {m['mean']:.4f} | {m['std']:.4f} | {values} |")
        lines.append("")
    return "\n".join(lines)


def summary_line(summary: dict) -> str:
    """The final console line: the headline metrics, mean +- std."""
    cv = summary["cross_validation"]
    shown = [n for n in ("accuracy", "macro_f1", "auc", "macro_auc") if n in cv] or list(cv)[:2]
    parts = ", ".join(f"{n} {cv[n]['mean']:.4f} +- {cv[n]['std']:.4f}" for n in shown)
    if not parts:
        raise ConvlensError("the folds' metrics.json hold no number")
    return f"{summary['folds']}-fold cross-validation: {parts}"
