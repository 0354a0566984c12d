"""`convlens export RUN`: the ONNX graph or TorchScript archive, parity-checked against torch;
a run tracked in MLflow (--log mlflow) gets the file among its artifacts."""

from __future__ import annotations

from pathlib import Path

from convlens.errors import ConvlensError
from convlens.export import export_onnx, export_torchscript
from convlens.runs.folder import Run, resolve_weights
from convlens.track import log_export

FORMATS = ("onnx", "torchscript")


def export_run(run: str | Path, format: str = "onnx", out: str | Path | None = None) -> dict:
    """Export RUN in `format` to `out` (default: beside its weights) and check it against torch;
    the check's result, with the file under the format's name ("onnx", "torchscript")."""
    if format not in FORMATS:
        raise ConvlensError(f"export format must be one of {', '.join(FORMATS)}, not {format!r}")
    result = (export_onnx if format == "onnx" else export_torchscript)(run, out)
    folder = Run.of_weights(resolve_weights(run))
    if folder is not None and folder.is_run():
        result["mlflow"] = log_export(folder.path, result[format])
    return result
