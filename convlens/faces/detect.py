"""Find faces in a photo with OpenCV's Haar cascade and crop them with a margin.

The cascade (Viola-Jones, frontal faces) ships inside opencv-python-headless 4.x as
cv2.data.haarcascades; nothing is downloaded. An optional CNN, a classify run trained on
`lfw-faces` (face / non-face), can confirm each crop and drop the cascade's false positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from convlens.errors import ConvlensError
from convlens.predict import load

CASCADE = "haarcascade_frontalface_default.xml"
SCALE_FACTOR = 1.1  # image pyramid step: 10% per level
MIN_NEIGHBORS = 5  # overlapping hits a window needs; higher = fewer false faces
MIN_FACE = 0.04  # smallest face side searched for, as a share of the image's shorter side
MARGIN = 0.2  # crop = box grown by 20% of its side on every edge (forehead, chin, ears)


@dataclass
class Box:
    """A face box in pixels: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


_CASCADES: dict[str, object] = {}


def _cascade():
    """The loaded frontal-face cascade (once per process)."""
    import cv2

    if CASCADE not in _CASCADES:
        path = Path(cv2.data.haarcascades) / CASCADE
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise ConvlensError(f"{path}: OpenCV cannot load its Haar cascade (opencv >= 5?)")
        _CASCADES[CASCADE] = cascade
    return _CASCADES[CASCADE]


def detect_faces(image: Image.Image) -> list[Box]:
    """Face boxes in `image`, largest first (empty when there is none)."""
    import cv2

    grey = np.asarray(image.convert("L"), dtype=np.uint8)  # (H, W)
    grey = cv2.equalizeHist(grey)  # the cascade was trained on contrast-normalised windows
    side = max(20, int(MIN_FACE * min(grey.shape)))
    found = _cascade().detectMultiScale(
        grey, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(side, side)
    )
    boxes = [Box(*map(int, b)) for b in found]
    return sorted(boxes, key=lambda b: -b.area)


def crop_face(image: Image.Image, box: Box, margin: float = MARGIN) -> Image.Image:
    """The box grown by `margin` of its side on each edge, clipped to the image."""
    dx, dy = int(round(margin * box.w)), int(round(margin * box.h))
    left, top = max(0, box.x - dx), max(0, box.y - dy)
    right = min(image.width, box.x + box.w + dx)
    bottom = min(image.height, box.y + box.h + dy)
    return image.crop((left, top, right, bottom))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    w = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    h = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    inter = max(0, w) * max(0, h)
    return inter / (a.area + b.area - inter)


class FaceConfirmer:
    """A face / non-face CNN (a classify run trained on lfw-faces) that vets cascade crops."""

    def __init__(self, run: str | Path, min_score: float = 0.5) -> None:
        self.recogniser = load(run)
        if "face" not in self.recogniser.classes:
            raise ConvlensError(
                f"{run}: a face confirmer must be trained on lfw-faces (classes non-face, face), "
                f"this one predicts {', '.join(self.recogniser.classes)}"
            )
        self.index = self.recogniser.classes.index("face")
        self.min_score = min_score

    def score(self, crop: Image.Image) -> float:
        """Probability that `crop` is a face."""
        probs = self.recogniser.predict_tensor(self.recogniser.preprocess(crop)[None])
        return float(probs[0, self.index])

    def keep(self, image: Image.Image, boxes: list[Box]) -> list[Box]:
        """The boxes whose tight crop the CNN calls a face."""
        return [b for b in boxes if self.score(crop_face(image, b, margin=0.0)) >= self.min_score]
