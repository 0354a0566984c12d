"""Test-wide settings."""

import os

# Tests run two at a time (pytest -n 2 --dist loadfile: a module fixture, often a trained run,
# is built once) on two cores: one torch thread per process, or the
# OpenMP threads of the two processes fight over the cores and each step slows down 100-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# Seconds each heavy test file took (its tests summed; a fresh-clone run with --durations=0 on
# the 2-core machine). The files run longest first (the Makefile's --no-loadscope-reorder keeps
# this order), so the last file to start is a short one and no worker idles for a minute at the
# end; a file not listed counts as DEFAULT_SECONDS. The files whose commands run warm
# (tests/warm.py) are that run's seconds scaled by their before/after ratio measured here.
DEFAULT_SECONDS = 20
FILE_SECONDS = {
    "test_distributed": 78,
    "test_run_hardening": 62,
    "test_launcher": 58,
    "test_device": 57,
    "test_export": 54,
    "test_transfer": 53,
    "test_photo_runs": 51,
    "test_serve_hardening": 49,
    "test_serve_tasks": 44,
    "test_explain_page": 44,
    "test_explain_cli": 39,
    "test_anomaly": 37,
    "test_data_hardening": 37,
    "test_anomaly_maps": 35,
    "test_meta_hardening": 34,
    "test_train_fashion": 33,
    "test_calibration": 32,
    "test_serve": 31,
    "test_faces_align": 29,
    "test_data_scenes": 28,
    "test_faces_cli": 26,
    "test_openset": 22,
    "test_tracking": 20,
    "test_cli": 19,
    "test_faces_detect": 16,
    "test_explain_gradcam": 16,
    "test_data_shards": 15,
    "test_data_photo": 14,
    "test_resume": 13,
    "test_photo_backbone": 13,
    "test_patchcore": 13,
    "test_medical_multilabel": 12,
    "test_medical_detection": 12,
    "test_report": 12,
    "test_photo_mix": 12,
    "test_folds": 10,
    "test_torchscript": 10,
    "test_medical_formats": 10,
    "test_tune": 7,
}


def pytest_collection_modifyitems(items: list) -> None:
    """Order the tests by their file's known duration, longest first (stable within a file)."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.stem, DEFAULT_SECONDS))
