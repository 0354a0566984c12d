"""Predict with a trained model: its file holds all it needs (classes, input, normalisation)."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convlens.data.folder import IMAGE_EXTENSIONS
from convlens.data.images import decode_image, to_tensor
from convlens.errors import ConvlensError
from convlens.models.infer import predict_proba
from convlens.models.loading import load_model

ImageLike = str | Path | bytes | Image.Image | np.ndarray | torch.Tensor


class Recogniser:
    """A trained model with its preprocessing: `load(run).predict(image)`."""

    def __init__(self, run: str | Path, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model, self.meta, self.weights = self._load(run)
        self.classes: list[str] = self.meta["classes"]
        size = self.meta["input"]
        self.channels = int(size["channels"])
        self.size = (int(size["height"]), int(size["width"]))
        self.operating_point = self._operating_point()

    def _operating_point(self) -> dict | None:
        """A two-class run's threshold chosen on validation (weights/threshold.json), if any."""
        if len(self.classes) != 2 or self.meta.get("task", "classify") != "classify":
            return None
        from convlens.medical.evaluate import read_threshold

        return read_threshold(self.weights, self.classes)

    def _load(self, run: str | Path) -> tuple[torch.nn.Module, dict, Path]:
        model, meta, weights = load_model(run)
        return model.to(self.device), meta, weights

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """uint8 (C, H, W) at the model's input size and channels, as in training."""
        if isinstance(image, torch.Tensor):
            image = image.numpy()
        if isinstance(image, np.ndarray):
            if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
                image = image.transpose(1, 2, 0)  # CHW -> HWC
            if image.dtype != np.uint8:
                raise ConvlensError(f"arrays must be uint8 images, got {image.dtype}")
            image = Image.fromarray(image.squeeze())
        if not isinstance(image, Image.Image):
            image = decode_image(image)
        return to_tensor(image, channels=self.channels, size=self.size)

    def predict_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, K) for preprocessed uint8 images (N, C, H, W)."""
        return predict_proba(
            self.model,
            images,
            mean=self.meta["normalize"]["mean"],
            std=self.meta["normalize"]["std"],
            tta=self.meta.get("tta", "none"),
            device=self.device,
        )

    def predict(self, image: ImageLike, top_k: int = 5) -> list[dict]:
        """Top-k `{"label", "index", "score"}` for one image (a path, bytes, PIL image or array)."""
        probs = self.predict_tensor(self.preprocess(image)[None])[0]
        return self._top(probs, top_k)

    def flag(self, image: ImageLike) -> dict:
        """A two-class run's decision at its operating point: {"flag", "positive_score"}."""
        if self.operating_point is None:
            raise ConvlensError(f"{self.weights}: not a two-class run with an operating point")
        row = {"predictions": self.predict(image, top_k=2)}
        return self._flagged([row])[0]

    def _flagged(self, rows: list[dict]) -> list[dict]:
        from convlens.medical.evaluate import flag_rows

        return flag_rows(rows, self.operating_point) if self.operating_point else rows

    def predict_files(self, paths: list[str], top_k: int = 5, batch_size: int = 256) -> list[dict]:
        """One row per file: `{"file", "predictions"}` (and a two-class run's `flag`) or
        `{"file", "error"}`; errors don't stop."""
        rows: list[dict] = []
        for i in range(0, len(paths), batch_size):
            chunk, tensors, kept = paths[i : i + batch_size], [], []
            for path in chunk:
                try:
                    tensors.append(self.preprocess(path))
                    kept.append(path)
                except ConvlensError as e:
                    rows.append({"file": path, "error": str(e)})
            if tensors:
                probs = self.predict_tensor(torch.stack(tensors))
                rows += [
                    {"file": p, "predictions": self._top(pr, top_k)}
                    for p, pr in zip(kept, probs, strict=True)
                ]
        order = {p: n for n, p in enumerate(paths)}
        return self._flagged(sorted(rows, key=lambda r: order[r["file"]]))

    def _top(self, probs: torch.Tensor, k: int) -> list[dict]:
        scores, idx = probs.topk(min(k, len(self.classes)))
        return [
            {"label": self.classes[i], "index": int(i), "score": float(s)}
            for s, i in zip(scores.tolist(), idx.tolist(), strict=True)
        ]


class NumpyRecogniser(Recogniser):
    """A Recogniser whose model runs on the NumPy reference engine (convlens.reference)."""

    def _load(self, run: str | Path) -> tuple[object, dict, Path]:
        from convlens.models.loading import check_fit
        from convlens.reference import load_model as load_numpy_model
        from convlens.runs.folder import resolve_weights
        from convlens.runs.weights import load_weights

        if self.device.type != "cpu":
            raise ConvlensError(f"the numpy engine runs on the CPU, not on {self.device}")
        weights = resolve_weights(run)
        # The engines share names and shapes: checked on torch's meta device first, no NumPy
        # model larger than the file is ever built.
        check_fit(*load_weights(weights), weights)
        model, meta = load_numpy_model(weights)
        return model, meta, weights

    def predict_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, K) for preprocessed uint8 images (N, C, H, W)."""
        probs = self.model.predict_proba(
            images.numpy(),
            self.meta["normalize"]["mean"],
            self.meta["normalize"]["std"],
            tta=self.meta.get("tta", "none"),
        )
        return torch.from_numpy(probs)


class OnnxRecogniser(Recogniser):
    """A Recogniser for an exported .onnx model, run by onnxruntime (convlens.export)."""

    def _load(self, run: str | Path) -> tuple[object, dict, Path]:
        from convlens.export import OnnxModel

        if not Path(run).is_file():
            raise ConvlensError(f"{run}: no such ONNX file")
        model = OnnxModel(run)
        if model.task == "embed":  # no identity centres in the graph, no face detection
            raise ConvlensError(f"{run}: an embed export gives embeddings "
                                f"(convlens.export.OnnxModel.embed); predict, verify and serve "
                                f"take the run's weights")  # fmt: skip
        self.thresholds = model.thresholds  # a multilabel export's per-label thresholds
        return model, model.meta, Path(run)

    def predict_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities or label scores (N, K) for preprocessed uint8 images (N, C, H, W)."""
        return torch.from_numpy(self.model.predict_proba(images.numpy()))

    def _top(self, probs: torch.Tensor, k: int) -> list[dict]:
        """As the torch recogniser of the run's task: a multilabel export decides per label."""
        if self.thresholds is None:
            return super()._top(probs, k)
        from convlens.medical.multilabel import label_decisions

        return label_decisions(probs, self.classes, self.thresholds, k)


def load(run: str | Path, device: str = "cpu", engine: str = "torch") -> Recogniser:
    """Load a run folder, weights file or .onnx file for prediction (torch or numpy engine)."""
    if engine not in ("torch", "numpy"):
        raise ConvlensError(f"engine must be torch or numpy, not {engine!r}")
    if str(run).endswith(".onnx"):
        return OnnxRecogniser(run, device=device)
    task = run_task(run)
    if task != "classify":  # multilabel, anomaly, embed: the task's own Recogniser subclass
        from convlens.training.tasks import task_class

        if engine != "torch":
            raise ConvlensError(f"{run}: {task} runs predict with the torch engine, not {engine}")
        return task_class(task).recogniser(run, device=device)
    return (NumpyRecogniser if engine == "numpy" else Recogniser)(run, device=device)


def run_task(run: str | Path) -> str:
    """The task a run folder or weights file was trained for (classify, anomaly, ...)."""
    from convlens.runs.folder import resolve_weights
    from convlens.runs.weights import load_weights

    return load_weights(resolve_weights(run))[1].get("task", "classify")


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given, folders walked for images, globs expanded; a missing path is an error."""
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise ConvlensError(f"{item}: no images in this folder")
            out += found
        elif path.exists():
            out.append(item)
        elif any(ch in item for ch in "*?["):
            found = sorted(glob.glob(item, recursive=True))
            if not found:
                raise ConvlensError(f"{item}: no file matches this pattern")
            out += found
        else:
            raise ConvlensError(f"{item}: no such file or folder")
    return out
