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
# the cascade finds faces tilted up to about 15 degrees: when the upright photo has none, it is
# searched turned by these (degrees), each box mapped back by its centre (posed lfw-faces photos
# tilted 15-25 degrees: 50 of 100 found upright, 99 with these; tests/test_faces_detect.py)
TILTS = (-20.0, 20.0)


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
    return load_cascade(CASCADE)


def load_cascade(name: str):
    """One of OpenCV's shipped Haar cascades (cv2.data.haarcascades), loaded once per process."""
    import cv2

    if name not in _CASCADES:
        path = Path(cv2.data.haarcascades) / name
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise ConvlensError(f"{path}: OpenCV cannot load its Haar cascade (opencv >= 5?)")
        _CASCADES[name] = cascade
    return _CASCADES[name]


def detect_faces(image: Image.Image) -> list[Box]:
    """Face boxes in `image`, largest first (empty when there is none, upright or tilted)."""
    import cv2

    grey = np.asarray(image.convert("L"), dtype=np.uint8)  # (H, W)
    grey = cv2.equalizeHist(grey)  # the cascade was trained on contrast-normalised windows
    boxes = _search(grey)
    h, w = grey.shape
    for angle in TILTS if not boxes else ():
        turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)  # (2, 3) turned <- photo
        back = cv2.invertAffineTransform(turn)
        view = cv2.warpAffine(grey, turn, (w, h), borderMode=cv2.BORDER_REPLICATE)
        for b in _search(view):  # the same square about the face's centre in the photo
            cx, cy = back @ np.array([b.x + b.w / 2, b.y + b.h / 2, 1.0])
            x, y = int(round(cx - b.w / 2)), int(round(cy - b.h / 2))
            if 0 <= cx < w and 0 <= cy < h:
                boxes.append(Box(max(0, x), max(0, y), b.w, b.h))
        if boxes:
            break
    return sorted(boxes, key=lambda b: -b.area)


def _search(grey: np.ndarray) -> list[Box]:
    """The cascade's boxes in an equalised grey image."""
    side = max(20, int(MIN_FACE * min(grey.shape)))
    found = _cascade().detectMultiScale(
        grey, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(side, side)
    )
    return [Box(*map(int, b)) for b in found]


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
