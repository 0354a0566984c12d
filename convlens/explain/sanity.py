"""Sanity checks for saliency maps: scenes whose class is decided by one object at a known place.

Each scene holds a class glyph (plus, cross, diamond, hollow square) and a distractor (a filled
disc, the same in every class, as bright as the glyph) at random, non-overlapping places on
faint noise; the last class, "empty", has the distractor alone, so that no glyph class can be
told by the absence of the others: each needs evidence from its own glyph. A heatmap that
explains the model should peak inside the glyph's box (the pointing game, Zhang et al. 2016);
one from a model with randomised weights should not (Adebayo et al. 2018, "Sanity checks for
saliency maps"): to an untrained network the distractor is as salient as the glyph.

The hollow square comes last (used only with classes=5): its evidence is its outline, on the
border of its box, so a coarse heatmap (stride 4) often peaks just outside the box.
"""

from __future__ import annotations

import numpy as np
import torch

from convlens.explain.gradcam import peak

GLYPHS = ("plus", "cross", "diamond", "square")


def _glyph(kind: str, k: int) -> np.ndarray:
    """A k x k boolean mask (k odd)."""
    m = np.zeros((k, k), bool)
    c = k // 2
    if kind == "plus":
        m[c, :] = m[:, c] = True
    elif kind == "cross":
        np.fill_diagonal(m, True)
        np.fill_diagonal(m[:, ::-1], True)
    elif kind == "square":
        m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    elif kind == "diamond":
        yy, xx = np.mgrid[:k, :k] - c
        m[:] = np.abs(yy) + np.abs(xx) == c
    return m


def _disc(k: int) -> np.ndarray:
    yy, xx = np.mgrid[:k, :k] - k // 2
    return yy**2 + xx**2 <= (k // 2) ** 2


def object_scenes(
    n: int,
    *,
    size: int = 28,
    channels: int = 1,
    classes: int = 4,
    glyph: int = 7,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images uint8 (N, C, size, size), labels (N,), boxes (N, 4)): y0, x0, y1, x1 (exclusive).

    Labels 0 .. classes-2 are glyphs; classes-1 is "empty", whose box is (0, 0, 0, 0).
    """
    if not 2 <= classes <= len(GLYPHS) + 1:
        raise ValueError(f"classes must be 2..{len(GLYPHS) + 1}, got {classes}")
    rng = np.random.default_rng(seed)
    masks = [_glyph(g, glyph) for g in GLYPHS[: classes - 1]]
    masks.append(np.zeros((glyph, glyph), bool))  # "empty": nothing drawn, box left empty
    disc = _disc(glyph)
    images = rng.integers(0, 50, (n, size, size, channels)).astype(np.uint8)  # (N, H, W, C)
    labels = rng.integers(0, classes, n)
    boxes = np.zeros((n, 4), np.int64)
    for i in range(n):
        while True:  # two places at least one glyph apart
            (y0, x0), (y1, x1) = rng.integers(0, size - glyph + 1, (2, 2))
            if max(abs(y0 - y1), abs(x0 - x1)) > glyph:
                break
        for (y, x), mask in (((y0, x0), masks[labels[i]]), ((y1, x1), disc)):
            colour = rng.integers(150, 256, channels)  # (C,) random: colour decides nothing
            images[i, y : y + glyph, x : x + glyph][mask] = colour
        if labels[i] < classes - 1:
            boxes[i] = (y0, x0, y0 + glyph, x0 + glyph)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(labels), torch.from_numpy(boxes)


def pointing_game(heatmaps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """True where a map (B, H, W) has its maximum inside its box (B, 4); an all-zero map misses."""
    rc = peak(heatmaps)  # (B, 2)
    inside = (rc[:, 0] >= boxes[:, 0]) & (rc[:, 0] < boxes[:, 2])
    inside &= (rc[:, 1] >= boxes[:, 1]) & (rc[:, 1] < boxes[:, 3])
    return inside & (heatmaps.flatten(1).amax(1) > 0)
