"""Exploratory QA of the sweep report (session 19): what a user running
`python -m runner -m scheduler=step,cosine,plateau seed=0,1,2` and adding to it later would
read wrong. Each test pins a fix; all in-process on run dirs written without training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.sweep.compare import all_pairs
from runner.sweep.jobs import BASIC_SWEEPER as BASIC
from runner.sweep.jobs import group_jobs, load_jobs
from runner.sweep.report import main, overlay_figure, write_report
from tests.helpers import report_rows, write_job


def rows_of(best: float, epochs: int = 3) -> list[dict]:
    """Epoch rows whose val/acc peaks at `best` on the last epoch."""
    return [
        {
            "epoch": e,
            "lr/group0": 0.1,
            "val/acc": best - 0.01 * (epochs - 1 - e),
            "val/loss": 1.0 - best / 2,
        }
        for e in range(epochs)
    ]


def job(sweep: Path, overrides: list[str], seed: int, best: float, status="completed") -> Path:
    """A job dir as the runner leaves it, named as Hydra names it (overrides sorted)."""
    path = sweep / ",".join(sorted([*overrides, f"seed={seed}"]))
    write_job(path, [*overrides, f"seed={seed}"], seed, status, rows_of(best))
    return path


def test_a_seed_added_later_with_its_overrides_typed_in_another_order_joins_its_rows(
    tmp_path,
):
    """`-m scheduler=step,cosine optimizer.lr=0.05,0.2 seed=0,1` and later, into the same
    dir, `-m seed=2 optimizer.lr=0.05,0.2 scheduler=step,cosine`: the same 4 configurations
    (their job dirs, named by Hydra in key order, are shared). The report grouped by the
    order typed: 8 rows, each configuration split into one of 2 seeds and one of 1 seed."""
    sweep = tmp_path / "sweep"
    for schedule in ("step", "cosine"):
        for lr in ("0.05", "0.2"):
            for seed in (0, 1):
                job(sweep, [f"scheduler={schedule}", f"optimizer.lr={lr}"], seed, 0.9)
            job(sweep, [f"optimizer.lr={lr}", f"scheduler={schedule}"], 2, 0.9)
    write_report(sweep)
    rows = report_rows(sweep)
    assert sorted(rows) == [  # labelled as first met (dirs in name order: seed 0's)
        "scheduler=cosine optimizer.lr=0.05",
        "scheduler=cosine optimizer.lr=0.2",
        "scheduler=step optimizer.lr=0.05",
        "scheduler=step optimizer.lr=0.2",
    ]
    assert {r["n"] for r in rows.values()} == {"3"}


def test_the_budget_view_joins_a_strategy_typed_in_two_orders(tmp_path):
    """The budget view grouped strategies by the order typed too: a 4-epoch sweep typed
    `optimizer.lr=... scheduler=...` beside a 2-epoch one typed the other way round gave
    each strategy two lines of one budget each, and no budget question answered."""
    sweep = tmp_path / "sweep"
    for schedule, lr in (("cosine", "0.1"), ("step", "0.2")):
        for seed in (0, 1):
            short = [f"scheduler={schedule}", f"optimizer.lr={lr}", "epochs=2"]
            long = [f"optimizer.lr={lr}", f"scheduler={schedule}", "epochs=4"]
            for overrides, epochs in ((short, 2), (long, 4)):
                told = [*overrides, f"seed={seed}"]
                write_job(
                    sweep / ",".join(sorted(told)), told, seed, "completed", rows_of(0.9, epochs)
                )
    text = write_report(sweep)
    budgets = text.split("## Budgets")[1]
    assert "| `scheduler=cosine optimizer.lr=0.1` | 2 | 2/2 |" in budgets
    assert "| `scheduler=cosine optimizer.lr=0.1` | 4 | 2/2 |" in budgets
    assert "optimizer.lr=0.1 scheduler=cosine" not in budgets


def ranks(text: str) -> dict[str, str]:
    """The table's rank per configuration."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[2].startswith("`") and cells[1].lstrip("=").isdigit():
            out[cells[2].strip("`")] = cells[1]
    return out


def test_configurations_with_no_seed_in_common_share_a_rank_as_the_headline_says(tmp_path):
    """`-m scheduler=step seed=0,1,2` and later `-m scheduler=cosine seed=3,4,5` into the
    same dir: no pair to compare, and the headline said "tied with `scheduler=step` (no
    shared seed)" above a table ranking cosine 1 and step 2, as if it had been beaten."""
    sweep = tmp_path / "sweep"
    for seed, best in zip((0, 1, 2), (0.90, 0.92, 0.91), strict=True):
        job(sweep, ["scheduler=step"], seed, best)
    for seed, best in zip((3, 4, 5), (0.93, 0.92, 0.94), strict=True):
        job(sweep, ["scheduler=cosine"], seed, best)
    job(sweep, ["scheduler=plateau"], 0, 0.5, status="diverged")  # no value: no rank shared
    text = write_report(sweep)
    assert "tied with `scheduler=step` (no shared seed)" in text
    assert ranks(text) == {
        "scheduler=cosine": "1",
        "scheduler=step": "=1",
        "scheduler=plateau": "3",
    }
    assert "; or with no completed seed in common to compare them on)." in text


def test_a_winner_that_diverged_on_some_seeds_says_so_in_the_headline(tmp_path):
    """cosine beat step on the 6 seeds it completed and diverged on the other 2: the
    headline named it "Winner ... significantly better than every other configuration"
    without a word of the 2 seeds its mean and comparisons leave out."""
    sweep = tmp_path / "sweep"
    noise = [0.004, -0.006, 0.005, -0.003, 0.0, 0.002, -0.001, 0.003]
    for seed, e in enumerate(noise):
        job(sweep, ["scheduler=step"], seed, 0.90 + e)
        diverged = seed >= 6
        job(
            sweep, ["scheduler=cosine"], seed, 0.95 + e / 2, "diverged" if diverged else "completed"
        )
    line = write_report(sweep).splitlines()[2]
    assert line.startswith("**Winner: `scheduler=cosine`**")
    assert line.endswith(
        " Of `scheduler=cosine`'s 8 runs, 2 diverged: left out of its mean and comparisons, "
        "which are over its 6 completed run(s)."
    )
    alone = tmp_path / "alone"
    job(alone, ["scheduler=step"], 0, 0.9)
    job(alone, ["scheduler=cosine"], 0, 0.1, "diverged")
    job(alone, ["scheduler=plateau"], 0, 0.1, "failed")
    assert write_report(alone).splitlines()[2] == (
        "Only `scheduler=step` has completed runs (the others: 1 diverged and 1 failed): "
        "nothing to rank it against."
    )


def test_the_report_on_a_dir_that_is_no_sweep_dir_says_which_one_is(tmp_path, capsys):
    """`python -m runner.sweep.report` on a job's run dir, on outputs/ or on an empty dir
    said 'no runs found under X (expected <job>/.hydra/)', exit 1: the job's dir has a
    .hydra/ of its own, and none of them named the sweep dir to give instead."""
    sweep = tmp_path / "outputs" / "multirun" / "2026-12-07" / "10-00-00"
    one = job(sweep, ["scheduler=step"], 0, 0.9)
    (sweep / "multirun.yaml").write_text("{}\n")
    (tmp_path / "empty").mkdir()
    said = {}
    for name, path in (
        ("job", one),
        ("outputs", tmp_path / "outputs"),
        ("empty", tmp_path / "empty"),
    ):
        with pytest.raises(SystemExit) as end:
            main([str(path)])
        assert end.value.code == 2
        said[name] = capsys.readouterr().err.strip()
    assert (
        said["job"] == f"error: {one}: a job's run dir, not a sweep dir: its sweep dir is {sweep}"
    )
    assert said["outputs"] == (
        f"error: {tmp_path / 'outputs'}: holds 1 sweep dir(s), no job itself: give one, "
        f"e.g. {sweep}"
    )
    assert said["empty"].startswith(f"error: {tmp_path / 'empty'}: no job in it (a sweep dir ")
    main([str(sweep)])  # the sweep dir itself: its report
    assert (sweep / "report.md").is_file()


def multirun_yaml(sweep: Path, task: list[str], sweeper: str = BASIC, **params: str) -> None:
    """The sweep's multirun.yaml as Hydra saves it, as far as `jobs.grid` reads it."""
    hydra = {"sweeper": {"_target_": sweeper, "params": params or None}}
    hydra["overrides"] = {"hydra": [], "task": task}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))


def test_jobs_a_stopped_sweep_never_started_are_named_under_the_headline(tmp_path):
    """`-m scheduler=step,cosine,plateau seed=0,1` stopped (Ctrl-C, kill -9) before plateau
    started: the report (`python -m runner.sweep.report`) showed step and cosine only, its
    headline naming a leader, with no word of plateau nor of the sweep being unfinished."""
    sweep = tmp_path / "sweep"
    for schedule in ("step", "cosine"):
        for seed in (0, 1):
            job(sweep, [f"scheduler={schedule}", "epochs=3"], seed, 0.9 + seed / 100)
    multirun_yaml(sweep, ["scheduler=step,cosine,plateau", "seed=0,1", "epochs=3"])
    text = write_report(sweep)
    assert text.splitlines()[4] == (
        "**2 job(s) of the last sweep into this dir never started** (its multirun.yaml asks "
        "for them; the sweep stopped before them): `scheduler=plateau seed=0`, "
        "`scheduler=plateau seed=1`. The table and the verdict leave them out; the same "
        f"command with `hydra.sweep.dir={sweep.resolve()}` runs them, keeping the finished "
        "jobs."
    )
    # a preset's sweeper params are the grid's too; a whole grid says nothing
    multirun_yaml(sweep, ["epochs=3"], scheduler="step,cosine", seed="0,1")
    assert "never started" not in write_report(sweep)
    # another sweeper chose its own jobs (a race: c<i>_seed<s>): no grid to hold it to
    multirun_yaml(sweep, ["scheduler=step,cosine,plateau"], sweeper="x.RaceSweeper")
    assert "never started" not in write_report(sweep)


def test_jobs_of_a_running_sweep_not_started_yet_say_so(tmp_path):
    """The report on a sweep in progress (another process holds its dir): its jobs to come
    are not started yet, not lost."""
    sweep = tmp_path / "sweep"
    job(sweep, ["scheduler=step"], 0, 0.9)
    multirun_yaml(sweep, ["scheduler=step,cosine", "seed=0"])
    holder = start_holding(sweep / ".lock")
    try:
        text = write_report(sweep)
    finally:
        holder.kill()
        holder.wait()
    assert (
        "**1 job(s) of this sweep have not started yet** (the sweep is running): "
        "`scheduler=cosine`. This report is of the jobs so far." in text
    )


def start_holding(lock: Path) -> subprocess.Popen:
    """Another process holding `lock` (flock, as a sweep holds its dir) until killed."""
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_configuration_better_on_the_shared_seeds_is_not_called_tied(tmp_path):
    """step leads by its mean over 6 seeds; cosine diverged on seeds 3-5 and is better on
    each of 0-2, significantly (paired, on the seeds both completed). The headline said
    step "leads, tied with `scheduler=cosine`"."""
    sweep = tmp_path / "sweep"
    for seed, e in enumerate([0.001, -0.001, 0.0, 0.002, 0.0, -0.002]):
        job(sweep, ["scheduler=step"], seed, (0.90 if seed < 3 else 0.99) + e)
        cosine = 0.93 + e + 0.0005 * seed
        job(sweep, ["scheduler=cosine"], seed, cosine, "completed" if seed < 3 else "diverged")
    line = write_report(sweep).splitlines()[2]
    assert "`scheduler=step` leads, but `scheduler=cosine` is significantly better than it " in line
    assert "tied with" not in line


def test_a_job_extended_by_resume_is_reported_at_the_epochs_it_trained(tmp_path):
    """`resume=<a job of the sweep> epochs=6` extends that job in place; its
    .hydra/overrides.yaml stays its first launch's (`epochs=3`). The table averaged its
    6-epoch numbers with the other 3-epoch seeds under `scheduler=step`, while the budget
    view of the same report put it at 6 epochs."""
    sweep = tmp_path / "sweep"
    for seed in (0, 1, 2):
        for schedule in ("step", "cosine"):
            path = job(sweep, [f"scheduler={schedule}", "epochs=3"], seed, 0.9)
            (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"epochs": 3}))
    extended = sweep / "epochs=3,scheduler=step,seed=0"
    shutil.rmtree(extended)
    write_job(extended, ["scheduler=step", "epochs=3"], 0, "completed", rows_of(0.97, 6))
    (extended / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "epochs": 6}))
    (extended / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"epochs": 3}))
    write_report(sweep)
    rows = report_rows(sweep)
    assert {k: rows[k]["n"] for k in rows} == {
        "scheduler=step epochs=6": "1",
        "scheduler=step epochs=3": "2",
        "scheduler=cosine epochs=3": "3",
    }
    assert float(rows["scheduler=step epochs=3"]["best_val_acc_mean"]) == 0.9


def test_seeds_added_with_another_logger_join_their_configuration(tmp_path):
    """Seeds 0-1 run with `logger=none`, seed 2 added later with W&B on (the default) and
    `trainer.progress=false`: the same training (those keys change how a run is shown,
    never what it computes), which the report split into rows of 2 and 1 seed."""
    sweep = tmp_path / "sweep"
    for schedule in ("step", "cosine"):
        for seed in (0, 1):
            job(sweep, [f"scheduler={schedule}", "logger=none"], seed, 0.9)
        job(sweep, [f"scheduler={schedule}", "trainer.progress=false"], 2, 0.9)
    write_report(sweep)
    rows = report_rows(sweep)
    assert {k: rows[k]["n"] for k in rows} == {"scheduler=step": "3", "scheduler=cosine": "3"}


def test_the_overlays_are_over_the_completed_seeds_their_titles_and_the_table_say(tmp_path):
    """A seed that diverged at epoch 2 of 4 was in the val acc curve for epochs 0-1 (its
    mean dipped) and out of it after (the mean jumped back): a curve no run made, under a
    title 'mean ± std over seeds' above a table over the completed seeds only."""
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        job(sweep, ["scheduler=cosine"], seed, 0.9)
    diverged = job(sweep, ["scheduler=cosine"], 2, 0.9, status="diverged")
    low = [{"epoch": e, "lr/group0": 0.1, "val/acc": 0.1, "val/loss": 9.0} for e in range(2)]
    (diverged / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in low))
    for seed in (0, 1, 2):
        job(sweep, ["scheduler=step"], seed, 0.8, status="diverged")
    groups = group_jobs(load_jobs(sweep))
    (ax,) = overlay_figure(groups, "val/acc").axes
    lines = {line.get_label(): line for line in ax.lines}
    assert sorted(lines) == [
        "scheduler=cosine (2 of 3 runs: the completed)",
        "scheduler=step (no completed run)",  # what there is: where they diverged
    ]
    assert list(lines["scheduler=cosine (2 of 3 runs: the completed)"].get_ydata()) == [
        pytest.approx(v) for v in (0.88, 0.89, 0.9)
    ]
    assert ax.get_title() == "val accuracy (mean ± std over completed seeds)"


def test_the_wall_time_of_fused_jobs_is_said_to_be_their_groups(tmp_path):
    """Under hydra/launcher=fused each job's status.json has its whole group's wall time
    (docs/fused.md): the table's `wall s` showed 7.6 s for every schedule of a sweep whose
    jobs take 0.3-0.7 s alone, and mixed both kinds when seeds were added with the basic
    launcher, without a word."""
    sweep = tmp_path / "sweep"
    for schedule in ("step", "cosine"):
        for seed in (0, 1):
            path = job(sweep, [f"scheduler={schedule}"], seed, 0.9)
            status = json.loads((path / "status.json").read_text())
            status.update(wall_time_s=7.6, fused_jobs=4)
            (path / "status.json").write_text(json.dumps(status))
        job(sweep, [f"scheduler={schedule}"], 2, 0.9)
    text = write_report(sweep)
    assert (
        " Wall s of the 4 job(s) trained fused (hydra/launcher=fused) is their fused group's "
        "whole time, every member's the same; 2 others trained alone, theirs is their own." in text
    )


def test_a_single_seed_sweep_says_what_a_verdict_needs(tmp_path):
    """`-m scheduler=step,cosine seed=0`: the report said 'No pair shares two completed
    seeds, so none has a verdict; Holm's correction would be (family-wise error 0.05): ...',
    a sentence that broke off, and not what to run for a verdict."""
    sweep = tmp_path / "sweep"
    job(sweep, ["scheduler=step"], 0, 0.90)
    job(sweep, ["scheduler=cosine"], 0, 0.92)
    text = write_report(sweep)
    assert "tied with `scheduler=step` (1 shared seed)" in text
    assert (
        "No pair shares two completed seeds, so none has a verdict: a paired test needs 2 or "
        "more (sweep `seed=0,1,2`, or add seeds into this sweep dir with `hydra.sweep.dir=`)."
        in text
    )


def test_a_headline_tied_with_many_names_a_few_and_counts_the_rest(tmp_path):
    """An Optuna study of 50 one-seed trials: the headline named all 49 others ("tied with
    `optimizer.lr=0.0151... scheduler.gamma=0.869...` (1 shared seed), ..."), each again
    with its values, one line of several thousand characters above the table."""
    sweep = tmp_path / "sweep"
    for i in range(12):
        job(sweep, [f"optimizer.lr=0.{i + 10}"], 0, 0.9 - i / 100)
    line = write_report(sweep).splitlines()[2]
    assert "`optimizer.lr=0.15` (1 shared seed) and 6 more (the table's `=1` rows). " in line
    assert "optimizer.lr=0.16" not in line
    assert line.count("(1 shared seed)") == 5


def test_configurations_equal_on_every_seed_are_said_to_be_so():
    """`scheduler=step,plateau epochs=3`: step's step_size=10 never steps and plateau never
    triggers, so both train the same constant lr: equal on every seed. The verdict said
    "no number of seeds resolves a difference this small (3 seeds are few; more would
    narrow it)": more seeds narrow nothing there."""
    same = {0: 0.9083, 1: 0.9361, 2: 0.9333}
    (c,) = all_pairs({"scheduler=plateau": same, "scheduler=step": dict(same)}, True)
    assert c.verdict == (
        "tie: Holm-adjusted p = 1 >= 0.05; equal on all 3 seeds (the same training? compare "
        "their lr)"
    )
