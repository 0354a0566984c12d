"""The explanation sections of report.html: mistakes with Grad-CAM, filters, sharing, invariance.

Each function returns an HTML fragment; report.py puts them on the page. All are cheap (a few
backward passes, one figure each) except top-activating patches and invariance, which are
read from a previous `convlens explain` (RUN/explain/) instead of computed here.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch

from convlens.evaluation.report_html import img, img_file, note, table
from convlens.explain import figures

MISTAKES = 8  # how many of the most confident mistakes to show


class RunModel:
    """A run's best model and its metadata, the model loaded on first use."""

    def __init__(self, run_dir: Path) -> None:
        from convlens.runs.folder import resolve_weights
        from convlens.runs.weights import load_weights

        self.run_dir = run_dir
        self.meta = load_weights(resolve_weights(run_dir))[1]
        self._net = None

    @property
    def net(self) -> torch.nn.Module:
        if self._net is None:
            from convlens.models.loading import load_model

            self._net = load_model(self.run_dir)[0]
        return self._net

    @property
    def input_shape(self) -> tuple[int, int, int]:
        i = self.meta["input"]
        return int(i["channels"]), int(i["height"]), int(i["width"])

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> the float input the model was trained on."""
        from convlens.data.batches import normalize

        return normalize(images, self.meta["normalize"]["mean"], self.meta["normalize"]["std"])


def mistakes(model: RunModel, metrics: dict, split, probs) -> str:
    """The most confident wrong predictions, each with the heatmap of the class it chose."""
    from convlens.explain.gradcam import grad_cam, has_feature_map, saliency

    if split is None or probs is None or len(split) == 0:
        return note("predictions are not at hand: `convlens report RUN` draws this section")
    pred = probs.argmax(1)  # (N,)
    conf = probs.max(1).values  # (N,)
    wrong = (pred != split.labels).nonzero().flatten()
    if len(wrong) == 0:
        return note(f"no mistakes on the {metrics['split']} split")
    pick = wrong[conf[wrong].argsort(descending=True)[:MISTAKES]]
    images = split.images[pick]  # (M, C, H, W) uint8
    x = model.normalize(images)
    has_map = has_feature_map(model.net, x)
    if has_map:
        heat, how = grad_cam(model.net, x, pred[pick])[0], "Grad-CAM"
    else:  # an MLP has no feature map to weigh: gradient saliency instead
        heat, how = saliency(model.net, x, pred[pick]), "saliency"
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


def hierarchy(model: RunModel, split, explained_dir: Path | None) -> str:
    """First-layer filters, one test image's feature maps per stage, top-activating patches."""
    from convlens.explain.hierarchy import find_stages, first_conv, stage_outputs

    shape = model.input_shape
    conv = first_conv(model.net, shape)
    if conv is None:
        return note("this model has no convolutional layers: no filters or feature maps")
    parts = [
        "<p>The first layer's filters respond to edges, blobs and colours; each later stage "
        "combines the one before it over a wider window, towards parts and whole objects.</p>",
        "<h3>First-layer filters</h3>",
        img(figures.save(figures.filters_figure(conv[1].weight, conv[0])), "filters"),
    ]
    stages = find_stages(model.net, shape)
    if stages and split is not None and len(split):
        image = split.images[:1]  # (1, C, H, W)
        maps = stage_outputs(model.net, model.normalize(image), stages)
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


def sharing(model: RunModel) -> str:
    """Per conv layer: parameters as built, locally connected and fully connected."""
    from convlens.explain.sharing import parameter_sharing

    s = parameter_sharing(model.net, model.input_shape)
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
