"""Wide ResNets have the sizes the paper gives (Zagoruyko & Komodakis 2016, table 1 and 4)."""

from __future__ import annotations

import pytest

from convlens.errors import ModelError
from convlens.models import count_parameters, create_model

PAPER = [(40, 1, 0.6), (40, 2, 2.2), (40, 4, 8.9), (16, 8, 11.0), (28, 10, 36.5)]  # M params


@pytest.mark.parametrize(("depth", "width", "millions"), PAPER)
def test_parameter_counts_match_the_paper(depth, width, millions):
    model = create_model("wrn", in_channels=3, image_size=32, depth=depth, width=width)
    assert round(count_parameters(model) / 1e6, 1) == millions


def test_depth_must_be_6n_plus_4():
    with pytest.raises(ModelError, match="depth must be 6n \\+ 4"):
        create_model("wrn", depth=20)
