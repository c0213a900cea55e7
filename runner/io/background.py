"""One worker thread for the slow side work of a run: checkpoint files and W&B calls.

The loop only snapshots what must be saved and hands it over, so writing a
checkpoint or talking to the W&B service never holds up the next batch (on
digits-sized epochs they cost more than a tenth of the epoch). Work runs in
submission order; an error in it is raised in the loop at the next submit or
flush, so a failing disk is not silently ignored.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class Background:
    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="schedlab-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:
                    job()
            except BaseException as err:  # surfaced in the loop's thread
                self._error = err
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, job: Callable[[], Any]) -> None:
        self._raise()
        self._queue.put(job)

    def flush(self) -> None:
        """Wait until everything submitted so far is done."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        self._raise()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
