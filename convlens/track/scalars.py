"""A metrics document (metrics.json) as named numbers, for trackers and fold summaries."""

from __future__ import annotations

import math


def scalars(metrics: dict, prefix: str = "", sep: str = ".") -> dict[str, float]:
    """Every finite number in `metrics`, nested mappings joined by `sep`; lists (the confusion
    matrix, per-class rows) and text are left out, booleans too."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(scalars(value, name, sep))
        elif _number(value):
            out[name] = float(value)
    return out


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
