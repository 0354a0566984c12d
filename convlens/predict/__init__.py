"""Predict with a trained model: its file holds all it needs (classes, input, normalisation).

recogniser.py  Recogniser: preprocess, batch, scores; the task's answer for each image
engines.py     the engines it runs over: torch, the NumPy reference engine, onnxruntime
onnx.py        OnnxModel: an exported graph on onnxruntime, checked against its metadata
inputs.py      expand_inputs: the files, folders and globs `convlens predict` is given
"""

from __future__ import annotations

from pathlib import Path

from convlens.errors import ConvlensError
from convlens.predict.engines import Engine, TorchEngine, open_engine
from convlens.predict.inputs import expand_inputs
from convlens.predict.recogniser import ImageLike, Recogniser

__all__ = [
    "Engine",
    "ImageLike",
    "Recogniser",
    "TorchEngine",
    "expand_inputs",
    "load",
    "recogniser_for",
]


def load(run: str | Path, device: str = "cpu", engine: str = "torch") -> Recogniser:
    """Load a run folder, weights file or .onnx file for prediction (torch or numpy engine);
    a task with its own Recogniser (embed: convlens.faces.FaceRecogniser) loads as that."""
    if engine not in ("torch", "numpy"):
        raise ConvlensError(f"engine must be torch or numpy, not {engine!r}")
    return recogniser_for(open_engine(run, device, engine), device)


def recogniser_for(engine: Engine, device: str = "cpu") -> Recogniser:
    """The Recogniser over an open engine: its task's own class, if it has one."""
    return (engine.task.recogniser or Recogniser)(engine, device=device)
