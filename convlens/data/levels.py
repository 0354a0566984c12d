"""Bring pixel values of more than 8 bits into uint8: linearly from min..max, or a DICOM window.

Shared by convlens.data.images (16-bit PNG/TIFF) and convlens.data.dicom, so that neither
imports the other for it.
"""

from __future__ import annotations

import numpy as np


def minmax_uint8(values: np.ndarray) -> np.ndarray:
    """Linear min..max -> 0..255 uint8 (all zeros for a constant image)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.round((values - lo) * (255 / (hi - lo))).astype(np.uint8)


def window_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The DICOM linear window: center - width/2 .. center + width/2 -> 0..255, clipped."""
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255  # PS3.3 C.11.2.1.2.1
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
