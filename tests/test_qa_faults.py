"""Faults a user meets (session 19 QA): a signal in the checks every command starts with,
before anything is written, ends it in one line; a full disk under Hydra's own files names
the file even when the write (not the open) fails, as on a real full disk; train.log on a
full disk is one warning, not a trace per line; resume= with a key of the saved run's own
config groups is refused as resume= refuses it, not with Hydra's "+key" advice; a config.yaml
a hand edit broke says which line and what is wrong there."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.helpers import cli_in_process, run_python

# `python -m runner <args>` with the signal arriving twice (Ctrl-C twice quickly) while the
# CLI composes and validates the config: seconds of every command's start (torch imported)
IN_THE_CHECKS = """
import os, runpy, signal, sys
import runner.cli as cli
def check_composition(argv):
    for _ in range(2):
        signal.raise_signal(int(os.environ["SCHEDLAB_SIGNAL"]))
cli.check_composition = check_composition
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_the_checks_before_a_run_ends_it_in_one_line(tmp_path, sig, monkeypatch):
    monkeypatch.setenv("SCHEDLAB_SIGNAL", str(int(sig)))
    proc = run_python("-c", IN_THE_CHECKS, "epochs=1", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 128 + sig, proc.stderr[-2000:]  # was -2 (a traceback) / -15
    name = signal.Signals(sig).name
    assert proc.stderr == f"{name}: stopped before the run started; nothing was written\n"
    assert not (tmp_path / "run").exists()


# `python -m runner <args>` under a file size limit of 1 KiB: a real failed write (EFBIG, as
# ENOSPC on a full disk) in the first file written past it, Hydra's .hydra/config.yaml,
# which opens fine and fails in its write
UNDER_A_SIZE_LIMIT = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_write_that_fails_under_hydras_files_names_the_file(tmp_path):
    proc = run_python(
        "-c", UNDER_A_SIZE_LIMIT, "epochs=1", "logger=none", "hydra.run.dir=run", cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    config = Path(tmp_path, "run", ".hydra", "config.yaml").resolve()
    assert proc.stderr == f"error: cannot write {config}: File too large\n"  # was `?`
    assert not (tmp_path / "run" / "last.pt").exists()


# `python -m runner <args>` whose disk fills up once the run starts: no file may grow past
# the size train.log has then (a real failed write, EFBIG, as ENOSPC on a full disk), so
# train.log's next line is the first write to fail
DISK_FILLS_AT_THE_START = """
import resource, runpy, signal, sys
from pathlib import Path
import torch._dynamo  # its import writes a probe into the temp dir: before the disk is full
import runner.run.train as t
real = t.train
def train(cfg, run_dir, **kwargs):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    size = (Path(run_dir) / "train.log").stat().st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return real(cfg, run_dir, **kwargs)
t.train = train
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_train_log_the_disk_cannot_take_is_one_warning_not_a_trace_per_line(tmp_path):
    args = ("epochs=1", "logger=none", "hydra.run.dir=run")
    proc = run_python("-c", DISK_FILLS_AT_THE_START, *args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    log = Path(tmp_path, "run", "train.log").resolve()
    lines = proc.stderr.splitlines()
    warning = f"warning: cannot write {log}: File too large: its lines go to the console only"
    assert lines.count(warning) == 1, proc.stderr[-3000:]  # was a trace for every line
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr
    assert lines[-1].startswith("error: cannot write ")  # the run's first record it cannot write
    assert "mlp on digits" in proc.stdout  # every line still on the console


@pytest.mark.parametrize(
    ("value", "then"),
    [("64", " already): leave it out"), ("128", "): leave it out, or start a new run")],
)
def test_resume_with_a_key_of_the_runs_own_data_group_is_refused_naming_the_saved_value(
    tmp_path, value, then
):
    """data.train_size is fake's, not the default data group's: Hydra failed to compose the
    command and advised `+data.train_size=...`, even for the value the run has."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 3\ndata:\n  name: fake\n  train_size: 64\n")
    proc = cli_in_process("resume=run", f"data.train_size={value}", "epochs=5", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"config error: data.train_size={value}: a resumed run keeps the config saved in "
        f"run/config.yaml (data.train_size=64 there{then}\n"
    )


def test_a_config_yaml_a_hand_edit_broke_says_which_line_and_what(tmp_path):
    """PyYAML's text names the file twice before the problem: cut to 120 characters it said
    `... line 4, column 11` and no more."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 3\noptimizer:\n  lr 0.1\n  momentum: 0.9\n")
    proc = cli_in_process("resume=run", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (
        "config error: resume='run': run/config.yaml is damaged (ScannerError: line 4, "
        "column 11: mapping values are not allowed here): fix it there (the config the run trained "
        "with is in run/last.pt: torch.load(...)['config'])\n"
    )
