"""Recogniser: a trained model with its preprocessing, over any engine: `load(run).predict(image)`.

It only preprocesses (as training did), batches and asks its engine for scores; the run's task
turns one image's scores into the answer (convlens.tasks.base.Task.answer), the same for every
engine, which `convlens predict`, `serve` and the Python API render as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convlens.data.images import decode_image
from convlens.data.preprocess import Preprocess, check_photo
from convlens.errors import ConvlensError
from convlens.predict.engines import Engine, open_engine

ImageLike = str | Path | bytes | Image.Image | np.ndarray | torch.Tensor


class Recogniser:
    """A trained model with its preprocessing, over the engine that runs it."""

    def __init__(
        self, source: str | Path | Engine, device: str = "cpu", engine: str = "torch"
    ) -> None:
        """`source`: a run folder, weights file or .onnx file (opened on `engine`), or an
        engine already open."""
        opened = open_engine(source, device, engine) if isinstance(source, str | Path) else source
        self.engine = opened
        self.device = torch.device(device)
        self.meta, self.task, self.weights = opened.meta, opened.task, opened.source
        self.classes: list[str] = self.meta.classes
        self.channels = self.meta.input.channels
        self.size = self.meta.input.size
        self.prep = Preprocess.of(self.meta)  # as the run's training and evaluation cut images

    @property
    def model(self) -> object:
        """The network the engine runs (a torch module for the torch engine)."""
        return self.engine.model

    @property
    def operating_point(self) -> dict | None:
        """A two-class run's threshold chosen on validation, or None."""
        return self.meta.decisions.operating_point

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """uint8 (C, H, W) at the model's input size and channels, as in training: a photo
        run's shorter side resized and centre-cropped, else the image squashed to the input."""
        if isinstance(image, torch.Tensor):
            image = image.numpy()
        if isinstance(image, np.ndarray):
            if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
                image = image.transpose(1, 2, 0)  # CHW -> HWC
            if image.dtype != np.uint8:
                raise ConvlensError(f"arrays must be uint8 images, got {image.dtype}")
            image = Image.fromarray(image.squeeze())
        name = str(image) if isinstance(image, str | Path) else "<image>"
        if not isinstance(image, Image.Image):
            image = decode_image(image)
        if not self.prep.legacy:  # a strip or an icon is refused as training skips it
            check_photo(image.width, image.height, name)
        return self.prep.apply(image)

    def predict_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """The task's scores (N, ...) for preprocessed uint8 images (N, C, H, W): class
        probabilities, label scores, anomaly scores (N,)."""
        return self.engine.scores(images)

    def answer(self, scores: torch.Tensor, top_k: int = 5) -> dict:
        """One image's answer from its scores, as the fields of a predict row or an HTTP reply
        (each task documents its own: convlens.tasks)."""
        return self.task.answer(scores, self.meta, top_k)

    def predict(self, image: ImageLike, top_k: int = 5) -> list[dict] | dict:
        """One image's top-k `{"label", "index", "score"}` (a path, bytes, PIL image or array);
        a task that answers otherwise gives its answer's fields (anomaly: score and flag), and
        so does a classifier that may answer "unknown" (its "predictions", "unknown", "openset")."""
        fields = self.answer(self.predict_tensor(self.preprocess(image)[None])[0], top_k)
        return fields if "unknown" in fields else fields.get("predictions", fields)

    def flag(self, image: ImageLike) -> dict:
        """A two-class run's decision at its operating point: {"flag", "positive_score"}."""
        if self.operating_point is None or len(self.classes) != 2:
            raise ConvlensError(f"{self.weights}: not a two-class run with an operating point")
        return self.answer(self.predict_tensor(self.preprocess(image)[None])[0], top_k=2)

    def predict_files(self, paths: list[str], top_k: int = 5, batch_size: int = 256) -> list[dict]:
        """One row per file: `{"file", ...the answer's fields}` (`predictions`, a two-class
        run's `flag`, an anomaly run's `score`...) or `{"file", "error"}`; errors don't stop."""
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
                scores = self.predict_tensor(torch.stack(tensors))
                rows += [
                    {"file": p, **self.answer(s, top_k)} for p, s in zip(kept, scores, strict=True)
                ]
        order = {p: n for n, p in enumerate(paths)}
        return sorted(rows, key=lambda r: order[r["file"]])
