"""Anomaly detection trained on normal images only: `convlens train --task anomaly`.

The network learns GEOM's pretext task (convlens.medical.geom): name which of 72 flips,
translations and rotations was applied to a normal image. With --method geom (the default) a new
image is scored by how well its 72 transformations are named (--anomaly-method geom) or by how
far their features lie from the normal ones (mahalanobis); with --method patchcore or padim the
trained network's patch features score every patch (convlens.medical.patch_run), which gives an
anomaly map besides the image score. A patch method needs no training beyond its backbone's:
with --init RUN_OR_FILE (or --pretrained) and --epochs 0 nothing trains, and the method is fitted
on the given weights as they are (a GEOM or patch run's, a torchvision or timm backbone's).
convlens.medical.anomaly_score turns scores into [0, 1] with a flag at a threshold chosen on
validation. The test split is never used for any choice.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.data import Dataset, Split
from convlens.data.mvtec import GOOD, MaskedSplit
from convlens.device import resolve_amp, resolve_device
from convlens.errors import ConfigError, ConvlensError, ModelError
from convlens.evaluation.detection import curves, detection_metrics
from convlens.evaluation.plots import save_curves, save_roc_pr, save_score_histogram
from convlens.medical import anomaly_score as scoring
from convlens.medical import geom, patch_run
from convlens.runs.checks import Checker
from convlens.runs.folder import Run
from convlens.runs.meta import WeightsMeta
from convlens.runs.weights import save_weights
from convlens.tasks.base import Evaluation, LoadedRun, Task
from convlens.tasks.classify import softmax_validation
from convlens.tasks.loading import load_model
from convlens.tasks.registry import register_task

FIT_IMAGES = 1000  # normal train images fitting the Mahalanobis statistics; anomalous val images


METHODS = ("mahalanobis", "geom", *patch_run.METHODS)  # the scores a run decides with


@register_task("anomaly")
class AnomalyTask(Task):
    """72-way transformation recognition on the normal classes; anomaly scores after training."""

    score = "val_acc"  # transformation accuracy on normal validation images
    gpu_batches = False  # its batch hook mixes in CPU tensors (the transformation maps)
    onnx_refusal = (
        "a GEOM score runs the network over 72 transformed views of each image and compares "
        "their features with Mahalanobis statistics of normal images, outside one graph; "
        "--method patchcore and padim runs export"
    )
    onnx_activation = "none"  # a patch run's graph gives its calibrated score and map
    serves_onnx = True  # patch runs; a GEOM run's export is refused, and torch serves it

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.full_val: Split | None = None  # every val image: anomalies there set the threshold
        self.normal: list[str] = []
        self.maps: torch.Tensor | None = None  # (72, H * W) pixel maps of the transformations

    # --- set-up ------------------------------------------------------------------------------
    def prepare(self, ds: Dataset) -> Dataset:
        """Keep the normal classes' train and val images; mirroring is off (a flip is a label)."""
        geom.check_square(*ds.image_size, where=ds.name)
        if self.cfg.hflip in ("random", "alternate"):
            raise ConfigError(
                f"--hflip {self.cfg.hflip}: anomaly runs learn to recognise mirroring, so training "
                "images must not be mirrored at random; use --hflip auto or off"
            )
        spec = self.cfg.normal
        if spec is None and isinstance(ds.train, MaskedSplit):  # a mask set: "good" is normal
            spec = GOOD
        self.normal = normal_classes(spec, ds.classes, ds.name)
        keep = [ds.classes.index(c) for c in self.normal]
        train, val = (only(s, keep) for s in (ds.train, ds.val))
        if len(train) == 0 or len(val) == 0:
            raise ConvlensError(f"{ds.name}: no normal ({', '.join(self.normal)}) train/val images")
        self.full_val = ds.val
        self.maps = geom.index_maps(ds.image_size[0])
        t = geom.shift_for(ds.image_size[0])
        note = (
            f"anomaly ({self.method}): normal = {', '.join(self.normal)}; "
            f"{len(train)} training and {len(val)} validation images; 72 transformations "
            f"(mirror x shifts of 0/+-{t} px, reflect fill x 4 rotations)"
        )
        return dataclasses.replace(ds, train=train, val=val, hflip=False, notes=[*ds.notes, note])

    def outputs(self, ds: Dataset) -> int:
        """One logit per transformation."""
        return geom.COUNT

    @property
    def method(self) -> str:
        """The score the run decides with: a patch method, or GEOM's (its anomaly_method)."""
        return self.cfg.method if self.cfg.method in patch_run.METHODS else self.cfg.anomaly_method

    def meta(self, ds: Dataset) -> dict:
        """The normal classes, the method and the transformations; calibration comes at finish
        (and a patch method's "patch" field). A patch map is never averaged over mirrored views."""
        out = {
            "normal": self.normal,
            "method": self.method,
            "transformations": {"count": geom.COUNT, "shift": geom.shift_for(ds.image_size[0])},
        }
        return {**out, "tta": "none"} if self.method in patch_run.METHODS else out

    @classmethod
    def wrap(cls, model: nn.Module, meta: dict) -> nn.Module:
        """The model plus buffers for the Mahalanobis statistics, or a patch method's tensors
        (saved with the weights)."""
        if meta.get("method") in patch_run.METHODS:
            return patch_run.wrap(model, meta)
        return scoring.AnomalyNet(model)

    # --- training ----------------------------------------------------------------------------
    def batch(
        self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random one of the 72 transformations per image; its index is the target."""
        index = torch.randint(0, geom.COUNT, (len(images),), generator=gen)  # (B,)
        return geom.apply(images, index, self.maps), index

    def loss(self, model: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the transformation logits `out` (B, 72) on the ones applied (B,)."""
        return F.cross_entropy(out.float(), target, label_smoothing=self.cfg.label_smoothing)

    def validate(self, model: nn.Module, split: Split, meta: dict, **kw: Any) -> dict:
        """Transformation loss and accuracy on normal val images, each under 8 of the 72."""
        views = 8  # image i under transformations 8i .. 8i + 7 (mod 72): every one ~n/9 times
        index = (torch.arange(len(split))[:, None] * views + torch.arange(views)) % geom.COUNT
        images = split.images.repeat_interleave(views, 0)  # (n * 8, C, H, W)
        x = geom.apply(images, index.flatten(), geom.index_maps(images.shape[-1]))
        split = Split(x, index.flatten())
        return softmax_validation(model, split, meta, **kw)

    # --- after training ----------------------------------------------------------------------
    def calibrate(self, run_dir: Path, ds: Dataset) -> str | None:
        """Fit scoring on the best weights (train and val images only) and save it with them."""
        model, meta, weights = load_model(run_dir)
        kw = score_settings(self.cfg.device)
        gen = torch.Generator().manual_seed(self.cfg.seed)
        if meta["method"] == "mahalanobis":
            pick = torch.randperm(len(ds.train), generator=gen)[:FIT_IMAGES]
            scoring.fit_mahalanobis(model, ds.train.images[pick], meta, **kw)
        val = self.calibration_images(ds.classes)
        if meta["method"] in patch_run.METHODS:
            pick = torch.randperm(len(ds.train), generator=gen)[: patch_run.FIT_IMAGES]
            model = patch_run.fit(model, ds.train.images[pick], meta, self.cfg, kw["device"])
            meta.extras["patch"] = model.saved
            raw = model.maps(val.images)[0]
        else:
            raw = scoring.raw_scores(model, val.images, meta, **kw)[meta["method"]]
        is_normal = normal_mask(val, ds.classes, self.normal)
        meta.calibration = scoring.calibrate(
            raw[is_normal], raw[~is_normal], self.cfg.target_sensitivity
        )
        save_weights(weights, model.state_dict(), meta)
        return None

    def evaluation_data(self, ds: Dataset) -> Dataset:
        """Every validation image, anomalies too: a source without test scores val."""
        return dataclasses.replace(ds, val=self.full_val)

    def calibration_images(self, classes: list[str]) -> Split:
        """Every normal val image and at most FIT_IMAGES anomalous ones (seeded): 72 passes each."""
        is_normal = normal_mask(self.full_val, classes, self.normal)
        anomalous = (~is_normal).nonzero().flatten()
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        anomalous = anomalous[torch.randperm(len(anomalous), generator=gen)[:FIT_IMAGES]]
        keep = torch.cat([is_normal.nonzero().flatten(), anomalous]).sort().values
        return self.full_val.subset(keep)

    @classmethod
    def check_meta(cls, meta: WeightsMeta, check: Checker) -> None:
        """The method, the normal classes and (once finished) the score calibration."""
        check.choice(meta.extras.get("method"), METHODS, "method")
        normal = check.kind(meta.extras.get("normal"), list, "normal", "a list of class names")
        if not normal or not all(isinstance(n, str) and n in meta.classes for n in normal):
            check.fail("normal", "must name one or more of the classes")
        if meta.calibration is not None:
            cal = check.kind(meta.calibration, dict, "calibration", "an object")
            check.number(cal.get("threshold"), "calibration.threshold")
            check.number(cal.get("spread"), "calibration.spread", positive=True)
        if meta.extras["method"] in patch_run.METHODS and "patch" in meta.extras:
            patch_run.check_saved(meta, check)

    @classmethod
    def check_predictable(cls, meta: WeightsMeta, source: Path) -> None:
        """Weights of a finished run (calibrated) whose images 90-degree turns map onto
        themselves."""
        _calibration(meta, source)
        geom.check_square(*meta.input.size, where=str(source))
        if meta["method"] in patch_run.METHODS and "patch" not in meta.extras:
            raise ModelError(f"{source}: this {meta['method']} run has no fitted patch method "
                             "(metadata field 'patch')")  # fmt: skip

    @classmethod
    def evaluate(cls, run: LoadedRun, dataset: Dataset, split: str, write: bool) -> Evaluation:
        """AUROC (normal classes negative, all others positive) and the flags' sens/spec; a
        patch run's pixel AUROC and PRO where the split has defect masks. details: "raw" {score
        name: (N,) raw scores}, "classes" (N,) class name per image, "images" (N, C, H, W) uint8
        of the split, and for a patch run "maps" (N, H, W) in [0, 1] and "masks" (N, H, W)
        bool (None without masks), for the report."""
        from sklearn.metrics import roc_auc_score

        meta = run.meta
        calibration = _calibration(meta, run.weights)
        part = dataset.split(split)
        geom.check_square(*dataset.image_size, where=dataset.name)
        raws = scoring.raw_scores(run.net, part.images, meta, **score_settings(str(run.device)))
        maps = raw_maps = None
        if meta["method"] in patch_run.METHODS:  # GEOM's score too: the same network's
            raws[meta["method"]], raw_maps = run.net.maps(part.images)  # (N,), (N, H, W)
            maps = scoring.to_unit(raw_maps, calibration).numpy()
        anomalous = (~normal_mask(part, dataset.classes, meta["normal"])).numpy()
        metrics = {
            "task": cls.name,
            "data": dataset.name,
            "split": split,
            "weights": str(run.weights),
            "method": meta["method"],
            "normal": meta["normal"],
            "n": len(part),
            "n_normal": int((~anomalous).sum()),
            "n_anomalous": int(anomalous.sum()),
            "auroc": None,  # these need both normal and anomalous images in the split
            "sensitivity": None,
            "specificity": None,
            "threshold": 0.5,  # on the [0, 1] score; calibration["threshold"] on the raw score
            "calibration": calibration,
        }
        if 0 < anomalous.sum() < len(part):
            for name, raw in raws.items():  # a mahalanobis run also reports GEOM's score
                key = "auroc" if name == meta["method"] else f"auroc_{name}"
                metrics[key] = float(roc_auc_score(anomalous, raw.numpy()))
            raw = raws[meta["method"]].numpy()  # flags: raw >= threshold <=> score >= 0.5
            block = detection_metrics(anomalous, raw, calibration["threshold"])
            metrics["sensitivity"] = block["sensitivity"]["value"]
            metrics["specificity"] = block["specificity"]["value"]
            metrics["detection"] = block  # with bootstrap 95% CIs; thresholds on the raw score
        masks = part.masks.numpy() if isinstance(part, MaskedSplit) and maps is not None else None
        if masks is not None:
            metrics.update(patch_run.localisation(raw_maps.numpy(), masks))  # no sigmoid ties
        names = [dataset.classes[i] for i in part.labels.tolist()]  # (N,)
        scores = {k: v.numpy() for k, v in raws.items()}
        if write and run.folder is not None:
            _write(run.folder, metrics, scores, names)
        details = {"raw": scores, "classes": names, "images": part.images}
        if maps is not None:
            details.update(maps=maps, masks=masks)
        return Evaluation(metrics, details)

    @classmethod
    def scores(cls, run: LoadedRun, images: torch.Tensor) -> torch.Tensor:
        """Anomaly scores (N,) in [0, 1], 0.5 at the threshold chosen on validation; a patch
        run's (N, 1 + H * W): the score, then its map on the same scale."""
        calibration = _calibration(run.meta, run.weights)
        if run.meta["method"] in patch_run.METHODS:
            score, raw_map = run.net.maps(images)  # (N,), (N, H, W)
            return scoring.to_unit(torch.cat([score[:, None], raw_map.flatten(1)], 1), calibration)
        raw = scoring.raw_scores(run.net, images, run.meta, **score_settings(str(run.device)))
        return scoring.to_unit(raw[run.meta["method"]], calibration)

    @classmethod
    def answer(cls, scores: torch.Tensor, meta: WeightsMeta, top_k: int) -> dict:
        """{"score" in [0, 1], "anomaly": flagged, "threshold": 0.5}, and for a patch run
        "map_png": its map as a grey PNG (base64) at the model's input size, 255 x the map
        (128: the threshold); top_k is ignored."""
        score = float(scores.flatten()[0])
        out = {"score": score, "anomaly": score >= 0.5, "threshold": 0.5}
        if scores.numel() > 1:
            out["map_png"] = patch_run.map_png(scores.flatten()[1:].view(meta.input.size))
        return out

    @classmethod
    def onnx_graph(cls, meta: WeightsMeta) -> dict[str, tuple[int, ...]]:
        """A patch run's graph gives "score" (N,) and "map" (N, H, W), both in [0, 1]; a GEOM
        run's does not export."""
        if meta["method"] not in patch_run.METHODS:
            return {}
        return {"score": (), "map": meta.input.size}

    @classmethod
    def onnx_module(cls, run: LoadedRun) -> nn.Module:
        """The fitted scorer with its calibration: the bank (or Gaussians) become constants."""
        scorer = run.net.fitted().scoring_module()
        return patch_run.Calibrated(scorer, _calibration(run.meta, run.weights))

    @classmethod
    def shown_threshold(cls, meta: WeightsMeta) -> float | None:
        """Every answer is flagged at a score of 0.5."""
        return 0.5

    @staticmethod
    def summary(metrics: dict) -> str:
        """AUROC and the flags' sensitivity and specificity (pixel AUROC and PRO), one line."""

        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        where = ""  # a patch run on a mask set: how well its maps find the defects
        if "pixel_auroc" in metrics:
            where = f"  pixel AUROC {fmt(metrics['pixel_auroc'])}  PRO {fmt(metrics['pro'])}"
        return (
            f"{metrics['split']}: AUROC {fmt(metrics['auroc'])}  sensitivity "
            f"{fmt(metrics['sensitivity'])}  specificity {fmt(metrics['specificity'])}{where}  "
            f"(normal {metrics['n_normal']}, anomalous {metrics['n_anomalous']})"
        )


def _write(folder: Run, metrics: dict, raw: dict[str, np.ndarray], classes: list[str]) -> None:
    """metrics.json, curves.png, roc_pr.png (when the split holds both kinds of image) and
    anomaly_scores.png of the evaluated split."""
    folder.write_metrics(metrics)
    method, block = metrics["method"], metrics.get("detection")
    scores = raw[method]  # (N,)
    anomalous = np.array([c not in metrics["normal"] for c in classes], dtype=bool)  # (N,)
    if rows := folder.read_results():
        save_curves(rows, folder.path / "curves.png")
    if block is not None:
        positive = f"anomalous (not {', '.join(metrics['normal'])})"
        points = curves(anomalous, scores)
        save_roc_pr(points, {**block, "positive_class": positive}, folder.path / "roc_pr.png")
    save_score_histogram(
        scores,
        anomalous,
        metrics["calibration"]["threshold"],
        f"raw {scoring.SCORE_NAMES[method]} score (higher: more anomalous)",
        folder.path / "anomaly_scores.png",
    )


def normal_classes(spec: str | None, classes: list[str], where: str) -> list[str]:
    """The class names that --normal lists (all classes when it is not given)."""
    if spec is None:
        return list(classes)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in classes]
    if unknown or not names:
        raise ConfigError(
            f"--normal {spec!r}: {where} has no class {', '.join(map(repr, unknown)) or 'given'}; "
            f"its classes are {', '.join(classes)}"
        )
    return names


def only(split: Split, keep: list[int]) -> Split:
    """The images of `split` whose label is in `keep`."""
    return split.subset(torch.isin(split.labels, torch.tensor(keep)).nonzero().flatten())


def normal_mask(split: Split, classes: list[str], normal: list[str]) -> torch.Tensor:
    """(N,) bool: image i's class is one of the normal class names."""
    keep = [i for i, c in enumerate(classes) if c in normal]
    return torch.isin(split.labels, torch.tensor(keep, dtype=torch.long))


def score_settings(device: str) -> dict:
    """Where and how scores are computed: the same rule in calibrate, evaluate and predict."""
    dev = resolve_device(device)
    return {"device": dev, "amp": resolve_amp("auto", dev), "channels_last": True}


def _calibration(meta: WeightsMeta, weights: Path) -> dict:
    """The threshold and spread calibrate() saved, or a clear error for unfinished weights."""
    if meta.calibration is None:
        raise ModelError(
            f"{weights}: this anomaly model has no calibrated threshold (its run stopped before "
            "training finished); use weights/best.safetensors of a finished run"
        )
    return meta.calibration
