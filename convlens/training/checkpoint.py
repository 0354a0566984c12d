"""Weights and training state as safetensors (never pickle), written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from convlens.errors import ConvlensError, ModelError
from convlens.metadata import validate_meta
from convlens.tempfiles import temp_beside

META_KEY = "convlens"  # the safetensors header field holding our JSON metadata
FORMAT_VERSION = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = e.strerror or str(e)
        message = f"{path}: cannot write ({reason}); the previous file is intact"
        raise ConvlensError(message) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views and shared storage: give it plain copies on the CPU.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict) -> None:
    """Save a model's weights with convlens metadata (class names, input, model, versions)."""
    header = {META_KEY: json.dumps({"format": FORMAT_VERSION, **meta})}
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


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a convlens weights file."""
    tensors, raw = read_safetensors(path)
    if META_KEY not in raw:
        raise ModelError(f"{path}: not a convlens model (its header has no convlens metadata)")
    try:
        meta = json.loads(raw[META_KEY])
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deep
        raise ModelError(f"{path}: convlens metadata is not valid JSON") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise ModelError(f"{path}: weights hold NaN or infinite values (first in {bad[0]!r})")
    return tensors, validate_meta(meta, path)


def resolve_weights(run: str | Path) -> Path:
    """RUN is a run folder (its best weights) or a weights file."""
    run = Path(run)
    if run.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (run / "weights" / name).is_file():
                return run / "weights" / name
        raise ModelError(f"{run}: no weights/best.safetensors in this folder (not a convlens run?)")
    if run.is_file():
        return run
    raise ModelError(f"{run}: no such run folder or weights file")


# --- training state: everything needed to continue a run exactly --------------------------


def save_state(path: str | Path, tensors: dict[str, torch.Tensor], info: dict) -> None:
    """Save resume state: named tensors plus JSON-able `info`, in one atomic file."""
    header = {META_KEY: json.dumps(info)}
    atomic_write_bytes(path, st_save(_contiguous(tensors), metadata=header))


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read what `save_state` wrote."""
    tensors, raw = read_safetensors(path)
    if META_KEY not in raw:
        raise ModelError(f"{path}: not a convlens training state")
    try:
        return tensors, json.loads(raw[META_KEY])
    except (json.JSONDecodeError, RecursionError):
        raise ModelError(f"{path}: training state metadata is not valid JSON") from None


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
