"""The images `convlens predict` is given: files as named, folders walked, globs expanded."""

from __future__ import annotations

import glob
from pathlib import Path

from convlens.data.folder import IMAGE_EXTENSIONS
from convlens.errors import ConvlensError


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given, folders walked for images, globs expanded; a missing path is an error."""
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise ConvlensError(f"{item}: no images in this folder")
            out += found
        elif path.exists():
            out.append(item)
        elif any(ch in item for ch in "*?["):
            found = sorted(glob.glob(item, recursive=True))
            if not found:
                raise ConvlensError(f"{item}: no file matches this pattern")
            out += found
        else:
            raise ConvlensError(f"{item}: no such file or folder")
    return out
