"""Models by name: `register_model`, `create_model`, `list_models` (after timm)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from convlens.errors import ModelError

ModelFn = Callable[..., nn.Module]
BUILD_ARGS = ("in_channels", "num_classes", "image_size")  # every factory's; the data sets them
_MODELS: dict[str, ModelFn] = {}


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Register a factory `fn(*, in_channels, num_classes, image_size, **kwargs) -> nn.Module`."""

    def add(fn: ModelFn) -> ModelFn:
        if name in _MODELS:
            raise ModelError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return add


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _load_builtin()
    return sorted(_MODELS)


def model_entrypoint(name: str) -> ModelFn:
    """The registered factory called `name` (timm's name for this lookup)."""
    _load_builtin()
    if name not in _MODELS:
        known = ", ".join(sorted(_MODELS))
        raise ModelError(f"unknown model {name!r}; known models: {known}, "
                         "tv-<torchvision name> or timm-<timm name>")  # fmt: skip
    return _MODELS[name]


def create_model(
    name: str,
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int | tuple[int, int] = (28, 28),
    **kwargs: object,
) -> nn.Module:
    """Build the model called `name` for inputs (B, in_channels, *image_size)."""
    size = image_size_pair(image_size)
    for what, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise ModelError(f"model {name!r}: {what} must be a positive integer, got {value!r}")
    if name.startswith("tv-"):
        from convlens.models.tv import create_torchvision_model

        return create_torchvision_model(
            name[3:], in_channels=in_channels, num_classes=num_classes, image_size=size, **kwargs
        )
    if name.startswith("timm-"):
        from convlens.models.timm_models import create_timm_model

        return create_timm_model(
            name[5:], in_channels=in_channels, num_classes=num_classes, image_size=size, **kwargs
        )
    fn = model_entrypoint(name)
    check_model_args(name, kwargs)
    args = dict(in_channels=in_channels, num_classes=num_classes, image_size=size, **kwargs)
    try:
        inspect.signature(fn).bind(**args)  # a wrong keyword is the user's error, not a bug
    except TypeError as e:
        raise ModelError(f"model {name!r}: {e}") from e
    return fn(**args)


def check_model_args(name: str, kwargs: dict) -> None:
    """Refuse keyword arguments that model `name` does not take, naming those it does."""
    if name.startswith(("tv-", "timm-")):
        return  # their builders take **kwargs; create_*_model names a bad one
    params = inspect.signature(model_entrypoint(name)).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    own = [p for p in params if p not in BUILD_ARGS]  # the data gives the build arguments
    unknown = sorted(set(kwargs) - set(own))
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ModelError(f"model {name!r} takes no argument {names}; it accepts "
                         f"{', '.join(own) or 'none'}")  # fmt: skip


def image_size_pair(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(H, W) from an int side or a pair, each a positive integer."""
    pair = (image_size, image_size) if isinstance(image_size, int) else image_size
    if (
        not isinstance(pair, tuple | list)
        or len(pair) != 2
        or not all(isinstance(side, int) and side >= 1 for side in pair)
    ):
        raise ModelError(f"image_size must be a side or (height, width) > 0, got {image_size!r}")
    return (pair[0], pair[1])


def _load_builtin() -> None:
    # Importing the modules runs their @register_model decorators.
    from convlens.models import fastnet, lenet, mlp, resnet, textbook, wrn  # noqa: F401
