"""examples/custom_project end to end, as its README runs it: a user's package and config dir
beside schedlab, trained, killed and resumed, swept with a report, range-tested, previewed;
its own Dataset class and an ImageFolder of the PNGs its helper writes, trained."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from runner.config.compose import compose_config
from runner.preview import main as preview
from runner.run.train import train
from tests.helpers import (
    cli_in_process,
    comparable,
    one_torch_thread,
    read_metrics,
    run_cli,
    run_python,
    start,
    wait_for_rows,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_project"
OWN = ("--config-dir", "conf", "model=small_cnn", "optimizer=rmsprop", "logger=none")


@pytest.mark.slow
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
        *OWN,
        "epochs=2",
        "-m",
        "scheduler=step,cosine",
        "seed=0,1",
        "hydra.sweep.dir=sweep",
        cwd=project,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    with (project / "sweep" / "report.csv").open() as f:
        table = list(csv.DictReader(f))
    assert sorted(r["config"] for r in table) == ["scheduler=cosine", "scheduler=step"]
    assert all(r["completed"] == "2" for r in table)
    assert "Is it noise?" in (project / "sweep" / "report.md").read_text()

    # the LR range test on the project's model and optimizer
    finder = run_python(
        "-m", "runner.lr_find", *OWN, "lr_find.num_iters=20", "hydra.run.dir=lr_find", cwd=project
    )
    assert finder.returncode == 0, finder.stderr
    with (project / "lr_find" / "lr_find.csv").open() as f:
        points = list(csv.DictReader(f))
    assert 10 <= len(points) <= 20

    # the schedule's preview, per param group of the project's optimizer: its main, in this
    # process, run from the project dir as `python -m runner.preview` is
    monkeypatch.chdir(project)
    capsys.readouterr()
    assert (
        preview(
            [
                "--config-dir",
                "conf",
                "model=small_cnn",
                "optimizer=rmsprop",
                "scheduler=step",
                "epochs=3",
                "--out",
                "preview",
            ]
        )
        == 0
    )
    shown = capsys.readouterr().out
    assert "step backbone" in shown and "step head" in shown
    assert (project / "preview" / "step.png").is_file()


def copy_project(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the example, its `mynets` importable in this process (for cli_in_process)
    and its runs on one torch thread (two threads on a busy 2-core machine run ~20x slower)."""
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    shutil.rmtree(project / "data", ignore_errors=True)  # PNGs written in the example itself
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.syspath_prepend(str(project))
    for name in [m for m in sys.modules if m == "mynets" or m.startswith("mynets.")]:
        monkeypatch.delitem(sys.modules, name)  # this copy's, not another test's
    return project


@pytest.mark.slow
def test_the_projects_own_dataset_class_trains_and_its_kwargs_are_checked(tmp_path, monkeypatch):
    project = copy_project(tmp_path, monkeypatch)

    # the README's command: mynets.data.Shapes through data=dataset, the project's SmallCNN
    proc = run_cli(
        "--config-dir",
        "conf",
        "model=small_cnn",
        "data=shapes",
        "epochs=2",
        "logger=none",
        "hydra.run.dir=run",
        cwd=project,
    )
    assert proc.returncode == 0, proc.stderr
    run = project / "run"
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert "SmallCNN on dataset" in proc.stdout + proc.stderr
    # num_classes: null, so len(Shapes.classes); in_channels 1, from the images themselves
    weights = torch.load(run / "last.pt", weights_only=False)["model"]
    assert weights["head.1.weight"].shape == (4, 32)
    assert weights["backbone.0.weight"].shape[1] == 1
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["train/loss"] != rows[1]["train/loss"]
    assert rows[-1]["val/acc"] > 0.6  # 4 classes, chance 0.25

    # a typo'd kwarg of the class is a config error naming its key, nothing run (exit 2):
    # the signature's, with or without the + (shapes.yaml does not list the key)
    for typo, words in (
        ("data.train.sizze=3", "data.train.sizze=3: Shapes has no argument 'sizze'"),
        ("+data.train.sizze=3", "Shapes has no argument 'sizze'"),
    ):
        proc = cli_in_process("--config-dir", "conf", "data=shapes", typo, cwd=project)
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr
    assert "config error: data.train.sizze=3: Shapes has no argument" in proc.stderr
    assert not (project / "outputs").exists()


@pytest.mark.slow
def test_the_png_writer_makes_an_image_folder_that_data_images_trains_on(tmp_path, monkeypatch):
    project = copy_project(tmp_path, monkeypatch)

    # the README's command (`python -m mynets.make_images data/images ...`), with fewer
    # images: its main, in this process (what the command runs, without a new interpreter
    # and its torch import), from the project dir as the command is run
    from mynets.make_images import main as make_images

    monkeypatch.chdir(project)
    make_images(["data/images", "--train", "240", "--val", "60"])
    images = project / "data" / "images"
    for split, n in (("train", 240), ("val", 60)):
        folders = sorted(p.name for p in (images / split).iterdir())
        assert folders == ["cross", "disc", "square", "triangle"]
        assert len(list((images / split).glob("*/*.png"))) == n
    # each PNG is its Shapes sample (train: offset 0), in 8-bit grey
    from mynets.data import Shapes
    from PIL import Image

    image, label = Shapes(240)[6]
    png = np.asarray(Image.open(images / "train" / Shapes.classes[label] / "00006.png"))
    assert png.shape == (16, 16) and png.dtype == np.uint8
    assert np.array_equal(png, (image[0] * 255).round().byte().numpy())
    # the classes are the folders: with one gone, a 3-class problem
    for split in ("train", "val"):
        shutil.rmtree(images / split / "cross")

    proc = run_cli(
        "--config-dir",
        "conf",
        "model=small_cnn",
        "data=images",
        "epochs=3",
        "logger=none",
        "hydra.run.dir=run",
        cwd=project,
    )
    assert proc.returncode == 0, proc.stderr
    run = project / "run"
    log = (run / "train.log").read_text()
    assert "streamed: the train transforms are random" in log
    assert OmegaConf.load(run / "config.yaml").data.num_workers == 2
    weights = torch.load(run / "last.pt", weights_only=False)["model"]
    assert weights["head.1.weight"].shape == (3, 32)  # disc, square, triangle
    assert weights["backbone.0.weight"].shape[1] == 3  # ImageFolder reads RGB
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert all(r["time/data_s"] > 0 for r in rows)
    # it learns (val/acc is not steady yet on so few images in 3 epochs)
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
