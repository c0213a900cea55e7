"""Nothing lost: exact resume after SIGKILL, clean stops on signals, divergence, W&B failure,
secrets kept out of outputs, and a battery of malformed configs that all fail cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.io.loggers import open_logger
from runner.run.train import train
from tests.helpers import (
    SLOW,
    cli_in_process,
    comparable,
    make_cfg,
    read_metrics,
    reference,
    resume_in_process,
    run_cli,
    run_python,
    start,
    sweep_job,
    wait_for_rows,
    wandb_records,
)

# 4 epochs, killed after the second: the rest of the run (1 or 2 epochs) is resumed. The
# step schedule halves the lr at epoch 2; Plateau (threshold 0.2: the val loss must fall by
# a fifth) reduces it after epoch 2, judged against the best loss the killed run saw
SIGKILLED = 4


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule",
    [
        ["scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5"],
        ["scheduler=cosine", "scheduler.warmup_epochs=1"],
        ["scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.5",
         "scheduler.threshold=0.2"],
    ],
    ids=["step", "cosine", "plateau"],
)  # fmt: skip
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, schedule):
    args = [*SLOW, *schedule, f"epochs={SIGKILLED}", "logger=none",
            "trainer.log_every_n_steps=7", "trainer.checkpoint_interval_s=0"]  # fmt: skip
    run_dir = tmp_path / "run"
    proc = start([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_rows(run_dir, 2, proc)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.communicate()
    assert not (run_dir / "status.json").exists()
    assert (run_dir / "last.pt").exists()
    assert len(read_metrics(run_dir)) < SIGKILLED

    assert resume_in_process(run_dir).status == "completed"
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == list(range(SIGKILLED))  # no duplicate epochs
    assert comparable(rows) == reference(tmp_path, args)  # every value, every epoch
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert (run_dir / "best.pt").exists()
    if "scheduler=plateau" in schedule:
        assert len({r["lr/group0"] for r in rows}) > 1  # Plateau state carried over a reduction


# `python -m runner`, counting the optimizer steps taken once a signal has reached the run
# (any of its StopFlags set) into ./steps_after_signal as it exits
STEPS_AFTER_SIGNAL = """
import atexit, contextlib, pathlib, runpy, sys
from torch.optim.optimizer import register_optimizer_step_post_hook
import runner.train.stopping as stopping
real, flags, after = stopping.stop_on_signals, [], [0]
@contextlib.contextmanager
def stop_on_signals():
    with real() as flag:
        flags.append(flag)
        yield flag
stopping.stop_on_signals = stop_on_signals
def count(optimizer, args, kwargs):
    after[0] += any(f.signum is not None for f in flags)
register_optimizer_step_post_hook(count)
atexit.register(lambda: pathlib.Path("steps_after_signal").write_text(str(after[0])))
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_quickly_keeps_a_checkpoint_and_resumes(tmp_path, sig, caplog):
    # the signal lands in epoch 1 (0.1 s into its ~0.3 s of 90 batches): epochs 2 and 3 are
    # left to resume
    args = [*SLOW, "epochs=4"]
    run_dir = tmp_path / "run"
    started = time.monotonic()
    proc = start([*args, f"hydra.run.dir={run_dir}"], tmp_path, script=STEPS_AFTER_SIGNAL)
    wait_for_rows(run_dir, 1, proc)
    start_s = time.monotonic() - started
    time.sleep(0.1)  # into the next epoch
    sent = time.monotonic()
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    stop_s = time.monotonic() - sent
    assert proc.returncode == 128 + sig
    # "at the next batch": at most the batch the signal landed in is finished, however
    # loaded the machine (an epoch finished first would be dozens)
    assert int((tmp_path / "steps_after_signal").read_text()) <= 1
    # and nothing slow after it (a join or a W&B sync that waits): the stop (one batch,
    # last.pt, status.json, W&B closed) takes well under the start-up this same run took
    # (interpreter, imports, W&B started, the data, an epoch), ~2 s against ~8 s at rest;
    # 5 s at least, the bound on an idle machine, which a loaded one stretches
    assert stop_s < max(5, start_s / 2), (stop_s, start_s)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert (run_dir / "last.pt").exists()

    # both spellings of resume: the run dir as the value (the job that command runs, in this
    # process: the command itself resumes in test_files.py, test_resume_edits.py and
    # test_custom_project.py), or Hydra's run dir + resume=true (the command)
    if sig == signal.SIGTERM:
        with caplog.at_level("INFO", logger="schedlab"):
            assert resume_in_process(run_dir).status == "completed"
        resume_log = caplog.text
    else:
        resumed = run_cli(f"hydra.run.dir={run_dir}", "resume=true", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        resume_log = (run_dir / "train.log").read_text()
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == list(range(4))
    # the W&B run continues under the same id
    ids = {p.name.rsplit("-", 1)[1] for p in run_dir.glob("wandb/offline-run-*")}
    assert len(ids) == 1 and len(list(run_dir.glob("wandb/offline-run-*"))) == 2
    assert comparable(rows) == reference(tmp_path, [*args, "logger=none"])
    # the stopped process closed its W&B run: the resumed one sends only its own epochs
    first, resumed_epochs = wandb_epochs(run_dir), wandb_epochs(run_dir, newest=True)
    assert resumed_epochs == list(range(resumed_epochs[0], 4)) and resumed_epochs[0] >= 1
    assert sorted(set(first) | set(resumed_epochs)) == list(range(4))
    assert "did not end cleanly" not in resume_log


def wandb_epochs(run_dir: Path, newest: bool = False) -> list[int]:
    """The epochs of the epoch rows in the run's (first, or newest) offline W&B run."""
    records = wandb_records(run_dir, index=-1 if newest else 0)
    items = [r["history"]["item"] for r in records if r["type"] == "history"]
    return [int(h["epoch"]) for h in items if "val/acc" in h]


@pytest.mark.slow
def test_a_resume_after_sigkill_sends_w_and_b_the_rows_the_killed_process_logged(tmp_path, caplog):
    """W&B keeps a live run's rows in memory until the run is closed: a SIGKILL loses all the
    killed process logged (its offline file stays empty). The resume finds last.pt written
    by a process that never ended cleanly and sends the kept rows again, so W&B ends with
    every epoch (the epochs after last.pt, trained again, twice: the same values)."""
    args = ["epochs=30", "trainer.checkpoint_interval_s=0", "trainer.progress=line"]
    run_dir = tmp_path / "run"
    proc = start([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_rows(run_dir, 5, proc)
    proc.kill()
    proc.communicate()
    killed_at = len(read_metrics(run_dir))
    assert killed_at < 30 and not (run_dir / "status.json").exists()
    with caplog.at_level("INFO", logger="schedlab"):
        assert resume_in_process(run_dir).status == "completed"
    assert [r["epoch"] for r in read_metrics(run_dir)] == list(range(30))
    # the kept rows (up to last.pt) resent first, then the epochs trained from there on
    assert wandb_epochs(run_dir, newest=True) == list(range(30))
    assert "did not end cleanly" in caplog.text


TWO_JOBS = ["-m", "seed=0,1", "epochs=1", "logger=none", "trainer.progress=line",
            "hydra.sweep.dir=sweep"]  # fmt: skip
# the two jobs' dirs, named by their overrides
JOB_0, JOB_1 = (str(sweep_job(Path("sweep"), f"seed={s}", *TWO_JOBS[2:5])) for s in (0, 1))


def sweep_with(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """TWO_JOBS run by `python -c script` (which patches the runner, then runs it as
    `python -m runner` does)."""
    return run_python("-c", script, *TWO_JOBS, cwd=cwd)


# a job whose SIGINT arrives after its last stop check, while it finishes (status.json, ...)
LATE_SIGNAL = """
import runpy, signal, sys
import runner.run.train as t
real = t.train
def train(*args, **kwargs):
    result = real(*args, **kwargs)
    signal.raise_signal(signal.SIGINT)  # only the job's handler sees it: it notes the signal
    return result
t.train = train
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)  # as python -m runner
"""


@pytest.mark.slow
def test_a_signal_while_a_sweep_job_finishes_stops_the_sweep_after_it(tmp_path):
    """Ctrl-C as a job of a sweep finishes (past its last check): the job stays complete as
    recorded and the sweep stops there, as asked, instead of the signal being lost."""
    proc = sweep_with(LATE_SIGNAL, tmp_path)
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-2000:]
    assert json.loads((tmp_path / JOB_0 / "status.json").read_text())["status"] == "completed"
    assert not (tmp_path / JOB_1).exists()  # the sweep stopped after job 0


# Ctrl-C just after job 0's handlers were put back: between two jobs of the sweep
BETWEEN_JOBS = """
import contextlib, runpy, signal, sys
# Ctrl-C as in a shell: Python's own handler, even if the test process that started this
# one ignores SIGINT (an ignored signal stays ignored across exec; seen under xdist)
signal.signal(signal.SIGINT, signal.default_int_handler)
import runner.train.stopping as stopping
real, ended = stopping.stop_on_signals, []
@contextlib.contextmanager
def stop_on_signals():
    with real() as flag:
        yield flag
    ended.append(1)
    if len(ended) == 1:
        signal.raise_signal(signal.SIGINT)  # Python's own handler again: KeyboardInterrupt
stopping.stop_on_signals = stop_on_signals
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_ctrl_c_between_two_jobs_of_a_sweep_is_one_line_and_a_rerun_continues(tmp_path):
    proc = sweep_with(BETWEEN_JOBS, tmp_path)
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "interrupted between two jobs" in proc.stderr
    assert json.loads((tmp_path / JOB_0 / "status.json").read_text())["status"] == "completed"
    assert not (tmp_path / JOB_1).exists()
    first = (tmp_path / JOB_0 / "metrics.jsonl").stat().st_mtime_ns
    again = run_cli(*TWO_JOBS, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / JOB_0 / "metrics.jsonl").stat().st_mtime_ns == first  # not retrained
    assert json.loads((tmp_path / JOB_1 / "status.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_sigkill_before_the_first_interval_resumes_from_the_checkpoint_before_epoch_0(tmp_path):
    import torch

    args = [*SLOW, "epochs=3", "logger=none", "trainer.checkpoint_interval_s=3600"]
    run_dir = tmp_path / "run"
    proc = start([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_rows(run_dir, 1, proc)  # killed in epoch 1 or 2
    proc.kill()
    proc.communicate()
    # the interval had not passed yet: last.pt is the one written before the first epoch
    assert torch.load(run_dir / "last.pt", weights_only=True)["progress"]["epoch"] == 0
    assert resume_in_process(run_dir).status == "completed"
    assert comparable(read_metrics(run_dir)) == reference(tmp_path, args)
    assert torch.load(run_dir / "last.pt", weights_only=True)["progress"]["epoch"] == 3


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    run_dir = tmp_path / "run"
    assert train(make_cfg("epochs=2", "logger=none"), run_dir).status == "completed"
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    proc = cli_in_process(f"resume={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "last.pt is damaged" in proc.stderr and "resume=" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_of_a_dir_without_a_run_is_a_config_error(tmp_path):
    proc = cli_in_process(f"resume={tmp_path / 'nothing'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "resume=" in proc.stderr and "config.yaml missing" in proc.stderr
    # an empty resume= (the run dir was the working dir) or resume=true with no
    # hydra.run.dir (a new dated dir was made, then refused): refused, nothing created
    for given, why in (("resume=''", "give the run dir"), ("resume=true", "hydra.run.dir=")):
        proc = cli_in_process(given, "epochs=1", "logger=none", cwd=tmp_path)
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())
    # resume=<run> with another hydra.run.dir: its train.log went there; now refused
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 1\n")
    proc = cli_in_process(f"resume={run}", f"hydra.run.dir={tmp_path / 'other'}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"config error: hydra.run.dir='{tmp_path / 'other'}': resume=")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
def test_nan_loss_marks_the_run_diverged_with_its_own_exit_code(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "optimizer.lr=1e10", "scheduler=none", "epochs=5", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert proc.returncode == 3
    assert json.loads((run_dir / "status.json").read_text())["status"] == "diverged"
    summary = {}
    for record in wandb_records(run_dir):
        if record["type"] == "summary":
            summary.update(record["summary"].get("update", {}))
    assert summary["diverged"] is True and summary["status"] == "diverged"


def test_diverge_loss_threshold_stops_a_run_and_the_same_command_does_not_redo_it(
    tmp_path, monkeypatch, caplog
):
    args = ("logger=none", "trainer.diverge_loss=0.5", "epochs=5")
    result = train(make_cfg(*args), tmp_path)
    assert result.status == "diverged" and result.epochs_done == 1
    rows = (tmp_path / "metrics.jsonl").read_text()
    # run again (a sweep run again, a requeue): the same config from the same last.pt only
    # diverges again, so nothing is trained, and nothing is logged twice
    import runner.run.train

    monkeypatch.setattr(runner.run.train, "fit", lambda *a, **k: pytest.fail("trained again"))
    with caplog.at_level("INFO", logger="schedlab"):
        again = train(make_cfg(*args), tmp_path)
    assert (again.status, again.epochs_done) == ("diverged", 1)
    assert again.best_val_acc == result.best_val_acc
    assert "diverged in epoch 0" in caplog.text and "nothing to do" in caplog.text
    assert (tmp_path / "metrics.jsonl").read_text() == rows
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "diverged"


@pytest.mark.slow
def test_unwritable_wandb_dir_costs_a_warning_not_the_run(tmp_path, caplog):
    (tmp_path / "wandb").write_text("a file where W&B wants its folder")
    result = train(make_cfg("epochs=2"), tmp_path)
    assert result.status == "completed"
    assert len(read_metrics(tmp_path)) == 2
    assert any("W&B could not start" in r.message for r in caplog.records)


@pytest.mark.slow
def test_wandb_dying_mid_run_leaves_metrics_jsonl_complete(tmp_path, caplog):
    cfg = make_cfg("epochs=2")
    with open_logger(cfg.logger, tmp_path, {}, [], None) as logger:
        logger.log_epoch({"epoch": 0, "val/acc": 0.5})
        logger.wandb_run.finish()  # the service is gone from here on
        logger.log_epoch({"epoch": 1, "val/acc": 0.6})
        logger.log_epoch({"epoch": 2, "val/acc": 0.7})
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    assert sum("wandb logging failed" in r.message for r in caplog.records) == 1


@pytest.mark.slow
def test_no_api_key_or_environment_in_outputs(tmp_path):
    secrets = {"WANDB_API_KEY": "local-0123456789abcdef0123456789abcdef01234567",
               "SCHEDLAB_TEST_SECRET": "hunter2-do-not-write"}  # fmt: skip
    run_dir = tmp_path / "run"
    env = {**os.environ, **secrets}
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "epochs=1", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in secrets.values():
                assert value.encode() not in data, path


BAD = [
    ("epochs=0", "epochs"),
    ("epochs=-3", "epochs"),
    ("epochs=abc", "epochs"),
    ("seed=-1", "seed"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("optimizer.lr=fast", "optimizer.lr"),
    ("optimizer.momentum=1.5", "optimizer.momentum"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.batch_size=-8", "data.batch_size"),
    ("data.val_fraction=0", "data.val_fraction"),
    ("trainer.device=cuda", "trainer.device"),
    ("trainer.device=tpu", "trainer.device"),
    ("trainer.amp=yes", "trainer.amp"),
    ("trainer.monitor=val/f1", "trainer.monitor"),
    ("trainer.diverge_loss=-1", "trainer.diverge_loss"),
    ("scheduler.gamma=0 scheduler=step", "scheduler.gamma"),
    ("scheduler=step scheduler.step_size=0", "scheduler.step_size"),
    ("scheduler=multistep scheduler.milestones=[5,2]", "scheduler.milestones"),
    ("scheduler=cosine scheduler.eta_min=1.0", "scheduler.eta_min"),
    ("scheduler=plateau scheduler.mode=up", "scheduler.mode"),
    ("scheduler=plateau scheduler.factor=1.0", "scheduler.factor"),
    ("scheduler=lambda scheduler.lr_lambda=exec(1)", "scheduler.lr_lambda"),
    ("scheduler.warmup_epochs=50", "scheduler.warmup_epochs"),
    ("scheduler=onecycle scheduler.warmup_epochs=2", "scheduler.warmup_epochs"),
    ("model.dropout=1.0", "model.dropout"),
    ("model=lenet model.min_input_size=4", "model.min_input_size"),
    ("logger.wandb.mode=sometimes", "logger.wandb.mode"),
    ("lr_find.start_lr=0", "lr_find.start_lr"),
    ("lr_find.num_iters=3", "lr_find.num_iters"),
    ("optimizer.lrr=0.1", "optimizer.lrr"),
    ("+optimizer.foo=1", "optimizer.foo"),
    ("+bogus=1", "bogus"),
    ("scheduler=nope", "scheduler"),
    ("optimizer.param_groups={tail:1}", "optimizer.param_groups.tail"),
    ("data=mnist data.root=/nonexistent/mnist", "data.root"),
    ("resume=/nonexistent/run", "resume"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD, ids=[b[0] for b in BAD])
def test_malformed_config_exits_2_naming_the_key(tmp_path, overrides, key):
    """The CLI's own checks, in-process (cli_in_process; test_hostile.py and
    test_custom_components.py run such commands as real processes)."""
    proc = cli_in_process(*overrides.split(), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert key in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 20  # one message, not a dump
    # nothing left behind but, at most, a run dir marked failed
    for run_dir in (tmp_path / "outputs").glob("runs/*/*"):
        assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"


def test_best_and_last_checkpoints_hold_the_right_epochs(tmp_path):
    import torch

    train(make_cfg("logger=none", "epochs=5", "trainer.checkpoint_interval_s=0"), tmp_path)
    rows = read_metrics(tmp_path)
    best_epoch = max(range(5), key=lambda e: (rows[e]["val/acc"], -e))  # first best (strict >)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert last["progress"]["epoch"] == 5
    assert best["progress"]["epoch"] == best_epoch + 1
    assert best["progress"]["best_metric"] == rows[best_epoch]["val/acc"]


@pytest.mark.slow
def test_the_same_command_into_the_same_dir_resumes_like_a_requeued_job(tmp_path):
    """What a Slurm requeue does: the job runs again with the same config and run dir."""
    # killed after epoch 1 of 4 (or 2): the command trains the rest
    args = [*SLOW, "epochs=4", "logger=none", "trainer.checkpoint_interval_s=0",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = start(args, tmp_path)
    wait_for_rows(tmp_path / "run", 2, proc)
    proc.kill()
    proc.communicate()
    again = run_cli(*args, cwd=tmp_path)  # no resume= at all
    assert again.returncode == 0, again.stderr
    assert "holds a checkpoint of this same config" in again.stdout + again.stderr
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == list(range(4))
    assert comparable(rows) == reference(tmp_path, [a for a in args if "hydra.run.dir" not in a])


@pytest.mark.slow
def test_sigusr2_before_a_time_out_checkpoints_and_exits_140(tmp_path):
    run_dir = tmp_path / "run"
    proc = start([*SLOW, "epochs=6", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_rows(run_dir, 1, proc)
    proc.send_signal(signal.SIGUSR2)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGUSR2  # no launcher handler to pass it on to
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert (run_dir / "last.pt").exists()
