"""Synthetic pose changes of lfw-faces' faces, the protocol alignment is measured on.

scikit-image's LFW subset holds 100 tight 25x25 grey faces of different people. Each is
upscaled to FACE_SIDE px and set in a CANVAS px photo (edges replicated), then moved by a
seeded similarity transform: a rotation of 15-25 degrees either way, a scale of 0.8-1.2 and a
shift of up to 10% of the face's side. Two posed copies of one face are a matched pair, copies
of two faces a mismatched one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FACES = 100  # lfw_subset(): 100 faces, then 100 non-faces
FACE_SIDE = 100  # the 25 px faces upscaled to this (bicubic) before posing
CANVAS = 200  # side of the photo the face is set in, centred
ANGLES = (15.0, 25.0)  # |rotation| in degrees, either way
SCALES = (0.8, 1.2)
SHIFT = 0.1  # largest shift on each axis, as a share of FACE_SIDE


def lfw_faces() -> np.ndarray:
    """The subset's 100 faces as uint8 (100, 25, 25)."""
    from skimage.data import lfw_subset

    return np.round(lfw_subset()[:FACES].clip(0, 1) * 255).astype(np.uint8)


def upright(face: np.ndarray) -> Image.Image:
    """One 25x25 face upscaled and centred in a CANVAS x CANVAS grey photo."""
    import cv2

    big = cv2.resize(face, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_CUBIC)
    pad = (CANVAS - FACE_SIDE) // 2
    return Image.fromarray(cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE))


def pose_matrix(rng: np.random.Generator) -> np.ndarray:
    """A seeded 2x3 similarity matrix about the canvas centre: rotation, scale, shift."""
    import cv2

    angle = rng.uniform(*ANGLES) * rng.choice([-1.0, 1.0])
    matrix = cv2.getRotationMatrix2D((CANVAS / 2, CANVAS / 2), angle, rng.uniform(*SCALES))
    matrix[:, 2] += rng.uniform(-SHIFT, SHIFT, 2) * FACE_SIDE
    return matrix


def posed(face: np.ndarray, matrix: np.ndarray) -> Image.Image:
    """The upright photo of `face` moved by `matrix` (edges replicated)."""
    import cv2

    photo = np.asarray(upright(face))
    return Image.fromarray(cv2.warpAffine(photo, matrix, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REPLICATE))  # fmt: skip


def posed_set(faces: np.ndarray, copies: int, seed: int) -> list[list[Image.Image]]:
    """`copies` posed photos of each face, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [[posed(f, pose_matrix(rng)) for _ in range(copies)] for f in faces]
