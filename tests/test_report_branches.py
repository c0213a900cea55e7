"""The sweep report groups the branches of every seed's trunk as one configuration: each
seed's branch names its own trunk dir, so read literally a sweep of branches over 3 seeds
showed 3 configurations of one run each (no mean, no paired test)."""

from __future__ import annotations

import yaml

from runner.sweep.jobs import group_jobs, load_jobs
from runner.sweep.report import write_report
from tests.helpers import write_job

ROWS = [{"epoch": e, "lr/group0": 0.1, "val/acc": 0.5 + e / 10, "val/loss": 1.0} for e in range(3)]


def _branch(sweep, trunks, name: str, trunk_overrides: list[str], seed: int, at: int):
    """A trunk job (in `trunks`) and a branch job (in `sweep`) that starts from it."""
    trunk = trunks / f"{name},seed={seed}"
    write_job(trunk, [*trunk_overrides, f"seed={seed}"], seed, "completed", ROWS)
    job = sweep / f"{name},branch_epoch={at},seed={seed}"
    overrides = ["scheduler=wsd", f"branch={trunk}", f"branch_epoch={at}", f"seed={seed}"]
    write_job(job, overrides, seed, "completed", ROWS)
    (job / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "branch": str(trunk)}))


def test_branches_of_each_seed_s_trunk_are_one_configuration(tmp_path):
    sweep, trunks = tmp_path / "sweep", tmp_path / "trunks"
    for seed in range(3):
        _branch(sweep, trunks, "a", ["scheduler=wsd", "epochs=60"], seed, at=12)
        _branch(sweep, trunks, "b", ["scheduler=wsd", "epochs=60", "lr=0.5"], seed, at=12)
    groups = {g.label: sorted(j.seed for j in g.jobs) for g in group_jobs(load_jobs(sweep))}
    # the trunks' configurations tell the two strategies apart, not their seeds' dirs
    assert groups == {
        "branch=<trunk: epochs=60>": [0, 1, 2],
        "branch=<trunk: epochs=60 lr=0.5>": [0, 1, 2],
    }
    report = write_report(sweep)
    assert report.count("`branch=<trunk: epochs=60>`") >= 2  # a ranked row and a comparison
    assert "| 3 | 3 |" in report  # 3 runs, 3 done: one row over the seeds


def test_a_branch_whose_trunk_is_gone_keeps_its_dir_in_the_label(tmp_path):
    sweep, trunks = tmp_path / "sweep", tmp_path / "trunks"
    _branch(sweep, trunks, "a", ["scheduler=wsd"], 0, at=2)
    _branch(sweep, trunks, "a", ["scheduler=wsd"], 1, at=2)
    for trunk in trunks.iterdir():
        (trunk / ".hydra" / "overrides.yaml").unlink()
    labels = [g.label for g in group_jobs(load_jobs(sweep))]
    assert len(labels) == 2 and all(label.startswith(f"branch={trunks}") for label in labels)
