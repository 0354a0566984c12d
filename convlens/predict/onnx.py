"""An exported convlens model on onnxruntime: the graph checked against its metadata, run with
convlens's preprocessing and test-time views. onnxruntime is imported when a model is opened."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convlens.errors import ModelError
from convlens.reference.losses import softmax
from convlens.reference.model import normalize, tta_views
from convlens.runs.checks import one_line
from convlens.runs.meta import WeightsMeta
from convlens.runs.weights import header_meta
from convlens.tasks.loading import task_of


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) without overflow for large |z|."""
    return np.exp(-np.logaddexp(0.0, -z))


ACTIVATIONS = {"softmax": softmax, "sigmoid": sigmoid, "none": lambda z: z}  # onnx_activation


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
        header = header_meta(props, path, missing, "convlens metadata")
        self.meta = WeightsMeta.from_header(header, path)
        self.kind = task_of(self.meta, self.path)  # the Task class: what the graph's output is
        self.task: str = self.meta.task
        self.thresholds = self.meta.decisions.thresholds  # multilabel: per label
        self.threshold = self.meta.decisions.threshold  # embed: the same face at cosine >= this
        self.input = self._check_graph()

    def _check_graph(self) -> str:
        """The graph's input name, once its input and output shapes agree with the metadata."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        want_in = list(self.meta.input.shape)
        graph = self.kind.onnx_graph(self.meta)  # output name -> one image's shape
        if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
            raise ModelError(f"{self.path}: the graph does not take one float (N, C, H, W) input")
        ranks = [len(o.shape) for o in outputs]
        if len(graph) == 1 and (len(outputs) != 1 or ranks[0] != 2):
            raise ModelError(f"{self.path}: the graph does not give one (N, K) output")
        if ranks != [1 + len(s) for s in graph.values()]:
            raise ModelError(f"{self.path}: the graph does not give the outputs its task's "
                             f"graph has ({', '.join(graph) or 'none'})")  # fmt: skip
        checks = [("input", inputs[0].shape[1:], want_in)]
        checks += [
            ("output", o.shape[1:], list(s)) for o, s in zip(outputs, graph.values(), strict=True)
        ]
        for what, got, want in checks:
            if any(isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)):
                raise ModelError(f"{self.path}: the graph's {what} is {got} per image, but the "
                                 f"metadata says {want}")  # fmt: skip
        return inputs[0].name

    def predict_proba(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """Class probabilities (classify) or per-label sigmoid scores (multilabel), (N, K), for
        uint8 images (N, C, H, W), with the run's TTA."""
        if self.kind.onnx_activation is None:
            raise ModelError(f"{self.path}: an {self.task} model gives "
                             f"{self.kind.onnx_output}s ({self.task}), not scores")  # fmt: skip
        act, tta = ACTIVATIONS[self.kind.onnx_activation], self.meta.tta

        def activated(x: np.ndarray) -> np.ndarray:  # the activation on the first output only
            first, *rest = self.session.run(None, {self.input: x})  # e.g. an open-set score
            return np.concatenate([act(first).reshape(len(x), -1),
                                   *(o.reshape(len(x), -1) for o in rest)], 1)  # fmt: skip

        def scores(x: np.ndarray) -> np.ndarray:  # (B, K), test-time views averaged
            return sum(w * activated(v) for v, w in tta_views(x, tta))

        return self._map(images, batch_size, scores)

    def positives(self, images: np.ndarray) -> np.ndarray:
        """(N, L) bool: each label positive at its validation threshold, as `convlens predict`."""
        if self.thresholds is None:
            raise ModelError(f"{self.path}: not a multilabel model (no per-label thresholds)")
        return self.predict_proba(images) >= np.asarray(self.thresholds, np.float32)

    def unknown(self, images: np.ndarray) -> np.ndarray:
        """(N,) bool: the open-set score (the graph's last output) below the threshold chosen
        on validation, as `convlens predict` answers "unknown"."""
        point = self.meta.decisions.openset
        if point is None:
            raise ModelError(f"{self.path}: no open-set threshold (trained without --reject)")
        return self.predict_proba(images)[:, -1] < point["threshold"]

    def embed(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """Unit embeddings (N, D) float32 of uint8 images (N, C, H, W); an embed run's two
        images show the same person when their dot product is >= `threshold`."""
        if self.kind.onnx_output != "embedding":
            raise ModelError(f"{self.path}: a {self.task} model gives scores, not embeddings")
        return self._map(images, batch_size, self._run)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """The graph's output (B, K); several outputs joined, each flattened (B, K1 + K2 ...)."""
        out = self.session.run(None, {self.input: x})
        return out[0] if len(out) == 1 else np.concatenate([o.reshape(len(x), -1) for o in out], 1)

    def _map(self, images: np.ndarray, batch_size: int, fn) -> np.ndarray:
        """fn(normalised batch) (B, ...) over uint8 images (N, C, H, W), concatenated, float32."""
        images = np.asarray(images)
        mean, std = self.meta.normalize.mean, self.meta.normalize.std
        out = [fn(normalize(images[i : i + batch_size], mean, std))  # (B, C, H, W) float32
               for i in range(0, len(images), batch_size)]  # fmt: skip
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
