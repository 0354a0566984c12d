"""Check every layer's backward pass against finite differences, and print a table.

    python -m convlens.reference.gradcheck

For a layer f, a fixed random r and L(x) = sum(f(x) * r), backward(r) must give dL/dx and
dL/dparams. Each entry is compared with the central difference (L(x + h) - L(x - h)) / 2h, in
float64; `rel err` is max |analytic - numeric| / max |numeric| over the tensor.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from convlens.reference.layers import Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d, ReLU
from convlens.reference.losses import CrossEntropyLoss

TOLERANCE = 1e-6  # float64 central differences with h = 1e-6 are good to about 1e-9


def numeric_grad(loss: Callable[[], float], a: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """dL/da by central differences, nudging each entry of `a` in place."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        up = loss()
        a[i] = old - h
        down = loss()
        a[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


def compare(layer: str, tensor: str, analytic: np.ndarray, numeric: np.ndarray) -> dict:
    err = float(np.abs(analytic - numeric).max())
    rel = err / max(float(np.abs(numeric).max()), 1e-12)
    return {
        "layer": layer,
        "tensor": tensor,
        "shape": analytic.shape,
        "abs_err": err,
        "rel_err": rel,
        "ok": rel < TOLERANCE,
    }


def check_layer(name: str, layer: Layer, x: np.ndarray) -> list[dict]:
    """Rows for dL/dx and every dL/dparam of one layer at input x."""
    r = np.random.default_rng(1).standard_normal(layer.forward(x).shape)  # dL/d(output)

    def loss() -> float:
        if isinstance(layer, Dropout):
            layer.rng = np.random.default_rng(0)  # the same mask at every evaluation
        return float((layer.forward(x) * r).sum())

    loss()
    for p in layer.parameters().values():
        p.grad[...] = 0
    rows = [compare(name, "input", layer.backward(r), numeric_grad(loss, x))]
    for pname, p in layer.parameters().items():
        rows.append(compare(name, pname, p.grad, numeric_grad(loss, p.data)))
    return rows


def check_loss(name: str, loss_fn: CrossEntropyLoss, logits: np.ndarray, y: np.ndarray) -> dict:
    """The loss's own gradient dL/dlogits (the fused `p - y`)."""
    loss_fn.forward(logits, y)
    analytic = loss_fn.backward()
    return compare(name, "logits", analytic, numeric_grad(lambda: loss_fn(logits, y), logits))


def spread(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Distinct values at least 0.01 apart and away from 0: no ReLU kink, no max-pool tie."""
    n = int(np.prod(shape))
    values = (rng.permutation(n) - n / 2 + 0.5) / n * 4  # in (-2, 2), spacing 4/n
    return values.reshape(shape)


def run_all(seed: int = 0) -> list[dict]:
    """Every layer, in small float64 cases that exercise stride, padding and ceil_mode."""
    rng = np.random.default_rng(seed)
    kw = {"rng": rng, "dtype": np.float64}
    cases = [
        ("Conv2d k3 s2 p1", Conv2d(3, 4, 3, stride=2, padding=1, **kw), (2, 3, 7, 7)),
        ("Conv2d k5 s1 p2", Conv2d(2, 3, 5, padding=2, **kw), (2, 2, 6, 5)),
        ("Conv2d k2 s1 p0 no bias", Conv2d(2, 2, 2, bias=False, **kw), (1, 2, 4, 4)),
        ("MaxPool2d k2 s2 ceil", MaxPool2d(2, 2, ceil_mode=True), (2, 3, 5, 5)),
        ("MaxPool2d k3 s2 overlap", MaxPool2d(3, 2), (2, 2, 7, 6)),
        ("ReLU", ReLU(), (3, 4, 2, 2)),
        ("Flatten", Flatten(), (2, 3, 2, 2)),
        ("Linear", Linear(6, 4, **kw), (3, 6)),
        ("Dropout p0.5", Dropout(0.5), (3, 8)),
    ]
    rows = []
    for name, layer, shape in cases:
        rows += check_layer(name, layer, spread(rng, shape))
    logits, y = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    rows.append(check_loss("CrossEntropy", CrossEntropyLoss(), logits, y))
    smooth = CrossEntropyLoss(0.1, weight=rng.uniform(0.5, 2, 4))
    rows.append(check_loss("CrossEntropy smooth 0.1 weighted", smooth, logits, y))
    return rows


def main() -> int:
    rows = run_all()
    print(f"{'layer':<34}{'tensor':<8}{'shape':<16}{'abs err':>10}{'rel err':>10}  ok")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"{r['layer']:<34}{r['tensor']:<8}{shape:<16}{r['abs_err']:>10.1e}"
            f"{r['rel_err']:>10.1e}  {'yes' if r['ok'] else 'NO'}"
        )
    failed = sum(not r["ok"] for r in rows)
    print(
        f"{len(rows) - failed} of {len(rows)} gradients match finite differences "
        f"(rel err < {TOLERANCE:g})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
