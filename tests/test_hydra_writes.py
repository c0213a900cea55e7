"""Hydra's own writes (.hydra/*.yaml) failing on a full disk end the CLI with one line, as the
runner's own files do, and nothing else about Hydra's error output changes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

from tests.conftest import run_cli

# `python -m runner` with Hydra's `.hydra/config.yaml` write failing for lack of space
DRIVER = r"""
import builtins, errno, os, runpy, sys
real_open = builtins.open

def open_(file, mode="r", *args, **kwargs):
    if "w" in mode and str(file).endswith(os.path.join(".hydra", "config.yaml")):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
    return real_open(file, mode, *args, **kwargs)

builtins.open = open_
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


def test_a_full_disk_under_hydras_own_files_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, "epochs=1", "logger=none", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    want = f"error: cannot write {run_dir / '.hydra' / 'config.yaml'}: {os.strerror(errno.ENOSPC)}"
    assert proc.stderr.strip() == want
    assert not (run_dir / "last.pt").exists()


def test_hydras_own_errors_still_read_as_before(tmp_path):
    """An error Hydra raises while sweeping: its message and hint, no stack trace."""
    args = ["-m", "+experiment=init_lr", "hydra.sweeper.params.seed=0,1", "logger=none"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Sweeping over Hydra's configuration is not supported" in proc.stderr
    assert "HYDRA_FULL_ERROR=1" in proc.stderr and "Traceback" not in proc.stderr


def test_a_key_under_a_null_node_is_a_config_error(tmp_path):
    proc = run_cli("-m", "hydra.sweeper.params.seed=0,1", "logger=none", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "hydra.sweeper.params.<key>" in proc.stderr


# the same command with Hydra's train.log (opened by logging's FileHandler) failing to open
TRAIN_LOG_DRIVER = r"""
import errno, logging, os, runpy, sys
real_open = logging.FileHandler._open

def open_(self):
    if self.baseFilename.endswith("train.log"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.baseFilename)
    return real_open(self)

logging.FileHandler._open = open_
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


def test_a_full_disk_under_hydras_train_log_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_LOG_DRIVER, "epochs=1", "logger=none",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    want = f"error: cannot write {run_dir / 'train.log'}: {os.strerror(errno.ENOSPC)}"
    assert proc.stderr.strip() == want
    assert not (run_dir / "last.pt").exists()
