"""Anomaly detection trained on normal images only: `convlens train --task anomaly`.

The network learns GEOM's pretext task (convlens.medical.geom): name which of 72 flips,
translations and rotations was applied to a normal image. A new image is scored by how well its
72 transformations are named (--anomaly-method geom) or by how far their features lie from the
normal ones (mahalanobis); convlens.medical.anomaly_score turns that into [0, 1] with a flag at
a threshold chosen on validation. The test split is never used for any choice.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.data import Dataset, Split
from convlens.errors import ConfigError, ConvlensError, ModelError
from convlens.medical import anomaly_score as scoring
from convlens.medical import geom
from convlens.predict import ImageLike, Recogniser
from convlens.runs.folder import Run
from convlens.training.tasks import Classify

FIT_IMAGES = 1000  # normal train images fitting the Mahalanobis statistics; anomalous val images


class AnomalyTask(Classify):
    """72-way transformation recognition on the normal classes; anomaly scores after training."""

    name = "anomaly"
    score = "val_acc"  # transformation accuracy on normal validation images

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
        self.normal = normal_classes(self.cfg.normal, ds.classes, ds.name)
        keep = [ds.classes.index(c) for c in self.normal]
        train, val = (only(s, keep) for s in (ds.train, ds.val))
        if len(train) == 0 or len(val) == 0:
            raise ConvlensError(f"{ds.name}: no normal ({', '.join(self.normal)}) train/val images")
        self.full_val = ds.val
        self.maps = geom.index_maps(ds.image_size[0])
        t = geom.shift_for(ds.image_size[0])
        note = (
            f"anomaly ({self.cfg.anomaly_method}): normal = {', '.join(self.normal)}; "
            f"{len(train)} training and {len(val)} validation images; 72 transformations "
            f"(mirror x shifts of 0/+-{t} px, reflect fill x 4 rotations)"
        )
        return dataclasses.replace(ds, train=train, val=val, hflip=False, notes=[*ds.notes, note])

    def outputs(self, ds: Dataset) -> int:
        """One logit per transformation."""
        return geom.COUNT

    def meta(self, ds: Dataset) -> dict:
        """The normal classes, the method and the transformations; calibration comes at finish."""
        return {
            "normal": self.normal,
            "method": self.cfg.anomaly_method,
            "transformations": {"count": geom.COUNT, "shift": geom.shift_for(ds.image_size[0])},
        }

    @classmethod
    def wrap(cls, model: nn.Module, meta: dict) -> nn.Module:
        """The model plus buffers for the Mahalanobis statistics (saved with the weights)."""
        return scoring.AnomalyNet(model)

    # --- training ----------------------------------------------------------------------------
    def batch(
        self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random one of the 72 transformations per image; its index is the target."""
        index = torch.randint(0, geom.COUNT, (len(images),), generator=gen)  # (B,)
        return geom.apply(images, index, self.maps), index

    def validate(self, model: nn.Module, split: Split, meta: dict, **kw: Any) -> dict:
        """Transformation loss and accuracy on normal val images, each under 8 of the 72."""
        views = 8  # image i under transformations 8i .. 8i + 7 (mod 72): every one ~n/9 times
        index = (torch.arange(len(split))[:, None] * views + torch.arange(views)) % geom.COUNT
        images = split.images.repeat_interleave(views, 0)  # (n * 8, C, H, W)
        x = geom.apply(images, index.flatten(), geom.index_maps(images.shape[-1]))
        return super().validate(model, Split(x, index.flatten()), {**meta, "tta": "none"}, **kw)

    def finish(self, run_dir: Path, ds: Dataset) -> dict:
        """Fit scoring on the best weights (train, val only), save it with them; test metrics."""
        from convlens.evaluation import evaluate_run
        from convlens.models.loading import load_model
        from convlens.runs.weights import save_weights

        model, meta, weights = load_model(run_dir)
        kw = score_settings(self.cfg.device)
        if meta["method"] == "mahalanobis":
            gen = torch.Generator().manual_seed(self.cfg.seed)
            pick = torch.randperm(len(ds.train), generator=gen)[:FIT_IMAGES]
            scoring.fit_mahalanobis(model, ds.train.images[pick], meta, **kw)
        val = self.calibration_images(ds.classes)
        raw = scoring.raw_scores(model, val.images, meta, **kw)[meta["method"]]
        is_normal = normal_mask(val, ds.classes, self.normal)
        meta.calibration = scoring.calibrate(
            raw[is_normal], raw[~is_normal], self.cfg.target_sensitivity
        )
        save_weights(weights, model.state_dict(), meta)
        full = dataclasses.replace(ds, val=self.full_val)  # a source without test scores val
        return evaluate_run(run_dir, dataset=full, write=True, device=str(kw["device"]))

    def calibration_images(self, classes: list[str]) -> Split:
        """Every normal val image and at most FIT_IMAGES anomalous ones (seeded): 72 passes each."""
        is_normal = normal_mask(self.full_val, classes, self.normal)
        anomalous = (~is_normal).nonzero().flatten()
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        anomalous = anomalous[torch.randperm(len(anomalous), generator=gen)[:FIT_IMAGES]]
        keep = torch.cat([is_normal.nonzero().flatten(), anomalous]).sort().values
        return self.full_val.subset(keep)

    # --- after training ----------------------------------------------------------------------
    @classmethod
    def evaluate(
        cls,
        model: nn.Module,
        meta: dict,
        weights: Path,
        run_dir: Path | None,
        dataset: Dataset,
        *,
        split: str,
        write: bool,
        device: str,
    ) -> dict:
        """AUROC (normal classes negative, all others positive) and the flags' sens/spec."""
        from sklearn.metrics import roc_auc_score

        from convlens.medical.metrics import detection_metrics

        calibration = _calibration(meta, weights)
        part = dataset.split(split)
        geom.check_square(*dataset.image_size, where=dataset.name)
        raws = scoring.raw_scores(model, part.images, meta, **score_settings(device))
        anomalous = (~normal_mask(part, dataset.classes, meta["normal"])).numpy()
        metrics = {
            "task": "anomaly",
            "data": dataset.name,
            "split": split,
            "weights": str(weights),
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
        if write and run_dir is not None:
            from convlens.medical.report import write_anomaly_report

            Run(run_dir).write_metrics(metrics)
            names = [dataset.classes[i] for i in part.labels.tolist()]  # (N,)
            scores = {k: v.numpy() for k, v in raws.items()}
            write_anomaly_report(run_dir, metrics, scores, names, part.images)
        return metrics

    @classmethod
    def recogniser(cls, run: str | Path, *, device: str) -> Recogniser:
        """An AnomalyRecogniser: a score in [0, 1] and the flag at the val threshold."""
        return AnomalyRecogniser(run, device=device)

    @staticmethod
    def summary(metrics: dict) -> str:
        """AUROC and the flags' sensitivity and specificity, one line."""

        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        return (
            f"{metrics['split']}: AUROC {fmt(metrics['auroc'])}  sensitivity "
            f"{fmt(metrics['sensitivity'])}  specificity {fmt(metrics['specificity'])}  "
            f"(normal {metrics['n_normal']}, anomalous {metrics['n_anomalous']})"
        )


class AnomalyRecogniser(Recogniser):
    """`predict(image)` -> {"score": [0, 1], "anomaly": bool, "threshold": 0.5}."""

    def __init__(self, run: str | Path, device: str = "cpu") -> None:
        super().__init__(run, device=device)
        self.calibration = _calibration(self.meta, self.weights)
        geom.check_square(*self.size, where=str(self.weights))

    def predict_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly scores (N,) in [0, 1] for preprocessed uint8 images (N, C, H, W)."""
        kw = score_settings(str(self.device))
        raw = scoring.raw_scores(self.model, images, self.meta, **kw)[self.meta["method"]]
        return scoring.to_unit(raw, self.calibration)

    def predict(self, image: ImageLike, top_k: int = 5) -> dict:
        """{"score", "anomaly", "threshold"} for one image; top_k is ignored."""
        return self._top(self.predict_tensor(self.preprocess(image)[None])[0], top_k)

    def predict_files(self, paths: list[str], top_k: int = 5, batch_size: int = 256) -> list[dict]:
        """One row per file: {"file", "score", "anomaly", "threshold"} or {"file", "error"}."""
        rows = super().predict_files(paths, top_k, batch_size)
        for row in rows:
            row.update(row.pop("predictions", {}))
        return rows

    def _top(self, score: torch.Tensor, k: int) -> dict:
        """One image's answer from its [0, 1] score (used by the base class's predict_files)."""
        return {"score": float(score), "anomaly": bool(score >= 0.5), "threshold": 0.5}


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
    """Where and how scores are computed: the same rule in finish, evaluate and predict."""
    from convlens.device import resolve_amp, resolve_device

    dev = resolve_device(device)
    return {"device": dev, "amp": resolve_amp("auto", dev), "channels_last": True}


def _calibration(meta: dict, weights: Path) -> dict:
    """The threshold and spread finish() saved, or a clear error for unfinished weights."""
    if "calibration" not in meta:
        raise ModelError(
            f"{weights}: this anomaly model has no calibrated threshold (its run stopped before "
            "training finished); use weights/best.safetensors of a finished run"
        )
    return meta["calibration"]
