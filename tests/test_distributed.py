"""torchrun with two gloo processes on the CPU trains like one process with the same batch."""

import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from tests.helpers import convlens, free_port

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


def _torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            "--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "convlens",
            "train", *map(str, args)]  # fmt: skip


def test_killed_distributed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL torchrun (and both workers) after the first checkpoint; --resume under torchrun."""
    args = [*ARGS[1:], "--epochs", "6"]  # the rightmost --epochs wins
    whole = tmp_path / "whole"
    out = convlens("train", *args, "--run", whole)
    assert out.returncode == 0, out.stderr

    broken = tmp_path / "broken"
    state = broken / "state" / "last.safetensors"
    proc = subprocess.Popen(_torchrun(*args, "--run-dir", broken), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300
    while proc.poll() is None and not state.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the workers it started, nothing else
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    saved = len((broken / "results.csv").read_text().splitlines()) - 1
    assert 1 <= saved < 6  # it was stopped part-way, after at least one checkpoint

    out = subprocess.run(_torchrun("--resume", "--run-dir", broken), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"resuming {broken} after epoch" in out.stdout + out.stderr
    for name in ("weights/last.safetensors", "weights/best.safetensors"):
        a, b = load_file(whole / name), load_file(broken / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), (name, k)
    rows = [(r / "results.csv").read_text().splitlines() for r in (whole, broken)]
    cols = [[(f[0], f[3]) for f in (line.split(",") for line in r)] for r in rows]
    assert cols[0] == cols[1]  # epoch and val_acc (train_loss is rank 0's share of each batch)


FIRST = """
import sys, time
from pathlib import Path
import torch
from convlens.training import distributed
marker = Path(sys.argv[1])
group, _ = distributed.setup(torch.device("cpu"))
with distributed.local_main_first(group):
    if group.local_rank == 0:
        time.sleep(1.0)  # a slow first decode
        marker.write_text("built")
    else:
        Path(f"{marker}.{group.rank}").write_text(marker.read_text() if marker.exists() else "")
distributed.teardown(group)
"""


def test_one_process_per_machine_loads_data_before_the_others(tmp_path):
    """A folder cache is built by local rank 0 alone; the others start once it is there."""
    script = tmp_path / "first.py"
    script.write_text(FIRST)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script),
           str(tmp_path / "cache")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cache.1").read_text() == "built"  # rank 1 found rank 0's work done
