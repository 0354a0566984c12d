"""fastnet: the default model, an airbench-style net that trains fast on a CPU.

Evidence: see the factory's docstring and benchmarks/fast_recipe_log.md (the recipe, the
per-epoch numbers and the command that made them: benchmarks/fast_recipe.py).

    x (B, C, H, W)
    -> conv1: 2x2 conv, C -> 8C channels, frozen weights set by `init_from_data` (patch
       whitening, +V and -V), trainable bias; GELU                   (B, 8C, H-1, W-1)
    -> layer1..3: conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU
       (each halves H and W, rounding up, while the map stays at least 3x3: `pool_plan`)
                                                                      (B, 128, ~H/8, ~W/8)
    -> global max-pool -> fc (no bias) -> x logit_scale               (B, num_classes)
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.models.registry import register_model


class FrozenScaleBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1 (weight.requires_grad = False); only the bias trains."""

    def __init__(self, channels: int, momentum: float):
        super().__init__(channels, eps=1e-12, momentum=momentum)
        self.weight.requires_grad = False


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(cin, cout)])  # identity for the first filters (airbench)
    return conv


class ConvGroup(nn.Module):
    """conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU; halves H and W (ceil).

    With `pool=False` (small images, see `pool_plan`) the map keeps its size.
    """

    def __init__(self, cin: int, cout: int, bn_momentum: float, pool: bool = True):
        super().__init__()
        self.conv1 = conv3x3(cin, cout)
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if pool else nn.Identity()
        self.bn1 = FrozenScaleBatchNorm2d(cout, bn_momentum)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = FrozenScaleBatchNorm2d(cout, bn_momentum)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, cout, H, W)
        x = self.pool(x)  # (B, cout, ceil(H/2), ceil(W/2)): pooling first = 4x less BN/GELU work
        x = self.bn1(x)
        x = self.act(x)
        x = self.conv2(x)
        x = self.bn2(x)
        return self.act(x)


class FastNet(nn.Module):
    """Whitening stem + three conv groups + max-pool head; see the module docstring."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (32, 64, 128),
        whiten_kernel: int = 2,
        bn_momentum: float = 0.4,
        logit_scale: float = 1 / 9,
        pools: tuple[bool, bool, bool] = (True, True, True),  # which groups halve the map
        stem_stride: int = 1,
    ):
        super().__init__()
        stem_width = 2 * in_channels * whiten_kernel**2  # +V and -V per whitening direction
        self.conv1 = nn.Conv2d(in_channels, stem_width, whiten_kernel, stride=stem_stride,
                               padding=0, bias=True)  # fmt: skip
        self.act1 = nn.GELU()
        self.layer1 = ConvGroup(stem_width, widths[0], bn_momentum, pools[0])
        self.layer2 = ConvGroup(widths[0], widths[1], bn_momentum, pools[1])
        self.layer3 = ConvGroup(widths[1], widths[2], bn_momentum, pools[2])
        self.fc = nn.Linear(widths[2], num_classes, bias=False)
        self.logit_scale = logit_scale  # small logits + label smoothing: calmer early training
        self.num_features = widths[2]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))  # (B, 8C, H-1, W-1) for a 2x2 stem
        x = self.layer1(x)  # (B, 32, H/2, W/2)
        x = self.layer2(x)  # (B, 64, H/4, W/4)
        return self.layer3(x)  # (B, 128, H/8, W/8)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # global max-pool in float32: fused by torch.compile with the bf16 layer before it, the
        # pool found no maximum to send its gradient to (NaN at step 2); eager is unchanged
        x = torch.amax(feats.float(), dim=(2, 3))  # (B, num_features)
        if pre_logits:
            return x
        return self.fc(x) * self.logit_scale  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def init_from_data(self, images: torch.Tensor) -> None:
        """Whiten the stem on a sample of normalised training images (see `init_from_data`)."""
        init_from_data(self, images)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """airbench's optimiser groups, used by convlens.training.optim.build_optimizer.

        BatchNorm biases learn 64x faster with 1/64 of the weight decay (the same decay per
        step); the stem's bias trains for the first 30% of steps only, then stays fixed.
        """
        bn_bias = [m.bias for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        stem = [self.conv1.bias]
        taken = {id(p) for p in bn_bias + stem}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        return [
            {"params": bn_bias, "weight_decay": weight_decay / 64, "lr_scale": 64.0},
            {"params": stem, "weight_decay": weight_decay, "until": 0.3},
            {"params": rest, "weight_decay": weight_decay},
        ]


@torch.no_grad()
def init_from_data(model: FastNet, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set the stem to whiten `images`' kxk patches and freeze its weight (not its bias).

    `images` (N, C, H, W) is a sample of training images (5,000 is plenty) normalised exactly as
    the model will see them in training; uint8 images are taken as x / 255. Call it before the
    optimizer is built, so the frozen weight is left out. The filters are the eigenvectors of
    the patch covariance scaled by 1 / sqrt(eigenvalue + eps), stored as +V and -V (airbench).
    """
    conv = model.conv1
    if images.ndim != 4 or images.shape[1] != conv.in_channels:
        want = f"(N, {conv.in_channels}, H, W)"
        raise ValueError(f"init_from_data: expected images {want}, got {tuple(images.shape)}")
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    c, (kh, kw) = x.shape[1], conv.weight.shape[2:]
    patches = x.unfold(2, kh, 1).unfold(3, kw, 1)  # (N, C, H-kh+1, W-kw+1, kh, kw)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)
    cov = patches.T @ patches / len(patches)  # (C*kh*kw, C*kh*kw), uncentred as in airbench
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending eigenvalues
    v = (eigvec.T / torch.sqrt(eigval + eps)[:, None]).flip(0).reshape(-1, c, kh, kw)
    conv.weight.copy_(torch.cat((v, -v)).to(conv.weight))
    conv.weight.requires_grad = False


@register_model("fastnet")
def fastnet(
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: tuple[int, int] = (28, 28),
    widths: tuple[int, int, int] = (32, 64, 128),
    whiten_kernel: int = 2,
    bn_momentum: float = 0.4,
    logit_scale: float = 1 / 9,
    pools: tuple[bool, bool, bool] | None = None,
    stem_stride: int = 1,
) -> nn.Module:
    """Whitened 32/64/128 BN net: Fashion-MNIST 93.1% in 4 epochs (~47 s) on a 2-core CPU.

    Median test accuracy of 3 seeds (93.21 / 93.11 / 93.02), 6-view TTA, 55,000 training images,
    benchmarks/fast_recipe.py: bf16 autocast, channels_last, batch 512, Nesterov SGD with a
    triangular lr, lookahead EMA; 11.2 s per epoch on 2 vCPUs with AMX-BF16 (quiet machine).
    3 epochs: 92.6%; 5 epochs: 93.5% (~57 s); 8 epochs: 94.0%. widths=(16, 64, 128): 92.3% in
    3 epochs, ~28 s.
    Call `init_from_data` before building the optimizer. `pools` defaults to
    `pool_plan(image_size)`. `stem_stride` 2 lays the 2x2 whitening patches side by side
    (every pixel seen once, nothing lost) and halves the side the groups work on: photo runs
    take it (convlens.training.build.resolve_stem), so 96 px trains at about 48 px's cost.
    """
    if min(image_size) < 2:
        raise ValueError(f"fastnet needs images of at least 2x2 pixels, got {image_size}")
    if not 1 <= stem_stride <= whiten_kernel:  # a wider stride would skip pixels
        raise ValueError(f"fastnet's stem_stride must be 1 to whiten_kernel ({whiten_kernel}), "
                         f"got {stem_stride}")  # fmt: skip
    if pools is None:
        pools = pool_plan(image_size, whiten_kernel, stem_stride)
    return FastNet(in_channels=in_channels, num_classes=num_classes, widths=widths,
                   whiten_kernel=whiten_kernel, bn_momentum=bn_momentum, logit_scale=logit_scale,
                   pools=pools, stem_stride=stem_stride)  # fmt: skip


MIN_POOLED_SIDE = 3  # a group pools only if its map stays at least 3x3


def pool_plan(
    image_size: tuple[int, int], whiten_kernel: int = 2, stem_stride: int = 1
) -> tuple[bool, bool, bool]:
    """Which of layer1..3 halve the map: each one that leaves it at least 3x3.

    Every group pools for images of 18x18 and up (Fashion-MNIST: 27 -> 14 -> 7 -> 4). On 8x8
    digits a third pool would leave 1x1 maps: BatchNorm then sees one max per image and
    channel, a channel whose max comes from the blank border is the same in every image (batch
    variance 0), and with eps 1e-12 its gradient is ~1e10: NaN by step 3 at lr 0.75. Stopping
    at 4x4, the default recipe reaches 96.7-99.4% val accuracy in 8 epochs (a folder of the
    1,797 digits, seeds 0-2; tests/test_train_options.py trains 3 epochs).
    """
    side = (min(image_size) - whiten_kernel) // stem_stride + 1  # after the unpadded stem
    plan = []
    for _ in range(3):
        pooled = (side + 1) // 2  # MaxPool2d(2, ceil_mode=True)
        plan.append(pooled >= MIN_POOLED_SIDE)
        side = pooled if plan[-1] else side
    return tuple(plan)
