"""Export trained models: ONNX with convlens metadata, checked against torch."""

from convlens.export.onnx import OnnxModel, export_onnx

__all__ = ["OnnxModel", "export_onnx"]
