"""Temperature scaling (Guo et al. 2017): one number T, fitted on the validation split, divides
the logits so that the predicted probabilities match how often the model is right.

T is chosen to minimise the validation NLL of the probabilities the run actually predicts (the
softmax of each test-time view, averaged), then folded into the last linear layer (its weight
and bias divided by T). Every engine that runs the weights (torch, ONNX, the NumPy engine)
therefore gives calibrated probabilities with no extra step. The argmax of one view is unchanged;
an average over views can, rarely, change its argmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data import Dataset
from convlens.evaluation.metrics import expected_calibration_error
from convlens.models.infer import map_batches, tta_views

LOG_T_RANGE = (-4.0, 4.0)  # T from 0.018 to 55
MIN_VAL = 100  # fewer validation images fit a temperature to noise


def view_logits(model: nn.Module, images: torch.Tensor, meta: dict, device: str = "cpu"):
    """(logits (N, V, K) of each test-time view, view weights (V,)) for uint8 images."""
    tta = meta.get("tta", "none")

    def views(x: torch.Tensor) -> torch.Tensor:  # (B, V, K)
        return torch.stack([model(v).float() for v, _ in tta_views(x, tta)], dim=1)

    norm = meta["normalize"]
    logits = map_batches(model, images, views, mean=norm["mean"], std=norm["std"], device=device)
    weights = torch.tensor([w for _, w in tta_views(images[:1].float(), tta)])  # (V,)
    return logits, weights


def probs_at(logits: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, K) probabilities: the views' softmax of logits / T, averaged with their weights."""
    p = (logits.double() / temperature).softmax(dim=2)  # (N, V, K)
    return (p * weights.double()[None, :, None]).sum(1)


def nll(logits: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    """Mean negative log-likelihood of the labels under probs_at(..., t)."""
    return F.nll_loss(probs_at(logits, weights, t).clamp_min(1e-300).log(), labels).item()


def fit_temperature(logits: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor) -> float:
    """The T that minimises the NLL (bounded Brent search over log T)."""
    from scipy.optimize import minimize_scalar  # SciPy loads when a run is calibrated

    best = minimize_scalar(
        lambda log_t: nll(logits, weights, labels, math.exp(log_t)),
        bounds=LOG_T_RANGE,
        method="bounded",
        options={"xatol": 1e-4},
    )
    return math.exp(best.x)


def final_linear(model: nn.Module) -> nn.Linear | None:
    """The last nn.Linear among the model's modules (the classifier, for the registry's models)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@torch.no_grad()
def fold_temperature(model: nn.Module, temperature: float, probe: torch.Tensor) -> bool:
    """Divide the last linear layer by T; True when the model's logits on `probe` (a normalised
    batch) became logits / T, else the layer is restored and False returned."""
    layer = final_linear(model)
    if layer is None:
        return False
    model.eval()
    before = model(probe).float()
    saved = [p.clone() for p in layer.parameters()]
    for p in layer.parameters():
        p.div_(temperature)
    after = model(probe).float()
    if torch.allclose(
        after, before / temperature, rtol=1e-3, atol=1e-4 * before.abs().max().item()
    ):
        return True
    for p, old in zip(layer.parameters(), saved, strict=True):
        p.copy_(old)
    return False


def calibrate(model: nn.Module, meta: dict, ds: Dataset, device: str = "cpu") -> tuple[dict, str]:
    """Fit T on `ds.val` and fold it into `model` (in place). Returns the metadata entry
    {"method", "temperature", "val_nll", "val_ece"} (the last two as [before, after]) and a
    note for the console; an empty entry when T cannot be folded into this model."""
    if len(ds.val) < MIN_VAL:
        return {}, f"calibration: {len(ds.val)} validation images are too few (< {MIN_VAL})"
    logits, weights = view_logits(model, ds.val.images, meta, device)
    if not torch.isfinite(logits).all():  # overflowed weights: no temperature fits them
        return {}, "calibration: skipped, the validation logits are not finite"
    labels = ds.val.labels
    t = fit_temperature(logits, weights, labels)
    if not LOG_T_RANGE[0] + 0.01 < math.log(t) < LOG_T_RANGE[1] - 0.01:
        return {}, f"calibration: the temperature ran to its bound ({t:.3g}); val too easy to fit"
    norm = meta["normalize"]
    probe = map_batches(model, ds.val.images[:64], lambda x: x, mean=norm["mean"], std=norm["std"],
                        device=device).to(device)  # fmt: skip
    if not fold_temperature(model, t, probe):
        return {}, "calibration: this model's logits are not its last linear layer's; not scaled"
    ece = [expected_calibration_error(labels, probs_at(logits, weights, s).float()) for s in (1, t)]
    entry = {
        "method": "temperature",
        "temperature": t,
        "val_nll": [nll(logits, weights, labels, 1.0), nll(logits, weights, labels, t)],
        "val_ece": ece,
    }
    note = (
        f"calibration: temperature {t:.3f} fitted on val; val ECE {100 * ece[0]:.1f}% -> "
        f"{100 * ece[1]:.1f}%, NLL {entry['val_nll'][0]:.4f} -> {entry['val_nll'][1]:.4f}"
    )
    return entry, note
