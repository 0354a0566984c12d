"""The engines a Recogniser runs over: torch, the NumPy reference engine, onnxruntime, and
TorchScript archives.

Each gives the scores (N, ...) of preprocessed uint8 images (N, C, H, W) as the run's task
defines them, and the metadata and Task class its file was trained for. Opening one reads the
weights file once and checks its header once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from convlens import reference
from convlens.errors import ConvlensError
from convlens.predict.onnx import OnnxModel
from convlens.predict.torchscript import check_outputs, load_archive
from convlens.runs.meta import WeightsMeta
from convlens.tasks import openset
from convlens.tasks.base import LoadedRun, Task
from convlens.tasks.loading import load_checked, load_run, task_of
from convlens.tasks.registry import task_class


class Engine(Protocol):
    """What a Recogniser needs of an engine."""

    meta: WeightsMeta
    task: type[Task]
    source: Path  # the weights or .onnx file
    model: object  # the network it runs (a torch module, a NumPy model, an OnnxModel)

    def scores(self, images: torch.Tensor) -> torch.Tensor: ...


class TorchEngine:
    """A run's weights in torch: the task's own scores (every task predicts here)."""

    def __init__(self, run: LoadedRun) -> None:
        self.run, self.meta, self.task = run, run.meta, run.task
        self.source, self.model = run.weights, run.net

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        return self.task.scores(self.run, images)


class NumpyEngine:
    """A classifier's weights in the NumPy reference engine (convlens.reference)."""

    def __init__(self, run: str | Path, device: torch.device) -> None:
        if device.type != "cpu":
            raise ConvlensError(f"the numpy engine runs on the CPU, not on {device}")
        # The engines share names and shapes: checked on torch's meta device first, so no NumPy
        # model larger than the file is ever built.
        f = load_checked(run)
        self.meta, self.task, self.source = f.meta, task_class(f.meta.task), f.path
        refuse_engine(self.task, "numpy", run)
        point = f.meta.decisions.openset
        if point is not None and point["score"] == "mahalanobis":  # needs penultimate features
            raise ConvlensError(f"{f.path}: a mahalanobis open-set score predicts with the torch "
                                "engine, not numpy")  # fmt: skip
        arrays = {k: v.numpy() for k, v in f.tensors.items()}
        self.model = reference.model_from(f.meta, arrays, f.path)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, K), test-time views averaged as in training; a run with an open-set
        threshold adds its score (N, K + 1)."""
        if self.meta.decisions.openset is not None:
            return torch.from_numpy(openset.numpy_scores(self.model, images.numpy(), self.meta))
        norm = self.meta.normalize
        probs = self.model.predict_proba(images.numpy(), norm.mean, norm.std, tta=self.meta.tta)
        return torch.from_numpy(probs)


class OnnxEngine:
    """An exported .onnx model on onnxruntime (convlens.predict.onnx)."""

    def __init__(self, path: str | Path) -> None:
        if not Path(path).is_file():
            raise ConvlensError(f"{path}: no such ONNX file")
        self.model = OnnxModel(path)
        self.meta, self.task, self.source = self.model.meta, self.model.kind, Path(path)
        if self.task.onnx_activation is None:  # the graph gives embeddings, not scores
            name, output = self.task.name, self.task.onnx_output
            raise ConvlensError(f"{path}: an {name} export gives {output}s "
                                f"(convlens.export.OnnxModel.embed); predict, verify and serve "
                                f"take the run's weights")  # fmt: skip

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities or label scores (N, K), test-time views averaged as in training."""
        return torch.from_numpy(self.model.predict_proba(images.numpy()))


class TorchScriptEngine:
    """An exported TorchScript archive (.pt, convlens.predict.torchscript): the task's own
    scores of the traced network, as the torch engine computes them from the weights."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        if not Path(path).is_file():
            raise ConvlensError(f"{path}: no such TorchScript file")
        self.model, self.meta = load_archive(path, device)
        self.source = Path(path)
        self.task = task_of(self.meta, self.source)
        if self.task.onnx_activation is None:  # its scores need more than the exported graph
            raise ConvlensError(f"{path}: {self.task.name} runs predict from their weights, "
                                "not from an exported graph")  # fmt: skip
        check_outputs(self.model, self.meta, self.task.graph_width(self.meta), path)
        self.run = LoadedRun(self.model, self.meta, self.source, None, device)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        return self.task.scores(self.run, images)


def open_engine(run: str | Path, device: str | torch.device, engine: str) -> Engine:
    """The engine that predicts RUN (a run folder, weights file, .onnx or TorchScript .pt)."""
    if str(run).endswith(".onnx"):
        return OnnxEngine(run)
    if str(run).endswith(".pt"):  # workflow (issue 18): a TorchScript export
        return TorchScriptEngine(run, torch.device(device))
    device = torch.device(device)
    opened = NumpyEngine(run, device) if engine == "numpy" else TorchEngine(load_run(run, device))
    opened.task.check_predictable(opened.meta, opened.source)
    return opened


def refuse_engine(task: type[Task], engine: str, run: str | Path) -> None:
    """One line unless `engine` predicts the runs of `task`."""
    if engine not in task.engines:
        raise ConvlensError(f"{run}: {task.name} runs predict with the torch engine, not {engine}")
