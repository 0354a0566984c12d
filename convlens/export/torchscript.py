"""TorchScript export: the network traced (torch.jit.trace) into a .pt archive whose extra file
convlens.json holds the run's metadata, checked against torch like the ONNX export.

Runs whose answers come from the graph's scores (classify, multilabel) export; the archive runs
in any libtorch (C++, mobile) without convlens, and `convlens predict` and `serve` take it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from convlens.errors import ConvlensError, ModelError
from convlens.export.onnx import TOLERANCE, _answers, _check_images
from convlens.predict import TorchEngine, recogniser_for
from convlens.predict.engines import TorchScriptEngine
from convlens.predict.torchscript import EXTRA
from convlens.runs.atomic import atomic_write_bytes
from convlens.runs.weights import header_json
from convlens.tasks.loading import load_run, read_run_weights
from convlens.tasks.registry import task_class


def export_torchscript(run: str | Path, out: str | Path | None = None) -> dict:
    """Write RUN's network as a TorchScript archive and compare it with torch on val images."""
    read = read_run_weights(run)  # the header says whether the task exports: no model built
    task = task_class(read.meta.task)
    if task.onnx_activation is None:
        raise ModelError(f"{read.path}: {task.name} runs do not export to TorchScript (its "
                         "answers need more than the network's outputs)")  # fmt: skip
    openset = read.meta.decisions.openset or {}
    if openset.get("score") == "mahalanobis":  # refused before anything is written
        raise ModelError(f"{read.path}: a mahalanobis open-set run does not export to "
                         "TorchScript (the traced network has no features); use --format "
                         "onnx")  # fmt: skip
    rec = recogniser_for(TorchEngine(load_run(read)))  # what `convlens predict` uses: the oracle
    model, meta, weights = rec.model.float().eval(), rec.meta, rec.weights
    c, h, w = meta.input.shape
    out = Path(out) if out else weights.with_suffix(".pt")
    exported = meta.replace(extras={**meta.extras, "exported_from": str(weights)})
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.14 marks torch.jit deprecated (FutureWarning) in favour of torch.export; a
        # shape read in forward becomes a constant (TracerWarning): the parity check below
        # runs another batch size
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, torch.zeros(2, c, h, w))
        torch.jit.save(traced, buf, _extra_files={EXTRA: header_json(exported)})  # decisions too
    atomic_write_bytes(out, buf.getvalue())

    images, source = _check_images(meta, weights)
    script = recogniser_for(TorchScriptEngine(out, torch.device("cpu")))
    ours, theirs = (_answers(m, task.onnx_output, images) for m in (rec, script))
    diff = float(np.abs(ours - theirs).max()) if ours.size else 0.0
    if diff > TOLERANCE:  # e.g. a batch size the trace froze into a reshape
        raise ConvlensError(f"{out}: the TorchScript archive differs from torch by {diff:.2e} "
                            f"(> {TOLERANCE})")  # fmt: skip
    return {"torchscript": str(out), "task": task.name, "images": len(images), "source": source,
            "max_abs_diff": diff}  # fmt: skip
