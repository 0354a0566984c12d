"""A run killed with SIGKILL at random moments and resumed ends bit-identical to an unbroken one."""

import os
import random
import signal
import time

import torch
from safetensors.torch import load_file

from tests import warm
from tests.helpers import convlens_warm as convlens

# Dropout draws from the global RNG, EMA and momentum carry state: all must survive a kill.
ARGS = ["--data", "digits", "--model", "mlp", "--model-arg", "dropout=0.3", "--epochs", "10",
        "--batch-size", "16", "--lr", "0.05", "--seed", "3", "--ema", "0.9"]  # fmt: skip


def _rows(run):
    lines = (run / "results.csv").read_text().splitlines()
    return [line.rsplit(",", 1)[0] for line in lines]  # drop the seconds column


def _epochs_saved(run) -> int:
    try:
        return len((run / "results.csv").read_text().splitlines()) - 1
    except FileNotFoundError:
        return 0


def test_sigkill_and_resume_is_bit_identical(tmp_path):
    whole = tmp_path / "whole"
    out = convlens("train", *ARGS, "--run", str(whole))
    assert out.returncode == 0, out.stderr

    broken = tmp_path / "broken"
    rng = random.Random(1234)
    kills = 0
    cmd = ["train", *ARGS, "--run", str(broken)]
    env = {**os.environ, "COLUMNS": "200"}
    deadline = time.monotonic() + 400
    while True:
        assert time.monotonic() < deadline, "the interrupted run did not finish in time"
        done = _epochs_saved(broken)
        proc = warm.Process(cmd, env)  # a fork of a warm interpreter: no 4 s cold start
        if kills < 4:
            # Kill at a random moment of the epoch after the next checkpoint: mid-step,
            # mid-evaluation or mid-save. Waiting for a checkpoint first guarantees progress
            # however slowly this machine starts Python.
            while proc.poll() is None and _epochs_saved(broken) == done:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        proc.wait()
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.output()[1]
        cmd = ["train", "--resume", "--run", str(broken)]
    assert kills >= 3

    for name in ("weights/last.safetensors", "weights/best.safetensors"):
        a, b = load_file(whole / name), load_file(broken / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert _rows(whole) == _rows(broken)


def test_resume_refuses_changed_settings_and_missing_state(tmp_path):
    run = tmp_path / "r"
    out = convlens("train", "--data", "digits", "--model", "mlp", "--epochs", "1", "--run", run)
    assert out.returncode == 0, out.stderr
    out = convlens("train", "--resume", "--run", str(run), "--lr", "0.5")
    assert out.returncode != 0 and "cannot change lr" in out.stderr
    out = convlens("train", "--resume", "--run", str(tmp_path / "none"))
    assert out.returncode != 0 and "not a convlens run folder" in out.stderr
