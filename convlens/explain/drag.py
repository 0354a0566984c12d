"""The explainer page's translation drag: the maps and the prediction of the image moved.

The page has no Python, so the image is moved here by every (dy, dx) within RADIUS pixels and
run again; each layer's maps are drawn on the unmoved image's grey scale, so a map that moves
with the image looks the same, only shifted (the seed article's translation equivariance).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from convlens.explain.invariance import shift_images
from convlens.explain.walkthrough import channel_pngs, picture_uri
from convlens.reference import softmax

RADIUS = 2  # moves of -2..2 pixels down and right: 24 moved copies of the image
MAX_BYTES = 1_000_000  # PNG bytes the moved copies may add to the page


def shifted_views(
    run: Callable, net, image: np.ndarray, prep: Callable, records: list[dict],
    radius: int = RADIUS, limit: int = MAX_BYTES,
) -> dict:  # fmt: skip
    """{"radius", "layers": the records redrawn, "views": {"dy,dx": picture, maps, probs}}.

    run(net, x) -> (steps, logits) is the engine's trace (walkthrough.run_reference or
    torch_trace.run_torch); prep turns uint8 (C, H, W) into the floats it takes. The first
    layers whose moved maps fit in `limit` bytes are redrawn, the others only on the unmoved
    image.
    """
    n = (2 * radius + 1) ** 2 - 1
    layers, spent = [], 0
    for i, r in enumerate(records[1:], start=1):
        cost = n * sum(len(uri) for uri in r.get("maps", []))
        if "maps" not in r or spent + cost > limit:
            break
        layers.append(i)
        spent += cost
    views = {}
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy, dx) == (0, 0):
                continue
            moved = shift_images(torch.from_numpy(image)[None], dy, dx)[0].numpy()
            steps, logits = run(net, prep(moved))
            maps = [channel_pngs(steps[i].out, records[i]["range"])[0] for i in layers]
            probs = softmax(logits.astype(np.float64)).tolist()
            views[f"{dy},{dx}"] = {"picture": picture_uri(moved), "maps": maps, "probs": probs}
    return {"radius": radius, "layers": layers, "views": views}
