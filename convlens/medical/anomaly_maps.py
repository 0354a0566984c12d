"""What PatchCore and PaDiM share: patch scores to pixel maps, and the fit/score/save API.

A method scores every patch of an image (`PatchScorer.patch_scores`, (B, h, w)); the image
score is the largest patch score (PatchCore's, Roth et al. 2022; taken before any smoothing) and
the map is the patch scores upsampled to the image (bilinear) and smoothed by a Gaussian of
sigma 4 px at 224 px, scaled with the image side, as anomalib does. The scorer is one
nn.Module over normalised images, its statistics buffers, so it exports to ONNX as one graph;
`PatchMethod` runs it over uint8 images in batches and keeps what must be saved.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data.batches import normalize
from convlens.errors import ConvlensError
from convlens.medical.patches import PatchFeatures

SIGMA_AT_224 = 4.0  # anomalib's blur, pixels at a 224 px side
PARITY = 1e-4  # largest onnxruntime - torch difference, relative to the largest torch value


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian (2 * int(4 sigma + 0.5) + 1,), anomalib's kernel width."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


class Smooth(nn.Module):
    """Patch scores (B, h, w) -> pixel maps (B, H, W): bilinear upsampling, Gaussian blur."""

    def __init__(self, size: Sequence[int], sigma_at_224: float = SIGMA_AT_224) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        ky, kx = (gaussian_kernel(max(1e-3, sigma_at_224 * side / 224)) for side in self.size)
        self.register_buffer("ky", ky.view(1, 1, -1, 1), persistent=False)  # separable blur
        self.register_buffer("kx", kx.view(1, 1, 1, -1), persistent=False)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(scores[:, None], size=self.size, mode="bilinear", align_corners=False)
        ry, rx = self.ky.shape[2] // 2, self.kx.shape[3] // 2
        mode = "reflect" if max(ry, rx) < min(self.size) else "replicate"  # reflect needs r < side
        x = F.conv2d(F.pad(x, (0, 0, ry, ry), mode=mode), self.ky)  # (B, 1, H, W)
        x = F.conv2d(F.pad(x, (rx, rx, 0, 0), mode=mode), self.kx)
        return x[:, 0]


class PatchScorer(nn.Module):
    """Normalised images (B, C, H, W) -> (image scores (B,), maps (B, H, W)): the export."""

    def __init__(self, features: PatchFeatures) -> None:
        super().__init__()
        self.features = features
        self.smooth = Smooth(features.input_shape[1:])

    STATISTICS: tuple[str, ...] = ()  # the fitted buffers, saved with the weights

    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score of every patch (B, h, w); higher = more anomalous."""
        raise NotImplementedError

    def statistics(self) -> dict[str, torch.Tensor]:
        """The fitted buffers by name."""
        return {name: getattr(self, name) for name in self.STATISTICS}

    def set_statistics(self, tensors: dict[str, torch.Tensor]) -> None:
        """Replace the fitted buffers (shapes checked against the features)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.patch_scores(x)  # (B, h, w)
        return s.flatten(1).amax(1), self.smooth(s)


class PatchMethod:
    """fit(normal uint8 images), score(images) -> (scores (N,), maps (N, H, W)), the tensors
    to save, and the scorer as one nn.Module (`scoring_module`) for ONNX."""

    name = ""
    scorer: PatchScorer

    def __init__(
        self,
        model: nn.Module,
        *,
        input_shape: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        layers: Sequence[str] | None = None,
        dim: int | None = None,
        reduce: str = "project",
        seed: int = 0,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ) -> None:
        self.features = PatchFeatures(model, input_shape, layers, dim, reduce, seed)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.seed, self.batch_size, self.device = seed, batch_size, torch.device(device)
        self.fitted = False

    @classmethod
    def from_settings(cls, model: nn.Module, settings: dict, **kw: object) -> PatchMethod:
        """The method `settings()` describes around `model` (then load_state_dict its tensors);
        `kw` gives the rest: input_shape, mean, std, device, batch_size."""
        if settings.get("method") != cls.name:
            raise ConvlensError(f"{cls.name}: these settings are {settings.get('method')!r}'s")
        own = {k: v for k, v in settings.items() if k not in ("method", "grid", "bank_size")}
        return cls(model, **own, **kw)

    # --- images in -----------------------------------------------------------------------------
    def batches(self, images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """Normalised batches (b, C, H, W) on the device, for uint8 images (N, C, H, W)."""
        want = self.features.input_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != want or images.dtype != torch.uint8:
            raise ConvlensError(
                f"{self.name}: expected uint8 images (N, {', '.join(map(str, want))}), got "
                f"{images.dtype} {tuple(images.shape)} (resize them to the model's input size)"
            )
        if len(images) == 0:
            raise ConvlensError(f"{self.name}: no images to {'score' if self.fitted else 'fit'}")
        for i in range(0, len(images), batch_size):
            yield normalize(images[i : i + batch_size].to(self.device), self.mean, self.std)

    @torch.no_grad()
    def embeddings(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """Patch features (b, D, h, w) of uint8 images, batch by batch."""
        self.features.to(self.device).eval()
        for x in self.batches(images, self.batch_size):
            yield self.features(x)

    # --- scores out ----------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (N,) and pixel maps (N, H, W), float32 on the CPU."""
        scorer = self.scoring_module().to(self.device)
        out = [scorer(x) for x in self.batches(images, self.batch_size)]
        return torch.cat([s.cpu() for s, _ in out]), torch.cat([m.cpu() for _, m in out])

    @torch.no_grad()
    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Patch scores (N, h, w) before upsampling and smoothing."""
        scorer = self.scoring_module().to(self.device)
        return torch.cat([scorer.patch_scores(x).cpu()
                          for x in self.batches(images, self.batch_size)])  # fmt: skip

    def scoring_module(self) -> PatchScorer:
        """The fitted scorer in eval mode: normalised images -> (scores (B,), maps (B, H, W))."""
        if not self.fitted:
            raise ConvlensError(f"{self.name}: fit it on normal images (or load its tensors) first")
        return self.scorer.eval()

    def calibrate(
        self, normal: torch.Tensor, anomalous: torch.Tensor, sensitivity: float | None = None
    ) -> dict:
        """Threshold and spread from validation image scores (anomaly_score.calibrate's rule)."""
        from convlens.medical.anomaly_score import calibrate

        return calibrate(normal, anomalous, sensitivity)

    # --- saved with the weights ----------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The method's tensors, plain and contiguous (the backbone's weights are the model's)."""
        if not self.fitted:
            raise ConvlensError(f"{self.name}: nothing to save before fit")
        own = {f"features.{k}": v for k, v in self.features.own_tensors().items()}
        own.update(self.scorer.statistics())
        return {k: v.detach().cpu().contiguous() for k, v in own.items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take back what state_dict gave, every name and shape checked: the method is fitted."""
        own = {f"features.{k}": v for k, v in self.features.own_tensors().items()}
        want = [*own, *self.scorer.STATISTICS]
        if sorted(tensors) != sorted(want):
            odd = sorted(set(tensors) ^ set(want))[0]
            what = "lack" if odd in want else "have an unexpected"
            raise ConvlensError(f"{self.name}: the saved tensors {what} {odd!r}")
        for key, have in own.items():
            if tensors[key].shape != have.shape or tensors[key].dtype != have.dtype:
                raise ConvlensError(f"{self.name}: saved {key!r} is {list(tensors[key].shape)}, "
                                    f"these features need {list(have.shape)}")  # fmt: skip
            have.copy_(tensors[key])
        self.scorer.set_statistics({k: tensors[k] for k in self.scorer.STATISTICS})
        self.fitted = True

    def settings(self) -> dict:
        """What rebuilds this method around the same backbone (JSON, for the weights' meta)."""
        return {"method": self.name, **self.features.settings(), "grid": list(self.features.grid)}


def check_finite(x: torch.Tensor, what: str) -> None:
    """Refuse NaN or infinite features (a diverged backbone) before they reach the statistics."""
    if not torch.isfinite(x).all():
        raise ConvlensError(f"{what}: the backbone gives non-finite patch features")


def export_scorer(
    method: PatchMethod, out: str | Path, images: torch.Tensor, metadata: dict | None = None
) -> dict:
    """Write the fitted scorer as ONNX (input "images" (N, C, H, W) normalised, dynamic N;
    outputs "score" (N,) and "map" (N, H, W)) and check onnxruntime against torch on uint8
    `images`: the largest difference, relative to the largest torch value, must be <= PARITY."""
    import contextlib
    import io
    import json
    import warnings

    import numpy as np
    import onnx
    import onnxruntime as ort

    scorer = method.scoring_module().cpu().float()
    c, h, w = method.features.input_shape
    batch = torch.export.Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress lines and notices
        program = torch.onnx.export(
            scorer,
            (torch.zeros(2, c, h, w),),
            dynamo=True,
            input_names=["images"],
            output_names=["score", "map"],
            dynamic_shapes=({0: batch},),
        )
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    Path(out).write_bytes(proto.SerializeToString())
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    diff = 0.0
    was_device, method.device = method.device, torch.device("cpu")
    try:
        for x in method.batches(images, method.batch_size):
            with torch.no_grad():
                ours = [t.numpy() for t in scorer(x)]
            theirs = session.run(None, {"images": x.numpy()})
            for a, b in zip(ours, theirs, strict=True):
                diff = max(diff, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)))
    finally:
        method.device = was_device
    if diff > PARITY:
        raise ConvlensError(f"{out}: onnxruntime differs from torch by {diff:.2e} of the largest "
                            f"score (> {PARITY})")  # fmt: skip
    return {"onnx": str(out), "images": len(images), "max_rel_diff": diff}
