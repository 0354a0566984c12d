"""Every recipe in configs/ loads, builds its model, and opens with the evidence for it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from convlens.config import make_config
from convlens.models import create_model

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def _header(path: Path) -> str:
    """The comment lines the file begins with, joined."""
    lines = path.read_text().splitlines()
    return " ".join(line[1:].strip() for line in lines[: next(
        i for i, line in enumerate(lines) if not line.startswith("#"))])  # fmt: skip


def test_there_are_recipes():
    assert {p.name for p in CONFIGS} >= {"fashion-mnist-fast.yaml", "fashion-mnist-best.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_loads_and_builds(path):
    cfg = make_config(path)
    assert cfg.data and not cfg.resume and cfg.run is None  # a recipe, not one run's settings
    model = create_model(cfg.model, in_channels=1, num_classes=10, image_size=(28, 28),
                         **cfg.model_args)  # fmt: skip
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_states_its_evidence(path):
    """A figure (accuracy %), where it comes from, and the command; or 'not yet measured'."""
    header = _header(path)
    assert re.search(r"\d+\.\d+%", header), "no accuracy figure in the header"
    assert "not yet measured" in header.lower() or re.search(r"\d+(\.\d+)? s\b", header), (
        "neither a measured time nor 'not yet measured'"
    )
    assert f"--config configs/{path.name}" in header
