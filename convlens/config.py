"""One typed training config: dataclass defaults, then a YAML file, then flags (rightmost wins)."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convlens.errors import ConfigError, ModelError
from convlens.tasks.registry import list_tasks, task_class


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: lo to hi, each end open or closed, never nan/inf."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    @classmethod
    def parse(cls, text: str) -> Range:
        """An interval as mathematicians write it: "[1, inf)", "(0, 1]"."""
        m = re.fullmatch(r"([\[(])([^,]+),([^\])]+)([\])])", text.replace(" ", ""))
        if m is None:
            raise ValueError(f"not an interval: {text!r}")
        return cls(float(m[2]), float(m[3]), m[1] == "(", m[4] == ")")

    def __contains__(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False
        above = x > self.lo if self.lo_open else x >= self.lo  # exact for ints of any size
        below = x < self.hi if self.hi_open else x <= self.hi
        return above and below

    def __str__(self) -> str:
        lo, hi = _number(self.lo), _number(self.hi)
        if self.hi == math.inf:
            if self.lo_open:
                return "positive" if self.lo == 0 else f"greater than {lo}"
            return f"at least {lo}"
        if self.lo_open == self.hi_open:
            return f"between {lo} and {hi}" + (", exclusive" if self.lo_open else "")
        return f"at least {lo} and below {hi}" if self.hi_open else f"above {lo} and at most {hi}"


def _number(x: float) -> str:
    return str(int(x)) if x.is_integer() else str(x)


def within(default: Any, interval: str) -> Any:
    """A dataclass field with its allowed values, e.g. `within(0.1, "(0, 1)")`."""
    return field(default=default, metadata={"range": Range.parse(interval)})


@dataclass
class TrainConfig:
    """Every setting of a training run; the resolved copy is saved as the run's config.yaml."""

    # data
    data: str = "fashion-mnist"  # dataset name, class folder, .npz file or IDX prefix
    data_dir: str | None = None  # where named datasets are looked up first
    val_fraction: float = within(0.1, "(0, 1)")  # share of train held out if there is no val split
    image_size: int | None = within(None, "[1, 8192]")  # resize folder images to this (default: no)
    strict: bool = False  # stop at the first unreadable image instead of skipping it
    translate: int = within(2, "[0, 8192)")  # random translation in pixels, each axis (0 = off)
    hflip: str = "auto"  # mirroring: auto (alternate if the data allows) | random | alternate | off
    # photos (issue 15): folders of images over 64 px, or an image_size above 64
    augment: str = "auto"  # auto (light for images <= 64 px, else photo) | light | photo | none
    auto_augment: str = "none"  # photo, colour: trivial (TrivialAugment) | rand (RandAugment)
    cache_ram: str | None = None  # RAM for decoded training photos, e.g. 2G (default: half free)
    # mixup / cutmix (issue 15): photo batches mixed (torchvision v2), soft targets in the loss
    mix: str = "none"  # none | mixup | cutmix | both (one of the two, drawn per batch)
    mixup_alpha: float = within(0.2, "(0, 100]")  # mixup: Beta(alpha, alpha) share of the partner
    cutmix_alpha: float = within(1.0, "(0, 100]")  # cutmix: Beta(alpha, alpha) share of the box
    # task
    task: str = "classify"  # classify | multilabel | anomaly | embed (face identities)
    normal: str | None = None  # anomaly: normal class name(s), comma-separated (default: all)
    anomaly_method: str = "mahalanobis"  # anomaly: mahalanobis (features of the GEOM net) | geom
    target_sensitivity: float | None = within(None, "(0, 1]")  # two-class: threshold for it on val
    embedding_size: int = within(128, "[2, 8192]")  # embed: length of the unit-norm face embedding
    embed_loss: str = "arcface"  # embed: arcface (additive angular margin) | softmax
    margin: float = within(0.5, "[0, 1.5]")  # embed: ArcFace angular margin m (radians)
    scale: float = within(30.0, "(0, 1000]")  # embed: ArcFace logit scale s
    # aligned faces (issue 19): eyes onto ArcFace's 112x112 template before embedding
    align: str = "none"  # embed: eyes (two-point similarity, convlens.faces.align) | none
    # anomaly maps (issue 19): a patch-feature scorer fitted on the trained anomaly backbone
    method: str = "geom"  # anomaly: geom (GEOM's 72 views; see anomaly_method) | patchcore | padim
    coreset: float = within(0.1, "(0, 1]")  # patchcore: share of normal patches kept in its bank
    patch_dim: int | None = within(None, "[1, 65536]")  # patch features kept (all; padim: 100)
    # open-set rejection (issue 19): "unknown" below a score threshold chosen on val
    reject: str = "off"  # classify: msp (max calibrated probability) | energy | mahalanobis | off
    reject_tpr: float = within(0.95, "(0, 1]")  # share of in-distribution val images kept
    # model
    model: str = "fastnet"  # a name from `convlens models`
    model_args: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments
    init: str | None = None  # start from the weights in this .safetensors file or run
    pretrained: bool = False  # torchvision's published weights (tv-* models, needs internet)
    # transfer learning (issue 16): fine-tune trains the head alone first (the body and its
    # BatchNorm statistics frozen), then every layer, the body's stages at lrs rising from
    # body_lr_mult x the head's (fastai's discriminative lrs; convlens.training.finetune)
    transfer: str = "auto"  # auto (fine-tune when weights are given, else full) | fine-tune | full
    freeze_epochs: int | None = within(None, "[0, 100000]")  # head-only epochs (default: 1/4)
    body_lr_mult: float = within(0.3, "(0, 1]")  # fine-tune: 1st body stage's lr / the head's
    # optimisation
    epochs: int = within(8, "[0, 100000]")  # passes over the training split (0: fit only)
    # batch_size and lr left out: fastnet's 512 and 0.75, or 64 and 0.25 for photos on a CPU
    # (convlens.training.lifecycle.resolve_batch); config.yaml records the values chosen
    batch_size: int | None = within(None, "[1, 1048576]")  # images per step (512; CPU photos: 64)
    optimizer: str = "sgd"  # sgd | adamw
    lr: float | None = within(None, "(0, inf)")  # peak learning rate (0.75; CPU photos: 0.25)
    momentum: float = within(0.85, "[0, 1)")  # SGD momentum
    nesterov: bool = True  # Nesterov momentum for SGD
    weight_decay: float = within(1.3e-3, "[0, 1)")  # coupled (torch SGD); not on biases, norms
    schedule: str = "onecycle"  # onecycle | cosine | step | constant
    warmup: float = within(0.23, "[0, 1]")  # onecycle: share of steps spent rising to the peak
    lr_start: float = within(0.2, "[0, 1]")  # onecycle: first lr, as a share of the peak
    lr_end: float = within(0.07, "[0, 1]")  # onecycle: last lr, as a share of the peak
    step_size: int = within(3, "[1, inf)")  # step: epochs between lr drops
    gamma: float = within(0.1, "(0, inf)")  # step: lr factor at each drop
    label_smoothing: float = within(0.2, "[0, 1)")  # share of the target spread over all classes
    class_weights: str = "none"  # none | auto (inverse class frequency)
    ema: float = within(0.95, "[0, 1)")  # lookahead decay per step (average copied back); 0 = off
    ema_start: float = within(0.3, "[0, 1]")  # share of training steps before the average starts
    ema_every: int = within(5, "[1, inf)")  # steps between updates of the average
    patience: int = within(0, "[0, inf)")  # stop after this many epochs without val gain (0: never)
    tta: str = "auto"  # test-time views: auto (flip-shift if mirrored) | none | flip | flip-shift
    calibrate: str = "temperature"  # classify: temperature (scale fitted on val) | none
    # machine
    engine: str = "torch"  # torch | numpy (the NumPy reference engine: textbook, lenet5, mlp)
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # autocast: auto (bf16 where the hardware has it) | bf16 | fp16 | off
    channels_last: bool = True  # NHWC memory layout (1.2-1.75x faster with bf16 on this CPU)
    threads: int = within(0, "[0, 1024]")  # torch CPU threads (0 = torch's default)
    compile: bool = False  # torch.compile the model (pays a start-up cost; helps on GPUs)
    workers: int = within(0, "[0, 256]")  # processes decoding folder images (0: in this process)
    seed: int = within(0, "[0, 4294967295]")  # seeds weights, data order, augmentation, val split
    deterministic: bool = False  # use only deterministic kernels
    # output
    run: str | None = None  # run folder (default runs/train, runs/train2, ...)
    resume: bool = False  # continue the run folder's last saved state
    # workflow (issue 18): experiment tracking and k-fold cross-validation
    log: str = "none"  # trackers besides results.csv: tensorboard, mlflow (comma list) or none
    mlflow_uri: str | None = None  # MLflow tracking URI (default: RUN/mlflow.db, a SQLite store)
    folds: int = within(0, "[0, 100]")  # k-fold cross-validation over train+val: K folds (0: off)
    fold: int | None = within(None, "[1, 100]")  # train only this fold (1 to K) of --folds
    group_by: str | None = None  # folds: a label CSV column keeping its groups (patients) together


def config_types() -> dict[str, Any]:
    """Each setting's type, from the dataclass annotations."""
    return typing.get_type_hints(TrainConfig)


def setting_ranges() -> dict[str, Range]:
    """Each numeric setting's allowed values."""
    return {f.name: f.metadata["range"] for f in dataclasses.fields(TrainConfig) if f.metadata}


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


def make_config(
    yaml_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults, the model's and task's recipes (a task's own starting point over the model's:
    convlens.tasks.base.Task.recipe), `yaml_file`, `overrides`; unknown keys fail."""
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
    recipe = task_class(task).recipe if task in list_tasks() else {}  # else: validate says so
    values = {**RECIPES.get(model, CLASSIC_RECIPE), **recipe, **values}
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
    "amp": ("auto", "bf16", "fp16", "off"),  # device.AMP_MODES, without importing torch here
    "engine": ("torch", "numpy"),
    "anomaly_method": ("geom", "mahalanobis"),
    "method": ("geom", "patchcore", "padim"),  # anomaly maps
    "embed_loss": ("arcface", "softmax"),
    "transfer": ("auto", "fine-tune", "full"),  # transfer learning (issue 16)
    "align": ("none", "eyes"),  # aligned faces (issue 19): convlens.faces.align.ALIGNS
    "auto_augment": ("trivial", "rand", "none"),  # convlens.data.augment.AUTO_AUGMENTS
}


def validate(cfg: TrainConfig) -> None:
    """Check choices, ranges and model arguments, naming the setting at fault."""
    for name, choices in {**_CHOICES, "task": tuple(list_tasks())}.items():
        value = getattr(cfg, name)
        if value not in choices and not (name == "device" and value.startswith("cuda:")):
            options = ", ".join(choices)
            raise ConfigError(f"setting {name!r} must be one of {options}, not {value!r}")
    for name, allowed in setting_ranges().items():
        value = getattr(cfg, name)
        if value is not None and value not in allowed:
            finite = "finite and " if isinstance(value, float) and not math.isfinite(value) else ""
            raise ConfigError(f"setting {name!r} must be {finite}{allowed}, got {value!r}")
    _validate_photos(cfg)
    check_mix(cfg)
    check_workflow(cfg)
    check_reject(cfg)
    check_fit_only(cfg)
    if cfg.model_args:  # imports torch: only when there is something to check
        from convlens.models.registry import check_model_args

        try:
            check_model_args(cfg.model, cfg.model_args)
        except ModelError as e:
            raise ConfigError(f"setting 'model_args': {e}") from None


# --- photos (issue 15) -----------------------------------------------------------------------
AUGMENTS = ("auto", "light", "photo", "none")  # convlens.data.augment.POLICIES
BYTE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _validate_photos(cfg: TrainConfig) -> None:
    if cfg.augment not in AUGMENTS:
        raise ConfigError(f"setting 'augment' must be one of {', '.join(AUGMENTS)}, "
                          f"not {cfg.augment!r}")  # fmt: skip
    cache_ram_bytes(cfg)


def cache_ram_bytes(cfg: TrainConfig) -> int | None:
    """--cache-ram in bytes ("512M", "2G", "1.5G", "1000000"), or None for the default."""
    if cfg.cache_ram is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", str(cfg.cache_ram).strip(), re.I)
    if m is None:
        raise ConfigError(f"setting 'cache_ram' must be bytes with an optional K, M, G or T "
                          f"suffix (e.g. 2G), not {cfg.cache_ram!r}")  # fmt: skip
    return int(float(m[1]) * BYTE_UNITS[m[2].upper()])


# mixup / cutmix (issue 15): which alphas each --mix takes, and who can learn soft targets
MIXES = ("none", "mixup", "cutmix", "both")


def check_mix(cfg: TrainConfig) -> None:
    """--mix names a mix, for a task that trains on soft targets (the data is checked later)."""
    if cfg.mix not in MIXES:
        raise ConfigError(f"setting 'mix' must be one of {', '.join(MIXES)}, not {cfg.mix!r}")
    if cfg.mix != "none" and not task_class(cfg.task).mixes:
        raise ConfigError(f"setting 'mix' is for single-label classifiers: {cfg.task} runs do "
                          "not train on mixed (soft) targets")  # fmt: skip
    if cfg.mix != "none" and cfg.engine != "torch":
        raise ConfigError("setting 'mix': the NumPy engine trains on one class per image")


def mix_alphas(cfg: TrainConfig) -> tuple[float, float]:
    """(mixup alpha, cutmix alpha) of --mix, 0 for the one it leaves out."""
    mixup = cfg.mixup_alpha if cfg.mix in ("mixup", "both") else 0.0
    cutmix = cfg.cutmix_alpha if cfg.mix in ("cutmix", "both") else 0.0
    return mixup, cutmix


# open-set rejection (issue 19): a classifier's score of how much an image looks like training
REJECT_SCORES = ("msp", "energy", "mahalanobis", "off")  # convlens.tasks.openset.SCORES, off


def check_reject(cfg: TrainConfig) -> None:
    """--reject names a score, and only for a task that can answer "unknown"."""
    if cfg.reject not in REJECT_SCORES:
        raise ConfigError(f"setting 'reject' must be one of {', '.join(REJECT_SCORES)}, "
                          f"not {cfg.reject!r}")  # fmt: skip
    if cfg.reject != "off" and not task_class(cfg.task).rejects_unknown:
        raise ConfigError(f"setting 'reject' is for classifiers: {cfg.task} runs do not answer "
                          "'unknown'")  # fmt: skip


# anomaly maps (issue 19): a patch method needs no training beyond its backbone's, so with
# given weights and epochs 0 it is fitted on them as they are
FIT_ONLY = ("patchcore", "padim")  # convlens.medical.patch_run.METHODS


def check_fit_only(cfg: TrainConfig) -> None:
    """epochs 0 only where nothing needs training: a patch method fitted on given weights."""
    if cfg.epochs:
        return
    if cfg.task != "anomaly" or cfg.method not in FIT_ONLY or not (cfg.init or cfg.pretrained):
        raise ConfigError("setting 'epochs' 0 is only for fitting patchcore or padim on given "
                          "weights: --task anomaly --method patchcore|padim with --init "
                          "RUN_OR_FILE or --pretrained")  # fmt: skip


# workflow (issue 18): the trackers --log names, and the settings k-fold runs take together
TRACKERS = ("tensorboard", "mlflow")


def trackers(cfg: TrainConfig) -> list[str]:
    """The trackers `cfg.log` names, in order ([] for none)."""
    names = [n.strip().lower() for n in cfg.log.split(",") if n.strip()]
    return [] if names == ["none"] else names


def check_workflow(cfg: TrainConfig) -> None:
    """--log names known trackers; --fold and --group-by come with --folds."""
    unknown = [n for n in trackers(cfg) if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"setting 'log' takes none or a comma list of {', '.join(TRACKERS)}, "
                          f"not {unknown[0]!r}")  # fmt: skip
    if cfg.folds == 1:
        raise ConfigError("setting 'folds' must be 0 (off) or at least 2, got 1")
    if cfg.fold is not None and not cfg.folds:
        raise ConfigError("setting 'fold' needs 'folds' (e.g. --folds 5 --fold 2)")
    if cfg.fold is not None and cfg.fold > cfg.folds:
        raise ConfigError(f"setting 'fold' must be between 1 and folds ({cfg.folds}), "
                          f"got {cfg.fold}")  # fmt: skip
    if cfg.group_by is not None and not cfg.folds:
        raise ConfigError("setting 'group_by' needs 'folds' (it groups the k-fold split)")


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
