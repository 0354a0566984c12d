"""`convlens explain RUN --interactive`: one self-contained page to click through the network.

`serve` shows the same page for an uploaded image (`page_maker`).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from convlens import reference
from convlens.api.explain import first_per_class, load_data, run_home
from convlens.data.batches import normalize
from convlens.errors import ConvlensError
from convlens.explain import figures
from convlens.explain.drag import shifted_views
from convlens.explain.gradcam import grad_cam
from convlens.explain.hierarchy import find_stages, top_activating
from convlens.explain.invariance import sample_split
from convlens.explain.sharing import parameter_sharing
from convlens.explain.torch_trace import run_torch
from convlens.explain.walkthrough import (
    image_layers,
    picture_uri,
    png_uri,
    run_reference,
    walkthrough,
)
from convlens.predict import Recogniser
from convlens.report.explainer import page, write_page

PAGE = "explainer.html"  # under RUN/explain/ unless --out names the file
CHOICES = 8  # stored test images the page lets one choose among, one per class first
CHOICE_FLOATS = 50_000  # float32 values embedded per chosen image (the first layers' clicks)
CHOICE_BYTES = 2_000_000  # bytes the other images may add to the page


class Explainer:
    """A run's model on the engine that computes the page's numbers, and its page's data."""

    def __init__(self, run: str | Path) -> None:
        self.rec = rec = Recogniser(run)
        if not rec.task.explains:  # the page reads the last layer's outputs as class scores
            raise ConvlensError(
                f"{rec.weights}: explain is for classify runs, not {rec.meta.task} runs"
            )
        if rec.meta.model.name in reference.MODELS:  # the NumPy engine: Python one can read
            self.engine, self.trace = (
                "the NumPy reference engine (convlens.reference)",
                run_reference,
            )
            self.net = Recogniser(run, engine="numpy").model
        else:
            self.engine, self.trace, self.net = "torch", run_torch, rec.model.eval()

    def prep(self, image: np.ndarray) -> np.ndarray:
        """uint8 (C, H, W) -> normalised float32, as in training."""
        norm = self.rec.meta.normalize
        return reference.normalize(image[None], norm.mean, norm.std)[0]

    def patches(self, ds, n_images: int = 500) -> str | None:
        """The training patches that excite each stage's strongest channels (the hierarchy), as
        `convlens explain` draws them: a PNG data: URI, None for a model without stages."""
        rec = self.rec
        stages = find_stages(rec.model, (rec.channels, *rec.size))
        if not stages:
            return None
        norm = rec.meta.normalize

        def prep(images: torch.Tensor) -> torch.Tensor:  # uint8 (N, C, H, W) -> float32
            return normalize(images, norm.mean, norm.std)

        top = top_activating(rec.model, sample_split(ds.train, n_images).images, prep, stages)
        png = figures.save(figures.patches_figure(top))
        return "data:image/png;base64," + base64.b64encode(png).decode()

    def view(self, picture: np.ndarray, caption: str) -> dict:
        """Another image's maps, values and prediction (the weights are the page's own)."""
        steps, logits = self.trace(self.net, self.prep(picture))
        probs = reference.softmax(logits.astype(np.float64))
        return {
            "caption": caption,
            "picture": picture_uri(picture),
            "layers": image_layers(steps, CHOICE_FLOATS),
            "logits": logits.astype(np.float64).tolist(),
            "probs": probs.tolist(),
            "gradcam": class_cams(self.rec, picture, self.prep(picture), probs),
        }

    def choices(self, ds, skip: int | None) -> list[dict]:
        """The views of up to CHOICES stored test images (one per class, then in order) but
        image `skip`, while they fit in CHOICE_BYTES."""
        part = ds.test if ds.test is not None else ds.val
        picks = first_per_class(part.labels, len(self.rec.classes), CHOICES)
        picks += [i for i in range(len(part.labels)) if i not in picks]
        views, spent = [], 0
        for i in [i for i in picks if i != skip][: CHOICES - (skip is not None)]:
            view = self.view(*stored_image(self.rec, ds, i))
            spent += len(json.dumps(view))
            if spent > CHOICE_BYTES:
                break
            views.append(view)
        return views

    def data(self, picture: np.ndarray, caption: str) -> dict:
        """Everything the page shows for a uint8 (C, H, W) image at the model's input size."""
        rec, meta = self.rec, self.rec.meta
        steps, logits = self.trace(self.net, self.prep(picture))
        records = walkthrough(steps, picture)
        shape = (rec.channels, *rec.size)
        sharing = {row["layer"]: row for row in parameter_sharing(rec.model, shape)["layers"]}
        for r in records:
            if r["name"] in sharing:
                r["sharing"] = sharing[r["name"]]
        probs = reference.softmax(logits.astype(np.float64))
        return {
            "model": meta.model.name,
            "weights": str(rec.weights),
            "engine": self.engine,
            "classes": rec.classes,
            "caption": caption,
            "layers": records,
            "logits": logits.astype(np.float64).tolist(),  # (K,): what the softmax takes
            "probs": probs.tolist(),
            "gradcam": class_cams(rec, picture, self.prep(picture), probs),
            "calibration": meta.calibration,
            "tta": meta.tta,
            "shifts": shifted_views(self.trace, self.net, picture, self.prep, records),
            "choices": [],  # other images' views (explain_page fills it from the test images)
        }


def explain_page(
    run: str | Path, image: str | Path | None = None, out: str | Path | None = None
) -> Path:
    """Write the interactive explainer page of RUN for `image` (default: a test image)."""
    ex = Explainer(run)
    home = run_home(ex.rec.weights)
    try:
        ds, missing = load_data(ex.rec, None, home), None
    except ConvlensError as e:  # the data moved: the page needs only an image
        ds, missing = None, e
    if image is None and ds is None:
        raise ConvlensError(f"{home}: no test images to show ({missing}); pass --image FILE")
    picture, caption = pick_image(ex.rec, image, ds)  # uint8 (C, H, W)
    data = ex.data(picture, caption)
    data["patches"] = None if ds is None else ex.patches(ds)
    if ds is not None:  # the stored test images to choose among, the page's own first
        data["choices"] = ex.choices(ds, skip=0 if image is None else None)
    path = Path(out) if out else home / "explain" / PAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_page(data, path)


def page_maker(run: str | Path) -> Callable[[np.ndarray, str], str]:
    """page(image uint8 (C, H, W), caption) -> the page's HTML; the run is loaded on first use.

    One page at a time: the NumPy engine's layers keep their last input (for backward).
    """
    lock, made = threading.Lock(), []

    def make(image: np.ndarray, caption: str) -> str:
        with lock:
            if not made:
                made.append(Explainer(run))
            return page(made[0].data(image, caption))

    return make


def class_cams(rec: Recogniser, image: np.ndarray, x: np.ndarray, probs, limit: int = 20):
    """{class index: Grad-CAM overlay PNG URI} for the `limit` likeliest classes ({}: no map)."""
    classes = np.argsort(-probs)[:limit]
    xs = torch.from_numpy(x)[None].expand(len(classes), *x.shape)
    try:
        cams, _ = grad_cam(rec.model, xs, torch.from_numpy(classes))  # (N, H, W) in [0, 1]
    except ConvlensError:  # e.g. an MLP has no feature map
        return {}
    picture = torch.from_numpy(image)
    pairs = zip(classes, cams, strict=True)
    return {int(k): png_uri(figures.overlay(picture, cam)) for k, cam in pairs}


def pick_image(rec: Recogniser, image, ds) -> tuple[np.ndarray, str]:
    """(uint8 (C, H, W), caption): `image` preprocessed, or the first test image of `ds`."""
    if image is not None:
        return rec.preprocess(image).numpy(), Path(image).name
    return stored_image(rec, ds, 0)


def stored_image(rec: Recogniser, ds, i: int) -> tuple[np.ndarray, str]:
    """(uint8 (C, H, W), caption) of test image i of `ds` (val where it has no test split)."""
    split, part = ("test", ds.test) if ds.test is not None else ("val", ds.val)
    label = rec.classes[int(part.labels[i])]
    return part.images[i].numpy(), f"{split} image {i} of {ds.name} (labelled {label})"
