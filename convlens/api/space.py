"""A sweep's search space: a YAML file naming TrainConfig settings and the values each may take.

```
lr: {low: 0.01, high: 1.0, log: true}        # a float range, sampled on a log scale
batch_size: {low: 64, high: 512, step: 64}   # an int setting samples integers
optimizer: [sgd, adamw]                      # choices (or {choices: [sgd, adamw]})
model_args.kernel_size: [3, 5]               # one model argument
```
Every value is checked as a setting before the first trial (config.make_config); each error is
one line naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from convlens.config import config_types, make_config
from convlens.errors import ConfigError

NOT_SWEPT = ("run", "resume", "folds", "fold")  # the sweep owns the folders; a trial is one run
ENTRY_KEYS = {"low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Dimension:
    """One swept setting: a numeric range (int or float) or a list of choices."""

    name: str  # a TrainConfig setting, or model_args.KEY
    kind: str  # int | float | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """This setting's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        suggest = trial.suggest_int if self.kind == "int" else trial.suggest_float
        step = self.step if self.step is not None else (1 if self.kind == "int" else None)
        return suggest(self.name, self.low, self.high, log=self.log, step=step)

    def bounds(self) -> tuple:
        """The values that reach the ends of the space, checked as settings before a trial."""
        return self.choices if self.kind == "choice" else (self.low, self.high)


def load_space(path: str | Path) -> list[Dimension]:
    """The dimensions of a space file, or one line naming the file and what is wrong."""
    path = Path(path)
    try:
        entries = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: space file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not a readable YAML file ({str(e).splitlines()[0]})") from None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: a space file is a mapping of setting: range or choices")
    return [_dimension(path, str(name), spec) for name, spec in entries.items()]


def _dimension(path: Path, name: str, spec: Any) -> Dimension:
    fields = config_types()
    setting = name.split(".", 1)[0] if name.startswith("model_args.") else name
    where = f"{path}: {name}"
    if setting not in fields or (setting == "model_args" and "." not in name):
        raise ConfigError(f"{where}: not a setting (see convlens train --help; model arguments "
                          "as model_args.KEY)")  # fmt: skip
    if setting in NOT_SWEPT:
        raise ConfigError(f"{where}: the sweep sets this itself; it cannot be swept")
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected {{low: A, high: B}} or a list of choices, "
                          f"got {spec!r}")  # fmt: skip
    unknown = sorted(set(map(str, spec)) - ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (low, high, log, step, choices)")
    if "choices" in spec:
        choices = spec["choices"]
        if len(spec) > 1 or not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices is a non-empty list, on its own")
        if any(isinstance(c, dict | list) for c in choices):
            raise ConfigError(f"{where}: each choice is one value (a number, text or boolean)")
        return Dimension(name, "choice", choices=tuple(choices))
    return _range(where, name, spec, fields.get(setting))


def _range(where: str, name: str, spec: dict, tp: Any) -> Dimension:
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high (or give choices)")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for key, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    integer = _is_int(tp) if name.split(".")[0] != "model_args" else _all_int(low, high, step)
    if not integer and not _is_float(tp) and name.split(".")[0] != "model_args":
        raise ConfigError(f"{where}: not a numeric setting: give a list of choices")
    if integer and not _all_int(low, high, step):
        raise ConfigError(f"{where}: an integer setting takes integer low, high and step")
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low above 0, got {low}")
    if log and step is not None:
        raise ConfigError(f"{where}: log and step do not go together (Optuna samples one or the "
                          "other)")  # fmt: skip
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step must be above 0, got {step}")
    kind = "int" if integer else "float"
    return Dimension(name, kind, low=low, high=high, log=log, step=step)


def _is_int(tp: Any) -> bool:
    return tp is int or (hasattr(tp, "__args__") and int in tp.__args__)


def _is_float(tp: Any) -> bool:
    return tp is float or (hasattr(tp, "__args__") and float in tp.__args__)


def _all_int(*values: Any) -> bool:
    return all(v is None or isinstance(v, int) for v in values)


def trial_settings(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The base settings with a trial's values, model_args.KEY folded into model_args."""
    settings = {**base, "model_args": dict(base.get("model_args") or {})}
    for name, value in values.items():
        if name.startswith("model_args."):
            settings["model_args"][name.split(".", 1)[1]] = value
        else:
            settings[name] = value
    if not settings["model_args"]:
        del settings["model_args"]
    return settings


def check_space(path: str | Path, space: list[Dimension], base: dict[str, Any]) -> None:
    """Each end of each range and each choice is a valid setting with the base settings."""
    for dim in space:
        for value in dim.bounds():
            try:
                make_config(None, trial_settings(base, {dim.name: value}))
            except ConfigError as e:
                raise ConfigError(f"{path}: {dim.name}: {value!r}: {e}") from None
