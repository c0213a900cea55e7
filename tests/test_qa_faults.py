"""Faults a user meets (session 19 QA): a signal in the checks every command starts with,
before anything is written, ends it in one line; a full disk under Hydra's own files names
the file even when the write (not the open) fails, as on a real full disk."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.helpers import run_python

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
