"""One typed training config: dataclass defaults, then a YAML file, then flags (rightmost wins)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convlens.errors import ConfigError


@dataclass
class TrainConfig:
    """Every setting of a training run; the resolved copy is saved as the run's config.yaml."""

    # data
    data: str = "fashion-mnist"  # dataset name, class folder, .npz file or IDX prefix
    data_dir: str | None = None  # where named datasets are looked up first
    val_fraction: float = 0.1  # share of train held out when the source has no validation split
    image_size: int | None = None  # resize folder images to this (default: their common size)
    strict: bool = False  # stop at the first unreadable image instead of skipping it
    translate: int = 2  # random translation in pixels, each axis (0 = off)
    hflip: str = "auto"  # mirroring: auto (alternate if the data allows) | random | alternate | off
    # task
    task: str = "classify"  # classify | multilabel | anomaly | embed (face identities)
    normal: str | None = None  # anomaly: normal class name(s), comma-separated (default: all)
    anomaly_method: str = "mahalanobis"  # anomaly: mahalanobis (features of the GEOM net) | geom
    target_sensitivity: float | None = None  # two-class: threshold for this sensitivity on val
    embedding_size: int = 128  # embed: length of the L2-normalised face embedding
    embed_loss: str = "arcface"  # embed: arcface (additive angular margin) | softmax
    margin: float = 0.5  # embed: ArcFace angular margin m (radians)
    scale: float = 30.0  # embed: ArcFace logit scale s
    # model
    model: str = "fastnet"  # a name from `convlens models`
    model_args: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments
    init: str | None = None  # start from the weights in this .safetensors file or run
    pretrained: bool = False  # torchvision's published weights (tv-* models, needs internet)
    # optimisation
    epochs: int = 8  # passes over the training split
    batch_size: int = 512  # images per optimisation step (512 is fastest per image here)
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.75  # peak learning rate (per batch of batch_size)
    momentum: float = 0.85  # SGD momentum
    nesterov: bool = True  # Nesterov momentum for SGD
    weight_decay: float = 1.3e-3  # coupled (torch SGD); not on biases and norm layers by default
    schedule: str = "onecycle"  # onecycle | cosine | step | constant
    warmup: float = 0.23  # onecycle: share of steps spent rising to the peak
    lr_start: float = 0.2  # onecycle: lr at the first step, as a share of the peak
    lr_end: float = 0.07  # onecycle: lr at the last step, as a share of the peak
    step_size: int = 3  # step: epochs between lr drops
    gamma: float = 0.1  # step: lr factor at each drop
    label_smoothing: float = 0.2  # share of the target spread over all classes
    class_weights: str = "none"  # none | auto (inverse class frequency)
    ema: float = 0.95  # lookahead: weights averaged with this decay per step, copied back; 0 = off
    ema_start: float = 0.3  # share of training steps before the average starts
    ema_every: int = 5  # steps between updates of the average
    patience: int = 0  # stop after this many epochs without val improvement (0 = never)
    tta: str = "auto"  # test-time views: auto (flip-shift if mirrored) | none | flip | flip-shift
    calibrate: str = "temperature"  # classify: temperature (scale fitted on val) | none
    # machine
    engine: str = "torch"  # torch | numpy (the NumPy reference engine: textbook, lenet5, mlp)
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # bf16 autocast: auto (where it helps) | bf16 | off
    channels_last: bool = True  # NHWC memory layout (1.2-1.75x faster with bf16 on this CPU)
    threads: int = 0  # torch CPU threads (0 = torch's default)
    compile: bool = False  # torch.compile the model (pays a start-up cost; helps on GPUs)
    workers: int = 0  # data-loader processes decoding folder images (0 = in the main process)
    seed: int = 0  # seeds weights, data order, augmentation and the validation split
    deterministic: bool = False  # use only deterministic kernels
    # output
    run: str | None = None  # run folder (default runs/train, runs/train2, ...)
    resume: bool = False  # continue the run folder's last saved state


def config_types() -> dict[str, Any]:
    """Each setting's type, from the dataclass annotations."""
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Turn a YAML or command-line value into the field's type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(name, value, args[0])
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"setting {name!r} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"setting {name!r} must be true or false, got {value!r}")
    if tp in (int, float, str):
        if isinstance(value, bool) and tp is not str:
            raise ConfigError(f"setting {name!r} must be a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {name!r} must be {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"setting {name!r} must be an integer, got {value!r}")
        return out
    return value


# The dataclass defaults are fastnet's recipe (benchmarks/fast_recipe_log.md): a 0.75 peak lr,
# for instance, sends a net without BatchNorm such as `textbook` to chance accuracy. Every other
# model starts from this classic recipe instead (textbook: 88.9% on Fashion-MNIST in 3 epochs,
# BENCHMARKS.md), before the YAML file and the flags.
CLASSIC_RECIPE = {
    "batch_size": 64,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "label_smoothing": 0.1,
    "ema": 0.0,
}
RECIPES: dict[str, dict[str, Any]] = {"fastnet": {}}
# A task's own starting point, over the model's recipe: fastnet's 0.75 peak lr learns face
# embeddings poorly (digits identities, 6 epochs: val AUC 0.90 at lr 0.75, 0.9999 at 0.02).
TASK_RECIPES: dict[str, dict[str, Any]] = {"embed": {"lr": 0.05}}


def make_config(
    yaml_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults, the model's and task's recipes, `yaml_file`, `overrides`; unknown keys fail."""
    fields = config_types()
    values: dict[str, Any] = {}
    if yaml_file is not None:
        values.update(load_yaml(yaml_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    model = str(values.get("model", TrainConfig.model))
    task = str(values.get("task", TrainConfig.task))
    values = {**RECIPES.get(model, CLASSIC_RECIPE), **TASK_RECIPES.get(task, {}), **values}
    kwargs = {k: _coerce(k, v, fields[k]) for k, v in values.items()}
    cfg = TrainConfig(**kwargs)
    validate(cfg)
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config YAML file as a flat mapping."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of setting: value")
    return values


_CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("onecycle", "cosine", "step", "constant"),
    "hflip": ("auto", "random", "alternate", "off"),
    "tta": ("auto", "none", "flip", "flip-shift"),
    "calibrate": ("temperature", "none"),
    "class_weights": ("none", "auto"),
    "device": ("auto", "cpu", "cuda"),
    "amp": ("auto", "bf16", "off"),
    "engine": ("torch", "numpy"),
    "task": ("classify", "multilabel", "anomaly", "embed"),
    "anomaly_method": ("geom", "mahalanobis"),
    "embed_loss": ("arcface", "softmax"),
}


def validate(cfg: TrainConfig) -> None:
    """Check ranges and choices, naming the setting at fault."""
    for name, choices in _CHOICES.items():
        value = getattr(cfg, name)
        if value not in choices and not (name == "device" and value.startswith("cuda:")):
            options = ", ".join(choices)
            raise ConfigError(f"setting {name!r} must be one of {options}, not {value!r}")
    positive = ("epochs", "batch_size", "lr")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"setting {name!r} must be positive, got {getattr(cfg, name)}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"setting 'val_fraction' must be between 0 and 1, got {cfg.val_fraction}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError("setting 'label_smoothing' must be in [0, 1)")
    if not 0.0 <= cfg.ema < 1.0:
        raise ConfigError("setting 'ema' must be in [0, 1)")
    if cfg.ema_every < 1:
        raise ConfigError("setting 'ema_every' must be at least 1")
    if cfg.target_sensitivity is not None and not 0.0 < cfg.target_sensitivity <= 1.0:
        raise ConfigError("setting 'target_sensitivity' must be in (0, 1]")
    if cfg.translate < 0 or cfg.patience < 0:
        raise ConfigError("settings 'translate' and 'patience' must not be negative")
    if cfg.workers < 0:
        raise ConfigError("setting 'workers' must not be negative (0: decode in this process)")


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write every resolved setting, defaults included, as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def setting_help() -> dict[str, str]:
    """Each setting's comment in the TrainConfig source above, for `convlens train --help`."""
    import inspect
    import re

    source = inspect.getsource(TrainConfig)
    return {m[1]: m[2] for m in re.finditer(r"^\s+(\w+): [^=\n]+=[^#\n]*#\s*(.+)$", source, re.M)}
