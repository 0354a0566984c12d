"""A trained embed run ready for faces: photo -> detected, cropped face -> unit embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convlens.data.images import decode_image, to_tensor
from convlens.errors import ConvlensError
from convlens.faces.detect import FaceConfirmer, crop_face, detect_faces
from convlens.faces.head import embed_images
from convlens.predict import Engine, ImageLike, Recogniser, TorchEngine


class NoFaceError(ConvlensError):
    """An image in which no face was found."""


class FaceRecogniser(Recogniser):
    """An embed run: `face(path)` finds and crops the face, `embed` gives unit embeddings.

    `predict` (as for `convlens predict`) names the closest training identity: softmax over
    scale x cosine to the identity centres.
    """

    def __init__(
        self,
        source: str | Path | Engine,
        device: str = "cpu",
        *,
        detect: bool = True,
        confirm: str | Path | None = None,
    ) -> None:
        super().__init__(source, device=device)
        if not self.task.verification or not isinstance(self.engine, TorchEngine):
            raise ConvlensError(f"{self.weights}: not a face embedding run (train --task embed)")
        self.detect = detect
        self.confirmer = FaceConfirmer(confirm) if confirm else None
        self.threshold = float(self.meta.decisions.threshold)
        digest = self.engine.run.digest  # of the bytes loaded: the file is read once
        self.model_id = f"{self.meta.model.name}@{digest}"  # names the exact weights

    def face(self, source: ImageLike, name: str | None = None) -> tuple[torch.Tensor, dict]:
        """(uint8 (C, H, W) model input, {"box", "faces_found", "note"?}) for one photo.

        With detection on, the largest face is used (and `note` says so when there were more);
        none raises NoFaceError naming the image.
        """
        name = name or str(source)
        img = source if isinstance(source, Image.Image) else decode_image(source, name=name)
        if not self.detect:
            return self.preprocess(img), {"box": None, "faces_found": None}
        boxes = detect_faces(img)
        if self.confirmer is not None:
            boxes = self.confirmer.keep(img, boxes)
        if not boxes:
            raise NoFaceError(
                f"{name}: no face found (pass --no-detect if the images are already face crops)"
            )
        info = {"box": boxes[0].as_list(), "faces_found": len(boxes)}
        if len(boxes) > 1:
            info["note"] = f"{len(boxes)} faces found; the largest was used"
        crop = crop_face(img, boxes[0])
        return to_tensor(crop, channels=self.channels, size=self.size), info

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """Unit embeddings (N, D) float32 of preprocessed uint8 images (N, C, H, W)."""
        norm = self.meta.normalize
        emb = embed_images(self.model, images, mean=norm.mean, std=norm.std, device=self.device)
        return emb.numpy()

    def embed_files(self, files: list[str], fallback: bool = True) -> tuple[np.ndarray, dict]:
        """(embeddings (N, D), {file: face info}) of image files.

        A photo without a detected face is embedded whole when `fallback` (its info says
        "fallback": True, for the caller to report), else NoFaceError.
        """
        tensors, infos = [], {}
        for f in files:
            try:
                x, info = self.face(f)
            except NoFaceError:
                if not fallback:
                    raise
                x, info = self.preprocess(f), {"box": None, "faces_found": 0, "fallback": True}
            tensors.append(x)
            infos[f] = info
        return self.embed(torch.stack(tensors)), infos
