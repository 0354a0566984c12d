"""A trained embed run ready for faces: photo -> detected, cropped face -> unit embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convlens.data.images import decode_image, to_tensor
from convlens.errors import ConvlensError
from convlens.faces.align import NO_EYES, align_face, align_images
from convlens.faces.detect import Box, FaceConfirmer, crop_face, detect_faces
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
        self.align = self.meta.extras.get("align", "none")  # as the run's faces were trained
        digest = self.engine.run.digest  # of the bytes loaded: the file is read once
        self.model_id = f"{self.meta.model.name}@{digest}"  # names the exact weights

    def face(
        self, source: ImageLike, name: str | None = None, detect: bool | None = None
    ) -> tuple[torch.Tensor, dict]:
        """(uint8 (C, H, W) model input, {"box", "faces_found", "note"?, "aligned"?}) of a photo.

        With detection on (`detect`, default the recogniser's), the largest face is used (and
        `note` says so when there were more); none raises NoFaceError naming the image. Off,
        the image is the face. A run trained aligned aligns it too ("aligned" says whether
        two eyes were found, "eyes" where).
        """
        name = name or str(source)
        img = source if isinstance(source, Image.Image) else decode_image(source, name=name)
        detect = self.detect if detect is None else detect
        if not detect:  # the image is the face crop: as `predict` and training take it
            x, aligned = self._input(img)
            return x, {"box": None, "faces_found": None, **aligned}
        box, info = self._largest_face(img, name)
        if self.align == "none":
            crop = crop_face(img, box)
        else:
            crop, aligned = align_face(img, box)
            info.update(aligned)
        return to_tensor(crop, channels=self.channels, size=self.size), info

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """uint8 (C, H, W) at the model's input, aligned at that size as training aligned its
        face crops (a run trained with `align` eyes; eyes not found: as it is)."""
        return self._input(image)[0]

    def _input(self, image: ImageLike) -> tuple[torch.Tensor, dict]:
        """(preprocess's tensor, {"aligned", "align_note"?} when the run aligns, else {})."""
        x = super().preprocess(image)
        if self.align == "none":
            return x, {}
        out, aligned = align_images(x[None], self.align)
        return out[0], {"aligned": True} if aligned else {"aligned": False, "align_note": NO_EYES}

    def _largest_face(self, img: Image.Image, name: str) -> tuple[Box, dict]:
        """The largest (confirmed) face box and its info, or NoFaceError."""
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
        return boxes[0], info

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
