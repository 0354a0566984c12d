"""torchrun with two gloo processes on the CPU trains like one process with the same batch."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import convlens, free_port

pytestmark = pytest.mark.xdist_group("distributed")
ARGS = ["train", "--data", "digits", "--model", "textbook", "--epochs", "2", "--batch-size", "64",
        "--lr", "0.05", "--amp", "off", "--seed", "4"]  # fmt: skip


def test_two_processes_match_one(tmp_path):
    out = convlens(*ARGS, "--run", tmp_path / "single")
    assert out.returncode == 0, out.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "convlens", *ARGS,
           "--run-dir", str(tmp_path / "ddp")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]  # rank 0 alone wrote
    assert out.stdout.count("test: accuracy") == 1  # and printed
    a = load_file(tmp_path / "single" / "weights" / "last.safetensors")
    b = load_file(tmp_path / "ddp" / "weights" / "last.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    rows = [(tmp_path / r / "results.csv").read_text().splitlines() for r in ("single", "ddp")]
    assert [line.split(",")[3] for line in rows[0]] == [line.split(",")[3] for line in rows[1]]
