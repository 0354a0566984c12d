"""Models by name: the registry, the built-in models and their size."""

from convlens.models.flops import count_flops, count_parameters, model_info
from convlens.models.registry import create_model, list_models, register_model

__all__ = [
    "count_flops",
    "count_parameters",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
