"""PatchCore and PaDiM as an anomaly run's scorer: `convlens train --task anomaly --method
patchcore|padim`.

The backbone is the run's network, trained on GEOM's pretext task as every anomaly run's is
(or, with --epochs 0, the --init or --pretrained weights as they are, nothing trained); then
the method is fitted on the normal training images (convlens.medical.patchcore, padim) and its
tensors (bank and centre, or means and precisions; the projection or the channel choice) are
saved in the weights file beside the network's, as plain tensors under `patch.`, with the
method's settings and those tensors' shapes in the metadata's "patch" field.
Loading rebuilds the method around the network from them (`PatchNet`). Scores and maps are
mapped to [0, 1] by the image score's calibration (0.5: the threshold chosen on validation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.evaluation.neighbours import SEARCHES
from convlens.medical.anomaly_maps import PatchMethod, PatchScorer
from convlens.medical.anomaly_score import AnomalyNet
from convlens.medical.padim import DIM, PaDiM
from convlens.medical.patchcore import PatchCore
from convlens.medical.patches import REDUCTIONS
from convlens.runs.checks import Checker

METHODS: dict[str, type[PatchMethod]] = {"patchcore": PatchCore, "padim": PaDiM}
FIT_IMAGES = 10_000  # normal train images a method is fitted on, at most (a seeded pick)
# the tensors each method saves: name -> number of dimensions (features.*: the reduction's)
TENSORS = {
    "patchcore": {"bank": 2, "centre": 1, "features.projection": 4},
    "padim": {"mean": 2, "precision": 3, "features.channels": 1},
}
OPTIONAL = ("features.projection", "features.channels")  # only when `dim` cuts the features
SETTINGS = {  # the keys of each method's settings() (convlens.medical.anomaly_maps)
    "patchcore": {"coreset", "search", "bank_size"},
    "padim": {"shrink"},
}
COMMON = {"method", "layers", "dim", "reduce", "seed", "grid"}
MAX_DIM = 1 << 31  # any one side of a saved tensor (the file must hold it: check_fit)


class PatchNet(AnomalyNet):
    """The anomaly network plus a patch method's fitted tensors, under `patch.` (buffers).

    `saved` is the metadata's "patch" field ({"settings", "shapes"}), None before the fit;
    loading the tensors (load_state_dict) rebuilds the method around the network. GEOM's
    Mahalanobis buffers (AnomalyNet's) go unused (zero, or an --init GEOM run's): a patch run
    reports GEOM's own score only.
    """

    def __init__(
        self,
        net: nn.Module,
        saved: dict | None,
        input_shape: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__(net)
        self.saved, self.input_shape = saved, tuple(int(s) for s in input_shape)
        self.mean, self.std = list(mean), list(std)
        self.patch = nn.Module()
        for name, shape in (saved or {}).get("shapes", {}).items():
            holder, leaf = _holder(self.patch, name)
            dtype = torch.int64 if name == "features.channels" else torch.float32
            holder.register_buffer(leaf, torch.zeros(shape, dtype=dtype))
        self.method: PatchMethod | None = None  # a plain attribute: not a submodule
        self.register_load_state_dict_post_hook(lambda module, keys: module.rebuild())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The method's saved tensors by its own names (bank, features.projection, ...)."""
        return dict(self.patch.named_buffers())

    def rebuild(self) -> None:
        """The method around the network, its tensors taken from the buffers (none: unfitted)."""
        if not self.saved:
            return
        settings = self.saved["settings"]
        method = METHODS[settings["method"]].from_settings(
            self.net, settings, input_shape=self.input_shape, mean=self.mean, std=self.std,
            device=self.centers.device,
        )  # fmt: skip
        method.load_state_dict(self.tensors())
        self.method = method

    def fitted(self) -> PatchMethod:
        """The fitted method, on the device the network is on (rebuilt if it moved)."""
        if self.method is None:
            raise ConvlensError("this anomaly network has no fitted patch method")
        if self.method.device != self.centers.device:
            self.rebuild()  # its scorer takes the moved buffers, not a copy of its own
        return self.method

    @torch.no_grad()
    def maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw image scores (N,) and pixel maps (N, H, W) of uint8 images, float32 on the CPU."""
        return self.fitted().score(images)


def _holder(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    """The submodule of `root` that holds buffer `dotted` (made as needed), and its leaf name."""
    *path, leaf = dotted.split(".")
    for part in path:
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    return root, leaf


def wrap(net: nn.Module, meta) -> PatchNet:
    """The PatchNet that weights metadata (a dict while training, else WeightsMeta) describes."""
    size, norm = meta["input"], meta["normalize"]
    shape = (size["channels"], size["height"], size["width"])
    return PatchNet(net, meta.get("patch"), shape, norm["mean"], norm["std"])


def fit(model: AnomalyNet, images: torch.Tensor, meta, cfg, device: torch.device) -> PatchNet:
    """The method `cfg` asks for fitted on normal uint8 images, as a PatchNet around `model`'s
    network holding its tensors (saved["settings"] and ["shapes"] describe them)."""
    name = meta["method"]
    size, norm = meta["input"], meta["normalize"]
    shape = (size["channels"], size["height"], size["width"])
    extra = {"coreset": cfg.coreset} if name == "patchcore" else {}
    dim = cfg.patch_dim if cfg.patch_dim is not None else (DIM if name == "padim" else None)
    method = METHODS[name](model.net, input_shape=shape, mean=norm["mean"], std=norm["std"],
                           dim=dim, seed=cfg.seed, device=device, **extra)  # fmt: skip
    method.fit(images)
    tensors = method.state_dict()
    saved = {"settings": method.settings(),
             "shapes": {k: list(v.shape) for k, v in tensors.items()}}  # fmt: skip
    fitted = PatchNet(model.net, saved, shape, norm["mean"], norm["std"])
    fitted.load_state_dict({**model.state_dict(), **{f"patch.{k}": v for k, v in tensors.items()}})
    return fitted


class Calibrated(nn.Module):
    """Normalised images (B, C, H, W) -> (score (B,), map (B, H, W)) in [0, 1]: the scorer's
    raw values through the run's calibration, sigmoid((raw - threshold) / spread). The export."""

    def __init__(self, scorer: PatchScorer, calibration: dict) -> None:
        super().__init__()
        self.scorer = scorer
        self.threshold, self.spread = float(calibration["threshold"]), float(calibration["spread"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score, heat = self.scorer(x)  # (B,), (B, H, W)
        return (torch.sigmoid((score - self.threshold) / self.spread),
                torch.sigmoid((heat - self.threshold) / self.spread))  # fmt: skip


def check_saved(meta, check: Checker) -> None:
    """The "patch" field of a fitted run: its method's settings and its tensors' shapes."""
    method = meta.extras["method"]
    saved = check.kind(meta.extras.get("patch"), dict, "patch", "an object")
    settings = check.kind(saved.get("settings"), dict, "patch.settings", "an object")
    want = COMMON | SETTINGS[method]
    if set(settings) != want:
        odd = sorted(set(settings) ^ want)[0]
        check.fail("patch.settings", f"{'lacks' if odd in want else 'has an unknown'} {odd!r}")
    check.choice(settings["method"], (method,), "patch.settings.method")
    layers = check.kind(settings["layers"], list, "patch.settings.layers", "two module names")
    if len(layers) != 2 or not all(isinstance(n, str) and n for n in layers):
        check.fail("patch.settings.layers", "must name two modules")
    if settings["dim"] is not None:
        check.integer(settings["dim"], 1, MAX_DIM, "patch.settings.dim")
    check.choice(settings["reduce"], REDUCTIONS, "patch.settings.reduce")
    check.integer(settings["seed"], 0, 2**32 - 1, "patch.settings.seed")
    grid = check.kind(settings["grid"], list, "patch.settings.grid", "[h, w]")
    if len(grid) != 2:
        check.fail("patch.settings.grid", "must be [h, w]")
    for side in grid:
        check.integer(side, 1, MAX_DIM, "patch.settings.grid")
    if method == "patchcore":
        coreset = check.number(settings["coreset"], "patch.settings.coreset", positive=True)
        if coreset > 1:
            check.fail("patch.settings.coreset", f"must be a fraction in (0, 1], not {coreset}")
        check.choice(settings["search"], SEARCHES, "patch.settings.search")
        check.integer(settings["bank_size"], 1, MAX_DIM, "patch.settings.bank_size")
    else:
        check.number(settings["shrink"], "patch.settings.shrink", positive=True)
    shapes = check.kind(saved.get("shapes"), dict, "patch.shapes", "an object")
    ranks = TENSORS[method]
    need = {k for k in ranks if k not in OPTIONAL}
    if not need <= set(shapes) <= set(ranks):
        odd = sorted((need - set(shapes)) | (set(shapes) - set(ranks)))[0]
        check.fail("patch.shapes", f"{'lacks' if odd in need else 'has an unknown'} {odd!r}")
    for name, shape in shapes.items():
        check.kind(shape, list, f"patch.shapes.{name}", "a list of sizes")
        if len(shape) != ranks[name]:
            check.fail(f"patch.shapes.{name}", f"must have {ranks[name]} sizes, not {len(shape)}")
        for side in shape:
            check.integer(side, 1, MAX_DIM, f"patch.shapes.{name}")
    if not _agree(method, shapes, settings):
        check.fail(
            "patch.shapes",
            f"do not agree with each other or with the settings "
            f"({', '.join(f'{k} {v}' for k, v in shapes.items())})",
        )


def _agree(method: str, shapes: dict, settings: dict) -> bool:
    """Whether the saved shapes fit together: one feature size D, the grid, the bank size."""
    reduced = shapes.get("features.projection") or shapes.get("features.channels")
    if method == "patchcore":
        (m, d), centre = shapes["bank"], shapes["centre"]
        same = centre == [d] and m == settings["bank_size"]
    else:
        (p, d), precision = shapes["mean"], shapes["precision"]
        same = precision == [p, d, d] and p == settings["grid"][0] * settings["grid"][1]
    return same and (reduced is None or reduced[0] == d)


def localisation(maps: np.ndarray, masks: np.ndarray) -> dict:
    """Pixel AUROC and PRO (convlens.medical.masks) of maps (N, H, W) against defect masks
    (N, H, W) bool; None for both unless the masks hold defect and normal pixels."""
    from convlens.medical import masks as metrics

    out = {"pixel_auroc": None, "pro": None, "masked_images": int(masks.any((1, 2)).sum())}
    if masks.any() and not masks.all():
        out.update(pixel_auroc=metrics.pixel_auroc(masks, maps), pro=metrics.pro_auc(masks, maps))
    return out


def map_png(unit: torch.Tensor) -> str:
    """A map (H, W) in [0, 1] as a grey PNG, base64: 255 x the map (128 is the threshold)."""
    import base64
    import io

    from PIL import Image

    pixels = (unit.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
