"""A weights file's tensors mapped onto a model: names matched, the first conv adapted to the
image's channels, a head for other classes left out.

Names match as saved, or without the wrappers' prefixes (`module.` of DDP, `model.`,
`_orig_mod.` of torch.compile, convlens's task wrappers `backbone.` and `net.`), on the model
or on the registry model inside its task wrapper. A first conv for RGB given grey images is
summed over R, G, B; one for grey given colour is repeated / 3 (timm's adapt_input_conv).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from convlens.models.base import first_conv, head_layer
from convlens.models.probe import adapt_conv_weight

WRAPPERS = ("module.", "model.", "_orig_mod.", "backbone.", "net.")


@dataclass
class Mapped:
    """What a file gives a model."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # by the model's own names
    adapted: list[str] = field(default_factory=list)  # the first conv, changed to the channels
    head: list[str] = field(default_factory=list)  # the model's head tensors the file does not set
    unused: list[str] = field(default_factory=list)  # file tensors that fit nothing

    def describe(self, own: int, source: object) -> str:
        """One line for the log."""
        text = f"init: {len(self.tensors)} of {own} tensors loaded from {source}"
        if self.adapted:
            text += f"; {', '.join(self.adapted)} adapted to the images' channels"
        if self.head:
            text += f"; the head ({', '.join(self.head)}) starts new"
        if self.unused:
            more = f" and {len(self.unused) - 3} more" if len(self.unused) > 3 else ""
            text += f"; file tensors that fit nothing here: {', '.join(self.unused[:3])}{more}"
        return text


def map_onto(
    model: nn.Module, net: nn.Module, tensors: dict[str, torch.Tensor], keep_head: bool = True
) -> Mapped:
    """The file's `tensors` by the names of `model` (a task wrapper around the registry model
    `net`, or `net` itself); `keep_head=False` leaves the head layer out even where it fits."""
    own = model.state_dict()
    prefix = next(n for n, m in model.named_modules() if m is net)
    prefix += "." if prefix else ""
    head_name = prefix + head_layer(net)[0] + "."
    conv = first_conv(net)
    conv_weight = prefix + conv[0] + ".weight" if conv else None
    out = Mapped()
    for key, value in tensors.items():
        target = _target(key, own, prefix)
        if target is None or target in out.tensors:
            out.unused.append(key)
            continue
        want = own[target].shape
        if target.startswith(head_name) and (not keep_head or value.shape != want):
            continue  # said below, as the head's tensors the file does not set
        if value.shape != want and target == conv_weight and _same_but_channels(value, want):
            value = adapt_conv_weight(value.float(), want[1]).to(value.dtype)
            out.adapted.append(target)
        if value.shape != want:
            out.unused.append(key)
            continue
        out.tensors[target] = value
    out.head = [k for k in own if k.startswith(head_name) and k not in out.tensors]
    return out


def _target(key: str, own: dict, prefix: str) -> str | None:
    """The model's name for file tensor `key`, or None."""
    while True:
        for name in (key, prefix + key):
            if name in own:
                return name
        if not key.startswith(WRAPPERS):
            return None
        key = key.split(".", 1)[1]


def _same_but_channels(value: torch.Tensor, want: torch.Size) -> bool:
    """A conv weight (out, in, kh, kw) that differs from `want` in `in` alone."""
    return value.ndim == 4 and value.shape[0] == want[0] and value.shape[2:] == want[2:]
