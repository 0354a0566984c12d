"""The interactive explainer page: explainer.html (inline script and style) with its data."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from convlens.report.html import STYLE


def page(data: dict) -> str:
    """The page for a walkthrough's data (convlens.api.interactive builds it)."""
    template = resources.files("convlens.report").joinpath("explainer.html").read_text()
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # no </script> inside
    return template.replace("/*STYLE*/", STYLE).replace("/*DATA*/", blob)


def write_page(data: dict, path: Path) -> Path:
    """Write the page to `path` and return it."""
    path.write_text(page(data), encoding="utf-8")
    return path
