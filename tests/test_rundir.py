"""One run per run dir, resume that says what it does, signals during start-up, and the
last.pt written before the first epoch (issue #18, "Nothing lost")."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from runner.io import files
from runner.run.rundir import RunDirRefused, extend_blocker
from runner.run.train import train
from runner.train.stopping import StopFlag
from schedulers import ConfigError
from tests.helpers import (
    SLOW,
    cli_in_process,
    comparable,
    make_cfg,
    read_metrics,
    release_kept_locks,
    snapshot,
    start,
    wait_for_rows,
)


def resume(run_dir: Path, *overrides: str):
    """train() as `python -m runner resume=<dir> <overrides>` calls it."""
    given = [f"resume={run_dir}", *overrides]
    return train(make_cfg(*given), run_dir, overrides=given)


# -- one run per run dir


@pytest.mark.slow
def test_a_second_run_into_a_used_dir_is_refused_and_a_complete_one_is_left_alone(tmp_path):
    """Sequential: a new run into a dir holding another run's results exits 2 naming the dir
    and the way out; resuming the complete run without changes says so and exits 0; an
    extension the schedule cannot take is refused naming the key. No file changes. (The
    CLI's checks before Hydra starts, in-process: cli_in_process.)"""
    run_dir = tmp_path / "run"
    assert train(make_cfg("epochs=2"), run_dir).status == "completed"  # cosine, W&B offline
    before = snapshot(run_dir)
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1

    other = cli_in_process("epochs=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert other.returncode == 2, other.stderr
    assert other.stderr.startswith(f"config error: hydra.run.dir='{run_dir}': ")
    assert f"resume={run_dir}" in other.stderr and "differs in epochs" in other.stderr
    assert "Traceback" not in other.stderr and len(other.stderr.strip().splitlines()) == 1
    assert snapshot(run_dir) == before

    again = cli_in_process(f"resume={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{run_dir} is already complete (2 epochs" in again.stdout
    assert len((again.stdout + again.stderr).strip().splitlines()) == 1
    assert snapshot(run_dir) == before  # no new W&B run, no .hydra/resumed, train.log as it was

    longer = cli_in_process(f"resume={run_dir}", "epochs=4", cwd=tmp_path)
    assert longer.returncode == 2, longer.stderr
    assert longer.stderr.startswith("config error: epochs=4: cannot extend")
    assert "scheduler.T_max" in longer.stderr and "Traceback" not in longer.stderr
    assert snapshot(run_dir) == before


def test_in_process_a_used_dir_is_refused_unless_it_is_this_run(tmp_path):
    run_dir = tmp_path / "run"
    args = ("logger=none", "epochs=2", "scheduler=step")
    train(make_cfg(*args), run_dir)
    before = snapshot(run_dir)
    with pytest.raises(RunDirRefused, match=r"config.yaml is another run's \(differs in seed\)"):
        train(make_cfg(*args, "seed=1"), run_dir)
    assert snapshot(run_dir) == before
    # the same config again: the complete run is left as it is
    assert train(make_cfg(*args), run_dir, overrides=args).status == "completed"
    assert snapshot(run_dir) == before

    # results with no checkpoint to continue (trainer.checkpoint=false) are not redone either
    bare = tmp_path / "bare"
    train(make_cfg(*args, "trainer.checkpoint=false"), bare)
    with pytest.raises(RunDirRefused, match=r"results \(metrics.jsonl, status.json\)"):
        train(make_cfg(*args, "trainer.checkpoint=false"), bare)
    # a dir holding no results (Hydra's own files, a stale lock, a failed start) is used
    fresh = tmp_path / "fresh"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / ".lock").write_text("999999\n")  # left by a killed run: flock is gone with it
    files.write_json_atomic(fresh / "status.json", {"status": "failed", "error": "x"})
    assert train(make_cfg(*args), fresh).status == "completed"


@pytest.mark.slow
def test_a_concurrent_second_run_is_refused_and_the_first_completes(tmp_path):
    """The first run is paused (SIGSTOP) mid-run while the second is checked: it is still
    running and holding its dir however long the check takes, so a short run will do."""
    run_dir = tmp_path / "run"
    first = start([*SLOW, "epochs=3", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_rows(run_dir, 1, first)  # paused with 2 epochs (~0.6 s) to go
    first.send_signal(signal.SIGSTOP)
    try:
        second = cli_in_process(
            *SLOW, "epochs=3", "logger=none", f"hydra.run.dir={run_dir}", cwd=tmp_path
        )
        resumed = cli_in_process(f"resume={run_dir}", cwd=tmp_path)  # named by resume=
        assert first.poll() is None, "the first run ended before the second was checked"
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    assert second.stderr.startswith(
        f"config error: hydra.run.dir='{run_dir}': another run (pid {first.pid}) is writing"
    )
    assert "Traceback" not in second.stderr
    assert resumed.returncode == 2 and resumed.stderr == (
        f"config error: resume='{run_dir}': another run (pid {first.pid}) is writing into it; "
        "wait for it to end, then run this again\n"
    )
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert [r["epoch"] for r in read_metrics(run_dir)] == list(range(3))
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("exists", [False, True], ids=["new dir", "empty dir"])
def test_the_cli_holds_the_run_dir_before_hydra_writes_into_it(tmp_path, monkeypatch, exists):
    """Two runs started at once into one hydra.run.dir both passed the CLI's check; the one
    refused later had already written its .hydra/ over the other's, which mislabels the dir
    in a sweep report. The CLI now holds the lock when Hydra starts, and the run takes it
    over (flock is per open file: opening it again would be refused)."""
    import runner.__main__ as entry

    run_dir = tmp_path / "run"
    if exists:
        run_dir.mkdir()
    seen: list[str] = []

    def hydra_starts() -> None:  # where Hydra would write .hydra/ and train.log
        fd = os.open(run_dir / ".lock", os.O_RDONLY | os.O_CREAT)  # another open file
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)
        with files.hold_run_dir(run_dir) as lock:  # the run's own: takes the lock over
            lock.claim()
            seen.append((run_dir / ".lock").read_text().strip())

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "")  # cli() sets it for Hydra: undone after the test
    monkeypatch.setattr(sys, "argv", ["runner", "logger=none", f"hydra.run.dir={run_dir}"])
    monkeypatch.setattr(entry, "main", hydra_starts)
    monkeypatch.setattr(entry, "_CLI_STOP", None)
    try:
        entry.cli()
    finally:
        release_kept_locks()
    assert seen == ["held", str(os.getpid())]
    assert files.run_dir_holder(run_dir) is None  # released with the run's block


@pytest.mark.slow
def test_a_run_dir_that_cannot_be_made_or_is_made_from_the_config(tmp_path):
    """A file in the way is a config error in one line (was Hydra's three lines, exit 1);
    a dir named from the config is locked by the run, not under its literal text."""
    (tmp_path / "afile").write_text("")
    for target, why in (
        (tmp_path / "afile", "File exists"),
        (tmp_path / "afile" / "sub", "Not a directory"),
    ):
        proc = cli_in_process("logger=none", f"hydra.run.dir={target}", cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr == f"config error: hydra.run.dir='{target}': cannot be made ({why})\n"
    proc = cli_in_process(
        "epochs=1", "logger=none", "hydra.run.dir=runs/${optimizer.lr}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["0.05"]


def test_the_lock_is_held_for_the_run_and_refuses_an_in_process_second_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with files.hold_run_dir(run_dir) as lock:
        lock.claim()
        assert files.run_dir_holder(run_dir) is not None
        with pytest.raises(RunDirRefused, match=r"another run \(pid \d+\) is writing into it"):
            train(make_cfg("logger=none", "epochs=1"), run_dir)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    assert files.run_dir_holder(run_dir) is None  # released with the block
    assert train(make_cfg("logger=none", "epochs=1"), run_dir).status == "completed"


# -- resume= with overrides


def test_resume_with_more_epochs_extends_an_explicit_schedule_exactly(tmp_path):
    step = ("logger=none", "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5")
    run_dir = tmp_path / "run"
    train(make_cfg(*step, "epochs=3"), run_dir)
    result = resume(run_dir, "epochs=5", "trainer.progress=line")
    assert result.status == "completed" and result.epochs_done == 5
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    lr = make_cfg().optimizer.lr
    assert [r["lr/group0"] for r in rows] == pytest.approx([lr * 0.5 ** (e // 2) for e in range(5)])
    saved = (run_dir / "config.yaml").read_text()
    assert "epochs: 5" in saved and "progress: line" in saved
    assert json.loads((run_dir / "status.json").read_text())["epochs_done"] == 5
    # the same numbers as a run of 5 epochs from the start
    train(make_cfg(*step, "epochs=5", "trainer.progress=line"), tmp_path / "ref")
    assert comparable(rows) == comparable(read_metrics(tmp_path / "ref"))


def test_resume_refuses_what_it_cannot_apply_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    train(make_cfg("logger=none", "epochs=2"), run_dir)  # cosine, T_max null
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=r"epochs=4: cannot extend .*scheduler\.T_max is null"):
        resume(run_dir, "epochs=4")
    with pytest.raises(ConfigError, match=r"^optimizer\.lr=0\.1: a resumed run keeps") as caught:
        resume(run_dir, "optimizer.lr=0.1", "seed=3", "trainer.progress=line")
    assert "also refused: seed" in str(caught.value)
    with pytest.raises(ConfigError, match=r"epochs=1: below the saved epochs=2"):
        resume(run_dir, "epochs=1")
    with pytest.raises(ConfigError, match=r"^experiment='lecture_lenet': a resumed run keeps"):
        resume(run_dir, "+experiment=lecture_lenet")
    assert snapshot(run_dir) == before
    # values equal to the saved ones, and safe keys of a complete run: nothing to do
    assert resume(run_dir, "epochs=2", "optimizer.lr=0.05", "logger=none").status == "completed"
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    ("overrides", "blocker"),
    [
        (["scheduler=step"], None),
        (["scheduler=multistep"], None),
        (["scheduler=exponential"], None),
        (["scheduler=plateau"], None),
        (["scheduler=lambda"], None),
        (["scheduler=none"], None),
        (["scheduler=cyclic"], None),
        (["scheduler=cosine_restarts"], None),
        (["scheduler=cosine", "scheduler.T_max=5"], None),
        (["scheduler=cosine"], "scheduler.T_max"),
        (["scheduler=linear"], "scheduler.total_iters"),
        (["scheduler=poly", "scheduler.total_iters=4"], None),
        (["scheduler=poly"], "scheduler.total_iters"),
        (["scheduler=onecycle"], "scheduler"),
        (["scheduler=wsd"], "scheduler"),
        (["scheduler=sequence"], "scheduler.phases.2.length"),  # its last phase: the rest
        (
            [
                "scheduler=sequence",
                "scheduler.phases=[{name: linear, length: 2}, {name: cosine, length: 3}]",
            ],
            None,
        ),  # fmt: skip
        (
            [
                "scheduler=target",
                "scheduler._target_=torch.optim.lr_scheduler.StepLR",
                "+scheduler.step_size=2",
            ],
            None,
        ),  # fmt: skip
    ],
)
def test_which_schedules_can_be_extended(overrides, blocker):
    found = extend_blocker(make_cfg(*overrides).scheduler)
    assert (found and found[0]) == blocker


# -- signals during start-up, and last.pt before the first epoch


def test_a_signal_during_start_up_leaves_status_interrupted(tmp_path, monkeypatch):
    import runner.run.train

    real, stop = runner.run.train.build_run, StopFlag()

    def slow_start(*args, **kwargs):  # the signal arrives while the data loads
        run = real(*args, **kwargs)
        stop.signum = signal.SIGTERM  # what the handler does
        return run

    monkeypatch.setattr(runner.run.train, "build_run", slow_start)
    result = train(make_cfg("logger=none", "epochs=2"), tmp_path, stop=stop)
    assert result.status == "interrupted" and result.signum == signal.SIGTERM
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "interrupted" and status["epochs_done"] == 0
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "last.pt").exists()
    monkeypatch.undo()
    # the same command again starts it (nothing was trained, nothing is lost)
    assert train(make_cfg("logger=none", "epochs=2"), tmp_path).status == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_right_after_the_run_dir_appears_exits_cleanly(tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = start(["epochs=3", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    deadline = time.monotonic() + 120
    while not run_dir.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert f"{sig.name} during start-up" in out + err


def test_last_pt_exists_before_the_first_epoch_and_resumes_exactly(tmp_path, monkeypatch):
    import runner.run.train

    args = ("logger=none", "epochs=2", "trainer.checkpoint_interval_s=3600")
    run_dir = tmp_path / "run"
    real, stop, seen = runner.run.train.train_step, StopFlag(), []

    def step_then_stop(*a, **kw):  # a signal in the third batch of epoch 0
        seen.append((run_dir / "last.pt").exists())
        if len(seen) == 3:
            stop.signum = signal.SIGINT
        return real(*a, **kw)

    monkeypatch.setattr(runner.run.train, "train_step", step_then_stop)
    stopped = train(make_cfg(*args), run_dir, stop=stop)
    monkeypatch.undo()
    assert seen == [True] * 3  # on disk before the first batch
    assert stopped.status == "interrupted"
    assert not (run_dir / "metrics.jsonl").exists() or not read_metrics(run_dir)
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["progress"]["epoch"] == 0 and last["progress"]["step"] == 0
    assert not (run_dir / "best.pt").exists()
    assert resume(run_dir).status == "completed"
    train(make_cfg(*args), tmp_path / "ref")
    assert comparable(read_metrics(run_dir)) == comparable(read_metrics(tmp_path / "ref"))
