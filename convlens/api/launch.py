"""`convlens train --nproc N`: torch.distributed.run started in-process, no torchrun flags.

torch.distributed.run parses only its own flags here; the workers' arguments are handed to it
after parsing, so no convlens flag can be taken for one of torchrun's (`--run` would be read as
an abbreviation of its --run-path, `--log` of --log-dir). Each worker runs
`python -m convlens train --config SETTINGS.yaml`: the flags and config file given, merged,
in a temporary file. One machine: a free port on localhost. Several (--nnodes): every machine
runs the same command with its own --node-rank and the first machine's --master-addr.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from convlens.api.folds import is_folds
from convlens.config import load_yaml, make_config
from convlens.errors import ConfigError, ConvlensError

PORT = 29500  # torchrun's default --master-port for several machines


def launch_training(
    config: str | Path | None,
    overrides: dict[str, Any],
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
) -> None:
    """Train as `convlens train` with `config` and `overrides` would, in `nproc` processes
    on each of `nnodes` machines (DDP; gloo on CPUs, NCCL on GPUs)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    settings = {**(load_yaml(config) if config else {}),
                **{k: v for k, v in overrides.items() if v is not None}}  # fmt: skip
    cfg = make_config(None, settings)  # fails here, once, not in every worker
    if is_folds(cfg):
        raise ConfigError("--folds with --nproc: launch each fold with --fold I instead")
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank must be between 0 and {nnodes - 1}, got {node_rank}")
    flags = [f"--nproc-per-node={nproc}", f"--nnodes={nnodes}", f"--node-rank={node_rank}",
             f"--master-addr={master_addr}"]  # fmt: skip
    if master_port is not None or nnodes > 1:  # one machine without a port: a free one
        flags.append(f"--master-port={master_port or PORT}")
    with tempfile.TemporaryDirectory(prefix="convlens-launch-") as folder:
        file = Path(folder) / "settings.yaml"
        file.write_text(yaml.safe_dump(settings, sort_keys=False))
        args = get_args_parser().parse_args([*flags, "-m", "convlens"])
        args.training_script_args = ["train", "--config", str(file)]
        try:
            run(args)
        except ChildFailedError as e:  # torch.distributed.run stops the other processes
            rank, failure = e.get_first_failure()
            raise ConvlensError(
                f"training stopped: rank {rank} of {nproc * nnodes} exited with code "
                f"{failure.exitcode}; its error is above"
            ) from None
