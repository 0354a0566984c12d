"""The `embed` task: train a face embedding (ArcFace or plain normalised softmax) on identities.

`convlens train --task embed --data FOLDER` (one subfolder per person). The registry model's
last layer gives `embedding_size` numbers, normalised to unit length; the loss compares them
with one learned centre per training identity. Validation draws seeded matched and mismatched
pairs from the validation images (the same identities, other images), scores them by cosine
similarity, and records the accuracy-maximising threshold in the weights metadata, so a weights
file alone can verify. After training: verification metrics on test-split pairs, closed-set
rank-1/5 against a five-image-per-identity gallery from train, a ROC figure and report.html.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.data import Dataset, Split
from convlens.data.photoset import streamed
from convlens.errors import ConfigError, TrainingError
from convlens.faces.align import ALIGNS, align_images
from convlens.faces.head import EmbeddingNet, embed_images, embedding_loss
from convlens.faces.metrics import (
    accuracy,
    per_identity,
    rank_k,
    sample_pairs,
    verification_metrics,
)
from convlens.faces.recogniser import FaceRecogniser
from convlens.runs.checks import MAX_CLASSES, MAX_EMBEDDING, Checker
from convlens.runs.meta import WeightsMeta
from convlens.tasks.base import Evaluation, LoadedRun, Task, top_predictions
from convlens.tasks.classify import single_label
from convlens.tasks.registry import register_task

VAL_PAIRS = 6000  # validation and test pairs, half matched (LFW View 2 has 6000)
GALLERY_PER_IDENTITY = 5  # train images enrolled per identity for the rank-k measure
PAIR_SEED = 0  # pairs are the same for every run, so runs compare on the same pairs


def pair_scores(emb: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(cosine scores, same) of the seeded pairs drawn from these embeddings and labels."""
    i, j, same = sample_pairs(labels.numpy(), VAL_PAIRS, PAIR_SEED)
    e = emb.numpy()
    return (e[i] * e[j]).sum(1), same


@register_task("embed")
class EmbedTask(Task):
    """Identities in, unit embeddings out; see the module docstring."""

    score = "val_auc"
    # fastnet's 0.75 peak lr learns face embeddings poorly (digits identities, 6 epochs: val AUC
    # 0.90 at lr 0.75, 0.9999 at 0.02)
    recipe = {"lr": 0.05}
    verification = True
    onnx_output = "embedding"
    recogniser = FaceRecogniser

    @property
    def margin(self) -> float:
        """ArcFace's angular margin m; 0 for plain (normalised) softmax."""
        return self.cfg.margin if self.cfg.embed_loss == "arcface" else 0.0

    def prepare(self, ds: Dataset) -> Dataset:
        """One identity per image, and at least two of them; train and val aligned as set."""
        single_label(ds)
        self.unaligned = ds  # evaluate aligns what it embeds, as the weights' `align` says
        if self.cfg.align == "none":
            return ds
        if streamed(ds.train):
            raise ConfigError("setting 'align': eyes needs the face crops in memory (a folder "
                              "of images up to 64 px, or --image-size 64)")  # fmt: skip
        train, n = align_images(ds.train.images, self.cfg.align)
        val, m = align_images(ds.val.images, self.cfg.align)
        note = (f"align {self.cfg.align}: {n} of {len(train)} train and {m} of {len(val)} val "
                "faces aligned (the others' eyes were not found: left as they are)")  # fmt: skip
        return replace(ds, train=replace(ds.train, images=train),
                       val=replace(ds.val, images=val), notes=[*ds.notes, note])  # fmt: skip

    def evaluation_data(self, ds: Dataset) -> Dataset:
        """The dataset before alignment: evaluate aligns the images it embeds."""
        return getattr(self, "unaligned", ds)

    def outputs(self, ds: Dataset) -> int:
        """The backbone's last layer gives the embedding."""
        return self.cfg.embedding_size

    def meta(self, ds: Dataset) -> dict:
        """What loading needs (identities, embedding size) and how it was trained."""
        return {
            "identities": ds.num_classes,
            "embedding_size": self.cfg.embedding_size,
            "embed_loss": self.cfg.embed_loss,
            "margin": self.margin,
            "scale": self.cfg.scale,
            "tta": "none",  # embeddings are compared as they are
            "align": self.cfg.align,  # aligned faces (issue 19): every face tool applies it
        }

    @classmethod
    def wrap(cls, model: nn.Module, meta: dict) -> nn.Module:
        """The backbone inside an EmbeddingNet holding the identity centres."""
        return EmbeddingNet(model, meta["identities"], meta["embedding_size"])

    def loss(self, model: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """ArcFace (or, with margin 0, normalised softmax) on unit embeddings `out` (B, D).

        No label smoothing: ArcFace's recipe has none, and both losses are kept alike.
        """
        return embedding_loss(model, out, target, self.cfg.scale, self.margin)

    def validate(self, model: nn.Module, split: Split, meta: dict, **kw: Any) -> dict:
        """{"val_loss", "val_auc"} on validation pairs; sets meta["threshold"] from them.

        The training loop saves `meta` with this epoch's weights right after, so each weights
        file carries the threshold chosen on its own validation pairs.
        """
        emb = embed_images(model, split.images, **_norm(meta), **kw)
        if not torch.isfinite(emb).all():
            raise TrainingError(
                "validation embeddings are not finite (the weights diverged); the last good "
                "epoch is in the run's weights; try a lower --lr"
            )
        scores, same = pair_scores(emb, split.labels)
        found = verification_metrics(scores, same)
        meta["threshold"] = found["best_threshold"]
        meta["val_verify_acc"] = found["best_accuracy"]
        with torch.no_grad():
            loss = embedding_loss(
                model, emb.to(model.centres.device), split.labels.to(model.centres.device),
                meta["scale"], meta["margin"],
            ).item()  # fmt: skip
        return {"val_loss": loss, "val_auc": found["auc"]}

    @classmethod
    def check_meta(cls, meta: WeightsMeta, check: Checker) -> None:
        """Identities (one per class), the embedding's length, the scale and the threshold."""
        extras = meta.extras
        n = check.integer(extras.get("identities"), 1, MAX_CLASSES, "identities")
        if n != len(meta.classes):
            check.fail("identities", f"is {n}, but 'classes' holds {len(meta.classes)} names")
        d = check.integer(extras.get("embedding_size"), 1, MAX_EMBEDDING, "embedding_size")
        if meta.outputs is not None and meta.outputs != d:
            check.fail("outputs", f"is {meta.outputs}, but 'embedding_size' is {d}")
        check.number(extras.get("scale"), "scale", positive=True)
        check.number(meta.decisions.threshold, "threshold")
        if extras.get("align", "none") not in ALIGNS:  # absent: weights from before alignment
            check.fail("align", f"must be one of {', '.join(ALIGNS)}")

    @classmethod
    def evaluate(cls, run: LoadedRun, dataset: Dataset, split: str, write: bool) -> Evaluation:
        """Verification on `split` pairs at the validation threshold, and closed-set rank-k.
        details: "scores" and "same" of the evaluated pairs, for the ROC figure."""
        meta, device, model = run.meta, run.device, run.net
        part = dataset.split(split)
        images, _ = align_images(part.images, meta.extras.get("align", "none"))
        emb = embed_images(model, images, **_norm(meta), device=device)
        scores, same = pair_scores(emb, part.labels)
        threshold = float(meta.decisions.threshold)
        metrics = {"task": cls.name, "data": dataset.name, "split": split,
                   "weights": str(run.weights), "n": len(part)}  # fmt: skip
        metrics.update(verification_metrics(scores, same))
        metrics["threshold"] = threshold  # chosen on validation pairs, applied here unchanged
        metrics["accuracy"] = accuracy(scores, same, threshold)
        metrics["embedding_size"] = meta["embedding_size"]
        metrics.update(_closed_set(model, meta, dataset.train, emb, part.labels, device))
        if write and run.folder is not None:
            from convlens.faces.figures import write_outputs  # matplotlib, sklearn: late

            write_outputs(run.folder, metrics, scores, same)
        return Evaluation(metrics, {"scores": scores, "same": same})

    @classmethod
    def scores(cls, run: LoadedRun, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, K) over the training identities: softmax of scale x cosine to each
        identity's centre."""
        emb = embed_images(run.net, images, **_norm(run.meta), device=run.device)
        with torch.no_grad():
            cosines = run.net.cosines(emb.to(run.device))
            return (run.meta["scale"] * cosines).softmax(1).cpu()

    @classmethod
    def answer(cls, scores: torch.Tensor, meta: WeightsMeta, top_k: int) -> dict:
        """{"predictions": the top-k training identities {"label", "index", "score"}}."""
        return {"predictions": top_predictions(scores, meta.classes, top_k)}

    @classmethod
    def graph_width(cls, meta: WeightsMeta) -> int:
        """An exported graph gives the embedding."""
        return meta["embedding_size"]

    @classmethod
    def shown_threshold(cls, meta: WeightsMeta) -> float | None:
        """Two faces are the same person at a cosine similarity at least this."""
        return meta.decisions.threshold

    @staticmethod
    def summary(metrics: dict) -> str:
        """One line of the final metrics for the console."""
        return (
            f"{metrics['split']} pairs: AUC {metrics['auc']:.4f}  EER {metrics['eer']:.4f}  "
            f"TAR@FAR=1e-2 {metrics['tar@far=0.01']:.4f}  accuracy {metrics['accuracy']:.4f} at "
            f"threshold {metrics['threshold']:.3f}  rank-1 {metrics['rank1']:.4f}  "
            f"(pairs={metrics['pairs']})"
        )


def _norm(meta: dict) -> dict:
    return {"mean": meta["normalize"]["mean"], "std": meta["normalize"]["std"]}


def _closed_set(model, meta, train: Split, emb, labels, device) -> dict:
    """rank-1/5 of `emb` against GALLERY_PER_IDENTITY train images of each identity."""
    y = train.labels.numpy()
    pick = per_identity(y, GALLERY_PER_IDENTITY, PAIR_SEED)
    images, _ = align_images(train.images[pick], meta.extras.get("align", "none"))
    gallery = embed_images(model, images, **_norm(meta), device=device)
    sim = emb.numpy() @ gallery.numpy().T  # (P, G) cosines
    return rank_k(sim, labels.numpy(), y[pick])
