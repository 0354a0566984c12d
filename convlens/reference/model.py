"""Layers in a row, the models made of them, and convlens weights files read with NumPy alone.

Layer names are the torch models' (`features.conv1`, `classifier.fc`, ...), so a state dict of
either engine loads into the other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from convlens.errors import ModelError
from convlens.reference.layers import (
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    Parameter,
    ReLU,
)
from convlens.reference.losses import softmax
from convlens.runs.checks import one_line
from convlens.runs.meta import WeightsMeta


class Sequential:
    """Named layers run in order; backward runs them in reverse (the chain rule, layer by layer)."""

    def __init__(self, layers: dict[str, Layer]) -> None:
        self.layers = dict(layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dout: np.ndarray, input_grad: bool = False) -> np.ndarray | None:
        """dL/d(logits) in; every parameter's .grad filled on the way; dL/d(input) out if asked.

        The input is data, so by default its gradient is not computed (torch skips it too).
        """
        first = next(iter(self.layers.values()))
        first.needs_input_grad = input_grad
        for layer in reversed(self.layers.values()):
            dout = layer.backward(dout)
        return dout

    def named_parameters(self) -> dict[str, Parameter]:
        return {
            f"{n}.{k}": p for n, layer in self.layers.items() for k, p in layer.parameters().items()
        }

    def parameters(self) -> list[Parameter]:
        return list(self.named_parameters().values())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad[...] = 0

    def train(self, mode: bool = True) -> Sequential:
        for layer in self.layers.values():
            layer.training = mode
        return self

    def eval(self) -> Sequential:
        return self.train(False)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: p.data for name, p in self.named_parameters().items()}

    def load_state_dict(self, tensors: dict[str, np.ndarray]) -> None:
        """Copy in weights by torch name; every name and shape must match."""
        own = self.named_parameters()
        if set(tensors) != set(own):
            missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
            raise ModelError(f"weights do not fit: missing {missing}, unexpected {extra}")
        for name, p in own.items():
            if tensors[name].shape != p.data.shape:
                raise ModelError(f"{name}: shape {tensors[name].shape}, model has {p.data.shape}")
            p.data = np.array(tensors[name], dtype=p.data.dtype)  # a copy, in the model's dtype

    def predict_proba(
        self,
        images: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        tta: str = "none",
        batch_size: int = 500,
    ) -> np.ndarray:
        """Class probabilities (N, K) for uint8 images (N, C, H, W), as convlens predicts."""
        dtype = self.parameters()[0].data.dtype
        was_training = next(iter(self.layers.values())).training
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            x = normalize(images[i : i + batch_size], mean, std).astype(dtype)  # (B, C, H, W)
            p = sum(w * softmax(self.forward(v)) for v, w in tta_views(x, tta))  # (B, K)
            out.append(p)
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, 0), dtype)


def tta_views(x: np.ndarray, mode: str) -> list[tuple[np.ndarray, float]]:
    """Test-time augmentation views and weights, as convlens.models.infer.tta_views makes them."""
    if mode == "none":
        return [(x, 1.0)]
    mirror = np.ascontiguousarray(x[..., ::-1])
    if mode == "flip":
        return [(x, 0.5), (mirror, 0.5)]
    h, w = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero = mean-grey fill
    shifted = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]  # moved down-right, up-left
    views = [(x, 0.25), (mirror, 0.25)]
    return views + [(np.ascontiguousarray(v), 0.125) for s in shifted for v in (s, s[..., ::-1])]


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 (x / 255 - mean) / std per channel for uint8 (B, C, H, W), as in training."""
    m = np.asarray(mean, np.float32)[:, None, None]  # (C, 1, 1)
    s = np.asarray(std, np.float32)[:, None, None]
    return (x.astype(np.float32) / np.float32(255) - m) / s


def pooled(size: int) -> int:
    """Side after a 2x2, stride-2, ceil_mode max-pool (convlens.models.base.pooled)."""
    return -(-size // 2)


def max_pool() -> MaxPool2d:
    return MaxPool2d(2, 2, ceil_mode=True)  # as every convlens model pools


def textbook(
    *,
    in_channels,
    num_classes,
    image_size,
    widths=(16, 32),
    kernel_size=5,
    rng=None,
    dtype=np.float32,
) -> Sequential:
    """[conv -> ReLU -> max-pool] x 2 -> fully connected (convlens.models.textbook)."""
    layers: dict[str, Layer] = {}
    (h, w), c = image_size, in_channels
    for i, width in enumerate(widths, start=1):
        conv = Conv2d(c, width, kernel_size, padding=kernel_size // 2, rng=rng, dtype=dtype)
        layers |= {
            f"features.conv{i}": conv,
            f"features.relu{i}": ReLU(),
            f"features.pool{i}": max_pool(),
        }
        (h, w), c = (pooled(h), pooled(w)), width  # (B, width, h, w)
    fc = Linear(c * h * w, num_classes, rng=rng, dtype=dtype)
    return Sequential(layers | {"classifier.flatten": Flatten(), "classifier.fc": fc})


def lenet5(*, in_channels, num_classes, image_size, rng=None, dtype=np.float32) -> Sequential:
    """conv 6 -> conv 16 -> fc 120 -> 84 -> classes (convlens.models.lenet)."""
    pad = 0 if min(pooled(side) for side in image_size) >= 5 else 2  # lenet.conv2_padding
    h, w = (pooled(pooled(side) - 4 + 2 * pad) for side in image_size)  # after pool2
    return Sequential(
        {
            "features.conv1": Conv2d(in_channels, 6, 5, padding=2, rng=rng, dtype=dtype),
            "features.relu1": ReLU(),
            "features.pool1": max_pool(),
            "features.conv2": Conv2d(6, 16, 5, padding=pad, rng=rng, dtype=dtype),
            "features.relu2": ReLU(),
            "features.pool2": max_pool(),
            "classifier.flatten": Flatten(),
            "classifier.fc1": Linear(16 * h * w, 120, rng=rng, dtype=dtype),
            "classifier.relu3": ReLU(),
            "classifier.fc2": Linear(120, 84, rng=rng, dtype=dtype),
            "classifier.relu4": ReLU(),
            "classifier.fc3": Linear(84, num_classes, rng=rng, dtype=dtype),
        }
    )


def mlp(
    *, in_channels, num_classes, image_size, hidden=256, dropout=0.0, rng=None, dtype=np.float32
) -> Sequential:
    """flatten -> [Linear -> ReLU (-> Dropout)] x 2 -> Linear (convlens.models.mlp)."""
    widths = [hidden, hidden] if isinstance(hidden, int) else list(hidden)
    layers: dict[str, Layer] = {"features.flatten": Flatten()}
    size = in_channels * image_size[0] * image_size[1]
    for i, width in enumerate(widths, start=1):
        layers[f"features.fc{i}"] = Linear(size, width, rng=rng, dtype=dtype)
        layers[f"features.relu{i}"] = ReLU()
        if dropout:
            layers[f"features.drop{i}"] = Dropout(dropout, rng=rng)
        size = width  # (B, width)
    return Sequential(layers | {"classifier.fc": Linear(size, num_classes, rng=rng, dtype=dtype)})


MODELS = {"textbook": textbook, "lenet5": lenet5, "mlp": mlp}


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    seed: int | None = None,
    dtype=np.float32,
    **args,
) -> Sequential:
    """One of MODELS by name, with torch's default initialisation drawn from a NumPy RNG."""
    if name not in MODELS:
        raise ModelError(f"the NumPy engine has {', '.join(MODELS)}; not {name!r}")
    rng = np.random.default_rng(seed)
    size = (int(image_size[0]), int(image_size[1]))
    return MODELS[name](
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=size,
        rng=rng,
        dtype=dtype,
        **args,
    )


def load_weights(path: str | Path) -> tuple[dict[str, np.ndarray], WeightsMeta]:
    """Arrays and convlens metadata of a .safetensors weights file, read with NumPy."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="np") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path}: not a valid safetensors file ({e})") from None
    if "convlens" not in raw:
        raise ModelError(f"{path}: not a convlens model (its header has no convlens metadata)")
    try:
        meta = json.loads(raw["convlens"])
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deep
        raise ModelError(f"{path}: convlens metadata is not valid JSON") from None
    bad = [k for k, t in tensors.items() if t.dtype.kind == "f" and not np.isfinite(t).all()]
    if bad:  # as checkpoint.load_weights refuses them
        raise ModelError(f"{path}: weights hold NaN or infinite values (first in {bad[0]!r})")
    return tensors, WeightsMeta.from_header(meta, path)


def load_model(path: str | Path, dtype=np.float32) -> tuple[Sequential, WeightsMeta]:
    """(model in eval mode, metadata) for a convlens weights file."""
    tensors, meta = load_weights(path)
    size, spec = meta["input"], meta["model"]
    args = {k: v for k, v in spec.get("args", {}).items() if k != "pretrained"}
    try:
        model = build_model(
            spec["name"],
            in_channels=size["channels"],
            num_classes=len(meta["classes"]),
            image_size=(size["height"], size["width"]),
            dtype=dtype,
            **args,
        )
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    except Exception as e:  # the args come from the file: whatever the model refuses them with
        raise ModelError(f"{path}: metadata field 'model.args' does not fit model "
                         f"{spec['name']!r} ({one_line(e)})") from None  # fmt: skip
    try:
        model.load_state_dict(tensors)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    return model.eval(), meta
