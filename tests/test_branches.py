"""Branches from a trunk (issue #34): checkpoints kept at chosen epochs (trainer.keep_epochs),
a run started from one (branch=, branch_epoch=) that equals the same config trained from
scratch, refusals that name the key, exact resume of a branch after SIGKILL, and sweeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from runner.io import checkpoint
from runner.run.check import validate
from runner.run.train import train
from runner.sweep.fused import group_key, why_not_fusable
from schedulers import ConfigError
from tests.helpers import (
    REL,
    SLOW,
    WSD_BUDGET,
    WSD_TRUNK,
    cli_in_process,
    comparable,
    make_cfg,
    one_torch_thread,
    read_metrics,
    reference,
    resume_in_process,
    run_cli,
    start,
    tensorboard_scalars,
    train_members,
    wait_for_rows,
)


def rows_of(run_dir: Path) -> list[dict]:
    """Epoch and step rows as a fresh run logs them: no time, no `from_trunk` mark."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "from_trunk"} for r in comparable(rows)]


def branch_args(trunk: Path, *more: str) -> list[str]:
    return [*WSD_BUDGET, f"branch={trunk}", *more]


# -- kept checkpoints


def test_keep_epochs_keeps_whole_checkpoints_of_those_epochs(trunk):
    assert checkpoint.kept_epochs(trunk) == [3, 5]
    for k in (3, 5):
        state = torch.load(trunk / f"epoch_{k}.pt", weights_only=True)
        assert state["progress"]["epoch"] == k
        assert {"model", "optimizer", "scheduler", "rng", "config", "data"} <= state.keys()
    # every N epochs, or a list; none by default
    assert [e for e in range(1, 10) if checkpoint.keeps(4, e)] == [4, 8]
    assert [e for e in range(1, 10) if checkpoint.keeps([2, 7], e)] == [2, 7]
    assert not any(checkpoint.keeps(None, e) for e in range(10))


def test_a_constant_trunk_extended_by_resume_keeps_the_epochs_it_is_given(tmp_path):
    constant = ("logger=none", "scheduler=none", "trainer.progress=line")
    train(make_cfg(*constant, "epochs=2", "trainer.keep_epochs=1"), tmp_path / "trunk")
    given = [f"resume={tmp_path / 'trunk'}", "epochs=4", "trainer.keep_epochs=[3]"]
    assert train(make_cfg(*given), tmp_path / "trunk", overrides=given).status == "completed"
    assert checkpoint.kept_epochs(tmp_path / "trunk") == [1, 2, 3]


@pytest.mark.parametrize("value", ["0", "[0,2]", "x", "1.5", "true"])
def test_a_bad_keep_epochs_is_a_config_error_naming_it(value):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("logger=none", f"trainer.keep_epochs={value}"))
    assert err.value.key == "trainer.keep_epochs"


# -- a branch equals the fresh run


def test_a_branch_of_a_wsd_trunk_equals_a_fresh_wsd_run_of_its_budget(trunk, tmp_path):
    args = branch_args(trunk, "branch_epoch=3")
    result = train(make_cfg(*args), tmp_path / "branch", overrides=args)
    assert result.status == "completed" and result.epochs_done == 6
    train(make_cfg(*WSD_BUDGET), tmp_path / "fresh")
    # row for row, every value (CPU: the same floats)
    assert rows_of(tmp_path / "branch") == rows_of(tmp_path / "fresh")
    rows = read_metrics(tmp_path / "branch")
    assert [r.get("from_trunk", False) for r in rows] == [True] * 3 + [False] * 3
    # the branch's own decay, not the trunk's schedule (still at the base lr at epoch 5)
    lr = make_cfg().optimizer.lr
    assert read_metrics(trunk)[5]["lr/group0"] == pytest.approx(lr)
    assert rows[5]["lr/group0"] == pytest.approx(lr / 2)
    saved = (tmp_path / "branch" / "config.yaml").read_text()
    assert f"branch: {trunk}" in saved and "branch_epoch: 3" in saved
    assert json.loads((tmp_path / "branch" / "status.json").read_text())["epochs_done"] == 6
    assert checkpoint.kept_epochs(trunk) == [3, 5]  # the trunk is left as it was


@pytest.mark.slow
def test_a_per_step_branch_with_adamw_and_two_param_groups_equals_the_fresh_run(tmp_path):
    # the lr changes every batch, and Adam's moments and two groups' lrs carry over
    knobs = ("optimizer=adamw", "optimizer.lr=0.003", "scheduler.interval=step",
             "optimizer.param_groups={hidden:1.0,head:0.1}")  # fmt: skip
    trunk_args = [*WSD_TRUNK[:-1], *knobs, "trainer.keep_epochs=[3]"]
    train(make_cfg(*trunk_args), tmp_path / "trunk")
    args = [*WSD_BUDGET, *knobs, f"branch={tmp_path / 'trunk'}"]
    cfg = make_cfg(*args)
    train(cfg, tmp_path / "branch", overrides=args)
    assert cfg.branch_epoch == 3
    train(make_cfg(*WSD_BUDGET, *knobs), tmp_path / "fresh")
    assert rows_of(tmp_path / "branch") == rows_of(tmp_path / "fresh")
    rows = read_metrics(tmp_path / "branch")
    assert rows[5]["lr/head"] == pytest.approx(rows[5]["lr/hidden"] / 10)


def test_a_branch_takes_from_its_schedule_only_what_the_schedule_sets():
    """A schedule-free optimizer keeps its step count and weight sum in its param groups:
    they stay the trunk's; the lr is the branch's schedule's at the branch point."""
    import schedulefree

    from runner.run.branch import scheduled_values
    from schedulers.registry import build_scheduler

    optimizer = schedulefree.SGDScheduleFree([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    scheduler = build_scheduler(
        make_cfg(*WSD_BUDGET).scheduler, optimizer, epochs=6, steps_per_epoch=3
    )
    run = SimpleNamespace(optimizer=optimizer, scheduler=scheduler)
    (values,) = scheduled_values(run, 5, 3)
    assert values["lr"] == pytest.approx(0.05) and values["momentum"] == 0.9
    assert not {"k", "weight_sum", "lr_max", "train_mode", "params"} & values.keys()


def test_the_trunk_rows_reach_the_branch_s_backends_as_one_run(trunk, tmp_path):
    args = branch_args(trunk, "logger=tensorboard", "branch_epoch=5")
    train(make_cfg(*args), tmp_path / "branch", overrides=args)
    rows = read_metrics(tmp_path / "branch")
    scalars = tensorboard_scalars(tmp_path / "branch")
    assert scalars["val/acc"] == [(r["epoch"], pytest.approx(r["val/acc"])) for r in rows]
    assert [s for s, _ in scalars["val/acc"]] == list(range(6))


def test_branch_epoch_null_takes_the_latest_kept_epoch_the_schedules_share(trunk):
    cfg = make_cfg(*branch_args(trunk))
    assert validate(cfg).branch_epoch == 5 and cfg.branch_epoch == 5
    # a budget whose decay starts at epoch 3 (2 + 4 - round(4 x 0.75)), its first step still
    # at the base lr: it shares epochs 0-3 with the trunk, and epoch 3 is kept
    cfg = make_cfg(*branch_args(trunk, "scheduler.decay_fraction=0.75"))
    assert validate(cfg).branch_epoch == 3
    assert validate(make_cfg(*WSD_BUDGET)).branch_epoch is None  # no branch


# -- refusals


@pytest.mark.parametrize(
    "override, key",
    [
        ("optimizer.lr=0.1", "optimizer.lr"),
        ("seed=1", "seed"),
        ("data.batch_size=32", "data.batch_size"),
        ("model.hidden=[32]", "model.hidden"),
        ("trainer.grad_clip_norm=1.0", "trainer.grad_clip_norm"),
    ],
)
def test_a_branch_that_would_not_continue_its_trunk_is_refused_by_name(trunk, override, key):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*branch_args(trunk, override)))
    assert err.value.key == key and str(trunk) in str(err.value)


def test_free_keys_may_differ_from_the_trunk(trunk):
    cfg = make_cfg(*branch_args(trunk, "trainer.checkpoint_interval_s=0", "logger=tensorboard"))
    assert validate(cfg).branch_epoch == 5


def test_a_missing_trunk_or_an_epoch_not_kept_is_refused_naming_the_key(trunk, tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*WSD_BUDGET, f"branch={tmp_path / 'nothing'}"))
    assert err.value.key == "branch" and "config.yaml missing" in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*branch_args(trunk, "branch_epoch=4")))
    assert err.value.key == "branch_epoch" and "[3, 5]" in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*WSD_BUDGET, "branch_epoch=3"))
    assert err.value.key == "branch_epoch" and "branch=" in str(err.value)


def test_a_trunk_that_kept_no_epoch_is_refused(tmp_path):
    train(make_cfg("logger=none", "epochs=1"), tmp_path / "trunk")
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*WSD_BUDGET, f"branch={tmp_path / 'trunk'}"))
    assert err.value.key == "branch" and "trainer.keep_epochs" in str(err.value)


def test_a_schedule_that_leaves_the_trunk_before_the_branch_point_is_refused(trunk):
    # decay from epoch 3 (2 + 4 - round(4 x 0.75)): its lr at epoch 4 is not the trunk's
    def other(*schedule: str) -> list[str]:
        return ["logger=none", "trainer.progress=line", "epochs=6", *schedule, f"branch={trunk}"]

    args = branch_args(trunk, "scheduler.decay_fraction=0.75", "branch_epoch=5")
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*args))
    assert err.value.key == "branch_epoch" and "at epoch 4" in str(err.value)
    with pytest.raises(ConfigError) as err:  # cosine has no warmup here: it leaves at once
        validate(make_cfg(*other("scheduler=cosine", "branch_epoch=5")))
    assert err.value.key == "branch_epoch" and "at epoch 0" in str(err.value)
    with pytest.raises(ConfigError) as err:  # a metric decides a plateau's lr
        validate(make_cfg(*other("scheduler=plateau", "branch_epoch=3")))
    assert err.value.key == "scheduler"


def test_the_cli_refuses_a_mismatched_branch_before_writing_anything(trunk, tmp_path):
    res = cli_in_process(*branch_args(trunk, "optimizer.lr=0.1"), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "optimizer.lr=0.1" in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_branches_fuse_and_trunks_fuse_whatever_they_keep(trunk):
    assert why_not_fusable(make_cfg(*branch_args(trunk))) is None  # tests/test_fused_branches.py
    # trunks fuse, whatever epochs each keeps (each member writes its own epoch_<k>.pt)
    assert group_key(make_cfg(*WSD_TRUNK)) == group_key(
        make_cfg(*WSD_TRUNK, "trainer.keep_epochs=2")
    )


# -- resume and sweeps (subprocesses)


@pytest.mark.slow
def test_a_branch_killed_mid_run_resumes_exactly(tmp_path):
    base = [*SLOW, "logger=none", "scheduler.warmup_epochs=2", "trainer.checkpoint_interval_s=0"]
    with one_torch_thread():  # as `start` runs the branch: the same float sums
        # Hägele et al.'s trunk: warmup, then a constant lr
        trunk_args = [*base, "scheduler=none", "epochs=3", "trainer.keep_epochs=2"]
        train(make_cfg(*trunk_args), tmp_path / "trunk")
    args = [*base, "scheduler=wsd", "epochs=6", "scheduler.decay_fraction=0.5"]
    run_dir = tmp_path / "branch"
    proc = start(
        [*args, f"branch={tmp_path / 'trunk'}", f"hydra.run.dir={run_dir}"],  # epoch: null
        tmp_path,
    )
    wait_for_rows(run_dir, 3, proc)  # the trunk's 2 rows, then its own first epoch
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.communicate()
    assert not (run_dir / "status.json").exists()
    assert len(read_metrics(run_dir)) < 6
    assert "branch_epoch: 2" in (run_dir / "config.yaml").read_text()  # the one it chose

    shutil.rmtree(tmp_path / "trunk")  # a branch with a checkpoint of its own needs no trunk
    assert resume_in_process(run_dir).status == "completed"
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == list(range(6))
    assert [r.get("from_trunk", False) for r in rows] == [True] * 2 + [False] * 4
    unmarked = [{k: v for k, v in r.items() if k != "from_trunk"} for r in comparable(rows)]
    assert unmarked == reference(tmp_path, args)  # every value, every epoch


@pytest.mark.slow
def test_trunks_trained_fused_keep_epochs_a_branch_starts_from(tmp_path):
    (member,) = train_members(tmp_path, [[*WSD_TRUNK, "seed=1"]])
    assert checkpoint.kept_epochs(member.run_dir) == [3, 5]
    args = branch_args(member.run_dir, "seed=1")
    train(make_cfg(*args), tmp_path / "branch", overrides=args)
    train(make_cfg(*WSD_BUDGET, "seed=1"), tmp_path / "fresh")
    branch, fresh = read_metrics(tmp_path / "branch"), read_metrics(tmp_path / "fresh")
    assert [r["lr/group0"] for r in branch] == [r["lr/group0"] for r in fresh]
    for key in ("train/loss", "val/loss", "val/acc"):  # fused: the tolerance
        assert [r[key] for r in branch] == pytest.approx([r[key] for r in fresh], rel=REL)


@pytest.mark.slow
def test_a_sweep_of_budgets_branches_each_where_its_decay_starts(trunk, tmp_path):
    # decay_fraction=0.5: epochs=5 decays from epoch 3 (2 + 3 - round(1.5)), epochs=6 from
    # epoch 4, each decay's first epoch still at the base lr; branch_epoch null picks the
    # latest kept epoch the schedules share: 3 and 5
    res = run_cli(
        "-m",
        "hydra/launcher=fused",
        *branch_args(trunk),
        "epochs=5,6",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "runs on its own: no job to fuse with" in res.stdout + res.stderr  # other lengths
    jobs = {  # by their budget: job dirs are named by their overrides
        OmegaConf.load(p).epochs: p.parent for p in (tmp_path / "sweep").glob("*/config.yaml")
    }
    for epochs, k in ((5, 3), (6, 5)):
        rows = read_metrics(jobs[epochs])
        assert len(rows) == epochs and sum(r.get("from_trunk", False) for r in rows) == k
        assert f"branch_epoch: {k}" in (jobs[epochs] / "config.yaml").read_text()
    assert (tmp_path / "sweep" / "report.md").exists()
