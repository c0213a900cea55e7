"""Data-parallel training on several processes: torchrun (`torchrun --nproc_per_node=N -m
runner ...`) or the tasks of one submitit job (`-m hydra/launcher=slurm
hydra.launcher.tasks_per_node=4 hydra.launcher.nodes=2`: every task runs the job).

Every rank holds the whole (small) data set, draws the same seeded permutation,
and takes every N-th sample of each global batch; DistributedDataParallel
averages the gradients, and each rank's loss is scaled so the update equals one
process training on the global batch. Train metrics are all-reduced before they
are logged (Plateau sees the same value everywhere); every rank steps the
schedule identically; only rank 0 writes files, checkpoints and W&B, and rank 0
alone decides from the run dir how the run starts (`Dist.from_main`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from schedulers import ConfigError

STRATEGIES = ("auto", "single", "ddp")
T = TypeVar("T")


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

    def from_main(self, make: Callable[[], T]) -> T:
        """`make()` run on rank 0 only, its value (or its error) returned (raised) on every
        rank. What the run dir says (a new run, one to resume from last.pt and that state,
        nothing left to do, or a refusal) is read once, by the rank that holds the run
        dir's lock, before it writes anything there: the other ranks cannot see a
        half-made dir, or a last.pt newer than the one rank 0 resumes from, and none is
        left waiting in a collective for a rank that gave up."""
        if not self.active or self.world == 1:
            return make()
        import torch.distributed as dist

        box: list[Any] = [None]
        failed: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("value", make())
            except Exception as err:
                failed, box[0] = err, ("error", _portable(err))
        dist.broadcast_object_list(box, src=0)
        if failed is not None:
            raise failed
        kind, value = box[0]
        if kind == "error":
            raise _rebuilt(value)
        return value


SINGLE = Dist()  # one process, no process group


def _portable(err: Exception) -> Any:
    """rank 0's error in a form every rank can unpickle: a ConfigError (and its subclasses,
    e.g. RunDirRefused) by its class and fields, as its pickle would not rebuild it (its
    __init__ takes three arguments, its args hold one message)."""
    if isinstance(err, ConfigError):
        return (type(err), err.key, err.value, err.rule)
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return RuntimeError(f"rank 0 failed: {err!r}")
    return err


def _rebuilt(value: Any) -> Exception:
    if isinstance(value, tuple):
        cls, key, val, rule = value
        return cls(key, val, rule)
    return value


def launched_by_torchrun() -> bool:
    """torchrun sets these for every worker, also with --nproc_per_node=1."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def submitit_job() -> Any | None:
    """submitit's JobEnvironment when this process is a task of a submitit job (Hydra's
    submitit launcher: hydra/launcher=slurm|local), else None. submitit marks its jobs with
    SUBMITIT_EXECUTOR; the environment then reads the task's rank and the job's task count
    (SLURM_PROCID/SLURM_NTASKS, or the local executor's SUBMITIT_LOCAL_*)."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    try:
        import submitit

        return submitit.JobEnvironment()
    except (ImportError, RuntimeError):  # no submitit, or an executor it does not know
        return None


def submitit_tasks() -> int:
    """How many tasks the submitit job this process belongs to has (0: not in one)."""
    job = submitit_job()
    return job.num_tasks if job is not None else 0


def several_ranks() -> bool:
    if launched_by_torchrun():
        return int(os.environ["WORLD_SIZE"]) > 1
    return submitit_tasks() > 1


def launch_rank() -> int:
    """This process's rank as its launcher numbered it (torchrun's RANK, submitit's global
    rank), known before any process group exists: 0 for a process started alone."""
    if launched_by_torchrun():
        return int(os.environ.get("RANK", "0"))
    job = submitit_job()
    return job.global_rank if job is not None else 0


def wanted(strategy: str) -> bool:
    if strategy not in STRATEGIES:
        raise ConfigError("trainer.strategy", strategy, f"must be one of {list(STRATEGIES)}")
    tasks = 0 if launched_by_torchrun() else submitit_tasks()
    if strategy == "ddp" and not launched_by_torchrun() and not tasks:
        raise ConfigError(
            "trainer.strategy",
            strategy,
            "needs torchrun (torchrun --nproc_per_node=N -m runner ...) or a sweep job with "
            "several tasks (-m hydra/launcher=slurm hydra.launcher.tasks_per_node=N ...)",
        )
    if strategy == "single" and tasks > 1:  # N copies of one run racing for one run dir
        raise ConfigError(
            "trainer.strategy",
            strategy,
            f"this submitit job has {tasks} tasks, and `single` trains in one process: "
            "use auto or ddp (one run on all tasks), or hydra.launcher.tasks_per_node=1",
        )
    # auto joins only when there is someone to join: torchrun with one process trains alone
    return strategy == "ddp" or (strategy == "auto" and several_ranks())


def setup(strategy: str) -> Dist:
    """Join the process group torchrun prepared, or the one of this submitit job's tasks
    (nccl on CUDA, gloo on CPU)."""
    if not wanted(strategy):
        return SINGLE
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if launched_by_torchrun():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group(backend)
    else:
        local = _join_submitit_job(backend)
    if torch.cuda.is_available():
        # Slurm may show a task all of its node's GPUs or only its own (GPU binding)
        torch.cuda.set_device(local % torch.cuda.device_count())
    return Dist(dist.get_rank(), dist.get_world_size(), local, active=True)


def _join_submitit_job(backend: str) -> int:
    """Rendezvous of a submitit job's tasks; returns the local rank. Ranks, world size and
    the address come from submitit's TorchDistributedEnvironment (the first host of the
    job; a port drawn from the job id, so the jobs of a sweep sharing a node use different
    ports, and a requeued job the same one), passed to init_process_group rather than
    exported, so this process still reads as not started by torchrun."""
    import torch.distributed as dist
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    if not dist.is_initialized():
        # one node: loopback, whatever the host name resolves to
        host = "127.0.0.1" if env.world_size == env.local_world_size else env.master_addr
        dist.init_process_group(
            backend,
            init_method=f"tcp://{host}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
        )
    return env.local_rank


def teardown(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
