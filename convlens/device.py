"""Where a model runs and at what precision: device choice, autocast dtype, the sync-debug check."""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import torch

from convlens.errors import ConvlensError

AMP_MODES = ("auto", "bf16", "fp16", "off")


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda when a GPU is there, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConvlensError(f"--device {name}: no CUDA GPU is available here")
    return torch.device(name)


class Caps(NamedTuple):
    """What the hardware computes natively, as far as autocast is concerned."""

    cpu_amx: bool  # AMX tiles: bf16 matrix products in hardware (Sapphire Rapids and later)
    cpu_bf16: bool  # oneDNN can run bf16 at all (AVX512_BF16 or AMX)
    cuda_bf16: bool  # the GPU has bf16 units (Ampere and later), not an emulation


def hardware_caps(device: torch.device) -> Caps:
    """The capabilities of `device`'s hardware that choose_amp reads."""
    if device.type == "cuda":
        return Caps(False, False, torch.cuda.is_bf16_supported(including_emulation=False))
    return Caps(torch.cpu._is_amx_tile_supported(), torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                False)  # fmt: skip


def choose_amp(
    mode: str, device: torch.device, caps: Caps | None = None
) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for float32, why): `auto` takes bf16 only where the hardware
    multiplies bf16 natively (AMX on a CPU; Ampere+ on a GPU, else fp16 with a GradScaler)."""
    if mode not in AMP_MODES:
        raise ConvlensError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    caps = hardware_caps(device) if caps is None else caps
    if mode == "off":
        return None, "float32 (--amp off)"
    if device.type == "cuda":
        if mode == "bf16" and not caps.cuda_bf16:
            raise ConvlensError("--amp bf16: this GPU has no native bf16 (use fp16 or auto)")
        if mode == "fp16" or not caps.cuda_bf16:
            return torch.float16, "fp16 autocast with a GradScaler" + (
                "" if mode == "fp16" else ": this GPU has no native bf16"
            )
        return torch.bfloat16, "bf16 autocast: the GPU has bf16 units"
    if mode == "fp16":
        raise ConvlensError("--amp fp16 is for GPUs without bf16; on a CPU use bf16, auto or off")
    if mode == "bf16":
        if not caps.cpu_bf16:
            raise ConvlensError("--amp bf16: this CPU has no native bf16 support")
        return torch.bfloat16, "bf16 autocast (--amp bf16)"
    if caps.cpu_amx:
        return torch.bfloat16, "bf16 autocast: the CPU has AMX bf16 matrix units"
    if caps.cpu_bf16:
        return None, "float32: AVX512_BF16 without AMX, where bf16 ran slower (BENCHMARKS.md)"
    return None, "float32: the CPU has no native bf16"


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype choose_amp picks (None: float32)."""
    return choose_amp(mode, device)[0]


def autocast(
    device: torch.device, amp: torch.dtype | bool | None
) -> contextlib.AbstractContextManager:
    """Autocast to `amp` on `device` (True: bf16), or a no-op for None/False."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp is True else amp)


@contextlib.contextmanager
def sync_debug(device: torch.device):
    """With CONVLENS_SYNC_DEBUG=warn (or error) on a GPU, torch warns about (or refuses) every
    wait of the CPU for the GPU inside the block: a check that none is left in the training
    steps."""
    mode = os.environ.get("CONVLENS_SYNC_DEBUG", "")
    if device.type != "cuda" or not mode:
        yield
        return
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)
