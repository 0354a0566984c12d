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
# end; a file not listed counts as DEFAULT_SECONDS.
DEFAULT_SECONDS = 20
FILE_SECONDS = {
    "test_faces_cli": 130,
    "test_cli": 100,
    "test_export": 84,
    "test_distributed": 80,
    "test_anomaly": 79,
    "test_meta_hardening": 77,
    "test_resume": 71,
    "test_photo_runs": 70,
    "test_serve": 62,
    "test_serve_tasks": 61,
    "test_device": 59,
    "test_launcher": 59,
    "test_openset": 57,
    "test_train_fashion": 51,
    "test_run_hardening": 49,
    "test_serve_hardening": 44,
    "test_transfer": 44,
    "test_tracking": 43,
    "test_explain_cli": 40,
    "test_medical_multilabel": 39,
    "test_anomaly_maps": 33,
    "test_folds": 32,
    "test_calibration": 29,
    "test_data_hardening": 29,
    "test_data_scenes": 28,
    "test_explain_page": 28,
    "test_medical_detection": 27,
    "test_tune": 27,
    "test_torchscript": 23,
    "test_fuzz_data": 16,
    "test_faces_detect": 14,
    "test_explain_gradcam": 13,
    "test_data_shards": 12,
    "test_report": 11,
    "test_medical_formats": 10,
}


def pytest_collection_modifyitems(items: list) -> None:
    """Order the tests by their file's known duration, longest first (stable within a file)."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.stem, DEFAULT_SECONDS))
