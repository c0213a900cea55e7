"""How the runner writes and reads its files, so that nothing it leaves behind is torn.

- Whole files (status.json, config.yaml, reports, CSVs, checkpoints) are written to a
  temp file in the same dir, fsynced, then `os.replace`d over the target: a reader, or
  a run killed mid-write, sees the old file or the new one, never half of one. The temp
  file is removed if the write fails; one orphaned by a SIGKILL is named
  `.<name>.<random>.tmp` and `remove_orphans` clears it.
- metrics.jsonl is appended one block of whole lines per `os.write` call (unbuffered,
  so flushed), and a line torn by a full disk is never continued by the next row.
- Readers are tolerant: `read_jsonl` returns the whole rows and skips a damaged line
  with one warning naming the file and line; `read_json` gives None for a missing,
  empty or undecodable file (status.json: "no status").
- A write that fails because the disk is full, read-only, over quota or broken raises
  `WriteFailed`, whose message is the one line the CLI prints:
  `cannot write <path>: <cause>`.
- One run per run dir: `hold_run_dir` takes an exclusive `flock` on `<run dir>/.lock`
  for the run's life. The kernel drops it when the process ends, however it ends, so a
  lock left by a killed run never blocks the next one. The CLI takes it before Hydra
  writes .hydra/ there (`keep_run_dir`), and the run's own `hold_run_dir` takes that
  lock over: flock is per open file, so opening the lock file again would be refused.
  A forked child (a DataLoader worker) shares that open file, so it closes its copy at
  once (`_drop_inherited_locks`): one that outlived its SIGKILLed run held the dir, and
  `resume` was refused until it exited. The run's own lock stays held (flock is released
  when every copy is closed, or by LOCK_UN, which a child must never call).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("schedlab")

# the errors that mean "this file cannot be written here", not a bug in the runner
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EFBIG})


class WriteFailed(OSError):
    """A file could not be written (disk full, read-only, over quota, I/O error)."""

    def __init__(self, path: Path | str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path, self.cause = Path(path), cause

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.strerror}"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (joblib workers send it back)
        return type(self), (self.path, self.cause)


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a disk-full/read-only/I-O error raised inside into a WriteFailed naming path."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            raise WriteFailed(path, err) from err
        raise


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked (a full disk, a signal)
        view = view[os.write(fd, view) :]


def _temp_name(target: Path) -> Path:
    return target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomic(path: Path | str, fill: Callable[[Path], None], fsync: bool = True) -> None:
    """`fill(tmp)` writes the new content to a temp file next to `path` (created empty,
    with the permissions a new file gets); it is then fsynced and put in place with
    os.replace. On any error the temp file is removed and `path` is left as it was."""
    target = Path(path)
    with writing(target):
        while True:
            tmp = _temp_name(target)
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue
        try:
            fill(tmp)
            if fsync:
                _fsync(tmp)
            os.replace(tmp, target)
        finally:
            with suppress(OSError):
                os.unlink(tmp)  # gone already when os.replace succeeded


def write_bytes_atomic(path: Path | str, data: bytes | memoryview, fsync: bool = True) -> None:
    def fill(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    replace_atomic(path, fill, fsync=False)  # fsynced above, on the fd it was written with


def write_text_atomic(path: Path | str, text: str, fsync: bool = True) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), fsync)


def write_json_atomic(path: Path | str, value: Any, fsync: bool = True) -> None:
    """`value` as indented JSON (NaN/inf as Python's json writes them), atomically."""
    write_text_atomic(path, json.dumps(value, indent=2) + "\n", fsync)


def append_line(path: Path | str, line: str) -> None:
    """Append `line` (one or more whole lines; a final newline is added if missing) with a
    single write call. If the file ends in a line torn by an earlier failed write, a newline
    goes first, so the torn fragment stays a line of its own that readers skip."""
    target = Path(path)
    data = (line if line.endswith("\n") else line + "\n").encode("utf-8")
    with writing(target):
        fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            _write_all(fd, data)
        finally:
            os.close(fd)


class LineAppender:
    """append_line for a file appended to again and again (a run's metrics.jsonl, every
    epoch): the file stays open between appends, so each is one write call, not five. After
    a failed write it is closed, and the next append opens it again and, as append_line
    does, starts with a newline if the file ends in a torn line."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._file: Any = None  # raw, unbuffered; closed by close() or when collected

    def append(self, line: str) -> None:
        data = (line if line.endswith("\n") else line + "\n").encode("utf-8")
        try:  # `writing`'s translation, without a context manager per epoch row
            if self._file is None:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
                self._file = os.fdopen(fd, "r+b", buffering=0)
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
            _write_all(self._file.fileno(), data)
        except OSError as err:
            self.close()
            if err.errno in WRITE_ERRNOS and not isinstance(err, WriteFailed):
                raise WriteFailed(self.path, err) from err
            raise

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()


class LogFile(logging.FileHandler):
    """train.log (Hydra's job logging, conf/hydra/job_logging/schedlab.yaml). A line it cannot
    write for want of space (or on a read-only or failing disk) is said once, in one line,
    and the file takes no more lines, instead of logging's traceback for every line after:
    the console still shows them, and the run ends at the first record it cannot write."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError) or err.errno not in WRITE_ERRNOS:
            super().handleError(record)
            return
        self.failed = True
        sys.stderr.write(
            f"warning: {WriteFailed(self.baseFilename, err)}: its lines go to the console only\n"
        )


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (none if it is missing). A line that is not a whole
    JSON object (torn by a full disk or a kill, or damaged) is skipped with a warning that
    names the file and the line."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    last = max((n for n, raw in enumerate(lines) if raw.strip()), default=-1)
    rows = []
    for n, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            what = "the last line, torn" if n == last else "damaged"
            log.warning(f"{target}: line {n + 1} ({what}) skipped: {err}")
            continue
        rows.append(row)
    return rows


def read_json(path: Path | str) -> dict[str, Any] | None:
    """A JSON object from a file, or None when the file is missing, empty or damaged (a
    warning says which, for the last two)."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        return None
    try:
        value = json.loads(data.decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        key = (os.path.abspath(target), hash(data))
        if key not in _WARNED:  # once per file and content: a command reads status.json often
            _WARNED.add(key)
            why = "is empty" if not data.strip() else f"is damaged ({err})"
            log.warning(f"{target} {why}; read as missing")
        return None
    return value


_WARNED: set[tuple[str, int]] = set()  # damaged JSON files warned about (read_json)


# what status.json says of a run that never started training: its start failed, or a
# signal stopped it first (a run writes config.yaml once its start stands)
NEVER_STARTED = ("failed", "interrupted")


def holds_record(run_dir: Path | str) -> bool:
    """The run dir holds a run's record, which a config error must leave as it was (the
    CLI's `_mark_failed`, a fused member's failed start): a config.yaml, or a status.json
    other than that of a start that failed or was stopped before it. Such a status.json
    alone records nothing trained: the next failed start's error replaces it."""
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").exists():
        return True
    status = read_json(run_dir / "status.json")
    return status is not None and status.get("status") not in NEVER_STARTED


def no_run_to_resume(run_dir: Path | str) -> str:
    """Why resume= finds no run in a dir without config.yaml, with what its status.json
    records of a start that failed or was stopped first: nothing of it trained, so the
    command that started it (not resume=) starts it again."""
    why = f"no run to resume: {Path(run_dir) / 'config.yaml'} missing"
    status = read_json(Path(run_dir) / "status.json")
    if status is None or status.get("status") not in NEVER_STARTED:
        return why
    how = (
        f"its start failed ({status.get('error')})"
        if status["status"] == "failed"
        else "it was stopped during its start-up"
    )
    return f"{why}: {how}, before it trained; the command that started it starts it again"


def remove_orphans(run_dir: Path | str, names: Iterable[str]) -> list[Path]:
    """Delete the temp files `replace_atomic` left for these names when a process was
    killed mid-write (`.<name>.<random>.tmp`); returns what was removed."""
    removed = []
    for name in names:
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
            except FileNotFoundError:
                continue
            removed.append(tmp)
    if removed:
        log.info(f"removed {len(removed)} temp file(s) left by an interrupted write in {run_dir}")
    return removed


LOCK = ".lock"


class RunDirBusy(Exception):
    """Another process holds the run dir's lock; `pid` is the one it wrote, if any."""

    def __init__(self, run_dir: Path, pid: int | None) -> None:
        super().__init__(f"{run_dir} is in use by another run" + (f" (pid {pid})" if pid else ""))
        self.run_dir, self.pid = run_dir, pid


@dataclass
class RunDirLock:
    fd: int

    def claim(self) -> None:
        """Write this process's pid into the lock file: for the message a second run gets.
        Called once the run has passed its checks, so a refused run writes nothing."""
        with suppress(OSError):  # only a courtesy: a full disk must not stop the run here
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)


def _pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


# locks this process took ahead of its run (keep_run_dir), by resolved run dir, until the
# run's hold_run_dir takes them over
_KEPT: dict[str, RunDirLock] = {}
# the fds of every lock this process holds (kept or held), with the (device, inode) of the
# lock file each was opened on
_HELD: dict[int, tuple[int, int]] = {}


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def release(lock: RunDirLock) -> None:
    """Close a lock's fd, which releases it, and forget it: a number left in _HELD would
    later close whatever file reused it, in every child forked (a DataLoader worker's
    pipe: a hang)."""
    _HELD.pop(lock.fd, None)
    os.close(lock.fd)


def release_kept() -> None:
    """Release the locks this process took for runs it will not start (keep_run_dir)."""
    for lock in _KEPT.values():
        release(lock)
    _KEPT.clear()


def _drop_inherited_locks() -> None:
    """In a forked child: close its copies of the parent's lock fds, before the child runs
    anything else, so that the lock lives exactly as long as the run's own process."""
    for fd, file in _HELD.items():
        with suppress(OSError):
            if _identity(fd) == file:  # never another file given a stale number
                os.close(fd)
    _HELD.clear()
    _KEPT.clear()  # the child holds none of them: a run it started would take its own


os.register_at_fork(after_in_child=_drop_inherited_locks)


def _lock(run_dir: Path | str) -> RunDirLock:
    path = Path(run_dir) / LOCK
    with writing(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # closed on exec; fork: see _HELD
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _pid(fd)
        os.close(fd)
        raise RunDirBusy(Path(run_dir), pid) from None
    _HELD[fd] = _identity(fd)
    return RunDirLock(fd)


def keep_run_dir(run_dir: Path | str) -> RunDirLock:
    """Take the run dir's lock now, for the run this process is about to start: two runs
    started at once into one dir would otherwise both pass the CLI's check, and the one
    refused later would already have written its .hydra/ over the other's (the sweep
    report labels a run from it). RunDirBusy if another process holds it."""
    key = str(Path(run_dir).resolve())
    if key not in _KEPT:
        _KEPT[key] = _lock(run_dir)
    return _KEPT[key]


@contextmanager
def hold_run_dir(run_dir: Path | str) -> Iterator[RunDirLock]:
    """Hold `<run_dir>/.lock` exclusively until the block ends (or the process does);
    RunDirBusy at once if another process holds it. A lock this process kept for the run
    (keep_run_dir) is taken over."""
    lock = _KEPT.pop(str(Path(run_dir).resolve()), None) or _lock(run_dir)
    try:
        yield lock
    finally:
        release(lock)


def run_dir_holder(run_dir: Path | str) -> RunDirBusy | None:
    """Whether another process holds the run dir's lock (a RunDirBusy saying which), without
    taking it or creating anything."""
    if str(Path(run_dir).resolve()) in _KEPT:
        return None  # this process took it for its run
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return None  # no lock file: no run has held this dir since it was made
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return RunDirBusy(Path(run_dir), _pid(fd))
        return None
    finally:
        os.close(fd)
