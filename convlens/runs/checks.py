"""The checks every weights or ONNX header passes, once, with limits.

Every loader (torch, the NumPy reference engine, onnxruntime) builds its WeightsMeta through
`validate_meta`, so a crafted file gives one line naming the file and the field, never a
traceback or a huge allocation. No torch here: the reference engine uses it too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from convlens.errors import ModelError

MAX_CLASSES = 100_000  # class names, outputs and identities (ImageNet-21k has 21,841)
MAX_CHANNELS = 4  # grey, RGB, RGBA
MAX_SIDE = 8192  # pixels per side of the model input
MAX_PIXELS = 4096 * 4096  # height x width: a (4, 4096, 4096) uint8 input is 64 MiB per image
MAX_EMBEDDING = 8192  # an embed run's embedding length
TTA_MODES = ("none", "flip", "flip-shift")  # test-time views (convlens.models.infer.tta_views)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")  # torchvision InterpolationMode
PREPROCESS_FIELDS = ("size", "channels", "resize", "interpolation", "antialias")


def validate_meta(meta: Any, source: str | Path) -> dict:
    """`meta` itself once every field every loader reads has its type and lies within its
    limits.

    Checks, in order: a JSON object; model (name, args); input (channels, height, width, area);
    classes (1..MAX_CLASSES unique strings); outputs; normalize (finite means, finite stds > 0,
    one or one per channel); tta; versions; data; the decisions (a two-class operating point,
    per-label thresholds, a threshold); preprocess (convlens.data.preprocess), matching input.
    The task's name and its own fields are checked by the
    task (convlens.tasks.loading.task_of): this module knows no task.
    """
    check = Checker(source)
    check.kind(meta, dict, "", "a JSON object")
    model = check.kind(meta.get("model"), dict, "model", "an object with a name")
    check.kind(model.get("name"), str, "model.name", "a model name")
    if not model["name"]:
        check.fail("model.name", "is empty")
    check.kind(model.get("args", {}), dict, "model.args", "an object of keyword arguments")

    size = check.kind(meta.get("input"), dict, "input", "an object")
    c = check.integer(size.get("channels"), 1, MAX_CHANNELS, "input.channels")
    h = check.integer(size.get("height"), 1, MAX_SIDE, "input.height")
    w = check.integer(size.get("width"), 1, MAX_SIDE, "input.width")
    if h * w > MAX_PIXELS:
        check.fail("input", f"declares {h}x{w} pixels, more than {MAX_PIXELS} per image")

    classes = check.kind(meta.get("classes"), list, "classes", "a list of class names")
    if not 1 <= len(classes) <= MAX_CLASSES:
        check.fail("classes", f"holds {len(classes)} names, not 1 to {MAX_CLASSES}")
    if not all(isinstance(name, str) for name in classes):
        check.fail("classes", "must hold only strings")
    if len(set(classes)) != len(classes):
        check.fail("classes", "repeats a name")
    if meta.get("outputs") is not None:
        check.integer(meta["outputs"], 1, MAX_CLASSES, "outputs")

    norm = check.kind(meta.get("normalize"), dict, "normalize", "an object with mean and std")
    for key in ("mean", "std"):
        values = check.kind(norm.get(key), list, f"normalize.{key}", "a list of numbers")
        if len(values) not in (1, c):
            check.fail(f"normalize.{key}", f"holds {len(values)} values for {c} channels")
        for v in values:
            check.number(v, f"normalize.{key}", positive=key == "std")
    check.choice(meta.get("tta", "none"), TTA_MODES, "tta")
    versions = check.kind(meta.get("versions", {}), dict, "versions", "an object")
    if not all(isinstance(v, str) for v in versions.values()):
        check.fail("versions", "must map names to version strings")
    if meta.get("data") is not None:
        check.kind(meta["data"], str, "data", "a dataset name or path")

    if meta.get("preprocess") is not None:  # None or absent: the old squash-to-size path
        prep = check_preprocess(check, meta["preprocess"])
        if list(prep["size"]) != [h, w] or prep["channels"] != c:
            check.fail("preprocess", f"gives {prep['channels']}x{prep['size'][0]}x"
                       f"{prep['size'][1]} images, but 'input' is {c}x{h}x{w}")  # fmt: skip

    if "thresholds" in meta:  # the per-label decisions of an older multilabel export
        check_label_thresholds(check, meta["thresholds"], classes, "thresholds")
    if "label_thresholds" in meta:
        saved = check.kind(meta["label_thresholds"], dict, "label_thresholds", "an object")
        check_label_thresholds(check, saved.get("thresholds"), classes, "label_thresholds")
    if "operating_point" in meta:
        check_operating_point(check, meta["operating_point"], classes, "operating_point")
    if "threshold" in meta:
        check.number(meta["threshold"], "threshold")
    return meta


def validate_operating_point(point: Any, classes: list[str], source: str | Path) -> dict:
    """A two-class run's operating point saved in a side file (threshold.json: older runs)."""
    return check_operating_point(Checker(source), point, classes, "")


def validate_label_thresholds(saved: Any, classes: list[str], source: str | Path) -> list[float]:
    """A multi-label run's thresholds saved in a side file (thresholds.json: older runs)."""
    check = Checker(source)
    check.kind(saved, dict, "", "a JSON object")
    return check_label_thresholds(check, saved.get("thresholds"), classes, "thresholds")


def check_operating_point(check: Checker, point: Any, classes: list[str], field: str) -> dict:
    """A two-class run's operating point: its positive class and a finite threshold."""
    check.kind(point, dict, field, "a JSON object")
    check.choice(point.get("positive_class"), tuple(classes), _sub(field, "positive_class"))
    check.number(point.get("threshold"), _sub(field, "threshold"))
    return point


def check_label_thresholds(
    check: Checker, values: Any, classes: list[str], field: str
) -> list[float]:
    """A multi-label run's per-label thresholds: one finite number per label."""
    values = check.kind(values, list, field, "a list of numbers")
    if len(values) != len(classes):
        check.fail(field, f"holds {len(values)} values for {len(classes)} labels")
    return [check.number(v, field) for v in values]


def check_preprocess(check: Checker, data: Any, field: str = "preprocess") -> dict:
    """How images are cut for the model (convlens.data.preprocess.Preprocess.to_dict)."""

    def whole(value: Any, key: str, lo: int, hi: int) -> int:
        return check.integer(value, lo, hi, f"{field}.{key}")

    check.kind(data, dict, field, "an object")
    unknown = sorted(set(data) - set(PREPROCESS_FIELDS), key=str)
    if unknown:
        check.fail(f"{field}.{str(unknown[0])[:40]}", f"is not a field ({', '.join(PREPROCESS_FIELDS)})")
    for key in ("size", "channels"):
        if key not in data:
            check.fail(f"{field}.{key}", "is missing")
    size = data["size"]
    if not isinstance(size, list | tuple) or len(size) != 2:
        check.fail(f"{field}.size", f"must be [height, width], not {show(size)}")
    h, w = (whole(v, "size", 1, MAX_SIDE) for v in size)
    if whole(data["channels"], "channels", 1, 3) == 2:
        check.fail(f"{field}.channels", "must be 1 (grey) or 3 (RGB), not 2")
    resize = data.get("resize")
    if resize is not None and whole(resize, "resize", 1, MAX_SIDE) < max(h, w):
        check.fail(f"{field}.resize", f"is {resize}, under the {h}x{w} crop (it would pad)")
    interpolation = data.get("interpolation", "bilinear")
    check.choice(interpolation, INTERPOLATIONS, f"{field}.interpolation")
    antialias = data.get("antialias", True)
    if not isinstance(antialias, bool):
        check.fail(f"{field}.antialias", f"must be true or false, not {show(antialias)}")
    if interpolation == "lanczos" and not antialias and resize is not None:
        check.fail(f"{field}.antialias", "must be true for lanczos (torchvision has no other)")
    return data


def _sub(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


class Checker:
    """Type and range checks whose errors name the file and the field."""

    def __init__(self, source: str | Path) -> None:
        self.source = source

    def fail(self, field: str, problem: str) -> None:
        where = f"metadata field {field!r}" if field else "convlens metadata"
        raise ModelError(f"{self.source}: {where} {problem}")

    def kind(self, value: Any, tp: type, field: str, what: str) -> Any:
        if not isinstance(value, tp):
            self.fail(field, f"must be {what}, not {show(value)}")
        return value

    def integer(self, value: Any, lo: int, hi: int, field: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self.fail(field, f"must be an integer from {lo} to {hi}, not {show(value)}")
        return value

    def number(self, value: Any, field: str, positive: bool = False) -> float:
        x = math.nan
        if isinstance(value, int | float) and not isinstance(value, bool):
            x = float(value) if abs(value) < 1e300 else math.inf  # float(10**400) overflows
        if not math.isfinite(x) or (positive and x <= 0):
            what = "a finite number > 0" if positive else "a finite number"
            self.fail(field, f"must be {what}, not {show(value)}")
        return x

    def choice(self, value: Any, choices: tuple[str, ...], field: str) -> str:
        if value not in choices:
            self.fail(field, f"must be one of {', '.join(choices)}, not {show(value)}")
        return value


def show(value: Any) -> str:
    """A short repr for an error line (a crafted value can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def one_line(e: BaseException) -> str:
    """`Type: first line of the message` of an exception raised on a file's behalf."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0].strip()[:200]}" if lines else type(e).__name__
