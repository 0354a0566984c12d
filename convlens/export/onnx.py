"""ONNX export: the graph (dynamic batch) with the run's metadata, checked against torch.

The runs whose task has an ONNX graph (classify, multilabel, embed; anomaly runs with a patch
method, whose graph gives a score and a map) export; each export is
compared, on validation images, with the torch recogniser that `convlens predict` uses,
through onnxruntime (convlens.predict.onnx.OnnxModel). onnx is imported when a run exports.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from convlens.errors import ConvlensError, ModelError
from convlens.predict import Recogniser, TorchEngine, recogniser_for
from convlens.predict.onnx import OnnxModel
from convlens.runs.atomic import atomic_write_bytes
from convlens.runs.folder import Run
from convlens.runs.meta import WeightsMeta
from convlens.runs.weights import META_KEY, header_json
from convlens.tasks.loading import load_run, read_run_weights
from convlens.tasks.registry import task_class
from convlens.training.data import load_run_data

TOLERANCE = 1e-4  # largest allowed |onnx - torch| over the check images: probability, score or
# embedding entry (unit embeddings: 1 - cosine <= TOLERANCE**2 / 2 * D); relative above 1
CHECK_IMAGES = 100  # validation images run through both
CHECK_BYTES = 64 << 20  # at most this many uint8 pixels of them (fewer images when they are big)


def export_onnx(run: str | Path, out: str | Path | None = None) -> dict:
    """Write RUN's model as ONNX, check it, and compare onnxruntime with torch on val images."""
    import onnx

    read = read_run_weights(run)  # the header says whether the task exports: no model built
    task = task_class(read.meta.task)
    graph = task.onnx_graph(read.meta)  # output name -> one image's shape
    if not graph:
        raise ModelError(f"{read.path}: {task.name} runs do not export to ONNX "
                         f"({task.onnx_refusal}); they predict in torch")  # fmt: skip
    loaded = load_run(read)
    rec = recogniser_for(TorchEngine(loaded))  # what `convlens predict` uses: the parity oracle
    model, meta, weights = task.onnx_module(loaded).float().eval(), rec.meta, rec.weights
    c, h, w = meta.input.shape
    out = Path(out) if out else weights.with_suffix(".onnx")
    batch = torch.export.Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress lines and notices
        program = torch.onnx.export(
            model,
            (torch.zeros(2, c, h, w),),
            dynamo=True,
            input_names=["images"],
            output_names=list(graph),
            dynamic_shapes=({0: batch},),
        )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    exported = meta.replace(extras={**meta.extras, "exported_from": str(weights)})
    entry.key, entry.value = META_KEY, header_json(exported)  # decisions included
    onnx.checker.check_model(proto)
    atomic_write_bytes(out, proto.SerializeToString())

    images, source = _check_images(meta, weights)
    onnx_model = OnnxModel(out)
    ours, theirs = (_answers(m, task.onnx_output, images) for m in (rec, onnx_model))
    # relative to entries above 1 (an open-set energy or distance): absolute for the rest
    diff = float((np.abs(ours - theirs) / np.maximum(1, np.abs(ours))).max()) if ours.size else 0.0
    if diff > TOLERANCE:
        raise ConvlensError(f"{out}: onnxruntime differs from torch by {diff:.2e} (> {TOLERANCE})")
    result = {"onnx": str(out), "task": task.name, "images": len(images), "source": source,
              "max_abs_diff": diff}  # fmt: skip
    if task.onnx_output == "embedding":
        result["min_cosine"] = float((ours * theirs).sum(1).min()) if ours.size else 1.0
    return result


def _answers(model: Recogniser | OnnxModel, output: str, images: torch.Tensor) -> np.ndarray:
    """A torch recogniser's or OnnxModel's answer for uint8 images: unit embeddings (N, D)
    where the graph gives the embedding, else class probabilities or label scores (N, K)."""
    if output == "embedding":
        return np.asarray(model.embed(images))
    scores = model.predict_proba if isinstance(model, OnnxModel) else model.predict_tensor
    return np.asarray(scores(images))


def _check_images(meta: WeightsMeta, weights: Path) -> tuple[torch.Tensor, str]:
    """Validation images of the run's own data, else seeded random images of its input size.

    The data is the one its run folder's config.yaml names (written by training, beside
    weights/), never the weights file's "data" field: a weights file is data, not
    instructions, so nothing is read, written or downloaded because it says so.
    """
    c, h, w = meta.input.shape
    n = max(1, min(CHECK_IMAGES, CHECK_BYTES // (c * h * w)))
    ds = _own_data(weights, meta)
    if ds is not None and (ds.channels, *ds.image_size) == (c, h, w) and len(ds.val):
        return ds.val.images[:n], f"{ds.name} validation split"
    noise = torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(0))
    return noise.to(torch.uint8), "seeded random"  # the CLI: "on 100 seeded random images"


def _own_data(weights: Path, meta: WeightsMeta):
    """The dataset of the run folder holding `weights` (RUN/weights/*.safetensors beside
    RUN/config.yaml), as that run split it, if it is on disk; None otherwise. Never downloads."""
    run = Run.of_weights(weights)
    if run is None or not run.is_run():
        return None
    try:
        return load_run_data(None, run.path, download=False, meta=meta)  # cut as it trained
    except ConvlensError:
        return None
