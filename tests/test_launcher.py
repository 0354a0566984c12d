"""convlens train --nproc N starts torch.distributed.run itself: the README's `--run` works in
every form, on one machine or on several (two "machines" on 127.0.0.1 here), gloo on the CPU."""

import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import convlens, free_port

ARGS = ["train", "--data", "digits", "--model", "textbook", "--epochs", "2", "--batch-size", "64",
        "--lr", "0.05", "--amp", "off", "--seed", "4"]  # fmt: skip


def _same_weights(a, b) -> None:
    a, b = (
        load_file(a / "weights" / "last.safetensors"),
        load_file(b / "weights" / "last.safetensors"),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    out = convlens(*ARGS, "--nproc", "2", "--run", root / "ddp")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in root.iterdir()) == ["ddp"]  # rank 0 alone wrote
    assert out.stdout.count("test: accuracy") == 1  # and printed
    return root / "ddp"


def test_nproc_trains_like_plain_torchrun_given_dashdash(two_processes, tmp_path):
    """Plain torchrun with `--` before convlens's arguments leaves `--run` alone; its one
    process ends where the two did (textbook has no BatchNorm: DDP equals one process, as
    tests/test_distributed.py checks)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "convlens", "--",
           *ARGS, "--run", str(tmp_path / "torchrun")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    _same_weights(two_processes, tmp_path / "torchrun")
    rows = [
        (r / "results.csv").read_text().splitlines() for r in (two_processes, tmp_path / "torchrun")
    ]
    cols = [[(f[0], f[3]) for f in (line.split(",") for line in r)] for r in rows]
    assert cols[0] == cols[1]  # epoch and val_acc (train_loss is rank 0's share of each batch)
    assert rows[0][1].split(",")[1] != rows[1][1].split(",")[1]  # so two processes trained


def test_two_machines_train_like_two_processes_on_one(two_processes, tmp_path):
    """--nnodes 2 --node-rank 0|1 --master-addr --master-port: one process per "machine"."""
    port, outs = free_port(), {}

    def node(rank: int) -> None:
        flags = ["--nnodes", "2", "--node-rank", rank, "--master-addr", "127.0.0.1"]
        outs[rank] = convlens(*ARGS, *flags, "--master-port", port, "--run", tmp_path / "nodes")

    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outs[0].returncode == 0 and outs[1].returncode == 0, outs[0].stderr + outs[1].stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nodes"]
    assert outs[0].stdout.count("test: accuracy") == 1 and "test:" not in outs[1].stdout
    _same_weights(two_processes, tmp_path / "nodes")


def test_a_worker_error_reaches_the_launcher_in_one_line(tmp_path):
    out = convlens(*ARGS, "--batch-size", "63", "--nproc", "2", "--run", tmp_path / "r")
    assert out.returncode == 1
    assert "batch_size 63 does not split evenly over 2 processes" in out.stderr  # the workers'
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("convlens: error: training stopped: rank ")
    assert last.endswith(" of 2 exited with code 1; its error is above")


@pytest.mark.parametrize(
    ("settings", "launch", "message"),
    [
        ({"folds": 3}, {"nproc": 2}, "--folds with --nproc: launch each fold with --fold I"),
        ({}, {"nproc": 1, "nnodes": 2, "node_rank": 2}, "--node-rank must be between 0 and 1"),
        ({"lr": -1}, {"nproc": 2}, "setting 'lr' must be positive, got -1.0"),
    ],
)
def test_launch_settings_fail_before_any_process_starts(settings, launch, message):
    from convlens.api.launch import launch_training
    from convlens.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        launch_training(None, {"data": "digits", **settings}, **launch)
    assert str(e.value).startswith(message)
