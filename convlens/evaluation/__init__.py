"""Measuring trained models: classification, detection (with bootstrap CIs), multi-label and
calibration metrics, temperature scaling, the figures, MedMNIST score files.

A run is evaluated by its task (convlens.tasks); `convlens evaluate` is convlens.api.evaluate.
"""

from convlens.evaluation.metrics import classification_metrics

__all__ = ["classification_metrics"]
