"""Data-parallel training with torchrun: `torchrun --nproc_per_node=N -m runner ...`.

Every rank holds the whole (small) data set, draws the same seeded permutation,
and takes every N-th sample of each global batch; DistributedDataParallel
averages the gradients, and each rank's loss is scaled so the update equals one
process training on the global batch. Train metrics are all-reduced before they
are logged (Plateau sees the same value everywhere); every rank steps the
schedule identically; only rank 0 writes files, checkpoints and W&B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from schedulers import ConfigError

STRATEGIES = ("auto", "single", "ddp")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False  # a process group joined (also for one process: strategy=ddp, nproc 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, *tensors: Any) -> None:
        if self.active:
            import torch.distributed as dist

            for t in tensors:
                dist.all_reduce(t)


SINGLE = Dist()  # one process, no process group


def launched_by_torchrun() -> bool:
    """torchrun sets these for every worker, also with --nproc_per_node=1."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def several_ranks() -> bool:
    return launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1


def wanted(strategy: str) -> bool:
    if strategy not in STRATEGIES:
        raise ConfigError("trainer.strategy", strategy, f"must be one of {list(STRATEGIES)}")
    if strategy == "ddp" and not launched_by_torchrun():
        raise ConfigError(
            "trainer.strategy",
            strategy,
            "needs torchrun: torchrun --nproc_per_node=N -m runner ...",
        )
    # auto joins only when there is someone to join: torchrun with one process trains alone
    return strategy == "ddp" or (strategy == "auto" and several_ranks())


def setup(strategy: str) -> Dist:
    """Join the process group torchrun prepared (nccl on CUDA, gloo on CPU)."""
    if not wanted(strategy):
        return SINGLE
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local, active=True)


def teardown(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
