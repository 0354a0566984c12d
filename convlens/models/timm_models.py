"""Any timm model as `timm-<name>` (timm is an optional extra: `pip install convlens[timm]`).

timm's models already have what convlens asks of a model: `forward_features` (the last feature
map) and `forward_head(x, pre_logits=True)` (the pooled embedding), `num_features`, and
`create_model(in_chans=, num_classes=)`, which adapts a pretrained first conv to the channel
count (`adapt_input_conv`: summed over RGB for grey) and drops a pretrained head of another
size. The model returned is timm's own, parameter names included.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import sys

from torch import nn

from convlens.errors import ModelError
from convlens.models.probe import check_input

INSTALL = "pip install convlens[timm]"


def import_timm(what: str):
    """The timm package, or one line saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ModelError(f"{what} needs timm, which is not installed: {INSTALL}") from None
    return timm


def create_timm_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    pretrained: bool = False,
    **kwargs: object,
) -> nn.Module:
    """timm's `name` for (in_channels, *image_size) inputs and num_classes outputs."""
    timm = import_timm(f"timm-{name}")
    if not timm.is_model(name):
        names = timm.list_models()
        close = difflib.get_close_matches(name, names, n=3) or ["resnet18", "convnext_atto"]
        raise ModelError(f"unknown timm model {name!r}; did you mean {', '.join(close)}? "
                         f"({len(names)} known: `timm.list_models()`)")  # fmt: skip
    args = dict(in_chans=in_channels, num_classes=num_classes, **kwargs)
    try:
        model = _pretrained(timm, name, args) if pretrained else timm.create_model(name, **args)
    except TypeError as e:
        raise ModelError(f"timm-{name}: {e}") from e
    check_input(model, f"timm-{name}", in_channels, image_size)
    return model


def _pretrained(timm, name: str, args: dict) -> nn.Module:
    """The model with timm's default pretrained weights (the Hugging Face hub, or its cache)."""
    said = io.StringIO()  # the hub's retry warnings, shown only if the weights come
    try:
        with contextlib.redirect_stderr(said):
            model = timm.create_model(name, pretrained=True, **args)
    except (OSError, RuntimeError, ValueError) as e:  # offline: huggingface_hub's OSErrors
        where = timm.models.get_pretrained_cfg(name)
        source = getattr(where, "hf_hub_id", None) or getattr(where, "url", None) or "timm"
        reason = " ".join(str(e).split()).split(". ")[0][:200]  # huggingface_hub's first sentence
        raise ModelError(
            f"cannot download pretrained weights for timm-{name} ({source}): {reason}; "
            "use --init FILE with a local weights file"
        ) from None
    sys.stderr.write(said.getvalue())
    return model
