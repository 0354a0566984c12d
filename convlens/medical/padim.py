"""PaDiM (Defard et al., ICPR 2020): a Gaussian of the patch features at every position.

fit: at each of the h x w patch positions, the mean and covariance of the normal training
images' features there (running sums in float64, so any number of images fits in memory); the
covariance is shrunk towards a scaled identity, S + shrink * tr(S) / D * I (the paper adds
0.01 I; scaling by the mean variance keeps the ridge the same for any backbone's feature scale),
and inverted. A test patch's score is its Mahalanobis distance to its own position's Gaussian.
Features are cut to `dim` random channels (seeded), the paper's reduction: covariances are
D x D per position.
"""

from __future__ import annotations

import torch

from convlens.errors import ConvlensError
from convlens.medical.anomaly_maps import PatchMethod, PatchScorer, check_finite
from convlens.medical.patches import PatchFeatures

DIM = 100  # channels kept (the paper's for ResNet-18)
SHRINK = 0.01  # ridge as a share of the mean variance


class PadimScorer(PatchScorer):
    """Mahalanobis distance of each patch to its position's Gaussian; both are buffers."""

    STATISTICS = ("mean", "precision")

    def __init__(self, features: PatchFeatures) -> None:
        super().__init__(features)
        positions, d = features.grid[0] * features.grid[1], features.dim
        self.register_buffer("mean", torch.zeros(positions, d))  # (P, D)
        self.register_buffer("precision", torch.zeros(positions, d, d))  # (P, D, D)

    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # (B, D, h, w)
        b, d, h, w = f.shape
        delta = f.reshape(b, d, h * w).permute(2, 0, 1) - self.mean[:, None]  # (P, B, D)
        m2 = ((delta @ self.precision) * delta).sum(2)  # (P, B) squared Mahalanobis
        return m2.clamp_min(0).sqrt().T.reshape(b, h, w)

    def set_statistics(self, tensors: dict[str, torch.Tensor]) -> None:
        mean, precision = tensors["mean"], tensors["precision"]
        if mean.shape != self.mean.shape or precision.shape != self.precision.shape:
            raise ConvlensError(
                f"PaDiM: statistics of {list(mean.shape)} and {list(precision.shape)} do not fit "
                f"{self.mean.shape[0]} positions of {self.features.dim} features"
            )
        check_finite(precision, "PaDiM precision")
        self.mean = mean.float().to(self.mean.device)
        self.precision = precision.float().to(self.precision.device)


class PaDiM(PatchMethod):
    """`PaDiM(model, input_shape=, mean=, std=)`, `.fit(normal uint8 images)`, `.score`."""

    name = "padim"

    def __init__(
        self, model, *, dim: int | None = DIM, reduce: str = "subsample", shrink: float = SHRINK,
        **kw,
    ) -> None:  # fmt: skip
        super().__init__(model, dim=dim, reduce=reduce, **kw)
        if not shrink > 0:
            raise ConvlensError(f"PaDiM: shrink={shrink} must be above 0 (covariances invert)")
        self.shrink = shrink
        self.scorer = PadimScorer(self.features)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> PaDiM:
        """Mean and shrunk precision per position from normal uint8 images (N, C, H, W)."""
        p, d = self.scorer.mean.shape
        total = torch.zeros(p, d, dtype=torch.float64, device=self.device)
        outer = torch.zeros(p, d, d, dtype=torch.float64, device=self.device)
        n = 0
        for f in self.embeddings(images):  # (b, D, h, w)
            check_finite(f, "PaDiM fit")
            e = f.reshape(len(f), d, p).permute(2, 0, 1).double()  # (P, b, D)
            total += e.sum(1)
            outer += e.transpose(1, 2) @ e  # (P, D, D)
            n += len(f)
        mean = total / n
        cov = (outer - n * mean[:, :, None] * mean[:, None, :]) / max(1, n - 1)  # (P, D, D)
        ridge = self.shrink * cov.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)  # (P,)
        cov += ridge[:, None, None] * torch.eye(d, dtype=cov.dtype, device=cov.device)
        self.scorer.set_statistics({"mean": mean, "precision": torch.linalg.inv(cov)})
        self.fitted = True
        return self

    def settings(self) -> dict:
        return {**super().settings(), "shrink": self.shrink}
