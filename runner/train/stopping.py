"""SIGINT/SIGTERM/SIGUSR2: stop cleanly at the next batch boundary; a second signal exits
at once.

The loop polls the flag after each batch (under DDP: the ranks agree on it every few
batches, runner/dist/ddp.py), abandons the partial epoch, writes the
newest completed epoch's checkpoint, and exits with 128 + the signal number (130
for Ctrl-C, 143 for SIGTERM, 140 for SIGUSR2). SIGUSR2 is what Slurm/submitit send
before a time-out or preemption: when a launcher had its own handler installed
(submitit's requeues the job), `chain` says to hand the signal on to it once the
run has stopped, so the job comes back and resumes from last.pt.

The CLI installs the handlers before Hydra starts a single run (a sweep: each job, as it
starts), so a signal during start-up (data loading, W&B) is seen too: the run stops at
the next step of its start-up and leaves `status.json` `interrupted`, no traceback.
One exception: a worker of a torchrun job that has not joined its process group yet ends
at once on SIGTERM (torchrun ending the job, runner/dist/ddp.py); nothing of the
run has been written then.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from runner.dist.ddp import unjoined_torchrun_worker

log = logging.getLogger("schedlab")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


@dataclass
class StopFlag:
    signum: int | None = None
    chain: bool = False  # a launcher's own handler should get the signal after we stop
    # puts the handlers that were there before back (at once; idempotent), which sets `chain`
    restore: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def requested(self, step: int, steps: int) -> int | None:
        """The signal to stop on after `step` of an epoch of `steps` steps, as the epoch
        engine asks after every step: this process's own signal, at once. Under DDP the
        engine asks an AgreedStop instead (runner/dist/ddp.py), which has the ranks
        agree on it every few steps, so that all of them stop after the same batch."""
        return self.signum


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # handlers can only be installed in the main thread (e.g. some launchers)
        return

    def handler(signum: int, frame: object) -> None:
        if flag.signum is not None:
            os._exit(128 + signum)  # second signal: no more waiting; last.pt is always whole
        if signum == signal.SIGTERM and unjoined_torchrun_worker():
            os._exit(128 + signum)  # torchrun ending the job: nothing of the run here yet
        flag.signum = signum
        log.warning(
            f"{signal.Signals(signum).name}: stopping after this batch and keeping the last "
            "checkpoint (send it again to exit at once)"
        )

    previous = {s: signal.signal(s, handler) for s in SIGNALS}

    def restore() -> None:
        if not previous:
            return
        for s, h in previous.items():
            signal.signal(s, h)
        if flag.signum is not None:
            before = previous[flag.signum]
            flag.chain = callable(before) and before is not signal.default_int_handler
        previous.clear()

    flag.restore = restore
    try:
        yield flag
    finally:
        restore()


@contextmanager
def exit_on_signals() -> Iterator[None]:
    """Before a command has written anything (the CLI's checks before Hydra: torch imported,
    the config validated, seconds of every start), SIGINT or SIGTERM ends it at once, in one
    line and 130/143, instead of a KeyboardInterrupt traceback from whatever import Ctrl-C
    landed in (a second Ctrl-C added more from the interpreter's exit) or a silent death.
    Only where the handler is the default: an ignored signal stays ignored, and a
    launcher's own handler is left alone."""
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        sys.stderr.write(f"{name}: stopped before the run started; nothing was written\n")
        sys.stderr.flush()
        os._exit(128 + signum)  # nothing to save, and no exit for a second signal to land in

    previous = {s: h for s, h in defaults.items() if signal.getsignal(s) is h}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
