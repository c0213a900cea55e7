"""examples/custom_project end to end, as its README runs it: a user's package and config dir
beside schedlab, trained, swept with a report, range-tested, killed and resumed."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import read_metrics, run_cli
from tests.test_robustness import comparable, start, wait_for_rows

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_project"
OWN = ("--config-dir", "conf", "model=small_cnn", "optimizer=rmsprop", "logger=none")


def test_the_example_project_trains_sweeps_finds_an_lr_and_resumes(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("outputs", "__pycache__"))

    # train: the project's own model and optimizer, one lr per name pattern
    args = [*OWN, "epochs=3", "data.batch_size=8", "trainer.checkpoint_interval_s=0"]
    proc = run_cli(*args, "hydra.run.dir=run", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "SmallCNN on digits" in proc.stdout and "RMSprop lr=0.003" in proc.stdout
    rows = read_metrics(project / "run")
    assert rows[0]["lr/backbone"] == 0.003 * 0.3 and rows[0]["lr/head"] == 0.003
    assert rows[-1]["val/acc"] > 0.3  # above chance (0.1) in 3 epochs

    # a 2 x 2 sweep with its report; `-m` among the overrides, as the command has it
    proc = run_cli(
        *OWN, "epochs=2", "-m", "scheduler=step,cosine", "seed=0,1", "hydra.sweep.dir=sweep",
        cwd=project, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with (project / "sweep" / "report.csv").open() as f:
        table = list(csv.DictReader(f))
    assert sorted(r["config"] for r in table) == ["scheduler=cosine", "scheduler=step"]
    assert all(r["completed"] == "2" for r in table)
    assert "Is it noise?" in (project / "sweep" / "report.md").read_text()

    # the LR range test on the project's model and optimizer
    finder = subprocess.run(
        [sys.executable, "-m", "runner.lr_find", *OWN, "lr_find.num_iters=20",
         "hydra.run.dir=lr_find"],
        cwd=project, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert finder.returncode == 0, finder.stderr
    with (project / "lr_find" / "lr_find.csv").open() as f:
        points = list(csv.DictReader(f))
    assert 10 <= len(points) <= 20

    # the schedule's preview, per param group of the project's optimizer
    preview = subprocess.run(
        [sys.executable, "-m", "schedulers.preview", "--config-dir", "conf", "model=small_cnn",
         "optimizer=rmsprop", "scheduler=step", "epochs=3", "--out", "preview"],
        cwd=project, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert preview.returncode == 0, preview.stderr
    assert "step backbone" in preview.stdout and "step head" in preview.stdout
    assert (project / "preview" / "step.png").is_file()

    # kill -9 mid-run, then resume=: the same rows as the first run, uninterrupted
    killed = project / "killed"
    proc = start([*args, f"hydra.run.dir={killed}"], project)
    wait_for_rows(killed, 1, proc)
    proc.kill()
    proc.communicate()
    resumed = run_cli(f"resume={killed}", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((killed / "status.json").read_text())["status"] == "completed"
    assert comparable(read_metrics(killed)) == comparable(read_metrics(project / "run"))
