"""Translation (and rotation) invariance, measured: accuracy on shifted test images, CNN vs MLP.

Each test image is shifted by s pixels up, down, left and right (zero fill, as in training
augmentation), and rotated by +-a degrees; a curve point is the mean over those copies. The
networks are measured bare, without test-time augmentation (its shifted and mirrored views
would lend both models some invariance that is not theirs). The baseline is an `mlp` trained
on the same data with the run's own settings (epochs, batch size, learning rate, schedule,
augmentation): the same budget, without convolutions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from convlens.data.batches import translate_each
from convlens.data.dataset import Split
from convlens.models.infer import predict_proba

ANGLES = (0, 5, 10, 15, 20, 30)  # degrees; each is measured as +a and -a
Predict = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, C, H, W) -> probabilities (N, K)


def shift_images(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Every image moved dy pixels down and dx right, zero-filled: uint8 (N, C, H, W)."""
    shifts = torch.tensor([[dy, dx]]).expand(len(images), 2)
    return translate_each(images, shifts, max(abs(dy), abs(dx)))


def rotate_images(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Every image rotated counter-clockwise about its centre, bilinear, zero-filled."""
    import math

    import torch.nn.functional as F

    if degrees == 0:
        return images
    t = math.radians(degrees)
    n, _, h, w = images.shape
    # grid_sample's theta maps output to input coordinates in [-1, 1]; the aspect ratio keeps
    # the turn a true rotation on non-square images
    theta = torch.tensor([[math.cos(t), -math.sin(t) * h / w, 0.0],
                          [math.sin(t) * w / h, math.cos(t), 0.0]])  # fmt: skip
    grid = F.affine_grid(theta.expand(n, 2, 3), list(images.shape), align_corners=False)
    x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                      align_corners=False)  # fmt: skip
    return x.round().clamp(0, 255).to(torch.uint8)


def bare_predictor(model: torch.nn.Module, meta: dict) -> Predict:
    """uint8 images -> the network's own probabilities, no test-time augmentation."""
    mean, std = meta.normalize.mean, meta.normalize.std
    return lambda images: predict_proba(model, images, mean=mean, std=std)


def invariance_curves(
    predict: Predict, split: Split, *, max_shift: int = 4, angles: Sequence[float] = ANGLES
) -> dict:
    """{shift: {pixels, accuracy, true_class_prob}, rotation: {degrees, ...}} for one model."""
    images, labels = split.images, split.labels

    def score(variants: list[torch.Tensor]) -> tuple[float, float]:
        acc, prob = 0.0, 0.0
        for x in variants:
            p = predict(x)  # (N, K)
            acc += (p.argmax(1) == labels).float().mean().item()
            prob += p.gather(1, labels[:, None]).mean().item()
        return acc / len(variants), prob / len(variants)

    shift = {"pixels": [], "accuracy": [], "true_class_prob": []}
    for s in range(max_shift + 1):
        moves = [(0, 0)] if s == 0 else [(s, 0), (-s, 0), (0, s), (0, -s)]
        acc, prob = score([shift_images(images, dy, dx) for dy, dx in moves])
        _append(shift, s, acc, prob, "pixels")
    rotation = {"degrees": [], "accuracy": [], "true_class_prob": []}
    for a in angles:
        turns = [0] if a == 0 else [a, -a]
        acc, prob = score([rotate_images(images, t) for t in turns])
        _append(rotation, a, acc, prob, "degrees")
    return {"shift": shift, "rotation": rotation}


def _append(curve: dict, at: float, acc: float, prob: float, key: str) -> None:
    curve[key].append(at)
    curve["accuracy"].append(acc)
    curve["true_class_prob"].append(prob)


def sample_split(split: Split, n: int, seed: int = 0) -> Split:
    """A seeded random subset of at most n images (all of them when n <= 0)."""
    if n <= 0 or n >= len(split):
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return split.subset(idx.sort().values)
