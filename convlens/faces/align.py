"""Two-point face alignment: find the eyes with OpenCV's eye cascades, then map them by a
similarity transform (rotation, uniform scale, shift) onto ArcFace's 112x112 template.

The eyes are searched inside the face box, resized to EYE_SEARCH px and turned by each of
SEARCH_ANGLES (the cascades only find near-level eyes); of the candidate pairs, the one with
plausible geometry (upper part of the face, one each side, similar sizes, a sensible distance)
that looks most level wins. No such pair: the face is left unaligned, and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from PIL import Image

from convlens.data.images import to_tensor
from convlens.errors import ConvlensError
from convlens.faces.detect import MARGIN, Box, crop_face, load_cascade

ALIGNS = ("none", "eyes")  # the `align` setting's values
SIZE = 112  # ArcFace's aligned face: 112 x 112 pixels
# insightface's arcface_dst (its first two points): the eye on the image's left, then the right
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014]])
EYE_CASCADES = ("haarcascade_eye.xml",)  # tried first: small boxes centred on the pupil
SPLIT_CASCADES = ("haarcascade_lefteye_2splits.xml", "haarcascade_righteye_2splits.xml")
EYE_SEARCH = 160  # face side the eyes are searched at: eyes of ~25 px, above the 20 px window
SEARCH_ANGLES = (0.0, -20.0, 20.0)  # degrees the face is turned by for the search
SEARCH_MARGIN = 0.1  # face box grown by 10% of its side on each edge for the eye search
EYE_SIDE = (0.1, 0.35)  # eye boxes searched, as a share of the face's side
MIN_EYE_NEIGHBORS = 3  # the cascades' overlapping hits per eye
EYE_GAP = 0.4  # typical eye distance, as a share of the searched face's width
EYE_SPAN = (0.2, 0.7)  # eye distance, as a share of the searched face's width
MAX_EYE_Y = 0.55  # both eyes above this share of the searched face's height
MAX_SIZE_RATIO = 1.7  # the larger eye box at most this times the smaller
MAX_TILT = 0.35  # |dy / dx| of the pair in its search view (about 19 degrees)


NO_EYES = "two eyes not found: the face is framed from its box alone, not rotated"
# where the eyes sit in an upright face's Haar box, as shares of its side (the median over 52
# upright lfw-faces photos and the astronaut; std 0.04-0.06): an unaligned face is framed as
# if its eyes were there, so aligned and unaligned faces share one framing
BOX_EYES = np.array([[0.30, 0.38], [0.66, 0.38]])


class AlignError(ConvlensError):
    """An alignment setting or input that cannot be used."""


@dataclass
class Eyes:
    """The two eye centres in image pixels: on the image's left, then on its right."""

    left: tuple[float, float]
    right: tuple[float, float]

    def as_array(self) -> np.ndarray:
        return np.array([self.left, self.right], dtype=np.float64)  # (2, 2) x, y


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity matrix taking the two points `src` (2, 2) onto `dst` (2, 2).

    Closed form: points as complex numbers z, the map is z -> a z + b with
    a = (d1 - d0) / (s1 - s0) (rotation and scale) and b = d0 - a s0 (shift).
    """
    s, d = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    if s[1] == s[0]:
        raise AlignError("the two eye points coincide: no similarity transform")
    a = (d[1] - d[0]) / (s[1] - s[0])
    b = d[0] - a * s[0]
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (N, 2) mapped by a 2x3 affine matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def _candidates(grey: np.ndarray, names: tuple[str, ...]) -> list[tuple[float, float, float]]:
    """Eye boxes found in `grey` as (centre x, centre y, side)."""
    side = grey.shape[1]
    small, large = round(EYE_SIDE[0] * side), round(EYE_SIDE[1] * side)
    found = []
    for name in names:
        for x, y, w, h in load_cascade(name).detectMultiScale(
            grey,
            scaleFactor=1.1,
            minNeighbors=MIN_EYE_NEIGHBORS,
            minSize=(small, small),
            maxSize=(large, large),
        ):
            found.append((x + w / 2, y + h / 2, float(w)))
    return found


def _best_pair(found: list[tuple[float, float, float]], side: int) -> tuple[float, tuple] | None:
    """(cost, (left, right)) of the most level plausible pair of eye boxes, or None."""
    best = None
    for a, b in combinations(found, 2):
        left, right = (a, b) if a[0] <= b[0] else (b, a)
        dx, dy = right[0] - left[0], right[1] - left[1]
        ratio = max(left[2], right[2]) / min(left[2], right[2])
        plausible = (
            EYE_SPAN[0] * side <= dx <= EYE_SPAN[1] * side
            and max(left[1], right[1]) <= MAX_EYE_Y * side
            and left[0] <= side / 2 <= right[0]
            and ratio <= MAX_SIZE_RATIO
            and abs(dy) <= MAX_TILT * dx
        )
        if plausible:
            # level, alike, and about as far apart as eyes are (0.4 of the searched face)
            cost = abs(dy) / dx + 0.1 * (ratio - 1) + abs(dx / side - EYE_GAP)
            if best is None or cost < best[0]:
                best = (cost, (left[:2], right[:2]))
    return best


def find_eyes(image: Image.Image, box: Box | None = None) -> Eyes | None:
    """The eyes of the face in `box` (default: the whole image is the face), or None."""
    import cv2

    face, origin = image, np.zeros(2)
    if box is not None:  # the box grown as crop_face grows it: where the crop starts
        face = crop_face(image, box, margin=SEARCH_MARGIN)
        dx, dy = round(SEARCH_MARGIN * box.w), round(SEARCH_MARGIN * box.h)
        origin = np.array([max(0, box.x - dx), max(0, box.y - dy)], dtype=float)
    grey = np.asarray(face.convert("L").resize((EYE_SEARCH, EYE_SEARCH), Image.Resampling.BICUBIC))
    grey = cv2.equalizeHist(grey)
    scale = np.array([face.width / EYE_SEARCH, face.height / EYE_SEARCH])
    centre = (EYE_SEARCH / 2, EYE_SEARCH / 2)
    for names in (EYE_CASCADES, EYE_CASCADES + SPLIT_CASCADES):
        best = None
        for angle in SEARCH_ANGLES:
            turn = cv2.getRotationMatrix2D(centre, angle, 1.0)  # (2, 3) search view <- face
            view = cv2.warpAffine(grey, turn, (EYE_SEARCH, EYE_SEARCH),
                                  borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
            pair = _best_pair(_candidates(view, names), EYE_SEARCH)
            if pair is not None and (best is None or pair[0] < best[0]):
                back = cv2.invertAffineTransform(turn)
                best = (pair[0], transform(back, np.array(pair[1])))
        if best is not None:
            points = best[1] * scale + origin  # (2, 2) in the image's pixels
            return Eyes(tuple(points[0]), tuple(points[1]))
    return None


def warp_to_template(image: Image.Image, eyes: Eyes) -> Image.Image:
    """The SIZE x SIZE face whose eyes land on TEMPLATE (same mode as `image`: L or RGB)."""
    import cv2

    matrix = similarity(eyes.as_array(), TEMPLATE)
    pixels = np.asarray(image)
    out = cv2.warpAffine(pixels, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    return Image.fromarray(out)


def box_eyes(image: Image.Image, box: Box | None) -> Eyes:
    """Where an upright face's eyes would be in `box` (default: the image is a crop_face crop,
    the box grown by MARGIN)."""
    if box is None:
        grow = 1 + 2 * MARGIN
        w, h = image.width / grow, image.height / grow
        x, y = MARGIN * w, MARGIN * h
    else:
        x, y, w, h = box.x, box.y, box.w, box.h
    points = BOX_EYES * [w, h] + [x, y]
    return Eyes(tuple(points[0]), tuple(points[1]))


def align_face(image: Image.Image, box: Box | None = None) -> tuple[Image.Image, dict]:
    """(face image, {"aligned", "eyes" | "align_note"}): the SIZE x SIZE face in `box` (default:
    the whole image) with its eyes on the template, or, when two eyes are not found, framed as
    if they were where an upright face's are (box_eyes)."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    eyes = find_eyes(image, box)
    if eyes is None:
        return warp_to_template(image, box_eyes(image, box)), {
            "aligned": False,
            "align_note": NO_EYES,
        }
    eyes_list = [[round(v, 1) for v in eyes.left], [round(v, 1) for v in eyes.right]]
    return warp_to_template(image, eyes), {"aligned": True, "eyes": eyes_list}


def align_images(images: torch.Tensor, how: str) -> tuple[torch.Tensor, int]:
    """(uint8 face crops (N, C, H, W) aligned at their own size when `how` is "eyes", how many
    were aligned); the crops whose eyes are not found stay as they are."""
    if how not in ALIGNS:
        raise AlignError(f"align must be one of {', '.join(ALIGNS)}, not {how!r}")
    if how == "none" or len(images) == 0:
        return images, 0
    channels, size = images.shape[1], (images.shape[2], images.shape[3])
    out, aligned = [], 0
    for x in images:
        pixels = x[0].numpy() if channels == 1 else x.permute(1, 2, 0).numpy()  # (H, W[, 3])
        face, info = align_face(Image.fromarray(np.ascontiguousarray(pixels)))
        out.append(to_tensor(face, channels=channels, size=size))
        aligned += info["aligned"]
    return torch.stack(out), aligned
