"""The embedding head and its losses: L2-normalised embeddings, ArcFace's additive angular margin.

ArcFace (Deng et al., CVPR 2019): with unit embeddings x and unit class centres W_j, the logit of
class j is s * cos(theta_j), and the true class's is s * cos(theta_y + m): the net must bring an
image within theta_y + m of its centre to score as well as plain softmax would at theta_y.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens.models.infer import map_batches
from convlens.training.optim import param_groups


class EmbeddingNet(nn.Module):
    """A registry backbone whose `size` outputs become unit-length embeddings.

    It also holds the class centres `centres` (identities x size), the ArcFace weight matrix,
    so the optimiser trains them and the weights file carries them.
    """

    def __init__(self, backbone: nn.Module, identities: int, size: int) -> None:
        super().__init__()
        self.backbone = backbone
        # BN-neck (insightface's output block ends in BatchNorm): without it the backbone's
        # outputs can be tiny, and normalising them multiplies their gradients by 1 / |f|.
        self.neck = nn.BatchNorm1d(size)
        self.centres = nn.Parameter(torch.randn(identities, size) / math.sqrt(size))  # (K, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, D), float32 even under bf16 autocast."""
        return F.normalize(self.neck(self.backbone(x).float()), dim=1)  # (B, D)

    def cosines(self, emb: torch.Tensor) -> torch.Tensor:
        """cos(theta) (B, K) between unit embeddings and each identity's centre."""
        return emb @ F.normalize(self.centres.float(), dim=1).T

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The backbone's own groups (fastnet's) or the default split, plus neck and centres."""
        groups = param_groups(self.backbone, weight_decay)
        neck = [self.neck.weight, self.neck.bias, self.centres]  # centres: only their angle counts
        return groups + [{"params": neck, "weight_decay": 0.0}]


def margin_logits(
    cos: torch.Tensor, target: torch.Tensor, scale: float, margin: float
) -> torch.Tensor:
    """ArcFace logits (B, K): s * cos(theta + m) for the true class, s * cos(theta) elsewhere.

    margin 0 is plain (normalised) softmax. Past theta = pi - m, cos(theta + m) would rise again,
    so there the true logit becomes cos(theta) - m sin(m) (insightface's fallback), still falling.
    """
    if margin == 0:
        return scale * cos
    c = cos.gather(1, target[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)  # (B, 1) cos(theta_y)
    sin = (1.0 - c * c).sqrt()
    shifted = c * math.cos(margin) - sin * math.sin(margin)  # cos(theta_y + m)
    shifted = torch.where(c > math.cos(math.pi - margin), shifted, c - margin * math.sin(margin))
    return scale * cos.scatter(1, target[:, None], shifted)


def embedding_loss(
    model: EmbeddingNet, emb: torch.Tensor, target: torch.Tensor, scale: float, margin: float
) -> torch.Tensor:
    """Cross-entropy of the margin logits of unit embeddings `emb` (B, D) for `target` (B,)."""
    return F.cross_entropy(margin_logits(model.cosines(emb), target, scale, margin), target)


def embed_images(model: nn.Module, images: torch.Tensor, **kw: Any) -> torch.Tensor:
    """Unit embeddings (N, D) float32 (on the CPU) of uint8 images (N, C, H, W); kw: mean, std
    and the options of convlens.models.infer.map_batches."""
    return map_batches(model, images, model, **kw)
