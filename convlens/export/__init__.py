"""Export trained models: ONNX or TorchScript with convlens metadata, checked against torch."""

from convlens.export.onnx import export_onnx
from convlens.export.torchscript import export_torchscript
from convlens.predict.onnx import OnnxModel  # where exports are run (convlens.predict)

__all__ = ["OnnxModel", "export_onnx", "export_torchscript"]
