"""Faults a user meets (session 19 QA): a signal in the checks every command starts with,
before anything is written, ends it in one line."""

from __future__ import annotations

import signal

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

