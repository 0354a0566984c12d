"""WeightsMeta: what a weights (or ONNX) file says about its model, typed, checked once.

Training writes it into the file's header (`to_dict`); every loader builds it from the header
with `from_header`, which runs convlens.runs.checks.validate_meta first, so what it holds is
within its limits. A WeightsMeta also reads as the header's JSON mapping (`meta["classes"]`),
for code and scripts written against the dict. No torch here: the reference engine uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convlens.runs.checks import Checker, check_preprocess, validate_meta


@dataclass
class InputSpec:
    """The model's input: channels, and the height and width every image is brought to."""

    channels: int
    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return (self.height, self.width)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class PreprocessSpec:
    """How one decoded image is cut to the model's input (convlens.data.preprocess.Preprocess
    gives it its operations); absent in older files: the whole image squashed to `input`."""

    size: tuple[int, int]  # model input (H, W): the centre crop
    channels: int  # 1 (8-bit grey) or 3 (RGB)
    resize: int | None = None  # shorter side before the crop, px; None: squash to `size`
    interpolation: str = "bilinear"  # torchvision InterpolationMode name
    antialias: bool = True  # False: resize the uint8 tensor without antialiasing

    def __post_init__(self) -> None:
        check_preprocess(Checker(type(self).__name__), self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "preprocess") -> Any:
        """One from `to_dict`'s output, or ModelError naming `source` and the field."""
        check_preprocess(Checker(source), data)
        return cls(**{**data, "size": tuple(data["size"])})

    def to_dict(self) -> dict:
        """JSON-safe fields, as the weights header holds them."""
        return {**dataclasses.asdict(self), "size": list(self.size)}


@dataclass
class Normalize:
    """Per-channel mean and std of the training images (pixels scaled to [0, 1])."""

    mean: list[float]
    std: list[float]


@dataclass
class ModelSpec:
    """The registry model and the keyword arguments it was built with."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decisions:
    """The thresholds a run decides with, each chosen on its validation split; every one lives
    in the weights header under the key in its comment. (An anomaly run's threshold is part of
    its score calibration: WeightsMeta.calibration.)"""

    # "operating_point": a two-class run's positive class, threshold and how it was chosen
    operating_point: dict | None = None
    # "label_thresholds": a multi-label run's {"labels", "thresholds", "points", "chosen_on"}
    label_thresholds: dict | None = None
    # "threshold": an embed run's cosine similarity at and above which two faces match
    threshold: float | None = None
    # "openset": a classifier's {"score", "threshold", "target_tpr", ...}: "unknown" below it
    openset: dict | None = None

    @property
    def thresholds(self) -> list[float] | None:
        """A multi-label run's per-label thresholds, or None."""
        return None if self.label_thresholds is None else self.label_thresholds["thresholds"]


@dataclass
class WeightsMeta(Mapping):
    """Everything besides the weights that loading, predicting and evaluating a model need."""

    task: str  # the registered task it was trained for (classify, multilabel, anomaly, embed)
    classes: list[str]  # class, label or identity names, in output order
    input: InputSpec
    normalize: Normalize
    model: ModelSpec
    tta: str = "none"  # test-time views averaged: none | flip | flip-shift
    outputs: int | None = None  # numbers in the model's last layer (None: one per class)
    data: str | None = None  # what it was trained on, as the user named it (never read)
    versions: dict[str, str] = field(default_factory=dict)  # convlens and torch that saved it
    calibration: dict | None = None  # fitted on val at the end of training (temperature, ...)
    decisions: Decisions = field(default_factory=Decisions)
    extras: dict[str, Any] = field(default_factory=dict)  # the task's own fields, any other
    format: int | None = None  # the weights file format's version
    preprocess: PreprocessSpec | None = None  # how images are cut (None: squashed to input)

    @classmethod
    def from_header(cls, header: Any, source: str | Path) -> WeightsMeta:
        """The metadata of a file's header (its parsed JSON), or one line naming source and
        field (ModelError)."""
        d = dict(validate_meta(header, source))
        size, norm, model = d.pop("input"), d.pop("normalize"), d.pop("model")
        decisions = Decisions(
            operating_point=d.pop("operating_point", None),
            label_thresholds=d.pop("label_thresholds", None),
            threshold=d.pop("threshold", None),
            openset=d.pop("openset", None),
        )
        if decisions.label_thresholds is None and "thresholds" in d:  # an older export
            decisions.label_thresholds = {"labels": d["classes"], "thresholds": d.pop("thresholds")}
        return cls(
            task=d.pop("task", "classify"),
            classes=d.pop("classes"),
            input=InputSpec(size["channels"], size["height"], size["width"]),
            normalize=Normalize(list(norm["mean"]), list(norm["std"])),
            model=ModelSpec(model["name"], dict(model.get("args", {}))),
            tta=d.pop("tta", "none"),
            outputs=d.pop("outputs", None),
            data=d.pop("data", None),
            versions=d.pop("versions", {}),
            calibration=d.pop("calibration", None),
            decisions=decisions,
            format=d.pop("format", None),
            preprocess=_preprocess(d.pop("preprocess", None)),
            extras=d,
        )

    def to_dict(self) -> dict:
        """The header's JSON mapping (what from_header reads back); None fields are left out."""
        out = {
            "format": self.format,
            "task": self.task,
            "classes": self.classes,
            "outputs": self.outputs,
            "input": dataclasses.asdict(self.input),
            "preprocess": None if self.preprocess is None else self.preprocess.to_dict(),
            "normalize": dataclasses.asdict(self.normalize),
            "tta": self.tta,
            "model": dataclasses.asdict(self.model),
            "data": self.data,
            "versions": self.versions,
            **self.extras,
            "calibration": self.calibration,
            **dataclasses.asdict(self.decisions),
        }
        return {k: v for k, v in out.items() if v is not None}

    @property
    def n_outputs(self) -> int:
        """Numbers in the model's last layer."""
        return len(self.classes) if self.outputs is None else self.outputs

    def replace(self, **changes: Any) -> WeightsMeta:
        """A copy with some fields changed (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)

    # --- read as the header's mapping ---------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def _preprocess(data: dict | None) -> PreprocessSpec | None:
    # checked by validate_meta already
    return None if data is None else PreprocessSpec(**{**data, "size": tuple(data["size"])})
