"""Data-parallel training on several processes: torchrun (`torchrun --nproc_per_node=N -m
runner ...`) or the tasks of one submitit job (`-m hydra/launcher=slurm
hydra.launcher.tasks_per_node=4 hydra.launcher.nodes=2`: every task runs the job).

Every rank draws the same seeded permutation and trains on every N-th sample of each
global batch: an in-memory set is held whole by every rank and sliced; a streamed one
(data=dataset) has each rank's sampler fetch only its share (runner/data/stream.py,
EpochBatches). DistributedDataParallel
averages the gradients, and each rank's loss is scaled so the update equals one
process training on the global batch. Train metrics are all-reduced before they
are logged (Plateau sees the same value everywhere); every rank steps the
schedule identically; only rank 0 writes files, checkpoints and W&B, and rank 0
alone decides from the run dir how the run starts (`Dist.from_main`).

A signal reaches the ranks at different moments, or only one of them (`kill -TERM` of one
rank's pid): a rank that left the batch loop on its own would leave the others waiting in
their next backward's all-reduce for ever. So every rank stops after the same batch
(`agreed_stop`): every `STOP_CHECK_EVERY` steps, and after the last step of an epoch, the
ranks all-reduce (MAX) the signal each one got, and all stop on the one any got.
"""

from __future__ import annotations
from datetime import timedelta

import logging
import os
import pickle
import random
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from schedulers import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("schedlab")
STRATEGIES = ("auto", "single", "ddp")
TEARDOWN_WAIT_S = 60.0  # how long a rank that ended cleanly waits for the others to end too
# how often (in steps of an epoch) the ranks agree whether to stop: each check is one
# all-reduce of one int and a host sync, so a GPU run loses its asynchrony once per
# STOP_CHECK_EVERY steps, and a signal waits at most that many steps
STOP_CHECK_EVERY = 16
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
            import torch.distributed as dist  # torch: not at --help

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
        import torch.distributed as dist  # torch: not at --help

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


def not_rank_0() -> bool:
    """torchrun's RANK says another rank than 0: rank 0 alone holds the run dir and writes
    into it (Hydra's .hydra/ and train.log, the CLI's pre-Hydra check of the dir)."""
    return int(os.environ.get("RANK", "0")) != 0


def submitit_job() -> Any | None:
    """submitit's JobEnvironment when this process is a task of a submitit job (Hydra's
    submitit launcher: hydra/launcher=slurm|local), else None. submitit marks its jobs with
    SUBMITIT_EXECUTOR; the environment then reads the task's rank and the job's task count
    (SLURM_PROCID/SLURM_NTASKS, or the local executor's SUBMITIT_LOCAL_*)."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    try:
        import submitit  # only inside a submitit job (optional)

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
    global _set_up
    try:
        return _setup(strategy)
    finally:
        _set_up = True


def _setup(strategy: str) -> Dist:
    if not wanted(strategy):
        return SINGLE
    import torch  # torch: not at --help (the CLI imports this module)
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if launched_by_torchrun():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            with sigterm_ends_the_wait():
                dist.init_process_group(backend)
    else:
        local = _join_submitit_job(backend)
    if torch.cuda.is_available():
        # Slurm may show a task all of its node's GPUs or only its own (GPU binding)
        torch.cuda.set_device(local % torch.cuda.device_count())
    return Dist(dist.get_rank(), dist.get_world_size(), local, active=True)


# -- torchrun ending a job before its workers have joined ------------------------------------
# When a worker fails, torchrun sends the others SIGTERM and SIGKILLs them 30 s later. A
# worker that has not joined its process group yet has nothing of the run to keep (train()
# joins before it writes anything; rank 0's pre-Hydra refusal of its run dir is such a
# failure): there a SIGTERM ends it at once instead of being kept for the first batch,
# which it would never reach (the join waits for the rank that left).
_set_up = False  # setup() has run in this process: from then on a SIGTERM is the run's


def unjoined_torchrun_worker() -> bool:
    """This process is one of several torchrun workers and has not joined their group yet."""
    return not _set_up and launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1


@contextmanager
def sigterm_ends_the_wait() -> Iterator[None]:
    """SIGTERM takes its default action (the process ends) while this worker waits in the
    rendezvous: Python runs a handler only once that C++ wait returns, which it never does
    when a peer has left."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and gets signals)
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def job_port(job_id: str) -> int:
    """The rendezvous port of a submitit job: drawn from its job id (as submitit draws it
    when MASTER_PORT is unset), so the jobs of a sweep sharing a node use different ports
    and a requeued job (same id) the same one. An inherited MASTER_PORT is ignored: the shell
    that submits a sweep (one that ran torchrun, say) exports it into every job of the
    sweep alike, and two of them on one node would then collide on it."""
    return random.Random(job_id).randint(20000, 60000)


def _join_submitit_job(backend: str) -> int:
    """Rendezvous of a submitit job's tasks; returns the local rank. Ranks, world size and
    the address come from submitit's TorchDistributedEnvironment (the first host of the
    job), the port from `job_port`, passed to init_process_group rather than exported, so
    this process still reads as not started by torchrun."""
    import torch.distributed as dist  # torch: not at --help
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    if not dist.is_initialized():
        # one node: loopback, whatever the host name resolves to
        host = "127.0.0.1" if env.world_size == env.local_world_size else env.master_addr
        dist.init_process_group(
            backend,
            init_method=f"tcp://{host}:{job_port(JobEnvironment().job_id)}",
            rank=env.rank,
            world_size=env.world_size,
        )
    return env.local_rank


def teardown(d: Dist, wait_for_peers: bool = False, wait_s: float = TEARDOWN_WAIT_S) -> None:
    """Leave the process group. `wait_for_peers` (a run that ended alike on every rank:
    completed, or stopped on the agreed batch): the ranks meet once more first, so that no
    rank destroys its gloo group while a peer still talks to it (seen: the signalled rank,
    with nothing to write, tearing down while rank 0 wrote the checkpoint, and aborting in
    gloo's teardown: `terminate called without an active exception`, SIGABRT). The wait
    is bounded (gloo's monitored_barrier): a rank that died costs `wait_s`, not a hang.
    After an error there is no wait: the peers may be stuck in a collective."""
    if not d.active:
        return
    import torch.distributed as dist  # torch: not at --help

    if not dist.is_initialized():
        return
    if wait_for_peers and d.world > 1 and dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=wait_s))
        except RuntimeError as err:
            why = next((line for line in str(err).splitlines() if line.strip()), "")
            log.warning(f"rank {d.rank}: the other ranks did not reach the run's end ({why})")
    dist.destroy_process_group()


def check_shares(n_train: int, batch_size: int, dist: Dist) -> None:
    """Every rank needs a sample of every global batch: a last batch smaller than the world
    size would leave a rank an empty share (a NaN loss, and DDP averaging it into every
    rank's gradients). Raised alike on every rank, before anything is built."""
    last = n_train % batch_size or batch_size
    if dist.active and last < dist.world:
        raise ConfigError(
            "data.batch_size", batch_size, f"the last batch of an epoch ({n_train} training "
            f"samples) has {last} sample(s), fewer than the {dist.world} DDP ranks that "
            "share it; choose a batch size that leaves at least one sample per rank",
        )


def agreed_stop(stop: Any, dist: Dist, every: int = STOP_CHECK_EVERY) -> Any:
    """What the epoch engine asks whether to stop (`requested(step, steps)`): the flag
    itself for one process, where nobody waits for anybody; under DDP an `AgreedStop`
    around it, so every rank stops after the same batch."""
    if not dist.active or dist.world == 1:
        return stop
    import torch  # torch: not at --help
    import torch.distributed as tdist

    # nccl reduces tensors on this rank's GPU (the one setup() made current), gloo on the CPU
    on_gpu = tdist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    return AgreedStop(stop, dist.rank, every, device)


class AgreedStop:
    """A stop flag the ranks of one DDP run read alike. `flag` is this rank's own (its
    signal handler sets `flag.signum`); `requested` answers, on every rank, the same
    signal after the same step, or None.

    Only some steps check, the same ones on every rank (each `every`-th step of an epoch,
    and its last), so every rank joins the same collectives: there the ranks all-reduce
    (MAX) the signal number each one has (0: none), and once any rank has one, all of them
    stop on it, the ranks that got none included (their run ends `interrupted` with it too).
    The other steps cost nothing: no collective, no host sync (a GPU run stays
    asynchronous between checks). A signal waits at most `every` steps; the partial
    epoch is dropped as in one process, so where it is seen does not change what a
    resume continues from."""

    def __init__(self, flag: Any, rank: int, every: int, device: torch.device) -> None:
        import torch  # torch: not at --help

        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.flag, self.rank, self.every = flag, rank, every
        self.signum: int | None = None  # the signal every rank agreed to stop on
        self._box = torch.zeros(1, dtype=torch.int32, device=device)  # reused: no allocation

    def requested(self, step: int, steps: int) -> int | None:
        """The signal to stop on after `step` (1-based) of an epoch of `steps` steps, the
        same on every rank; `step >= steps`: the epoch's end, always a check.

        The agreed signal is kept here, not set on `flag`: for this rank's handler a signal
        that comes later is still its first, so it still finishes cleanly (torchrun sends
        SIGTERM to the ranks still running once one has exited; as a second signal it
        would end rank 0 at once, maybe before status.json), and only a rank that got
        the signal itself hands it on to a launcher's handler (`chain`)."""
        if self.signum is not None or (step % self.every and step < steps):
            return self.signum
        import torch.distributed as tdist  # torch: not at --help

        self._box.fill_(self.flag.signum or 0)
        tdist.all_reduce(self._box, op=tdist.ReduceOp.MAX)
        agreed = int(self._box.item())  # the one host sync, on check steps only
        if agreed:
            self.signum = agreed
            if self.flag.signum is None:
                log.warning(
                    f"rank {self.rank}: {_signal_name(agreed)} on another rank: every rank "
                    "stops after this batch"
                )
        return self.signum


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
