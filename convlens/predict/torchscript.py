"""An exported TorchScript archive (`convlens export RUN --format torchscript`): the traced
network with the run's metadata as the extra file convlens.json, checked like a weights header.

torch.jit.load reads the archive's tensors and TorchScript code, never arbitrary pickled
objects; the code does run as the model's forward, so load archives you exported yourself.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from convlens.errors import ModelError
from convlens.runs.checks import one_line
from convlens.runs.meta import WeightsMeta
from convlens.runs.weights import META_KEY, header_meta

EXTRA = "convlens.json"  # the archive's extra file holding the weights header's JSON


def load_archive(
    path: str | Path, device: torch.device
) -> tuple[torch.jit.ScriptModule, WeightsMeta]:
    """(the scripted network in eval mode on `device`, its checked metadata)."""
    extra = {EXTRA: ""}
    try:
        with warnings.catch_warnings():  # torch 2.14: torch.jit is deprecated (FutureWarning)
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as e:  # torch raises RuntimeError and its own types for a bad archive
        raise ModelError(f"{path}: not a loadable TorchScript archive ({one_line(e)})") from None
    if not extra[EXTRA]:
        raise ModelError(f"{path}: not a convlens model (no {EXTRA} in the archive)")
    text = extra[EXTRA].decode() if isinstance(extra[EXTRA], bytes) else extra[EXTRA]
    header = header_meta({META_KEY: text}, path, "no convlens metadata", "convlens metadata")
    return module.eval(), WeightsMeta.from_header(header, path)


def check_outputs(module: torch.jit.ScriptModule, meta: WeightsMeta, width: int, path) -> None:
    """The network takes the metadata's input and gives `width` numbers per image."""
    c, h, w = meta.input.shape
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, c, h, w, device=next(module.parameters()).device))
    except Exception as e:  # a graph that cannot run on its own metadata's input
        raise ModelError(f"{path}: the network does not run on (1, {c}, {h}, {w}) images "
                         f"({one_line(e)})") from None  # fmt: skip
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, width):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{path}: the network gives {got} per image, but the metadata says "
                         f"(1, {width})")  # fmt: skip
