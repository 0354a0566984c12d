"""Mid-level patch features of any registry backbone, for PatchCore and PaDiM.

Two intermediate stages of the network (`default_layers`: for a ResNet layer2 and layer3, as
PatchCore's paper takes from WideResNet-50) are read through torchvision's
`create_feature_extractor`, which traces the model and drops every layer after the deeper stage;
each map is averaged over its 3x3 neighbourhood (stride 1: the patch sees its neighbours), the
deeper map is upsampled (bilinear) to the shallower one's size, and the two are concatenated:
(B, D, h, w), one D-vector per patch. `dim` optionally reduces D with a seeded Gaussian random
projection (PatchCore) or a seeded random choice of channels (PaDiM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError

REDUCTIONS = ("project", "subsample")
TV_RESNETS = ("resnet", "resnext", "wide_resnet")
TV_STRIDES = (8, 16)  # torchvision trunks: the stages at ResNet's layer2 and layer3 strides


def backbone_of(model: nn.Module) -> nn.Module:
    """The registry model itself: an anomaly run's AnomalyNet gives the network it wraps."""
    from convlens.medical.anomaly_score import AnomalyNet

    return model.net if isinstance(model, AnomalyNet) else model


def default_layers(model: nn.Module, input_shape: Sequence[int]) -> tuple[str, str]:
    """The (shallower, deeper) stages whose outputs make the patch features of `model`.

    convlens's ResNets, wide ResNets and fastnet have three stages (strides 2, 4, 8 for fastnet;
    1, 2, 4 for the ResNets): layer2 and layer3, the last two, because at 28-64 px the third is
    the only one with a receptive field wider than a few pixels, while its map still has 4-16
    patches a side (ImageNet's layer3 has 14 at 224 px). LeNet-5 and the textbook CNN have two
    conv stages: both pools. torchvision ResNets: layer2 and layer3 (the paper's); other
    torchvision families: the last trunk blocks at strides 8 and 16.
    """
    from convlens.models.base import SequentialNet
    from convlens.models.fastnet import FastNet
    from convlens.models.resnet import ResNet
    from convlens.models.tv import TorchvisionSplit
    from convlens.models.wrn import WideResNet

    model = backbone_of(model)
    if isinstance(model, FastNet | ResNet | WideResNet):
        return ("layer2", "layer3")
    if isinstance(model, TorchvisionSplit) and model.arch.startswith(TV_RESNETS):
        return ("layer2", "layer3")
    if isinstance(model, TorchvisionSplit):
        return _by_stride(model, input_shape)
    if isinstance(model, SequentialNet):
        pools = [f"features.{n}" for n, m in model.features.named_children()
                 if isinstance(m, nn.MaxPool2d)]  # fmt: skip
        if len(pools) >= 2:
            return (pools[-2], pools[-1])
    raise ConvlensError(
        f"{type(model).__name__}: no two convolutional stages to take patch features from "
        "(an MLP has no feature maps); pass layers=(shallow, deep) module names"
    )


def _by_stride(model: nn.Module, input_shape: Sequence[int]) -> tuple[str, str]:
    """The last trunk child at each of TV_STRIDES (the nearest stride where none is exact)."""
    trunk = next((n for n in ("features", "layers", "trunk_output") if hasattr(model, n)), "")
    children = (getattr(model, trunk) if trunk else model).named_children()
    sizes = _output_sizes(model, [f"{trunk}.{n}".lstrip(".") for n, _ in children], input_shape)
    names = [n for n, shape in sizes.items() if len(shape) == 3]  # feature maps, not the head
    stride = [input_shape[-1] / sizes[n][-1] for n in names]

    def last_near(target: float, after: int) -> int:
        gaps = [abs(math.log(s / target)) for s in stride[after:]]
        best = min(gaps)
        return after + max(i for i, g in enumerate(gaps) if g <= best + 1e-9)

    shallow = last_near(TV_STRIDES[0], 0)
    if shallow == len(names) - 1:
        shallow -= 1  # the deeper stage must come after it
    return (names[shallow], names[last_near(TV_STRIDES[1], shallow + 1)])


@torch.no_grad()
def _output_sizes(model: nn.Module, names: list[str], input_shape: Sequence[int]) -> dict:
    """{name: output shape} of the named modules on one zero image (eval mode, no state kept)."""
    sizes, hooks = dict.fromkeys(names, ()), []
    for name in names:
        hook = model.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: sizes.__setitem__(name, tuple(out.shape[1:]))
        )
        hooks.append(hook)
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return sizes


class PatchFeatures(nn.Module):
    """Normalised images (B, C, H, W) -> patch features (B, D, h, w), float32.

    The extractor shares the model's modules (not copies): put it in eval mode to extract, which
    sets those modules to eval mode too.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        layers: Sequence[str] | None = None,
        dim: int | None = None,
        reduce: str = "project",
        seed: int = 0,
    ) -> None:
        from torchvision.models.feature_extraction import create_feature_extractor

        super().__init__()
        model = backbone_of(model)
        self.input_shape = tuple(int(s) for s in input_shape)  # (C, H, W)
        self.layers = tuple(layers) if layers else default_layers(model, self.input_shape)
        if len(self.layers) != 2:
            raise ConvlensError(f"patch features take two stages, got layers={list(self.layers)}")
        known = {n for n, _ in model.named_modules()}
        if missing := [n for n in self.layers if n not in known]:
            raise ConvlensError(f"{type(model).__name__} has no module {missing[0]!r} to take "
                                f"patch features from")  # fmt: skip
        if reduce not in REDUCTIONS:
            raise ConvlensError(f"reduce={reduce!r}: choose one of {', '.join(REDUCTIONS)}")
        # childless modules defined outside torch (fastnet's frozen-scale BatchNorm) are single
        # ops: traced through, BatchNorm's input-rank check would be control flow on a proxy
        leaves = {
            type(m)
            for m in model.modules()
            if not any(m.children()) and not type(m).__module__.startswith("torch")
        }
        was_training = model.training
        self.body = create_feature_extractor(
            model.eval(),
            return_nodes={name: str(i) for i, name in enumerate(self.layers)},
            tracer_kwargs={"leaf_modules": list(leaves)},
        )  # shares the model's modules: only the layers up to the deeper stage run
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        with torch.no_grad():
            shape = self.concat(torch.zeros(1, *self.input_shape)).shape  # (1, D, h, w)
        model.train(was_training)
        self.in_dim, self.grid = int(shape[1]), (int(shape[2]), int(shape[3]))
        if dim is not None and dim < 1:
            raise ConvlensError(f"dim={dim}: the patch feature size must be at least 1")
        self.seed, self.asked = seed, (dim, reduce)
        self.reduce = reduce if dim is not None and dim < self.in_dim else None
        self.dim = dim if self.reduce else self.in_dim
        gen = torch.Generator().manual_seed(seed)
        if self.reduce == "project":  # Johnson-Lindenstrauss: distances kept within a few %
            w = torch.randn(self.dim, self.in_dim, 1, 1, generator=gen) / math.sqrt(self.dim)
            self.register_buffer("projection", w)  # (dim, D, 1, 1), a 1x1 conv
        elif self.reduce == "subsample":  # PaDiM's random channel choice, kept in order
            pick = torch.randperm(self.in_dim, generator=gen)[: self.dim].sort().values
            self.register_buffer("channels", pick)  # (dim,) int64

    def concat(self, x: torch.Tensor) -> torch.Tensor:
        """Both stages, locally averaged, at the shallower one's size: (B, D_in, h, w)."""
        maps = self.body(x)
        shallow, deep = (self.pool(maps[str(i)].float()) for i in range(2))
        deep = F.interpolate(deep, size=shallow.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([shallow, deep], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features (B, dim, h, w)."""
        f = self.concat(x)  # (B, D_in, h, w)
        if self.reduce == "project":
            return F.conv2d(f, self.projection)
        if self.reduce == "subsample":
            return f.index_select(1, self.channels)
        return f

    def own_tensors(self) -> dict[str, torch.Tensor]:
        """The reduction's tensors (none without `dim`): what the weights must keep."""
        names = {"project": "projection", "subsample": "channels"}
        return {names[self.reduce]: getattr(self, names[self.reduce])} if self.reduce else {}

    def settings(self) -> dict:
        """What rebuilds these features from the same backbone (JSON)."""
        dim, reduce = self.asked
        return {"layers": list(self.layers), "dim": dim, "reduce": reduce, "seed": self.seed}
