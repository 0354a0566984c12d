"""Weights and training state as safetensors (never pickle), written atomically.

A weights file's header holds the convlens metadata (convlens.runs.meta.WeightsMeta) as JSON;
`load_weights` reads the file once and builds the metadata from its header once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from convlens.errors import ModelError
from convlens.runs.atomic import atomic_write_bytes
from convlens.runs.meta import WeightsMeta

META_KEY = "convlens"  # the safetensors header field holding our JSON metadata
FORMAT_VERSION = 1
NOT_OURS = "not a convlens model (its header has no convlens metadata)"


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views and shared storage: give it plain copies on the CPU.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def header_json(meta: Mapping[str, Any]) -> str:
    """The JSON a weights or ONNX header holds for `meta` (a WeightsMeta or its mapping)."""
    fields = meta.to_dict() if isinstance(meta, WeightsMeta) else dict(meta)
    return json.dumps({"format": FORMAT_VERSION, **fields})


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], meta: Mapping) -> None:
    """Save a model's weights with convlens metadata (class names, input, model, versions)."""
    header = {META_KEY: header_json(meta)}
    atomic_write_bytes(path, st_save(_contiguous(state_dict), metadata=header))


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and raw header metadata of a safetensors file; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a folder, not a weights file") from None
    if len(data) < 8:
        raise ModelError(f"{path}: not a safetensors file ({len(data)} bytes)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise ModelError(f"{path}: not a safetensors file (truncated or another format)")
    try:
        header = json.loads(data[8 : 8 + header_len])
        tensors = st_load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelError(f"{path}: not a valid safetensors file ({e})") from None
    return tensors, header.get("__metadata__") or {}


def header_meta(raw: Mapping[str, str], path: str | Path, missing: str, name: str) -> Any:
    """The JSON under META_KEY of a file's raw header metadata; else one line: `missing` when
    there is none, `name` is not valid JSON when it does not parse."""
    if META_KEY not in raw:
        raise ModelError(f"{path}: {missing}")
    try:
        return json.loads(raw[META_KEY])
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deep
        raise ModelError(f"{path}: {name} is not valid JSON") from None


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Weights and metadata of a convlens weights file (the header read and checked once)."""
    tensors, raw = read_safetensors(path)
    meta = header_meta(raw, path, NOT_OURS, "convlens metadata")
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise ModelError(f"{path}: weights hold NaN or infinite values (first in {bad[0]!r})")
    return tensors, WeightsMeta.from_header(meta, path)


# --- training state: everything needed to continue a run exactly --------------------------


def save_state(path: str | Path, tensors: dict[str, torch.Tensor], info: dict) -> None:
    """Save resume state: named tensors plus JSON-able `info`, in one atomic file."""
    header = {META_KEY: json.dumps(info)}
    atomic_write_bytes(path, st_save(_contiguous(tensors), metadata=header))


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read what `save_state` wrote."""
    tensors, raw = read_safetensors(path)
    return tensors, header_meta(raw, path, "not a convlens training state", "training state metadata")
