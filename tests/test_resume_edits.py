"""A config.yaml edited by hand between a run and its resume: the checkpoint keeps the config
the run trained with, and each edit is held to the rules of an override given with resume=."""

from __future__ import annotations

import pytest

from runner.run.train import train
from schedulers import ConfigError
from tests.helpers import make_cfg, read_metrics, run_cli

COMMON = ["epochs=3", "logger=none", "trainer.checkpoint_interval_s=0"]


def edit(run_dir, old: str, new: str) -> None:
    path = run_dir / "config.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def resume(run_dir):
    return train(make_cfg(f"resume={run_dir}"), run_dir, [f"resume={run_dir}"])


def test_an_edited_epochs_extends_a_run_with_explicit_lengths(tmp_path):
    run_dir = tmp_path / "run"
    assert train(make_cfg(*COMMON, "scheduler=step"), run_dir).status == "completed"
    edit(run_dir, "epochs: 3\n", "epochs: 5\n")
    assert resume(run_dir).status == "completed"
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    # the same as asking for it with resume= epochs=5, row for row
    ref = tmp_path / "ref"
    assert train(make_cfg(*COMMON, "scheduler=step"), ref).status == "completed"
    assert train(make_cfg(f"resume={ref}", "epochs=5"), ref, [f"resume={ref}", "epochs=5"])
    assert untimed(read_metrics(ref)) == untimed(rows)


def test_an_edited_epochs_that_would_stretch_the_schedule_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    assert train(make_cfg(*COMMON, "scheduler=cosine"), run_dir).status == "completed"
    edit(run_dir, "epochs: 3\n", "epochs: 6\n")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(ConfigError) as err:
        resume(run_dir)
    assert err.value.key == "epochs" and "scheduler.T_max is null" in err.value.rule
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


@pytest.mark.slow
def test_an_edit_that_changes_what_was_computed_is_refused_naming_the_key(tmp_path):
    run_dir = tmp_path / "run"
    assert train(make_cfg(*COMMON, "scheduler=step"), run_dir).status == "completed"
    edit(run_dir, "lr: 0.05\n", "lr: 0.2\n")
    proc = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "optimizer.lr=0.2" in proc.stderr and "was edited after" in proc.stderr
    assert "Traceback" not in proc.stderr
