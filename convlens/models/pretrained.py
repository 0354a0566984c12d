"""The preprocessing a backbone's published weights were trained with (BackboneDefaults).

torchvision: the weights enum's `transforms()` (ImageClassification: resize the shorter side,
centre-crop, mean/std). timm: `resolve_data_config` of the model's `pretrained_cfg` (input
size, interpolation, crop_pct, mean/std). A pretrained net sees inputs normalised as in its own
training; normalised with a new dataset's statistics instead, every first-layer response shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

from convlens.errors import ModelError


@dataclass(frozen=True)
class BackboneDefaults:
    """How images were prepared for a backbone's weights; mean/std per channel in [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where they come from, for the log: "torchvision ResNet18_Weights.IMAGENET1K_V1"
    size: tuple[int, int] | None = None  # the (H, W) input (the centre crop) the weights expect
    resize: int | None = None  # the shorter side before that crop, px
    interpolation: str | None = None  # torchvision InterpolationMode name: bilinear, bicubic

    def normalize(self, channels: int) -> tuple[list[float], list[float]]:
        """(mean, std) for images of `channels`: averaged for grey on RGB weights (the first
        conv is summed over R, G, B), repeated for colour on grey weights (repeated / 3)."""
        mean, std = list(self.mean), list(self.std)
        if len(mean) == channels:
            return mean, std
        if channels == 1:
            return [sum(mean) / len(mean)], [sum(std) / len(std)]
        if len(mean) == 1:
            return mean * channels, std * channels
        raise ModelError(f"{self.source}: weights for {len(mean)}-channel images cannot take "
                         f"{channels}-channel ones")  # fmt: skip

    def describe(self) -> str:
        """One line for the log."""
        text = f"normalised as {self.source} expects (mean {_fmt(self.mean)}, std {_fmt(self.std)})"
        if self.size:
            crop = f"{self.size[0]}x{self.size[1]} images"
            if self.resize:
                crop = f"{crop} cut from a {self.resize} px shorter side"
            how = f" ({self.interpolation})" if self.interpolation else ""
            text += f"; its weights were trained on {crop}{how}"
        return text


def _fmt(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:.3f}" for v in values)


def pretrained_defaults(model: str) -> BackboneDefaults | None:
    """The published default weights' preprocessing of registry model `model` (tv-*, timm-*);
    None for convlens's own models, which have no published weights."""
    if model.startswith("tv-"):
        return _torchvision(model[3:])
    if model.startswith("timm-"):
        return _timm(model[5:])
    return None


def _torchvision(arch: str) -> BackboneDefaults | None:
    from torchvision import models

    try:
        weights = models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):  # a model without published weights
        return None
    t = weights.transforms()  # ImageClassification (or another preset: no crop_size)
    if not hasattr(t, "mean"):
        return None
    crop = getattr(t, "crop_size", None)
    resize = getattr(t, "resize_size", None)
    mode = getattr(t, "interpolation", None)
    return BackboneDefaults(
        mean=tuple(t.mean),
        std=tuple(t.std),
        source=f"torchvision {type(weights).__name__}.{weights.name}",
        size=(crop[0], crop[-1]) if crop else None,
        resize=resize[0] if resize else None,
        interpolation=getattr(mode, "value", None),
    )


def _timm(name: str) -> BackboneDefaults | None:
    from convlens.models.timm_models import import_timm

    timm = import_timm(f"timm-{name}")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    data = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())
    _, h, w = data["input_size"]
    tag = f".{cfg.tag}" if cfg.tag else ""
    return BackboneDefaults(
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        source=f"timm {name}{tag}",
        size=(h, w),
        resize=round(min(h, w) / data["crop_pct"]),  # timm: scale = size / crop_pct
        interpolation=data["interpolation"],
    )
