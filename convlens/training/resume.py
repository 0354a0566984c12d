"""Exact resume: the state saved after every epoch (model, weights average, optimizer, RNG,
RunState), loaded back, and the saved config a resumed run continues with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.config import TrainConfig, make_config, to_dict
from convlens.errors import ConfigError, ConvlensError
from convlens.runs.checks import one_line
from convlens.runs.folder import Run
from convlens.runs.weights import load_state, save_state
from convlens.training.ema import Lookahead

RESUMABLE_CHANGES = {"device", "threads", "run", "resume"}  # settings a resume may change


@dataclass
class RunState:
    """Where a run stands after `epoch` epochs; saved with every checkpoint (resume state)."""

    epoch: int = 0  # epochs done
    rows: list[dict] = field(default_factory=list)  # results.csv so far, one row per epoch
    best_score: float = -1.0  # the best validation score so far (the task's: accuracy, AUC)
    best_epoch: int | None = None  # the epoch that reached it (None: no finite score yet)
    stale: int = 0  # epochs since the score last improved
    best_known: bool = True  # False for a state saved before best_epoch was recorded

    def to_dict(self) -> dict[str, Any]:
        """The JSON the resume state holds."""
        return {"epoch": self.epoch, "rows": self.rows, "best_score": self.best_score,
                "best_epoch": self.best_epoch, "stale": self.stale}  # fmt: skip

    @classmethod
    def from_dict(cls, info: dict[str, Any]) -> RunState:
        """A saved state; older states saved the best score as "best_acc" (it held the AUC
        of multilabel, embed and anomaly runs too)."""
        best = info["best_score"] if "best_score" in info else info["best_acc"]
        return cls(
            epoch=int(info["epoch"]),
            rows=list(info["rows"]),
            best_score=float(best),
            best_epoch=info.get("best_epoch"),
            stale=int(info["stale"]),
            best_known="best_epoch" in info,
        )


def save_run_state(
    path: Path, state: RunState, model: nn.Module, opt, ema: Lookahead | None
) -> None:
    """Save everything needed to continue exactly: weights, average, optimizer, RNG, state."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_tensors, opt_info = flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    save_state(path, tensors, {**state.to_dict(), "optimizer": opt_info})


def load_run_state(path: Path, model: nn.Module, opt, ema: Lookahead | None) -> RunState:
    """Put a saved state into the model, average, optimizer and RNG; the RunState saved."""
    if not path.is_file():
        raise ConvlensError(f"{path}: no saved state; the run stopped before its first epoch ended")
    tensors, info = load_state(path)
    try:  # a state saved by another model or another convlens, or a crafted one
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema:
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        opt.load_state_dict(unflatten_optimizer(tensors, info.pop("optimizer")))
        torch.set_rng_state(tensors["rng.torch"])
        state = RunState.from_dict(info)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise ConvlensError(
            f"{path}: this state does not fit the run's model ({one_line(e)})"
        ) from None
    return state


def resumed_config(run_dir: Path, given: TrainConfig) -> TrainConfig:
    """The run's saved config; flags may change only where and how it runs."""
    saved = make_config(Run(run_dir).config)
    defaults = TrainConfig()
    asked = {k: v for k, v in to_dict(given).items() if v != getattr(defaults, k)}
    changed = [k for k, v in asked.items() if k not in RESUMABLE_CHANGES and v != getattr(saved, k)]
    if changed:
        raise ConfigError(f"cannot change {', '.join(changed)} when resuming {run_dir}")
    overrides = {k: v for k, v in asked.items() if k in ("device", "threads")}
    return dataclasses.replace(saved, run=str(run_dir), resume=True, **overrides)


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state_dict into tensors and JSON (no pickle)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    """Rebuild the state_dict that `flatten_optimizer` split."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in info["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": info["param_groups"]}
