"""The explain figures (matplotlib, imported when used): one function per figure, PNG out."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from convlens.evaluation.plots import plain

CNN_COLOUR, BASE_COLOUR = "#2563eb", "#ea580c"  # blue for the run, orange for its baseline
HEAT = "turbo"  # Grad-CAM and saliency colour map
RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "figure.dpi": 110,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.08,
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(*args, **kwargs):
    """plt.subplots under convlens's figure style."""
    plt = _plt()
    with plt.rc_context(RC):
        return plt.subplots(*args, **kwargs)


def save(fig, path: Path | None = None) -> bytes:
    """Write the figure as PNG to `path` (if given) and return the PNG bytes."""
    plt = _plt()
    buf = io.BytesIO()
    with plt.rc_context(RC):
        fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """uint8 (C, H, W) with C = 1 or 3 -> float (H, W, 3) in [0, 1]."""
    x = image.detach().cpu().float().numpy() / 255
    if x.shape[0] != 3:
        x = np.repeat(x[:1], 3, axis=0)
    return x.transpose(1, 2, 0)


def heat_rgb(heat: torch.Tensor) -> np.ndarray:
    """A map (H, W) in [0, 1] through the colour map: float (H, W, 3)."""
    from matplotlib import colormaps

    return colormaps[HEAT](heat.detach().cpu().numpy())[..., :3]


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """The image in grey with the coloured heatmap blended over it: uint8 (H, W, 3)."""
    grey = to_rgb(image).mean(2, keepdims=True)  # (H, W, 1): colour belongs to the map
    out = grey * (1 - alpha) + heat_rgb(heat) * alpha
    return (out * 255).round().astype(np.uint8)


def png_image(pixels: np.ndarray, scale: int = 1) -> bytes:
    """uint8 (H, W, 3) (or float in [0, 1]) as PNG bytes, enlarged `scale` times, nearest."""
    from PIL import Image

    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(pixels)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _show(ax, pixels, title: str = "") -> None:
    ax.imshow(pixels, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(plain(title))  # class and layer names, drawn as they are


def gradcam_figure(image, cam, sal, caption: str, layer: str):
    """Image | Grad-CAM overlay | saliency, side by side."""
    fig, axes = new_figure(1, 3, figsize=(7.2, 2.6))
    _show(axes[0], to_rgb(image), caption)
    if cam is None:
        _show(axes[1], np.ones((2, 2, 3)), "no conv map: no Grad-CAM")
    else:
        _show(axes[1], overlay(image, cam), f"Grad-CAM ({layer})")
    _show(axes[2], heat_rgb(sal), "gradient saliency")
    fig.tight_layout()
    return fig


def filter_tiles(weight: torch.Tensor) -> list[np.ndarray]:
    """One (kh, kw, 3) float image per filter of a conv weight (out, in, kh, kw).

    RGB filters are shown in colour; others as the mean over input channels, in grey. Each filter
    is scaled to its own range: mid-grey is 0 only when the filter is balanced.
    """
    w = weight.detach().cpu().float()
    w = w if w.shape[1] == 3 else w.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    lo = w.flatten(1).amin(1)[:, None, None, None]
    hi = w.flatten(1).amax(1)[:, None, None, None]
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    return [t.permute(1, 2, 0).numpy() for t in w]


def montage(tiles: list[np.ndarray], cols: int, size: tuple[int, int], gap: int = 2) -> np.ndarray:
    """Float (h, w, 3) tiles, each enlarged (nearest) to `size`, on a white grid: (H', W', 3)."""
    th, tw = size
    rows = -(-len(tiles) // cols)
    out = np.ones((rows * (th + gap) - gap, cols * (tw + gap) - gap, 3))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        ys = np.arange(th) * tile.shape[0] // th  # nearest source row for each output row
        xs = np.arange(tw) * tile.shape[1] // tw
        out[r * (th + gap) : r * (th + gap) + th, c * (tw + gap) : c * (tw + gap) + tw] = tile[ys][
            :, xs
        ]
    return out


def _tile_size(h: int, w: int, least: int = 40) -> tuple[int, int]:
    k = max(1, -(-least // max(h, w)))  # small images are enlarged by a whole factor
    return h * k, w * k


def _bare(ax, pixels: np.ndarray, title: str = "") -> None:
    ax.imshow(pixels, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(plain(title), fontsize=8)


def filters_figure(weight: torch.Tensor, name: str, limit: int = 64):
    """The first layer's filters as one grid."""
    tiles = filter_tiles(weight)[:limit]
    cols = min(16, len(tiles))
    rows = -(-len(tiles) // cols)
    kh, kw = weight.shape[-2:]
    grid = montage(tiles, cols, _tile_size(kh, kw, 24), gap=3)
    fig, ax = new_figure(figsize=(0.5 * cols + 0.3, 0.5 * rows + 0.45))
    _bare(ax, grid, f"{name}: {weight.shape[0]} filters of {weight.shape[1]}x{kh}x{kw}")
    return fig


def _map_rgb(fmap: torch.Tensor) -> np.ndarray:
    """One channel (h, w) through viridis, scaled to its own range: float (h, w, 3)."""
    from matplotlib import colormaps

    m = fmap.detach().cpu().float()
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    return colormaps["viridis"](m.numpy())[..., :3]


def feature_maps_figure(image, stages, outputs, per_stage: int = 8):
    """One row per stage: the input, then the stage's most active channels for this image."""
    size = _tile_size(*image.shape[-2:])
    fig, axes = new_figure(len(stages), 1, figsize=(1.0 * (per_stage + 1) + 1.0,
                                                    1.15 * len(stages) + 0.1))  # fmt: skip
    for ax, stage, out in zip(np.atleast_1d(axes), stages, outputs, strict=True):  # (C, h, w)
        order = out.flatten(1).mean(1).argsort(descending=True)[:per_stage].tolist()
        tiles = [to_rgb(image)] + [_map_rgb(out[k]) for k in order]
        _bare(ax, montage(tiles, len(tiles), size, gap=max(2, size[1] // 12)))
        step = size[1] + max(2, size[1] // 12)
        for i, label in enumerate(["input"] + [f"ch {k}" for k in order]):
            ax.text(i * step + size[1] / 2, -2, label, ha="center", va="bottom", fontsize=7)
        c, h, w = out.shape
        ax.text(-6, size[0] / 2, f"{plain(stage.name)}\n{c}x{h}x{w}", ha="right", va="center",
                fontsize=7)  # fmt: skip
    fig.tight_layout(h_pad=1.2)
    return fig


def patches_figure(top: list[dict], per_row: int = 3):
    """One panel per stage: its strongest channels (rows) and the patches exciting each most."""
    cols = min(per_row, len(top))
    rows = -(-len(top) // cols)
    channels = max(len(s["channels"]) for s in top)
    per_channel = max(len(c["patches"]) for s in top for c in s["channels"])
    fig, axes = new_figure(rows, cols, figsize=(cols * (0.6 * per_channel + 0.5),
                                                rows * (0.6 * channels + 0.55)))  # fmt: skip
    axes = np.atleast_1d(axes).ravel()
    for ax, stage in zip(axes, top, strict=False):
        first = stage["channels"][0]["patches"][0]
        size = _tile_size(*first.shape[-2:], least=36)
        gap = max(2, size[0] // 10)
        tiles, labels = [], []
        for ch in stage["channels"]:
            row = [to_rgb(p) for p in ch["patches"]]
            tiles += row + [np.ones_like(row[0])] * (per_channel - len(row))
            labels.append(f"ch {ch['channel']}")
        c, h, w = stage["shape"]
        rf = "x".join(map(str, stage["receptive_field"]))
        _bare(ax, montage(tiles, per_channel, size, gap), f"{stage['stage']} ({c}x{h}x{w})\n"
              f"window {rf} px")  # fmt: skip
        for r, label in enumerate(labels):
            ax.text(-gap, r * (size[0] + gap) + size[0] / 2, label, ha="right", va="center",
                    fontsize=7)  # fmt: skip
    for ax in axes[len(top) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def invariance_figure(results: dict):
    """Accuracy (solid) and mean true-class probability (dashed) against shift and rotation."""
    fig, (a, b) = new_figure(1, 2, figsize=(8.4, 3.2))
    for key, colour in (("model", CNN_COLOUR), ("baseline", BASE_COLOUR)):
        entry = results.get(key)
        if not entry:
            continue
        label = plain(entry["name"])
        for ax, part, xkey in ((a, "shift", "pixels"), (b, "rotation", "degrees")):
            curve = entry["curves"][part]
            x = curve[xkey]
            ax.plot(x, [100 * v for v in curve["accuracy"]], "o-", color=colour, label=label)
            ax.plot(x, [100 * v for v in curve["true_class_prob"]], "--", color=colour,
                    alpha=0.7, label=f"{label}, p(true class)")  # fmt: skip
    a.set_xlabel("shift (pixels, each direction)")
    a.set_xticks(results["model"]["curves"]["shift"]["pixels"])
    b.set_xticks(results["model"]["curves"]["rotation"]["degrees"])
    b.set_xlabel("rotation (degrees, each way)")
    for ax in (a, b):
        ax.set_ylabel("accuracy, p(true class) (%)")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 100)
    a.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def sharing_figure(sharing: dict):
    """Parameters per conv layer as built, unshared and fully connected (log scale)."""
    layers = sharing["layers"]
    fig, ax = new_figure(figsize=(min(12.0, max(4.5, 0.8 * len(layers) + 2)), 3.0))
    x = np.arange(len(layers))
    bars = (("conv (shared)", "conv", CNN_COLOUR), ("locally connected", "locally_connected",
            "#94a3b8"), ("fully connected", "fully_connected", BASE_COLOUR))  # fmt: skip
    for k, (label, key, colour) in enumerate(bars):
        ax.bar(x + (k - 1) * 0.27, [r[key] for r in layers], 0.27, label=label, color=colour)
    ax.set_yscale("log")
    ax.set_xticks(x, [plain(r["layer"]) for r in layers], rotation=30 if len(layers) > 4 else 0,
                  ha="right" if len(layers) > 4 else "center", fontsize=7)  # fmt: skip
    ax.set_ylabel("parameters")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
