"""Nothing lost (issue #18): files written atomically, a full disk ends a run cleanly, and
damaged files (a torn metrics line, an empty status.json, a broken last.pt) are read
safely or refused with one clear line."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from runner.io import files
from runner.io.checkpoint import Checkpointer
from runner.io.rngs import numpy_state
from runner.run.train import train
from runner.sweep import report
from tests.helpers import (
    FULL_DISK_DRIVER,
    cli_in_process,
    make_cfg,
    read_metrics,
    run_python,
    sweep_job,
)

ENOSPC = os.strerror(errno.ENOSPC)  # "No space left on device"


def _no_space(*_: object) -> None:
    raise OSError(errno.ENOSPC, ENOSPC)


# -- unit: the writers and readers


def test_write_text_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "status.json"
    files.write_text_atomic(path, "old\n")
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        _no_space()

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(files.WriteFailed) as caught:
        files.write_text_atomic(path, "a new and longer content\n")
    monkeypatch.undo()
    assert str(caught.value) == f"cannot write {path}: {ENOSPC}"
    assert caught.value.errno == errno.ENOSPC
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # temp file removed


def test_a_failing_replace_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")
    monkeypatch.setattr(os, "replace", _no_space)
    with pytest.raises(files.WriteFailed, match="cannot write .*config.yaml: No space left"):
        files.write_json_atomic(path, {"new": 2})
    assert path.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_other_os_errors_are_not_write_failures(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        files.write_text_atomic(tmp_path / "no" / "dir" / "x.txt", "x")
    assert not isinstance(caught.value, files.WriteFailed)


def test_read_jsonl_skips_a_torn_last_line_and_warns_once(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2, "val/lo')
    with caplog.at_level(logging.WARNING, logger="schedlab"):
        assert files.read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0] and "line 3" in warnings[0] and "last line" in warnings[0]


def test_read_jsonl_skips_a_damaged_middle_line_and_reads_nan(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 0, "loss": NaN}\n\xff\xfe garbage\n[1, 2]\n{"epoch": 1}\n')
    rows = files.read_jsonl(path)
    assert [r["epoch"] for r in rows] == [0, 1] and rows[0]["loss"] != rows[0]["loss"]
    assert sum("line 2" in r.message or "line 3" in r.message for r in caplog.records) == 2
    assert files.read_jsonl(tmp_path / "missing.jsonl") == []


def test_read_json_reads_an_empty_or_damaged_file_as_missing(tmp_path, caplog):
    path = tmp_path / "status.json"
    assert files.read_json(path) is None and not caplog.records  # missing: no warning
    path.write_bytes(b"")
    assert files.read_json(path) is None
    path.write_text('{"status": "compl')
    assert files.read_json(path) is None
    assert len(caplog.records) == 2 and "empty" in caplog.records[0].message
    path.write_text('{"status": "completed"}')
    assert files.read_json(path) == {"status": "completed"}


def test_append_line_never_continues_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    files.append_line(path, '{"epoch": 0}')
    with path.open("a") as f:
        f.write('{"epoch": 1, "tor')  # what a full disk left
    files.append_line(path, '{"kind": "step"}\n{"epoch": 1}')
    assert path.read_text().splitlines()[-2:] == ['{"kind": "step"}', '{"epoch": 1}']
    assert [r.get("epoch") for r in files.read_jsonl(path)] == [0, None, 1]


def test_a_new_checkpointer_removes_orphaned_temp_checkpoints(tmp_path):
    orphans = [tmp_path / ".last.pt.0a1b2c3d.tmp", tmp_path / ".best.pt.tmp8x_q.tmp"]
    keep = [tmp_path / "last.pt", tmp_path / ".hydra", tmp_path / ".status.json.notes"]
    for p in [*orphans, *keep[:1], *keep[2:]]:
        p.write_bytes(b"half a checkpoint")
    keep[1].mkdir()
    Checkpointer(tmp_path, interval_s=0)
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in keep)


def _same_numpy_state(a, b) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])


def test_the_numpy_rng_state_in_a_snapshot_is_always_numpys_own():
    """runner.io.rngs.numpy_state reuses its last copy while numpy's global generator is
    untouched (a cheap read of its raw words): every draw, a reseed, set_state and a
    consumed cached Gaussian (which leaves the words as they were) must be seen."""
    np.random.seed(3)
    first = numpy_state()
    assert _same_numpy_state(first, np.random.get_state())
    assert numpy_state() is first  # untouched: the same copy, not a new get_state()
    steps = [
        lambda: np.random.rand(),  # a draw
        lambda: np.random.seed(4),  # a reseed
        lambda: np.random.set_state(first),  # put back
        lambda: np.random.standard_normal(),  # a pair drawn, one cached (has_gauss)
        lambda: np.random.standard_normal(),  # the cached one consumed: words unchanged
        lambda: None,
    ]
    for step in steps:
        step()
        assert _same_numpy_state(numpy_state(), np.random.get_state())
    taken = numpy_state()
    np.random.rand(3)
    assert not _same_numpy_state(taken, np.random.get_state())  # the copy was not a view


# -- a full disk at each write site, through the CLI


ARGS = ("epochs=3", "logger=none", "trainer.checkpoint_interval_s=0", "trainer.progress=line")
FULL_DISK = {  # the file that cannot be written: (successful writes of it before, epochs left)
    "status.json": (0, 3),  # the run trained, only its status could not be written
    "metrics.jsonl": (1, 1),  # epoch 0's row is out, epoch 1's torn in half
    "last.pt": (2, 1),  # epoch 0's checkpoint is out, epoch 1's is not
    "config.yaml": (0, None),  # nothing started
}


# the torn-line test's sweep (its hydra.sweep.dir added): one job, seed=0
TORN = ("-m", *ARGS, "seed=0")


def drive(base: Path, cases: list[dict]) -> list[subprocess.CompletedProcess]:
    """Each case's `python -m runner <argv>` (its fault injected, none for name None), run
    one after the other by one FULL_DISK_DRIVER process in `base`: their exit statuses and
    outputs, as run_cli returns them."""
    for i, case in enumerate(cases):
        case.update(stdout=str(base / f"{i}.stdout"), stderr=str(base / f"{i}.stderr"))
    driver = run_python(
        "-c", FULL_DISK_DRIVER, json.dumps(cases), cwd=base, one_thread=True, timeout=600
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    codes = json.loads(driver.stdout.splitlines()[-1])
    return [
        subprocess.CompletedProcess(
            c["argv"], code, Path(c["stdout"]).read_text(), Path(c["stderr"]).read_text()
        )
        for c, code in zip(cases, codes, strict=True)
    ]


def clean(argv: list[str]) -> dict:
    """A driver case with no fault injected: the command as `python -m runner` runs it."""
    return {"name": None, "after": 0, "argv": argv}


@dataclass
class FullDisk:
    """A FULL_DISK case: its dir (its run dir is <dir>/sweep/0), its command, what the run
    dir held after it (read before the resume), and `python -m runner resume=<run dir>`."""

    dir: Path
    proc: subprocess.CompletedProcess
    before: dict[str, Any]
    resumed: subprocess.CompletedProcess | None = None


@dataclass
class Torn:
    """The torn-line test's sweep: its first run, its report once its job's files were
    damaged (damage_torn), and the same sweep run again."""

    sweep: Path
    run_dir: Path
    first: subprocess.CompletedProcess
    damaged: dict
    again: subprocess.CompletedProcess


def damage_torn(run_dir: Path) -> None:
    """What a crash leaves: a metrics row a full disk cut short, an empty status.json."""
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 3, "lr/gro')
    (run_dir / "status.json").write_bytes(b"")


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory) -> tuple[dict[str, FullDisk], Torn]:
    """The module's commands, each as `python -m runner` runs it, in two interpreters (a
    start-up each instead of one a command): first each FULL_DISK case and the torn-line
    test's first sweep; then, once what the tests check in between was read (and the torn
    run damaged), each FULL_DISK run's resume and the torn test's sweep run again. Named
    full_disk: conftest.py's SHARED_FIXTURES_FIRST keeps its tests together under xdist."""
    base = tmp_path_factory.mktemp("commands")
    dirs = {name: base / name.replace(".", "_") for name in FULL_DISK}
    sweep = base / "torn" / "sweep"
    torn_argv = [*TORN, f"hydra.sweep.dir={sweep}"]
    faults = [
        {"name": name, "after": after, "argv": [*ARGS, f"hydra.run.dir={dirs[name] / 'sweep/0'}"]}
        for name, (after, _) in FULL_DISK.items()
    ]
    *procs, first = drive(base, [*faults, clean(torn_argv)])
    cases = {
        name: FullDisk(dirs[name], proc, before_resume(dirs[name] / "sweep", name))
        for name, proc in zip(FULL_DISK, procs, strict=True)
    }
    run_dir = sweep_job(sweep, *ARGS, "seed=0")
    damage_torn(run_dir)
    damaged = sweep_report(sweep)
    resumed = [name for name, (_, left) in FULL_DISK.items() if left is not None]
    resumes = [clean([f"resume={dirs[name] / 'sweep' / '0'}"]) for name in resumed]
    *procs, again = drive(base, [*resumes, clean(torn_argv)])
    for name, proc in zip(resumed, procs, strict=True):
        cases[name].resumed = proc
    return cases, Torn(sweep, run_dir, first, damaged, again)


def before_resume(sweep: Path, name: str) -> dict[str, Any]:
    """What the FULL_DISK case's test checks of its run dir (sweep/0) before the resume."""
    run_dir = sweep / "0"
    before: dict[str, Any] = {"temps": list(run_dir.glob(".*.tmp"))}
    if FULL_DISK[name][1] is not None:  # not config.yaml: a run to resume
        before.update(
            epochs_on_disk=epochs_on_disk(run_dir),
            epochs=[r["epoch"] for r in files.read_jsonl(run_dir / "metrics.jsonl")],
            status=files.read_json(run_dir / "status.json"),
            report=sweep_report(sweep),
        )
    return before


def epochs_on_disk(run_dir: Path) -> int:
    return torch.load(run_dir / "last.pt", weights_only=True)["progress"]["epoch"]


def sweep_report(sweep: Path, write: bool = True) -> dict:
    """`python -m runner.sweep.report <sweep>` (its main, in-process, when `write`): the one job."""
    if write:
        report.main([str(sweep)])
        assert (sweep / "report.md").exists()
    (job,) = report.load_jobs(sweep)
    return {"status": job.status, "epochs": [r["epoch"] for r in job.rows]}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FULL_DISK))
def test_a_full_disk_ends_the_run_with_one_line_and_loses_nothing(full_disk, name):
    case = full_disk[0][name]
    proc, before, left = case.proc, case.before, FULL_DISK[name][1]
    sweep = case.dir / "sweep"
    run_dir = sweep / "0"
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == f"error: cannot write {run_dir / name}: {ENOSPC}"
    assert before["temps"] == []  # no temp file left behind

    if left is None:  # config.yaml: no run to resume, and the report says the job failed
        assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
        assert sweep_report(sweep) == {"status": "failed", "epochs": []}
        resumed = cli_in_process(f"resume={run_dir}", cwd=case.dir)
        assert resumed.returncode == 2 and "config.yaml missing" in resumed.stderr
        return

    # the last good checkpoint and every row before it are whole (read before the resume)
    assert before["epochs_on_disk"] == left
    assert before["epochs"][:left] == list(range(left))
    status = before["status"]
    assert status is None if name == "status.json" else status["status"] == "failed"
    assert before["report"]["status"] == ("incomplete" if name == "status.json" else "failed")

    resumed = case.resumed  # `python -m runner resume=<run_dir>`
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0, 1, 2]  # no torn line, no repeat
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert sweep_report(sweep, write=False) == {"status": "completed", "epochs": [0, 1, 2]}


def test_a_report_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    train(make_cfg("logger=none", "epochs=1"), tmp_path / "sweep" / "0")
    (tmp_path / "sweep" / "0" / ".hydra").mkdir()
    (tmp_path / "sweep" / "0" / ".hydra" / "overrides.yaml").write_text("- epochs=1\n")
    (tmp_path / "sweep" / "report.md").write_text("the old report")
    monkeypatch.setattr(os, "fsync", _no_space)
    monkeypatch.setattr(os, "replace", _no_space)
    with pytest.raises(SystemExit, match=r"^error: cannot write .*report\.csv: No space left"):
        report.main([str(tmp_path / "sweep")])
    assert (tmp_path / "sweep" / "report.md").read_text() == "the old report"


# -- damaged files left by an earlier crash


@pytest.mark.slow
def test_torn_metrics_and_an_empty_status_are_read_resumed_and_rerun(full_disk):
    torn = full_disk[1]  # its sweep, `python -m runner -m <ARGS> seed=0 hydra.sweep.dir=...`
    run_dir = torn.run_dir
    assert torn.first.returncode == 0, torn.first.stderr
    # then damage_torn: a torn metrics row and an empty status.json, read by the report
    assert torn.damaged == {"status": "incomplete", "epochs": [0, 1, 2]}
    # the same sweep run again: the job resumes its own run, it is not marked failed
    assert torn.again.returncode == 0, torn.again.stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert sweep_report(torn.sweep, write=False) == {"status": "completed", "epochs": [0, 1, 2]}
    damage_torn(run_dir)
    # composed directly (the CLI quotes it itself): a dir name with `=` and `,` in quotes
    assert train(make_cfg(f"resume='{run_dir}'"), run_dir).status == "completed"
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0, 1, 2]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(make_cfg("logger=none", "epochs=2"), run_dir)
    return run_dir


@pytest.mark.parametrize("damage", ["empty", "truncated", "random"])
def test_a_damaged_last_pt_is_refused_and_the_status_is_kept(tmp_path, finished_run, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    last = run_dir / "last.pt"
    data = last.read_bytes()
    last.unlink()  # best.pt may be a hard link to it: leave that one whole
    last.write_bytes(
        {"empty": b"", "truncated": data[: len(data) // 2], "random": os.urandom(4096)}[damage]
    )
    status = (run_dir / "status.json").read_bytes()
    proc = cli_in_process(f"resume={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"config error: resume='{run_dir}': {last} is damaged (")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert (run_dir / "status.json").read_bytes() == status


@pytest.mark.parametrize(("text", "says"), [
    ("", "config.yaml is empty (damaged)"),  # was: "edited after its last checkpoint"
    ("epochs: [\n", "config.yaml is damaged (ParserError: "),  # was: several lines
])  # fmt: skip
def test_a_damaged_config_yaml_is_refused_in_one_line(tmp_path, finished_run, text, says):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "config.yaml").write_text(text)
    status = (run_dir / "status.json").read_bytes()
    proc = cli_in_process(f"resume={run_dir}", "epochs=3", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"config error: resume='{run_dir}': {run_dir}/{says}")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert (run_dir / "status.json").read_bytes() == status


def test_resume_of_a_missing_dir_creates_nothing(tmp_path):
    for args in (
        [f"resume={tmp_path / 'nothing'}"],
        [f"hydra.run.dir={tmp_path / 'nothing'}", "resume=true"],
    ):
        proc = cli_in_process(*args, cwd=tmp_path)
        assert proc.returncode == 2 and "config.yaml missing" in proc.stderr, proc.stderr
        assert not (tmp_path / "nothing").exists()
        assert not (tmp_path / "outputs").exists()


def test_orphaned_temp_checkpoints_are_removed_on_resume(tmp_path, finished_run):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    orphan = run_dir / ".last.pt.5f3a9c1e.tmp"  # a kill -9 during a checkpoint write
    orphan.write_bytes(b"\x80half")
    result = train(make_cfg(f"resume={run_dir}"), tmp_path / "ignored")
    assert result.status == "completed"
    assert not orphan.exists()
    assert not (tmp_path / "ignored").exists()


SHORT_WRITE = """
import resource, signal, sys
from pathlib import Path
import torch
from runner.io import checkpoint
from runner.io import files
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
target = Path(sys.argv[1]) / "last.pt"
try:
    files.replace_atomic(target, lambda tmp: checkpoint.save({"w": torch.zeros(100000)}, tmp))
except files.WriteFailed as err:
    print("WriteFailed:", err)
"""


@pytest.mark.slow
def test_a_checkpoint_cut_short_by_the_disk_is_a_write_failure_not_a_torch_error(tmp_path):
    """torch.save reports a short write as RuntimeError('unexpected pos'): the checkpoint
    writer finds the OSError behind it (here a real one: a file size limit, EFBIG), so a
    full disk ends the run with the one line `cannot write <dir>/last.pt: ...`."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", SHORT_WRITE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"WriteFailed: cannot write {tmp_path / 'last.pt'}: File too large" in proc.stdout
    assert not list(tmp_path.iterdir())  # no last.pt, no temp file left
