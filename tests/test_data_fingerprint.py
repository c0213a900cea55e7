"""A run is tied to its data (issue #32): data paths made absolute at the run's start, a
fingerprint of the data in every checkpoint, and resume= on other data refused before any
file of the run changes; a resume that fails at start-up leaves a complete run complete."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from runner.data import fingerprint as fp
from runner.data.sets import load_data
from runner.run.train import train
from schedulers import ConfigError
from schedulers.binder import plain
from tests.helpers import cli_in_process, make_cfg, pipeline, read_metrics, run_cli, snapshot
from tests.user_datasets import Counted

FOLDER = "torchvision.datasets.ImageFolder"
FAST = ("logger=none", "trainer.progress=line", "model.hidden=[8]", "data.batch_size=16",
        "scheduler=step")  # fmt: skip
# data=dataset with ImageFolder roots relative to the cwd, as a user writes them
RELATIVE = [
    "data=dataset",
    f"data.train={{_target_:{FOLDER},root:data/train,transform:{pipeline(False)}}}",
    f"data.val={{_target_:{FOLDER},root:data/val,transform:{pipeline(False)}}}",
    *FAST,
]


def write_images(root: Path, n_train: int, n_val: int = 12, classes: int = 3) -> None:
    """An ImageFolder tree of 4x4 RGB PNGs under root/train and root/val; the same
    arguments write the same files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            pixels = rng.integers(0, 120, (4, 4, 3), dtype=np.uint8)
            pixels[..., i % 3] += 120
            path = root / split / f"class{i % classes}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)


@pytest.fixture
def cwds(tmp_path: Path) -> tuple[Path, Path]:
    """Two working dirs, each with its own data/: 48 training images in `a`, 120 in `b`."""
    a, b = (tmp_path / "a").resolve(), (tmp_path / "b").resolve()
    write_images(a / "data", 48)
    write_images(b / "data", 120)
    return a, b


def train_in(cwd: Path, monkeypatch: pytest.MonkeyPatch, run_dir: Path, *args: str):
    """train() as `python -m runner <args>` started in `cwd` calls it."""
    monkeypatch.chdir(cwd)
    return train(make_cfg(*args), run_dir, overrides=list(args))


def make_old(run_dir: Path, cwd: Path) -> None:
    """The run as it was before this change: relative roots in config.yaml and in last.pt's
    config, num_classes as given (null: inferred, not recorded), and no fingerprint in
    last.pt."""
    text = (run_dir / "config.yaml").read_text().replace(f"{cwd}/", "")
    text = text.replace("  num_classes: 3\n", "  num_classes: null\n")
    (run_dir / "config.yaml").write_text(text)
    state = torch.load(run_dir / "last.pt", weights_only=True)
    state["config"] = text
    state.pop("data", None)
    torch.save(state, run_dir / "new.pt")
    os.replace(run_dir / "new.pt", run_dir / "last.pt")  # best.pt may be a link to it


def test_a_relative_root_resumed_from_another_cwd_trains_on_the_run_s_own_data(
    tmp_path, cwds, monkeypatch
):
    """The reproduction: run from `a` with data/ relative, resume= from `b`, whose data/
    holds 120 other images. It trained on b's 120 (exit 0) before; now on the run's 48."""
    a, b = cwds
    run_dir = tmp_path / "run"
    assert train_in(a, monkeypatch, run_dir, *RELATIVE, "epochs=2").status == "completed"
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.data.train.root == str(a / "data" / "train")  # as it was read, absolute
    assert saved.data.val.root == str(a / "data" / "val")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["data"]["n_train"] == 48 and status["data"]["num_classes"] == 3
    assert status["data"]["roots"] == {
        "data.train.root": str(a / "data" / "train"),
        "data.val.root": str(a / "data" / "val"),
    }

    resumed = train_in(b, monkeypatch, run_dir, f"resume={run_dir}", "epochs=3")
    assert resumed.status == "completed" and resumed.epochs_done == 3
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["data"] == status["data"]  # the same 48 images, not b's 120
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0, 1, 2]


@pytest.mark.slow
def test_resume_on_changed_data_is_refused_and_every_file_is_left_as_it_was(
    tmp_path, cwds, monkeypatch
):
    a, b = cwds
    run_dir = tmp_path / "run"
    train_in(a, monkeypatch, run_dir, *RELATIVE, "epochs=2")
    # the same command again from the same cwd: its relative roots are the saved absolute
    # ones, so the complete run is left alone (not refused as another run's)
    again = cli_in_process(*RELATIVE, "epochs=2", f"hydra.run.dir={run_dir}", cwd=a)
    assert again.returncode == 0 and "is already complete" in again.stdout, again.stderr

    write_images(a / "data", 60)  # 12 images added to the run's training folder since
    before = snapshot(run_dir)  # status.json, config.yaml, metrics.jsonl, .hydra/, ...
    proc = cli_in_process(f"resume={run_dir}", "epochs=3", cwd=b)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(
        f"config error: data.train.root='{a}/data/train': the run trained on 48 train "
        "samples there, this command gives 60; a resumed run continues on the data it "
        "trained on"
    ), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert snapshot(run_dir) == before
    # the run's own check (a sweep's job, train() called directly): the same refusal
    with pytest.raises(ConfigError, match=r"the run trained on 48 train samples there"):
        train_in(b, monkeypatch, run_dir, f"resume={run_dir}", "epochs=3")
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_a_checkpoint_without_a_fingerprint_resumes_as_before_then_keeps_one(
    tmp_path, cwds, monkeypatch
):
    a, b = cwds
    run_dir = tmp_path / "run"
    train_in(a, monkeypatch, run_dir, *RELATIVE, "epochs=2")
    make_old(run_dir, a)
    # resumed from the cwd its relative roots were meant for: as before this change
    resumed = train_in(a, monkeypatch, run_dir, f"resume={run_dir}", "epochs=3")
    assert resumed.status == "completed" and resumed.epochs_done == 3
    assert "root: data/train" in (run_dir / "config.yaml").read_text()  # kept as it was
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["data"]["roots"]["data.train.root"] == str(a / "data" / "train")
    # the command that made it, again from the same cwd: its relative roots are this run's
    again = cli_in_process(*RELATIVE, "epochs=3", f"hydra.run.dir={run_dir}", cwd=a)
    assert again.returncode == 0 and "is already complete" in again.stdout, again.stderr
    # from b those relative roots name b's 120 images: refused, naming both
    before = snapshot(run_dir)
    said = (
        f"data.train.root='{b}/data/train': the run trained on {a}/data/train (48 train "
        f"samples), this command gives {b}/data/train (120); "
    )
    with pytest.raises(ConfigError, match="^" + re.escape(said)):
        train_in(b, monkeypatch, run_dir, f"resume={run_dir}", "epochs=4")
    assert snapshot(run_dir) == before


def test_a_resume_that_fails_at_start_up_leaves_a_complete_run_as_it_was(
    tmp_path, cwds, monkeypatch
):
    """A run from before fingerprints, resumed with more epochs where data/ has 4 classes:
    its checkpoint does not fit the model. That used to rewrite config.yaml to the new
    epochs and drop status.json (then marked failed) before it crashed."""
    from runner.__main__ import _mark_failed

    a, _ = cwds
    run_dir = tmp_path / "run"
    train_in(a, monkeypatch, run_dir, *RELATIVE, "epochs=2")
    make_old(run_dir, a)
    c = (tmp_path / "c").resolve()
    write_images(c / "data", 48, classes=4)
    before = snapshot(run_dir)
    with pytest.raises(RuntimeError, match="size mismatch"):
        train_in(c, monkeypatch, run_dir, f"resume={run_dir}", "epochs=3")
    assert snapshot(run_dir) == before
    _mark_failed(run_dir, "RuntimeError(...)")  # what the CLI does next: a complete run stays
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


def test_a_damaged_status_json_warns_once_and_the_resume_goes_on(tmp_path, caplog):
    run_dir = tmp_path / "run"
    train(make_cfg("logger=none", "epochs=2", "scheduler=step"), run_dir)
    (run_dir / "status.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="schedlab"):
        given = [f"resume={run_dir}", "epochs=3", "logger=none"]
        result = train(make_cfg(*given), run_dir, overrides=given)
    assert result.status == "completed" and result.epochs_done == 3
    assert caplog.text.count("status.json is damaged") == 1, caplog.text
    assert json.loads((run_dir / "status.json").read_text())["epochs_done"] == 3


def test_which_data_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    cfg = OmegaConf.create(
        {
            "data": {
                "name": "dataset",
                "root": "data",  # a root: absolute even before it exists (a download makes it)
                "train": {
                    "_target_": "mine.Set",
                    "image_dir": "images",
                    "cache_file": "later.pt",
                    "path": "mnist",
                    "url_root": "https://x.org/data",
                    "files": ["images", "nope"],
                    "split_root": "~/sets",
                    "size": 3,
                    "transform": {"_target_": "hydra.utils.get_object", "path": "images"},
                },
                "val": {"_target_": "mine.Set", "root": "/already/absolute"},
            }
        }
    )
    changed = fp.absolute_roots(cfg)
    assert changed == [
        f"data.root={tmp_path}/data",
        f"data.train.image_dir={tmp_path}/images",
        f"data.train.files.0={tmp_path}/images",
        f"data.train.split_root={Path.home()}/sets",
    ]
    train = cfg.data.train
    assert (train.cache_file, train.path, train.url_root) == (
        "later.pt",
        "mnist",
        "https://x.org/data",
    )
    assert train.files[1] == "nope" and train.transform.path == "images"  # an import path
    assert cfg.data.val.root == "/already/absolute"
    assert fp.absolute_roots(cfg) == []  # once is enough


def test_the_fingerprint_of_a_streamed_set_reads_only_its_first_samples():
    counted = "tests.user_datasets.Counted"
    splits = ("data=dataset", f"data.train={{_target_:{counted},size:2000}}",
              f"data.val={{_target_:{counted},size:30,offset:1}}")  # fmt: skip
    cfg = make_cfg(*splits, "data.in_memory=false")
    data = load_data(plain(cfg.data))
    Counted.fetched = 0
    record = fp.fingerprint(plain(cfg.data), data)
    assert Counted.fetched == fp.LABELS + 30  # not 2000: the first 256, and all 30 of val
    assert record["n_train"] == 2000 and record["n_val"] == 30 and record["roots"] == {}
    assert record["sample_shape"] == [1, 4, 4] and record["num_classes"] == 3
    # the labels a materialised copy of the same set holds: in_memory=auto may choose either
    kept = make_cfg(*splits, "data.in_memory=true")
    assert (
        fp.fingerprint(plain(kept.data), load_data(plain(kept.data)))["labels"] == record["labels"]
    )
    # a sample that cannot be read: one line naming the split and the sample
    broken = make_cfg(
        *splits[:2], f"data.val={{_target_:{counted},size:30,broken:7}}", "data.in_memory=false"
    )
    said = "data.val[7]=None: could not be read: OSError: a bad sector"
    with pytest.raises(ConfigError, match="^" + re.escape(said) + "$"):
        fp.fingerprint(plain(broken.data), load_data(plain(broken.data)))


GIVES = "this command gives"


@pytest.mark.parametrize(("change", "named"), [
    ({"num_classes": 4}, f"data.num_classes=4: num_classes: the run trained on 3, {GIVES} 4"),
    ({"sample_shape": [1, 8, 8]}, "data=[1, 8, 8]: sample_shape: the run trained on [1, 4, 4]"),
    ({"labels": "0123"}, "data.train.root='/d/train': the first samples' labels (hashed): "),
    ({"n_val": 13}, f"data.val.root='/d/val': the run trained on 12 val samples there, {GIVES} 13"),
])  # fmt: skip
def test_what_differs_is_named(change, named):
    trained = {"n_train": 48, "n_val": 12, "num_classes": 3, "sample_shape": [1, 4, 4],
               "roots": {"data.train.root": "/d/train", "data.val.root": "/d/val"},
               "labels": "abcd"}  # fmt: skip
    assert fp.difference(trained, trained) is None
    assert str(fp.difference(trained, {**trained, **change})).startswith(named)


@pytest.mark.slow
def test_a_fused_sweep_makes_relative_roots_absolute_and_keeps_the_fingerprint(tmp_path, cwds):
    a, _ = cwds
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=fused",
        *RELATIVE,
        "data.in_memory=true",
        "epochs=1",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        cwd=a,
    )
    assert proc.returncode == 0, proc.stderr
    jobs = [next(sweep.glob(f"*,seed={seed},*")) for seed in (0, 1)]  # named by overrides
    assert "fused with 1 other job" in (jobs[0] / "train.log").read_text()
    for job in jobs:
        saved = OmegaConf.load(job / "config.yaml")
        assert saved.data.train.root == str(a / "data" / "train")  # as a single run's
        state = torch.load(job / "last.pt", weights_only=True)
        assert state["data"]["n_train"] == 48
        assert state["data"]["roots"]["data.train.root"] == str(a / "data" / "train")
