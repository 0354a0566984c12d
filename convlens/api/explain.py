"""`convlens explain RUN [IMAGE...]`: every explanation of a trained model, PNGs + summary.json.

out/ (default RUN/explain/)
  summary.json            everything below as numbers, and the file name of each figure
  sharing.png             parameters per conv layer: shared, locally connected, fully connected
  filters.png             the first conv layer's filters
  featuremaps_<img>.png   each stage's most active channels for that image
  gradcam_<img>.png       image | Grad-CAM overlay | gradient saliency
  patches.png             per stage, the training patches its strongest channels like best
  invariance.png          accuracy vs shift and rotation, the run against an MLP (--invariance)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from convlens.api.train import train
from convlens.config import load_yaml, make_config
from convlens.data.batches import normalize
from convlens.errors import ConvlensError
from convlens.explain import figures
from convlens.explain.gradcam import find_layer, grad_cam, has_feature_map, peak, saliency
from convlens.explain.hierarchy import (
    find_stages,
    first_conv,
    stage_outputs,
    top_activating,
)
from convlens.explain.invariance import (
    ANGLES,
    bare_predictor,
    invariance_curves,
    sample_split,
)
from convlens.explain.sharing import parameter_sharing
from convlens.predict import Recogniser, expand_inputs
from convlens.runs.folder import Run
from convlens.tasks.classify import check_compatible
from convlens.training.data import load_run_data

SUMMARY = "summary.json"


def run_home(weights: Path) -> Path:
    """The run folder of a weights file, or (for a loose file) a folder named after the file."""
    run = Run.of_weights(weights)
    return run.path if run and run.is_run() else weights.parent / weights.stem


def explain_run(
    run: str | Path,
    images: Sequence[str] = (),
    *,
    out: str | Path | None = None,
    layer: str | None = None,
    invariance: bool = False,
    baseline: str | Path | None = None,
    data: str | None = None,
    max_shift: int = 4,
    angles: Sequence[float] = ANGLES,
    n_images: int = 2000,
) -> dict:
    """Write every figure for RUN into `out` and return the summary (also out/summary.json)."""
    rec = Recogniser(run)
    model, meta = rec.model, rec.meta
    if not rec.task.explains:  # every measure here reads the outputs as class scores
        raise ConvlensError(f"{rec.weights}: explain is for classify runs, not {meta.task} runs")
    home = run_home(rec.weights)
    out = Path(out) if out else home / "explain"
    ds = load_data(rec, data, home)
    shape = (rec.channels, *rec.size)
    prep = _normalizer(meta)
    if layer is not None:
        find_layer(model, layer)
    if images:  # read them all before drawing anything: a bad file stops here
        paths = expand_inputs(list(images))
        pictures = torch.stack([rec.preprocess(p) for p in paths])  # (N, C, H, W) uint8
        names = _unique([_safe(Path(p).stem) for p in paths])
    else:
        pictures, names = _one_per_class(ds, rec.classes)
    base = baseline_for(rec, ds, home, baseline, data) if invariance else None  # fails early
    out.mkdir(parents=True, exist_ok=True)

    summary: dict = {
        "run": str(run),
        "weights": str(rec.weights),
        "model": meta.model.name,
        "data": ds.name,
        "input": list(shape),
        "classes": rec.classes,
        "figures": {},
    }
    summary["sharing"] = parameter_sharing(model, shape)
    if summary["sharing"]["layers"]:
        _figure(summary, out, "sharing", figures.sharing_figure(summary["sharing"]))

    conv = first_conv(model, shape)
    stages = find_stages(model, shape)
    hierarchy: dict = {"first_conv": conv[0] if conv else None, "stages": []}
    hierarchy["stages"] = [{"name": s.name, "shape": list(s.shape)} for s in stages]
    if conv:
        fig = figures.filters_figure(conv[1].weight, conv[0])
        _figure(summary, out, "filters", fig)

    summary["images"] = explain_images(rec, pictures, names, stages, layer, out, summary)

    if stages:
        sample = sample_split(ds.train, n_images)
        top = top_activating(model, sample.images, prep, stages)
        _figure(summary, out, "patches", figures.patches_figure(top))
        for s in top:  # the numbers, without the pixels
            s["channels"] = [{k: c[k] for k in ("channel", "activations")} for c in s["channels"]]
        hierarchy["patches"] = top
    summary["hierarchy"] = hierarchy

    if invariance:
        summary["invariance"] = measure_invariance(
            rec, base, ds, max_shift=max_shift, angles=angles, n_images=n_images
        )
        _figure(summary, out, "invariance", figures.invariance_figure(summary["invariance"]))
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    summary["out"] = str(out)
    return summary


def explain_images(rec, pictures, names, stages, layer, out: Path, summary: dict) -> list[dict]:
    """Grad-CAM, saliency and feature maps for each picture (uint8 (N, C, H, W))."""
    model, prep = rec.model, _normalizer(rec.meta)
    x = prep(pictures)
    probs = rec.predict_tensor(pictures)[:, : len(rec.classes)]  # as predict's, no open-set score
    target = probs.argmax(1)
    cams = None  # an MLP has no feature map to weigh: saliency only
    if layer is not None or has_feature_map(model, x):
        cams = grad_cam(model, x, target, layer=layer)[0]
    sal = saliency(model, x, target)
    maps = stage_outputs(model, x, stages) if stages else []
    rows = []
    for i, name in enumerate(names):
        label = rec.classes[int(target[i])]
        caption = f"{name}: {label} ({float(probs[i, target[i]]):.2f})"
        cam = None if cams is None else cams[i]
        fig = figures.gradcam_figure(pictures[i], cam, sal[i], caption, layer or "last stage")
        row = {
            "name": name,
            "predicted": label,
            "probability": float(probs[i, target[i]]),
            "gradcam": _figure(summary, out, f"gradcam_{name}", fig),
            "gradcam_peak": None if cam is None else peak(cam[None])[0].tolist(),  # (row, col)
        }
        if stages:
            fig = figures.feature_maps_figure(pictures[i], stages, [m[i] for m in maps])
            row["feature_maps"] = _figure(summary, out, f"featuremaps_{name}", fig)
        rows.append(row)
    return rows


def baseline_for(rec, ds, home: Path, baseline=None, data: str | None = None):
    """(Recogniser, trained here?): `baseline`, or an mlp trained like the run (once, then kept)."""
    trained = baseline is None
    if trained:
        data = data or ds.name
        baseline = train_baseline(home, data, Run(home).config)
    base = Recogniser(baseline)
    if base.classes != rec.classes or (base.channels, base.size) != (rec.channels, rec.size):
        raise ConvlensError(f"baseline {baseline} was trained for other classes or image sizes")
    return base, trained


def measure_invariance(rec, baseline, ds, *, max_shift=4, angles=ANGLES, n_images=2000) -> dict:
    """Shift and rotation curves of the run and of its baseline on a sample of test images."""
    base, trained = baseline
    part = sample_split(ds.test if ds.test is not None else ds.val, n_images)
    result = {
        "split": "test" if ds.test is not None else "val",
        "n_images": len(part),
        "max_shift": max_shift,
        "angles": list(angles),
    }
    for key, who, where in (("model", rec, rec.weights), ("baseline", base, base.weights)):
        predict = bare_predictor(who.model, who.meta)
        curves = invariance_curves(predict, part, max_shift=max_shift, angles=angles)
        result[key] = {"name": who.meta.model.name, "weights": str(where), "curves": curves}
    result["baseline"]["trained_for_this"] = trained
    return result


def load_data(rec, data: str | None, home: Path):
    """The run's dataset (or `data`), checked against the model's classes and input."""
    run_dir = home if Run(home).is_run() else None
    ds = load_run_data(data, run_dir, meta=rec.meta)  # a photo run: its own crop
    check_compatible(rec.meta, ds, rec.weights)
    return ds


def _normalizer(meta: dict):
    mean, std = meta.normalize.mean, meta.normalize.std
    return lambda images: normalize(images, mean, std)  # uint8 (N, C, H, W) -> float32


def first_per_class(labels: torch.Tensor, n_classes: int, limit: int) -> list[int]:
    """The index of the first image of each class (in class order), up to `limit` of them."""
    picks = [int(i[0]) for c in range(n_classes) if len(i := (labels == c).nonzero())]
    return picks[:limit]


def _one_per_class(ds, classes: list[str], limit: int = 8) -> tuple[torch.Tensor, list[str]]:
    """The first test (or val) image of each class, up to `limit` classes."""
    part = ds.test if ds.test is not None else ds.val
    picks = first_per_class(part.labels, len(classes), limit)
    names = [f"test{i}_{_safe(classes[int(part.labels[i])])}" for i in picks]
    return part.images[picks], names


def _figure(summary: dict, out: Path, name: str, fig) -> str:
    """Save a figure as out/<name>.png and note it in the summary; return the file name."""
    file = f"{name}.png"
    figures.save(fig, out / file)
    summary["figures"][name] = file
    return file


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "image"


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def train_baseline(home: Path, data: str, config: Path | None) -> Path:
    """An `mlp` trained like the run (its config.yaml) into home/mlp-baseline, or the one there."""
    target = home / "mlp-baseline"
    if (target / "weights" / "best.safetensors").is_file():
        return target
    if target.exists():
        raise ConvlensError(
            f"{target} exists but holds no trained weights (an interrupted training?): "
            "remove it, or pass --baseline RUN"
        )
    settings = load_yaml(config) if config and config.is_file() else {}
    for key in ("model_args", "init", "pretrained", "resume", "transfer", "freeze_epochs"):
        settings.pop(key, None)
    settings.update(model="mlp", data=data, run=str(target))
    return train(make_config(None, settings))
