"""Measuring trained models: classification, detection (with bootstrap CIs), multi-label and
calibration metrics, temperature scaling, the figures, MedMNIST score files.

A run is evaluated by its task (convlens.tasks); `convlens evaluate` is convlens.api.evaluate.
Nothing is imported here: callers name the submodule, so scikit-learn and SciPy load only when
a run is measured, not when it only predicts.
"""
