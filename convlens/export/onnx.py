"""ONNX export (dynamic batch, convlens metadata) and an onnxruntime model with convlens's TTA.

classify, multilabel and embed runs export; each is checked against the torch recogniser that
`convlens predict` uses, on validation images. onnx and onnxruntime are imported here only, so
`import convlens` stays light.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from convlens.errors import ConvlensError, ModelError
from convlens.reference.losses import softmax
from convlens.reference.model import normalize, tta_views
from convlens.runs.atomic import atomic_write_bytes
from convlens.runs.checks import one_line
from convlens.runs.folder import Run, resolve_weights
from convlens.runs.meta import WeightsMeta
from convlens.runs.weights import META_KEY, header_json, header_meta

TOLERANCE = 1e-4  # largest allowed |onnx - torch| over the check images: probability, score or
# embedding entry (unit embeddings: 1 - cosine <= TOLERANCE**2 / 2 * D)
CHECK_IMAGES = 100  # validation images run through both
CHECK_BYTES = 64 << 20  # at most this many uint8 pixels of them (fewer images when they are big)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) without overflow for large |z|."""
    return np.exp(-np.logaddexp(0.0, -z))


# The graph's output per exportable task, and how one view's output becomes a score (embed: none,
# the graph ends in the unit embedding).
OUTPUTS = {"classify": "logits", "multilabel": "logits", "embed": "embedding"}
ACTIVATIONS = {"classify": softmax, "multilabel": sigmoid}
REFUSED = {  # tasks whose answer is not one graph's output
    "anomaly": "a score runs the network over 72 transformed views of each image and compares "
    "their features with Mahalanobis statistics of normal images, outside one graph",
}


def export_onnx(run: str | Path, out: str | Path | None = None) -> dict:
    """Write RUN's model as ONNX, check it, and compare onnxruntime with torch on val images."""
    import onnx

    from convlens.predict import load, run_task

    task = run_task(run)
    if task not in OUTPUTS:
        why = REFUSED.get(task, "no ONNX graph gives its answers")
        raise ModelError(f"{resolve_weights(run)}: {task} runs do not export to ONNX ({why}); "
                         f"they predict in torch")  # fmt: skip
    rec = load(run)  # the torch recogniser `convlens predict` uses: the parity oracle
    model, meta, weights = rec.model.float().eval(), rec.meta, rec.weights
    c, h, w = (meta["input"][k] for k in ("channels", "height", "width"))
    out = Path(out) if out else weights.with_suffix(".onnx")
    batch = torch.export.Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress lines and notices
        program = torch.onnx.export(
            model,
            (torch.zeros(2, c, h, w),),
            dynamo=True,
            input_names=["images"],
            output_names=[OUTPUTS[task]],
            dynamic_shapes=({0: batch},),
        )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, header_json({**meta, **_decisions(rec, task),
                                                    "exported_from": str(weights)})  # fmt: skip
    onnx.checker.check_model(proto)
    atomic_write_bytes(out, proto.SerializeToString())

    images, source = _check_images(meta, weights)
    onnx_model = OnnxModel(out)
    ours, theirs = _answers(rec, task, images), _answers(onnx_model, task, images)
    diff = float(np.abs(ours - theirs).max()) if ours.size else 0.0
    if diff > TOLERANCE:
        raise ConvlensError(f"{out}: onnxruntime differs from torch by {diff:.2e} (> {TOLERANCE})")
    result = {"onnx": str(out), "task": task, "images": len(images), "source": source,
              "max_abs_diff": diff}  # fmt: skip
    if task == "embed":
        result["min_cosine"] = float((ours * theirs).sum(1).min()) if ours.size else 1.0
    return result


def _decisions(rec, task: str) -> dict:
    """What the run decides with beyond its weights metadata: a multilabel run's per-label
    thresholds (weights/thresholds.json; an embed run's verification threshold is in its meta)."""
    return {"thresholds": [float(t) for t in rec.thresholds]} if task == "multilabel" else {}


def _answers(model, task: str, images: torch.Tensor) -> np.ndarray:
    """A torch recogniser's or OnnxModel's answer for uint8 images: unit embeddings (N, D) for
    embed runs, else class probabilities or label scores (N, K)."""
    if task == "embed":
        return np.asarray(model.embed(images))
    scores = model.predict_proba if isinstance(model, OnnxModel) else model.predict_tensor
    return np.asarray(scores(images))


def _check_images(meta: dict, weights: Path) -> tuple[torch.Tensor, str]:
    """Validation images of the run's own data, else seeded random images of its input size.

    The data is the one its run folder's config.yaml names (written by training, beside
    weights/), never the weights file's "data" field: a weights file is data, not
    instructions, so nothing is read, written or downloaded because it says so.
    """
    c, h, w = (meta["input"][k] for k in ("channels", "height", "width"))
    n = max(1, min(CHECK_IMAGES, CHECK_BYTES // (c * h * w)))
    ds = _own_data(weights)
    if ds is not None and (ds.channels, *ds.image_size) == (c, h, w) and len(ds.val):
        return ds.val.images[:n], f"{ds.name} validation split"
    noise = torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(0))
    return noise.to(torch.uint8), "seeded random"  # the CLI: "on 100 seeded random images"


def _own_data(weights: Path):
    """The dataset of the run folder holding `weights` (RUN/weights/*.safetensors beside
    RUN/config.yaml), as that run split it, if it is on disk; None otherwise. Never downloads."""
    from convlens.evaluation import load_run_data

    run = Run.of_weights(weights)
    if run is None or not run.is_run():
        return None
    try:
        return load_run_data(None, run.path, download=False)
    except ConvlensError:
        return None


class OnnxModel:
    """An exported convlens model on onnxruntime: uint8 images in; class probabilities, label
    scores (and decisions) or unit embeddings out, as the run's task gives."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: not a loadable ONNX model ({one_line(e)})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        missing = "not a convlens model (no convlens metadata)"
        self.meta = WeightsMeta.from_header(
            header_meta(props, path, missing, "convlens metadata"), path
        )
        self.task: str = self.meta.get("task", "classify")
        self.thresholds = self.meta.decisions.thresholds  # multilabel: per label
        self.threshold = self.meta.decisions.threshold  # embed: the same face at cosine >= this
        self.input = self._check_graph()

    def _check_graph(self) -> str:
        """The graph's input name, once its input and output shapes agree with the metadata."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        size = self.meta["input"]
        want_in = [size["channels"], size["height"], size["width"]]
        width = (
            self.meta.get("embedding_size") if self.task == "embed" else len(self.meta["classes"])
        )
        if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
            raise ModelError(f"{self.path}: the graph does not take one float (N, C, H, W) input")
        if len(outputs) != 1 or len(outputs[0].shape) != 2:
            raise ModelError(f"{self.path}: the graph does not give one (N, K) output")
        for what, got, want in (("input", inputs[0].shape[1:], want_in),
                                ("output", outputs[0].shape[1:], [width])):  # fmt: skip
            if any(isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)):
                raise ModelError(f"{self.path}: the graph's {what} is {got} per image, but the "
                                 f"metadata says {want}")  # fmt: skip
        return inputs[0].name

    def predict_proba(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """Class probabilities (classify) or per-label sigmoid scores (multilabel), (N, K), for
        uint8 images (N, C, H, W), with the run's TTA."""
        if self.task not in ACTIVATIONS:
            raise ModelError(f"{self.path}: an {self.task} model gives embeddings (embed), "
                             f"not scores")  # fmt: skip
        act, tta = ACTIVATIONS[self.task], self.meta.get("tta", "none")

        def scores(x: np.ndarray) -> np.ndarray:  # (B, K), test-time views averaged
            return sum(w * act(self._run(v)) for v, w in tta_views(x, tta))

        return self._map(images, batch_size, scores)

    def positives(self, images: np.ndarray) -> np.ndarray:
        """(N, L) bool: each label positive at its validation threshold, as `convlens predict`."""
        if self.thresholds is None:
            raise ModelError(f"{self.path}: not a multilabel model (no per-label thresholds)")
        return self.predict_proba(images) >= np.asarray(self.thresholds, np.float32)

    def embed(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """Unit embeddings (N, D) float32 of uint8 images (N, C, H, W); an embed run's two
        images show the same person when their dot product is >= `threshold`."""
        if self.task != "embed":
            raise ModelError(f"{self.path}: a {self.task} model gives scores, not embeddings")
        return self._map(images, batch_size, self._run)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]

    def _map(self, images: np.ndarray, batch_size: int, fn) -> np.ndarray:
        """fn(normalised batch) (B, ...) over uint8 images (N, C, H, W), concatenated, float32."""
        images = np.asarray(images)
        mean, std = self.meta["normalize"]["mean"], self.meta["normalize"]["std"]
        out = [fn(normalize(images[i : i + batch_size], mean, std))  # (B, C, H, W) float32
               for i in range(0, len(images), batch_size)]  # fmt: skip
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
