"""Anomaly maps of `convlens predict` rows written as PNG files, their paths put in the rows."""

from __future__ import annotations

import base64
from pathlib import Path

from convlens.runs.atomic import atomic_write_bytes

FOLDER = "maps"  # the default folder, in the working directory or beside a --csv file


def save_maps(rows: list[dict], folder: str | Path) -> int:
    """Write each row's "map_png" (base64) as FOLDER/<image stem>_map.png (-2, -3... where
    stems repeat) and replace it by "map": that path; returns how many were written."""
    folder, taken, written = Path(folder), set(), 0
    for row in rows:
        data = row.pop("map_png", None)
        if data is None:
            continue
        stem, n = Path(row["file"]).stem, 1
        while (name := f"{stem}_map{f'-{n}' if n > 1 else ''}.png") in taken:
            n += 1
        taken.add(name)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / name, base64.b64decode(data))
        row["map"] = str(folder / name)
        written += 1
    return written
