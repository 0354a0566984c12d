"""ONNX export (dynamic batch, convlens metadata) and an onnxruntime model with convlens's TTA.

onnx and onnxruntime are imported here only, so `import convlens` stays light.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from convlens.errors import ConvlensError, ModelError
from convlens.models.infer import predict_proba
from convlens.models.loading import load_model
from convlens.reference.losses import softmax
from convlens.reference.model import normalize, tta_views
from convlens.training.checkpoint import META_KEY, atomic_write_bytes

TOLERANCE = 1e-4  # largest allowed |p_onnx - p_torch| over the check images
CHECK_IMAGES = 100  # validation images run through both


def export_onnx(run: str | Path, out: str | Path | None = None) -> dict:
    """Write RUN's model as ONNX, check it, and compare onnxruntime with torch on val images."""
    import onnx

    model, meta, weights = load_model(run)
    task = meta.get("task", "classify")
    if task != "classify":  # predict on .onnx files reads the outputs as class logits
        raise ModelError(f"{weights}: ONNX export is for classify runs; {task} runs score in torch")
    model = model.float().eval()
    c, h, w = (meta["input"][k] for k in ("channels", "height", "width"))
    out = Path(out) if out else weights.with_suffix(".onnx")
    batch = torch.export.Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress lines and notices
        program = torch.onnx.export(
            model,
            (torch.zeros(2, c, h, w),),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
        )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps({**meta, "exported_from": str(weights)})
    onnx.checker.check_model(proto)
    atomic_write_bytes(out, proto.SerializeToString())

    images, source = _check_images(meta, weights)
    mean, std = meta["normalize"]["mean"], meta["normalize"]["std"]
    ours = predict_proba(model, images, mean=mean, std=std, tta=meta.get("tta", "none"))
    theirs = torch.from_numpy(OnnxModel(out).predict_proba(images.numpy()))
    diff = float((ours - theirs).abs().max())
    if diff > TOLERANCE:
        raise ConvlensError(f"{out}: onnxruntime differs from torch by {diff:.2e} (> {TOLERANCE})")
    return {"onnx": str(out), "images": len(images), "source": source, "max_abs_diff": diff}


def _check_images(meta: dict, weights: Path) -> tuple[torch.Tensor, str]:
    """Up to 100 validation images of the run's data, or seeded noise if the data is not here."""
    from convlens.evaluation import load_run_data

    run_dir = weights.parent.parent if weights.parent.name == "weights" else None
    try:
        ds = load_run_data(meta.get("data"), run_dir)
        return ds.val.images[:CHECK_IMAGES], f"{ds.name} validation split"
    except ConvlensError:
        shape = (CHECK_IMAGES, meta["input"]["channels"], meta["input"]["height"],
                 meta["input"]["width"])  # fmt: skip
        noise = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0))
        return noise.to(torch.uint8), "random images (the run's data is not here)"


class OnnxModel:
    """An exported convlens model on onnxruntime: uint8 images in, probabilities out."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"{path}: not a loadable ONNX model ({first})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise ModelError(f"{path}: not a convlens model (no convlens metadata)")
        self.meta = json.loads(props[META_KEY])
        self.input = self.session.get_inputs()[0].name

    def predict_proba(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """Class probabilities (N, K) for uint8 images (N, C, H, W), with the run's TTA."""
        mean, std = self.meta["normalize"]["mean"], self.meta["normalize"]["std"]
        out = []
        for i in range(0, len(images), batch_size):
            x = normalize(images[i : i + batch_size], mean, std)  # (B, C, H, W) float32
            views = tta_views(x, self.meta.get("tta", "none"))
            out.append(
                sum(w * softmax(self.session.run(None, {self.input: v})[0]) for v, w in views)
            )
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
