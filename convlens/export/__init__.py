"""Export trained models: ONNX with convlens metadata, checked against torch."""

from convlens.export.onnx import export_onnx
from convlens.predict.onnx import OnnxModel  # where exports are run (convlens.predict)

__all__ = ["OnnxModel", "export_onnx"]
