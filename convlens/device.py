"""Where a model runs and at what precision: device choice, bf16 autocast, the sync-debug check."""

from __future__ import annotations

import contextlib
import os

import torch

from convlens.errors import ConvlensError


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda when a GPU is there, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConvlensError(f"--device {name}: no CUDA GPU is available here")
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> bool:
    """bf16 autocast: on when asked, or (auto) where the hardware computes bf16 natively."""
    if mode == "off":
        return False
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if mode == "bf16" and not supported:
        raise ConvlensError(f"--amp bf16: this {device.type} has no native bf16 support")
    return supported


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when enabled, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


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
