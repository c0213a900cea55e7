"""examples/custom_project end to end, as its README runs it: a user's package and config dir
beside schedlab, trained, killed and resumed, swept with a report, range-tested, previewed."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from runner.core.compose import compose_config
from runner.preview import main as preview
from runner.run.train import train
from tests.conftest import one_torch_thread, read_metrics, run_cli
from tests.test_robustness import comparable, start, wait_for_rows

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_project"
OWN = ("--config-dir", "conf", "model=small_cnn", "optimizer=rmsprop", "logger=none")


def test_the_example_project_trains_sweeps_finds_an_lr_and_resumes(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("outputs", "__pycache__"))

    # train: the project's own model and optimizer, one lr per name pattern; killed with
    # kill -9 mid-run and continued with resume=, it ends as the same run never stopped
    args = [*OWN, "epochs=3", "data.batch_size=8", "trainer.checkpoint_interval_s=0"]
    killed = project / "run"
    proc = start([*args, f"hydra.run.dir={killed}"], project)
    wait_for_rows(killed, 1, proc)
    proc.kill()
    out, _ = proc.communicate()
    assert "SmallCNN on digits" in out and "RMSprop lr=0.003" in out
    resumed = run_cli(f"resume={killed}", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((killed / "status.json").read_text())["status"] == "completed"
    # the uninterrupted run: its job's train() on the same config, in this process, with
    # `mynets` importable as it is from the project dir
    monkeypatch.syspath_prepend(str(project))
    overrides = args[2:]  # after --config-dir conf
    cfg = compose_config(overrides, config_dirs=[str(project / "conf")])
    with one_torch_thread():
        assert train(cfg, project / "reference", overrides=overrides).status == "completed"
    rows = read_metrics(project / "reference")
    assert comparable(read_metrics(killed)) == comparable(rows)
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

    # the schedule's preview, per param group of the project's optimizer: its main, in this
    # process, run from the project dir as `python -m runner.preview` is
    monkeypatch.chdir(project)
    capsys.readouterr()
    assert preview([
        "--config-dir", "conf", "model=small_cnn", "optimizer=rmsprop", "scheduler=step",
        "epochs=3", "--out", "preview",
    ]) == 0  # fmt: skip
    shown = capsys.readouterr().out
    assert "step backbone" in shown and "step head" in shown
    assert (project / "preview" / "step.png").is_file()
