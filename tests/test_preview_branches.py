"""`python -m runner.preview ... trunk=true` (issue #34): several budgets drawn as one trunk
(the longest) and its cooldown branches, without any run on disk, with the epochs each costs
as a branch and as a rerun (docs/branches.md)."""

from __future__ import annotations

import pytest

from runner.preview import branch_costs
from runner.preview import main as preview_main
from tests.helpers import make_cfg

WSD = ("scheduler=wsd", "scheduler.decay_fraction=0.2", "epochs=15,30,60")


def rows(stdout: str) -> list[list[str]]:
    """The cost table's rows (budget, branch at, as a branch, as a rerun), then the total's."""
    return [line.split() for line in stdout.splitlines()[1:] if not line.startswith("wrote")]


def test_trunk_preview_prints_branch_points_and_costs_and_draws_them(tmp_path, capsys):
    """WSD (2 warmup epochs) of budget B decays over its last round((B - 2) x 0.2) epochs and
    keeps the base lr on the first of them: 15 decays from 12 (3 epochs), so its lr leaves the
    60-epoch trunk's at epoch 13; 30 decays from 24 (6 epochs), leaves it at 25. With every
    epoch kept: 60 + (15 - 13) + (30 - 25) = 67 epochs against 15 + 30 + 60 = 105 reruns.
    Before: `trunk=true` was no key of the config (exit 2)."""
    assert preview_main([*WSD, "trunk=true", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert rows(out) == [
        ["15", "13", "2", "15"],
        ["30", "25", "5", "30"],
        ["60", "(trunk)", "60", "60"],
        ["total", "67", "105", "(1.57x)"],
    ]
    assert (tmp_path / "trunk.png").stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["trunk.png"]  # one figure, no per-budget ones


def test_the_trunks_kept_epochs_decide_the_branch_points():
    """A trunk keeping only epochs 12 and 24 (docs/branches.md's recipe): each budget branches
    at the latest kept epoch before it leaves the trunk, as branch_epoch=null picks it, and
    trains a stable epoch more itself: 60 + 3 + 6 = 69 epochs. Before: no branch_costs."""
    cfgs = [make_cfg(*WSD[:2], f"epochs={b}", "trainer.keep_epochs=[12,24]") for b in (15, 30, 60)]
    assert branch_costs(cfgs) == [(15, 12), (30, 24), (60, 0)]


@pytest.mark.parametrize(("args", "says"), [
    (["scheduler=wsd", "epochs=30", "trunk=true"], "trunk=True: needs several budgets"),
    (["scheduler=wsd,cosine", "epochs=15,30", "--trunk"],
     "trunk=True: the budgets must differ only in epochs"),
    ([*WSD, "--trunk", "trace=true"], "trunk=True: draws no trace"),
    (["scheduler=plateau", "epochs=15,30", "--trunk"],
     "scheduler='plateau': a schedule that follows a metric"),
])  # fmt: skip
def test_trunk_preview_refuses_what_it_cannot_draw_in_one_line(tmp_path, capsys, args, says):
    """Before: `trunk=true` was an unknown key for Hydra, `--trunk` an unknown argument."""
    assert preview_main([*args, "--out", str(tmp_path)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"config error: {says}") and stderr.count("\n") == 1, stderr
    assert not tmp_path.exists() or not list(tmp_path.iterdir())
