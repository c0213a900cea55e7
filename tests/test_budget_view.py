"""Issue #34: the sweep report's budget view. A sweep whose jobs differ in `epochs` gets a
table of the final metric per strategy and budget (mean ± 95 % t interval over seeds), what
each cost in epochs trained (a branch only its own epochs, its trunk once), the total per
strategy beside one run per budget from scratch, and budgets.png; `--also` pools other
sweep dirs into it. Job dirs are built without training, as tests/test_report_verdict.py
does, and named by their overrides (no job is assumed to be called 0, 1, 2)."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats

from runner.sweep.report import main, write_report

RERUN = {4: [0.80, 0.82, 0.84], 8: [0.90, 0.91, 0.95]}  # budget -> final val acc per seed
BRANCH = {4: [0.85, 0.86], 8: [0.93, 0.94]}  # budget -> per trunk seed
TRUNK_EPOCHS = 8
BRANCH_EPOCH = {4: 3, 8: 6}  # where each budget's cooldown leaves the trunk


def rows(epochs: int, final: float, from_trunk: int = 0) -> list[dict]:
    """`epochs` epoch rows ending at val/acc `final`, the first `from_trunk` marked so."""
    out = []
    for e in range(epochs):
        row = {"epoch": e, "lr/group0": 0.1, "val/acc": final - 0.01 * (epochs - 1 - e)}
        row["val/loss"] = 1.0 - row["val/acc"]
        out.append({**row, "from_trunk": True} if e < from_trunk else row)
    return out


def run_dir(path: Path, config: dict, metrics: list[dict], overrides: list[str] | None) -> Path:
    """A run dir as the runner leaves it; a sweep's job when it has `overrides`."""
    path.mkdir(parents=True)
    if overrides is not None:
        (path / ".hydra").mkdir()
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "status.json").write_text(json.dumps({"status": "completed", "wall_time_s": 1.0}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    step = {"kind": "step", "trainer/global_step": 1, "lr_step/group0": 0.1}
    with (path / "metrics.jsonl").open("a") as f:  # step rows are no epochs
        f.write(json.dumps(step) + "\n")
    return path


def rerun_sweep(root: Path, budgets: dict[int, list[float]]) -> Path:
    """`-m scheduler=cosine epochs=... seed=...`: a run from scratch per budget and seed."""
    sweep = root / "reruns"
    for b, finals in budgets.items():
        for seed, final in enumerate(finals):
            over = ["scheduler=cosine", f"epochs={b}", f"seed={seed}"]
            config = {"seed": seed, "epochs": b, "branch": None, "branch_epoch": None}
            run_dir(sweep / ",".join(over), config, rows(b, final), over)
    return sweep


def branch_sweeps(
    root: Path, budgets: dict[int, list[float]] = BRANCH, trunk_sweep: bool = False
) -> list[Path]:
    """Per seed, a trunk (a run of its own; with `trunk_sweep`, a job of the sweep
    `-m scheduler=wsd epochs=8 trainer.keep_epochs=[3,6] seed=0,1` in root/trunks) and
    `-m branch=<trunk> scheduler=wsd epochs=4,8` (seed=1 said for the second trunk): each
    branch's first rows its trunk's."""
    sweeps = []
    for seed in range(2):
        over = ["scheduler=wsd", "epochs=8", "trainer.keep_epochs=[3,6]", f"seed={seed}"]
        where = root / "trunks" / ",".join(over) if trunk_sweep else root / f"trunk{seed}"
        trunk = run_dir(
            where,
            {"seed": seed, "epochs": TRUNK_EPOCHS},
            rows(TRUNK_EPOCHS, 0.9 + seed / 100),
            over if trunk_sweep else None,
        )
        sweep = root / f"branches{seed}"
        for b, finals in budgets.items():
            over = [f"branch={trunk}", "scheduler=wsd", f"epochs={b}"] + [f"seed={seed}"] * seed
            k = BRANCH_EPOCH[b]
            config = {"seed": seed, "epochs": b, "branch": str(trunk), "branch_epoch": k}
            run_dir(sweep / ",".join(over[1:]), config, rows(b, finals[seed], k), over)
        sweeps.append(sweep)
    return sweeps


def table_row(text: str, start: str) -> list[str]:
    (line,) = [x for x in text.splitlines() if x.startswith(start)]
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_budget_table_s_costs_add_up_a_trunk_once_and_each_branch_after_its_branch_point(
    tmp_path,
):
    reruns = rerun_sweep(tmp_path, RERUN)
    text = write_report(reruns, also=branch_sweeps(tmp_path))
    assert "## Budgets: final val acc by training budget" in text
    assert "The runs of these 3 sweep dirs differ in `epochs`" in text
    # per budget: a rerun trains its whole budget per seed; a branch only after its branch point
    assert table_row(text, "| `scheduler=cosine` | 4 | 3/3")[4] == str(4 * 3)
    assert table_row(text, "| `scheduler=cosine` | 8 | 3/3")[4] == str(8 * 3)
    assert table_row(text, "| `branch=<trunk> scheduler=wsd` | 4 | 2/2")[4] == str((4 - 3) * 2)
    assert table_row(text, "| `branch=<trunk> scheduler=wsd` | 8 | 2/2")[4] == str((8 - 6) * 2)
    # per strategy: runs, trunks, trunk epochs, own, total, one run per budget, the ratio
    own = (4 - 3) * 2 + (8 - 6) * 2
    branches = table_row(text, "| `branch=<trunk> scheduler=wsd` | 4 | 2 |")
    assert branches == [
        "`branch=<trunk> scheduler=wsd`",
        "4",
        "2",
        "16",
        str(own),
        f"**{16 + own}**",
        str(2 * (4 + 8)),
        f"{(16 + own) / 24:.2f}",
    ]
    assert table_row(text, "| `scheduler=cosine` | 6 | 0 |") == [
        "`scheduler=cosine`",
        "6",
        "0",
        "0",
        "36",
        "**36**",
        "36",
        "1.00",
    ]
    assert "![final val acc by budget](budgets.png)" in text
    assert text in (reruns / "report.md").read_text()
    # the report's own table is still the sweep's own jobs: no branch in it
    assert "branch=" not in text.split("## Budgets")[0]


def test_the_metric_per_budget_is_the_mean_of_the_seeds_final_values_with_a_t_interval(
    tmp_path,
):
    text = write_report(rerun_sweep(tmp_path, RERUN))  # best val acc ranks; the view is final
    for b, finals in RERUN.items():
        half = stats.t.ppf(0.975, 2) * statistics.stdev(finals) / math.sqrt(3)
        cells = table_row(text, f"| `scheduler=cosine` | {b} |")
        assert cells[2:4] == ["3/3", f"{statistics.fmean(finals):.4f} ± {half:.4f}"]
    # one seed: no interval
    one = write_report(rerun_sweep(tmp_path / "one", {4: [0.8], 8: [0.9]}))
    assert table_row(one, "| `scheduler=cosine` | 8 |")[2:4] == ["1/1", "0.9000"]


def test_the_plot_is_written_and_a_metric_report_keeps_its_own(tmp_path):
    reruns = rerun_sweep(tmp_path, RERUN)
    main([str(reruns), "--metric", "best_val_loss"])
    png = reruns / "budgets_best_val_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (reruns / "budgets.png").exists()  # the sweep's own is the plain call's
    assert (
        "## Budgets: final val loss by training budget"
        in (reruns / "report_best_val_loss.md").read_text()
    )


def test_one_budget_shows_no_budget_view_even_pooled_with_another_sweep(tmp_path, capsys):
    """Sweeps of one budget (4 epochs) pooled by --also: no section, no plot. Any budget
    view needs runs of two budgets or more."""
    first = rerun_sweep(tmp_path, {4: [0.8, 0.81]})
    others = branch_sweeps(tmp_path, {4: BRANCH[4]})
    main([str(first), "--also", str(others[0]), "--also", str(others[1])])
    assert "report written to" in capsys.readouterr().out
    assert "## Budgets" not in (first / "report.md").read_text()
    assert not (first / "budgets.png").exists()


def test_an_also_dir_that_is_missing_is_exit_2_naming_it(tmp_path, capsys):
    reruns = rerun_sweep(tmp_path, RERUN)
    with pytest.raises(SystemExit) as exit_:
        main([str(reruns), "--also", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nowhere'}: no such directory")
    assert not (reruns / "report.md").exists()


@pytest.mark.slow
def test_the_budgets_benchmark_runs_its_quick_sweep():
    """benchmarks/bench_budgets.py --quick: budgets 5 and 6 (decay_fraction 0.5). Reruns
    train 5 + 6 epochs; the trunk (the 6-epoch run) 6 and the 5-epoch branch, from its
    decay at epoch 3, 2 more; both give the same final val accuracies."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_budgets

    result = bench_budgets.main(["--quick"])["results"]["digits MLP"]
    assert (result["reruns epochs"], result["branches epochs"]) == (11, 8)
    assert result["same final val acc"] and result["reruns s"] > 0 and result["branches s"] > 0


def test_a_sweep_of_trunks_pooled_with_their_branches_is_their_strategy_s_longest_budget(
    tmp_path,
):
    """The trunks trained as a sweep (WSD of the longest budget, keeping epochs) and passed
    with --also are the branches' runs of 8 epochs, each paid for once: as a run."""
    reruns = rerun_sweep(tmp_path, RERUN)
    sweeps = branch_sweeps(tmp_path, {4: BRANCH[4]}, trunk_sweep=True)
    main([str(reruns), *(a for s in [tmp_path / "trunks", *sweeps] for a in ("--also", str(s)))])
    text = (reruns / "report.md").read_text()
    assert "`scheduler=wsd`" not in text  # no strategy of its own
    label = "`branch=<trunk> scheduler=wsd`"
    assert table_row(text, f"| {label} | 8 | 2/2")[3:] == ["0.9050 ± 0.0635", "16"]
    assert table_row(text, f"| {label} | 4 | 2/2")[4] == "2"
    own = 2 * 8 + 2 * (4 - 3)
    assert table_row(text, f"| {label} | 4 | 2 |") == [
        label,
        "4",
        "2",
        "0",
        str(own),
        f"**{own}**",
        str(2 * (4 + 8)),
        f"{own / 24:.2f}",
    ]
