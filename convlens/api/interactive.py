"""`convlens explain RUN --interactive`: one self-contained page to click through the network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from convlens import reference
from convlens.api.explain import load_data, run_home
from convlens.errors import ConvlensError
from convlens.explain.drag import shifted_views
from convlens.explain.figures import overlay
from convlens.explain.gradcam import grad_cam
from convlens.explain.sharing import parameter_sharing
from convlens.explain.walkthrough import png_uri, run_reference, run_torch, walkthrough
from convlens.predict import Recogniser
from convlens.report.explainer import write_page

PAGE = "explainer.html"  # under RUN/explain/ unless --out names the file


def explain_page(
    run: str | Path, image: str | Path | None = None, out: str | Path | None = None
) -> Path:
    """Write the interactive explainer page of RUN for `image` (default: a test image)."""
    rec = Recogniser(run)
    meta = rec.meta
    if not rec.task.explains:  # the page reads the last layer's outputs as class scores
        raise ConvlensError(f"{rec.weights}: explain is for classify runs, not {meta.task} runs")
    home = run_home(rec.weights)
    picture, caption = pick_image(rec, image, home)  # uint8 (C, H, W)
    shape = (rec.channels, *rec.size)
    if meta.model.name in reference.MODELS:  # numbers from the NumPy engine, readable Python
        engine, trace = "the NumPy reference engine (convlens.reference)", run_reference
        net = Recogniser(run, engine="numpy").model
    else:
        engine, trace, net = "torch", run_torch, rec.model.eval()

    def prep(image: np.ndarray) -> np.ndarray:  # uint8 (C, H, W) -> float32, as in training
        return reference.normalize(image[None], meta.normalize.mean, meta.normalize.std)[0]

    steps, logits = trace(net, prep(picture))
    records = walkthrough(steps, picture)
    shifts = shifted_views(trace, net, picture, prep, records)
    sharing = {row["layer"]: row for row in parameter_sharing(rec.model, shape)["layers"]}
    for r in records:
        if r["name"] in sharing:
            r["sharing"] = sharing[r["name"]]
    probs = reference.softmax(logits.astype(np.float64))
    data = {
        "model": meta.model.name,
        "weights": str(rec.weights),
        "engine": engine,
        "classes": rec.classes,
        "caption": caption,
        "layers": records,
        "logits": logits.astype(np.float64).tolist(),  # (K,): what the softmax takes
        "probs": probs.tolist(),
        "gradcam": class_cams(rec, picture, prep(picture), probs),
        "calibration": meta.calibration,
        "tta": meta.tta,
        "shifts": shifts,
    }
    path = Path(out) if out else home / "explain" / PAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_page(data, path)
    return path


def class_cams(rec: Recogniser, image: np.ndarray, x: np.ndarray, probs, limit: int = 20):
    """{class index: Grad-CAM overlay PNG URI} for the `limit` likeliest classes ({}: no map)."""
    classes = np.argsort(-probs)[:limit]
    xs = torch.from_numpy(x)[None].expand(len(classes), *x.shape)
    try:
        cams, _ = grad_cam(rec.model, xs, torch.from_numpy(classes))  # (N, H, W) in [0, 1]
    except ConvlensError:  # e.g. an MLP has no feature map
        return {}
    picture = torch.from_numpy(image)
    return {int(k): png_uri(overlay(picture, cam)) for k, cam in zip(classes, cams, strict=True)}


def pick_image(rec: Recogniser, image, home: Path) -> tuple[np.ndarray, str]:
    """(uint8 (C, H, W), caption): `image` preprocessed, or the run's first test image."""
    if image is not None:
        return rec.preprocess(image).numpy(), Path(image).name
    try:
        ds = load_data(rec, None, home)
    except ConvlensError as e:
        raise ConvlensError(f"{home}: no test images to show ({e}); pass --image FILE") from None
    split, part = ("test", ds.test) if ds.test is not None else ("val", ds.val)
    label = rec.classes[int(part.labels[0])]
    return part.images[0].numpy(), f"{split} image 0 of {ds.name} (labelled {label})"
