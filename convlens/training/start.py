"""The weights a run starts from (--init FILE, --pretrained) and the preprocessing they expect.

--init takes a convlens run or weights file (safetensors, its header read as WeightsMeta), a
plain safetensors file, or a `.pth`/`.pt`/`.bin` state dict as torchvision, timm and plain
torch save them. Those are read with `torch.load(weights_only=True)`, never a full unpickle:
a file whose pickle names anything but tensors and containers (an object whose __reduce__
would run code) is refused before anything in it runs.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from convlens.config import TrainConfig
from convlens.data.files import open_regular
from convlens.errors import ModelError
from convlens.models.pretrained import BackboneDefaults, pretrained_defaults
from convlens.runs.folder import resolve_weights
from convlens.runs.meta import WeightsMeta
from convlens.runs.weights import META_KEY, header_meta, read_safetensors

PICKLED = (".pth", ".pt", ".bin", ".ckpt", ".tar")  # torch.save's files, by their usual names
NESTED = ("state_dict", "model_state_dict", "model", "module", "net")  # training checkpoints


@dataclass
class StartWeights:
    """What a run starts from besides its data."""

    defaults: BackboneDefaults | None  # the weights' preprocessing; None: the data's own stats
    path: Path | None = None  # the --init file (None: --pretrained alone)
    tensors: dict[str, torch.Tensor] | None = None  # its tensors, by the names it saved
    meta: WeightsMeta | None = None  # its convlens metadata, for a convlens run's weights


def start_weights(cfg: TrainConfig) -> StartWeights | None:
    """The --init file read once, and the preprocessing its weights (or --pretrained's) expect;
    None when the run starts from scratch."""
    if not cfg.init:
        return StartWeights(pretrained_defaults(cfg.model)) if cfg.pretrained else None
    path = Path(cfg.init)
    if path.suffix.lower() in PICKLED and not path.is_dir():
        tensors, meta = read_state_dict(path), None
    else:
        path = resolve_weights(path)
        tensors, raw = read_safetensors(path)
        meta = None
        if META_KEY in raw:  # a convlens weights file: its metadata is checked like any other
            meta = WeightsMeta.from_header(header_meta(raw, path, "", "its metadata"), path)
    if meta is not None:
        norm, cut = meta.normalize, meta.preprocess  # cut: a photo run's resize and crop
        defaults = BackboneDefaults(
            tuple(norm.mean), tuple(norm.std), f"the convlens run {path}", size=meta.input.size,
            resize=cut and cut.resize, interpolation=cut and cut.interpolation,
        )  # fmt: skip
    else:  # a foreign state dict: what the architecture's published weights were trained with
        defaults = pretrained_defaults(cfg.model)
    return StartWeights(defaults, path, tensors, meta)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch.save file (a state dict, or a checkpoint holding one under
    state_dict/model/...), loaded with weights_only=True; errors are one line naming the file."""
    with open_regular(path, name=f"--init {path}") as f:
        try:
            # timm's training checkpoints keep their argparse settings beside the weights: a
            # Namespace only sets attributes, so it may be rebuilt too
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # the bytes are the user's: any failure is theirs to see
            raise ModelError(f"--init {path}: {_refusal(e)}") from None
    state = _find_state_dict(obj)
    if state is None:
        raise ModelError(f"--init {path}: holds no state dict (a mapping of names to tensors)")
    return state


def _refusal(e: Exception) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    if found:  # weights_only's unpickler met a callable: the code it would run is not run
        return (
            f"refused: its pickle calls {found[1]}, not only tensors; convlens loads .pth files "
            "with torch.load(weights_only=True) and never runs code from them"
        )
    first = " ".join(str(e).split())[:160] or type(e).__name__
    return f"not a torch state dict file ({first})"


def _find_state_dict(obj: object, depth: int = 0) -> dict[str, torch.Tensor] | None:
    if not isinstance(obj, dict) or depth > 2:
        return None
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors and len(tensors) >= len(obj) / 2:  # a state dict, perhaps with a few extras
        return tensors
    for key in NESTED:
        found = _find_state_dict(obj.get(key), depth + 1)
        if found:
            return found
    return None
