"""The NumPy reference engine: every layer's forward and backward pass written out, no torch.

    from convlens.reference import load_model
    model, meta = load_model("runs/train/weights/best.safetensors")
    probs = model.predict_proba(images, **meta["normalize"], tta=meta.get("tta", "none"))

Checked against PyTorch by tests/test_reference*.py; `python -m convlens.reference.gradcheck`
checks every layer's backward pass against finite differences.
"""

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
from convlens.reference.losses import CrossEntropyLoss, log_softmax, softmax
from convlens.reference.model import (
    MODELS,
    Sequential,
    build_model,
    load_model,
    load_weights,
    model_from,
    normalize,
)
from convlens.reference.optim import SGD

__all__ = [
    "MODELS",
    "SGD",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Layer",
    "Linear",
    "MaxPool2d",
    "Parameter",
    "ReLU",
    "Sequential",
    "build_model",
    "load_model",
    "load_weights",
    "log_softmax",
    "model_from",
    "normalize",
    "softmax",
]
