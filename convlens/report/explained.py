"""The explanation sections of a classifier's report.html: mistakes with Grad-CAM, filters and
feature maps, parameter sharing, translation invariance (convlens.explain's measures).

Each function returns an HTML fragment for the model the caller holds (convlens.report.classify
puts them on the page). All are cheap (a few backward passes, one figure each) except
top-activating patches and invariance, which are read from a previous `convlens explain`
(RUN/explain/) instead of computed here.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch

from convlens.data.batches import normalize
from convlens.explain import figures
from convlens.explain.gradcam import grad_cam, has_feature_map, saliency
from convlens.explain.hierarchy import find_stages, first_conv, stage_outputs
from convlens.explain.sharing import parameter_sharing
from convlens.report.html import img, img_file, note, table
from convlens.tasks.base import LoadedRun

MISTAKES = 8  # how many of the most confident mistakes to show


def _inputs(run: LoadedRun, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the float input the model was trained on, where the model is."""
    norm = run.meta.normalize
    return normalize(images, norm.mean, norm.std).to(run.device)


def mistakes(run: LoadedRun, metrics: dict, split, probs) -> str:
    """The most confident wrong predictions, each with the heatmap of the class it chose."""
    if split is None or probs is None or len(split) == 0:
        return note("predictions are not at hand: `convlens report RUN` draws this section")
    pred = probs.argmax(1)  # (N,)
    conf = probs.max(1).values  # (N,)
    wrong = (pred != split.labels).nonzero().flatten()
    if len(wrong) == 0:
        return note(f"no mistakes on the {metrics['split']} split")
    pick = wrong[conf[wrong].argsort(descending=True)[:MISTAKES]]
    images = split.images[pick]  # (M, C, H, W) uint8
    x, net, target = _inputs(run, images), run.net, pred[pick].to(run.device)
    has_map = has_feature_map(net, x)
    if has_map:
        heat, how = grad_cam(net, x, target)[0].cpu(), "Grad-CAM"
    else:  # an MLP has no feature map to weigh: gradient saliency instead
        heat, how = saliency(net, x, target).cpu(), "saliency"
    classes = [c["class"] for c in metrics["per_class"]]
    scale = max(1, 112 // max(images.shape[-2:]))
    tiles = []
    for k, n in enumerate(pick.tolist()):
        shown = figures.overlay(images[k], heat[k]) if has_map else figures.heat_rgb(heat[k])
        said, true = classes[int(pred[n])], classes[int(split.labels[n])]
        tiles.append(
            f'<figure class="mistake"><div class="pair">'
            f"{img(figures.png_image(figures.to_rgb(images[k]), scale), 'image')}"
            f"{img(figures.png_image(shown, scale), how)}</div><figcaption>predicted "
            f"<b>{html.escape(said)}</b> ({100 * float(conf[n]):.1f}%)<br>"
            f"<span>true: {html.escape(true)}</span></figcaption></figure>"
        )
    lead = (
        f"<p>{len(wrong):,} of {len(split):,} {metrics['split']} images are misclassified. "
        f"Here are the {len(pick)} the model was surest of, each beside the {how} map of the "
        "class it predicted (warm: the evidence it used for that class).</p>"
    )
    return lead + f'<div class="mistakes">{"".join(tiles)}</div>'


def hierarchy(run: LoadedRun, split, explained_dir: Path | None) -> str:
    """First-layer filters, one test image's feature maps per stage, top-activating patches."""
    shape = run.meta.input.shape
    conv = first_conv(run.net, shape)
    if conv is None:
        return note("this model has no convolutional layers: no filters or feature maps")
    parts = [
        "<p>The first layer's filters respond to edges, blobs and colours; each later stage "
        "combines the one before it over a wider window, towards parts and whole objects.</p>",
        "<h3>First-layer filters</h3>",
        img(figures.save(figures.filters_figure(conv[1].weight.cpu(), conv[0])), "filters"),
    ]
    stages = find_stages(run.net, shape)
    if stages and split is not None and len(split):
        image = split.images[:1]  # (1, C, H, W)
        maps = [m.cpu() for m in stage_outputs(run.net, _inputs(run, image), stages)]
        fig = figures.feature_maps_figure(image[0], stages, [m[0] for m in maps])
        parts += ["<h3>Feature maps of a test image, stage by stage</h3>",
                  img(figures.save(fig), "feature maps")]  # fmt: skip
    patches = explained_dir / "patches.png" if explained_dir else None
    if patches and patches.is_file():
        parts += ["<h3>Training patches that excite each stage's strongest channels</h3>",
                  img_file(patches, "top-activating patches")]  # fmt: skip
    else:
        parts.append(note("top-activating patches: run `convlens explain RUN`"))
    return "".join(parts)


def sharing(run: LoadedRun) -> str:
    """Per conv layer: parameters as built, locally connected and fully connected."""
    s = parameter_sharing(run.net, run.meta.input.shape)
    if not s["layers"]:
        return note(f"no convolutional layers: all {s['total']:,} parameters are unshared")
    rows = [
        f"<tr><td>{html.escape(r['layer'])}</td><td>{_volume(r['in'])}</td>"
        f"<td>{_volume(r['out'])}</td><td>{'&times;'.join(map(str, r['kernel']))}</td>"
        f"<td>{r['conv']:,}</td><td>{r['locally_connected']:,}</td>"
        f"<td>{r['fully_connected']:,}</td><td><b>{_times(r['ratio'])}</b></td></tr>"
        for r in s["layers"]
    ]
    ratio = s["fully_connected_total"] / s["total"]
    rows.append(
        f'<tr class="total"><td>whole model</td><td></td><td></td><td></td><td>{s["total"]:,}</td>'
        f"<td>{s['locally_connected_total']:,}</td><td>{s['fully_connected_total']:,}</td>"
        f"<td><b>{_times(ratio)}</b></td></tr>"
    )
    lead = (
        "<p>A convolution applies one small bank of filters at every position. This model has "
        f"<b>{s['total']:,}</b> parameters; with each convolution replaced by a fully connected "
        "layer between the same input and output volumes it would need "
        f"<b>{s['fully_connected_total']:,}</b> ({_times(ratio)} as many). <i>Locally "
        "connected</i> keeps each filter's window but gives every position its own weights: "
        "the saving from sharing alone. Other layers (fully connected, batch norm) count as "
        "they are.</p>"
    )
    head = ["layer", "input", "output", "kernel", "conv", "locally connected",
            "fully connected", "FC / conv"]  # fmt: skip
    return f'{lead}<div class="scroll">{table(head, rows)}</div>'


def invariance(explained: dict | None) -> str:
    """Accuracy against shift and rotation, the run against its MLP, from `convlens explain`."""
    inv = (explained or {}).get("invariance")
    if not inv:
        return note(
            "not measured yet: `convlens explain RUN --invariance` trains an MLP with the same "
            "budget and compares the two on shifted and rotated test images"
        )
    a, b = inv["model"], inv["baseline"]
    sa, sb = a["curves"]["shift"], b["curves"]["shift"]
    rows = [
        f"<tr><td>{px} px</td><td>{100 * x:.1f}%</td><td>{100 * y:.1f}%</td>"
        f'<td class="{"up" if x >= y else "down"}">{100 * (x - y):+.1f}</td></tr>'
        for px, x, y in zip(sa["pixels"], sa["accuracy"], sb["accuracy"], strict=True)
    ]
    name_a, name_b = html.escape(a["name"]), html.escape(b["name"])
    how = (
        "trained on the same data with the same settings and budget"
        if b.get("trained_for_this")
        else f"given as the baseline ({html.escape(b['weights'])})"
    )
    lead = (
        f"<p>Accuracy on {inv['n_images']:,} {html.escape(inv['split'])} images moved "
        f"0&ndash;{inv['max_shift']} pixels up, down, left and right (zero fill) or rotated, "
        f"for this {name_a} and for an {name_b} {how}; both bare, without test-time "
        "augmentation. Solid: accuracy; dashed: mean probability of the true class.</p>"
    )
    plot = img(figures.save(figures.invariance_figure(inv)), "invariance curves")
    shifts = table(["shift", name_a, name_b, "difference"], rows, cls="grid narrow")
    return f'{lead}<div class="split">{plot}{shifts}</div>'


def _volume(shape: list[int]) -> str:
    return "&times;".join(map(str, shape))


def _times(ratio: float) -> str:
    return f"{ratio:,.0f}&times;" if ratio >= 10 else f"{ratio:.2g}&times;"
