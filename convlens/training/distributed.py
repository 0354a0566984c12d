"""torchrun support: one process per device, DistributedDataParallel, only rank 0 writes.

`torchrun --nproc_per_node=N -m convlens train ...` starts N processes; each takes its share
of every batch (`batch_size` is the global batch, so the learning rate needs no change), DDP
averages the gradients, and rank 0 alone writes the run folder. gloo on CPUs, NCCL on GPUs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from convlens.errors import ConfigError


@dataclass
class Group:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # the rank on this machine

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Group, torch.device]:
    """Join the process group torchrun describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size(), local_rank), device


def check_batch(batch_size: int, group: Group) -> None:
    """Refuse a global batch that the processes cannot share evenly."""
    if batch_size % group.world:
        raise ConfigError(f"batch_size {batch_size} does not split evenly over {group.world} "
                          "processes")  # fmt: skip


def launched_rank() -> int:
    """This process's rank as torchrun's environment gives it (0 alone), before `setup`."""
    return int(os.environ.get("RANK", "0"))


def from_main(value: object, group: Group) -> object:
    """Rank 0's `value` (any picklable object) on every rank."""
    if group.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def total(value: int, group: Group, device: torch.device) -> int:
    """The sum of every process's `value`."""
    if group.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)  # NCCL reduces GPU tensors
    dist.all_reduce(t)
    return int(t.item())


def teardown(group: Group) -> None:
    if group.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def local_main_first(group: Group, hours: float = 12.0) -> Iterator[None]:
    """Run the block on each machine's first process, then on the others: one process decodes a
    folder into its cache while the others wait, then read the cache. The wait is a gloo barrier
    with its own long timeout (a first decode can take hours); torchrun stops every process when
    one fails, so none waits for a failed one."""
    if group.world == 1:
        yield
        return
    waiting = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=hours))
    if group.local_rank != 0:
        dist.barrier(group=waiting)
    yield
    if group.local_rank == 0:
        dist.barrier(group=waiting)


def wrap(model: nn.Module, group: Group) -> nn.Module:
    """The module to train: DDP around the model when there are several processes."""
    if group.world == 1:
        return model
    return nn.parallel.DistributedDataParallel(model)


def shard(batch: torch.Tensor, group: Group) -> torch.Tensor:
    """This process's equal share of a global batch."""
    return batch.chunk(group.world)[group.rank] if group.world > 1 else batch


def uneven(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """DDP's join() while `enabled` (ranks reading their own shards may get unequal numbers of
    batches: a rank that runs out shadows the others' gradient averaging), else nothing."""
    ddp = getattr(model, "_orig_mod", model)  # under torch.compile
    if enabled and isinstance(ddp, nn.parallel.DistributedDataParallel):
        return ddp.join()
    return contextlib.nullcontext()
