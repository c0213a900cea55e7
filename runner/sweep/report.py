"""Sweep report: which configuration won, by how much, read from the run dirs alone.

`python -m runner.sweep.report <sweep dir>` (also run by a Hydra callback at the end of
every multirun) reads each job's `metrics.jsonl`, `status.json` and
`.hydra/overrides.yaml`, groups the jobs by their overrides minus `seed`, and
writes `report.md`, `report.csv` and lr / val-loss / val-acc overlays into the
sweep dir. Diverged and failed jobs are counted in their row, not dropped. Its headline
names a winner only when the paired, Holm-corrected comparisons find the top configuration
better than every other; `--metric M` writes `report_M.md` (and its own csv and plots)
beside the sweep's own report, never over it. The sweep's own report ranks by `auto`:
best_val_acc, or final_val_loss (lowest first) when the runs are language models.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from runner.io.files import WriteFailed, read_json, run_dir_holder, write_text_atomic
from runner.sweep.budgets import budget_view
from runner.sweep.compare import ALPHA, BASE_METRICS, METRICS, Comparison, all_pairs
from runner.sweep.compare import markdown as compare_markdown
from runner.sweep.figures import epoch_axis, legend_below, line_style, new_figure, save_png
from runner.sweep.jobs import (
    Group,
    Job,
    common_overrides,
    group_jobs,
    load_jobs,
    unstarted,
    without_seed,
)
from runner.sweep.race import RACE_FILE
from runner.sweep.sweepdir import describe_refused, refused, take_or_exit

log = logging.getLogger("schedlab")

DEFAULT_TARGET_ACC = 0.95
AUTO = "auto"  # the report's default metric: `ranking_metric` picks it from the runs


def ranking_metric(groups: Sequence[Group], metric: str = AUTO) -> str:
    """`metric` itself, or for `auto`: final_val_loss when every completed run is a language
    model's (its rows carry val/bpb, runner/train/lm.py), the loss at the end of the token
    budget being what schedule comparisons on them report (Hägele et al. 2024; Bergsma et
    al. 2025); else best_val_acc, a classifier's."""
    if metric != AUTO:
        return metric
    done = [j for g in groups for j in g.finished]
    if done and all(j.series("val/bpb") for j in done):
        return "final_val_loss"
    return "best_val_acc"


def _mean_std(values: Sequence[float], one: float = 0.0) -> tuple[float, float]:
    """Mean and sample std; the std of a single value is `one` (NaN in the table: there is
    no spread to show; 0 for the plots' bands)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else one


def metric_stats(jobs: Sequence[Job], metric: str) -> tuple[float, float]:
    """Mean and std of `metric` (compare.METRICS) over the jobs whose rows have its key (an
    averaged model's val_avg/* is only in runs with trainer.average on); NaN without any."""
    key, reduce, _ = METRICS[metric]
    return _mean_std([reduce(s) for s in (j.series(key) for j in jobs) if s], math.nan)


class NotASweep(FileNotFoundError):
    """The report's dir holds no job (`<job>/.hydra/overrides.yaml`): a wrong argument."""


def why_no_jobs(path: Path) -> str:
    """Why a dir with no job is not the sweep dir the user meant, and which one is: a run
    dir (a job's own, or a single run's) or a dir of sweep dirs were both 'no runs found
    under X (expected <job>/.hydra/)', a hint that the run dir itself matched."""
    if (path / ".hydra").is_dir():
        parent = path.resolve().parent
        if (parent / "multirun.yaml").is_file():
            return f"a job's run dir, not a sweep dir: its sweep dir is {parent}"
        return (
            "a single run's dir, not a sweep dir (one made by `python -m runner -m ...`); "
            f"its numbers per epoch are in {path / 'metrics.jsonl'}, and the report plots "
            f"every run of its name, this one included: python -m runner.sweep.report {parent}"
        )
    # outputs/multirun/<date>/<time> is 3 deep from outputs; no deeper (a dir of data)
    sweeps = sorted(
        p.parent for d in ("*", "*/*", "*/*/*") for p in path.glob(f"{d}/multirun.yaml")
    )
    if sweeps:
        return f"holds {len(sweeps)} sweep dir(s), no job itself: give one, e.g. {sweeps[-1]}"
    return (
        "no job in it (a sweep dir holds one dir per job, each with .hydra/overrides.yaml; "
        "e.g. outputs/multirun/<date>/<time>)"
    )


class NoSuchMetric(ValueError):
    """The report's metric is in no completed run's rows (val_avg/* without trainer.average)."""


def check_metric(groups: Sequence[Group], metric: str) -> None:
    """A ranking by a metric no completed run logged would rank nothing: say why instead."""
    key = METRICS[metric][0]
    if not key.startswith("val_avg/") or any(j.series(key) for g in groups for j in g.finished):
        return  # a sweep with no completed run still gets its report (the failures in it)
    why = " (the averaged model's: the runs need trainer.average=ema or swa)"
    raise NoSuchMetric(f"--metric {metric}: no completed run of this sweep logged {key}{why}")


def summarize(group: Group, target_acc: float) -> dict[str, Any]:
    done = group.finished
    stats = {m: metric_stats(done, m) for m in METRICS}
    reach = [
        next((i + 1 for i, a in enumerate(j.series("val/acc")) if a >= target_acc), None)
        for j in done
    ]
    reached = [r for r in reach if r is not None]
    walls = [j.wall_time_s for j in done if j.wall_time_s is not None]
    return {
        "config": group.label,
        "n": len(group.jobs),
        "completed": len(done),
        "diverged": group.count("diverged"),
        # still running: another process holds its run dir (a sweep in progress)
        "running": group.count("running"),
        # not complete for another reason: a crash, a stop (interrupted), or completed by
        # its status.json but unreadable (no metrics.jsonl row, or a row without val/acc
        # or val/loss: runner/sweep/jobs.py Job.readable)
        "failed": len(group.jobs) - len(done) - group.count("diverged") - group.count("running"),
        **{f"{m}_{part}": stats[m][i] for m in METRICS for i, part in enumerate(("mean", "std"))},
        "epochs_to_target_mean": statistics.fmean(reached) if reached else math.nan,
        "reached_target": len(reached),
        "wall_time_s_mean": statistics.fmean(walls) if walls else math.nan,
    }


def _sort_key(metric: str) -> Callable[[dict[str, Any]], tuple[bool, float]]:
    """Best first by the report's metric (the one its paired comparisons use, so that a
    shared rank `=n` and the order answer the same question); no completed run last."""
    higher = METRICS[metric][2]

    def key(row: dict[str, Any]) -> tuple[bool, float]:
        mean = row[f"{metric}_mean"]
        return (math.isnan(mean), 0.0 if math.isnan(mean) else -mean if higher else mean)

    return key


def suffixed(file_name: str, suffix: str) -> str:
    """`report.md` -> `report<suffix>.md`: a `--metric` report's files sit beside the sweep's
    own, never over them."""
    stem, dot, ext = file_name.rpartition(".")
    return f"{stem}{suffix}{dot}{ext}"


def metric_suffix(metric: str) -> str:
    """`_<metric>`, safe in a file name whatever the metric is called."""
    return "_" + re.sub(r"[^A-Za-z0-9_.-]", "_", metric)


def _name(metric: str) -> str:
    return metric.replace("_", " ")  # best_val_acc -> best val acc


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def per_seed(groups: list[Group], metric: str) -> dict[str, dict[int, float]]:
    """Each configuration's metric per seed, over its completed runs."""
    key, reduce, _ = METRICS[metric]
    return {
        g.label: {
            j.seed: reduce(j.series(key))
            for j in g.finished
            if j.seed is not None and j.series(key)  # val_avg/*: runs with trainer.average
        }
        for g in groups
    }


def markdown(
    rows: list[dict[str, Any]],
    target_acc: float,
    sweep_dir: Path,
    common: list[str],
    comparisons: list[Comparison],
    metric: str,
    repeats: int = 0,
    pending: Sequence[dict[str, Any]] = (),
    suffix: str = "",
    missing: Sequence[str] = (),
    jobs: Sequence[Job] = (),
) -> str:
    shared = " ".join(without_seed(common)) or "none"
    columns = table_metrics(rows, metric)
    lines = [f"# Sweep report: {sweep_dir}", ""]
    if top := headline(rows, comparisons, metric):
        lines += [top, ""]
    if missing:
        lines += [not_started(sweep_dir, missing), ""]
    lines += [
        f"Overrides shared by every run: `{shared}`.",
        "",
        f"Best first, by mean {_name(metric)} over completed seeds. Statistics are over completed "
        f"runs (± their std; none for a single seed); diverged runs, failed ones "
        f"(crashed, stopped, unfinished or unreadable) and running ones (another process "
        f"holds their run dir) are counted in their own columns. Epochs to "
        f"{target_acc:.0%}: mean over the seeds that reached it (k/n reached)." + fused_wall(jobs),
        "",
        "| # | config | runs | done | diverged | failed | running | "
        + " | ".join(f"**{c}**" if c == _name(metric) else c for c in map(_name, columns))
        + f" | epochs to {target_acc:.0%} | wall s |",
        "|---|---|---|---|---|---|---|" + "---|" * len(columns) + "---|---|",
    ]
    ties = {frozenset((c.a, c.b)) for c in comparisons if c.tie}
    paired = {frozenset((c.a, c.b)) for c in comparisons}
    rank, leader, unpaired = 0, None, False
    for i, r in enumerate(rows):
        # a rank is shared only with its first row: tied with the one above is not enough,
        # as ties chain (1 = 2 and 2 = 3 while 1 is significantly better than 3)
        pair = frozenset((leader, r["config"]))
        alone = leader is not None and pair not in paired and _ranked(r, metric)
        tied = leader is not None and (pair in ties or alone)
        unpaired |= alone
        if not tied:
            rank, leader = i + 1, r["config"]
        label = f"={rank}" if tied else str(rank)
        epochs = r["epochs_to_target_mean"]
        to_target = (
            f"{'—' if math.isnan(epochs) else f'{epochs:.1f}'} "
            f"({r['reached_target']}/{r['completed']})"
        )
        wall = "—" if math.isnan(r["wall_time_s_mean"]) else f"{r['wall_time_s_mean']:.1f}"
        lines.append(
            f"| {label} | `{r['config']}` | {r['n']} | {r['completed']} | {r['diverged']} "
            f"| {r['failed']} | {r['running']} | "
            + "".join(f"{_pm(r[f'{m}_mean'], r[f'{m}_std'])} | " for m in columns)
            + f"{to_target} | {wall} |"
        )
    if pending:
        lines += ["", describe_refused(list(pending)) + "."]
    if repeats:
        lines += [
            "",
            f"{repeats} job(s) repeat a configuration and seed already in the table "
            "(the same run twice, e.g. `seed=0,0`): each pair counts once, by its first "
            "completed job.",
        ]
    if len(rows) > 1:
        lines += [
            "",
            f"The ranking metric, {_name(metric)}, is in bold; `=n` marks a rank "
            "shared with the first row of that rank (not significantly different from "
            "it after Holm's correction"
            + ("; or with no completed seed in common to compare them on" if unpaired else "")
            + ").",
            "",
        ]
        lines += compare_markdown(comparisons, metric)
    images = " ".join(
        f"![{title}]({suffixed(OVERLAYS[key][0], suffix)})"
        for key, title in (("lr", "lr"), ("val/loss", "val loss"), ("val/acc", "val acc"))
    )
    lines += ["", images, ""]
    return "\n".join(lines)


def fused_wall(jobs: Sequence[Job]) -> str:
    """What `wall s` is for jobs trained fused (hydra/launcher=fused): their whole group's
    time, the same for every member, so not a configuration's cost beside another's, nor
    beside a job trained alone (seeds added later with the basic launcher)."""
    fused = [j for j in jobs if j.fused_jobs is not None and j.status == "completed"]
    if not fused:
        return ""
    alone = sum(j.fused_jobs is None and j.status == "completed" for j in jobs)
    mixed = f"; {alone} others trained alone, theirs is their own" if alone else ""
    return (
        f" Wall s of the {len(fused)} job(s) trained fused (hydra/launcher=fused) is their "
        f"fused group's whole time, every member's the same{mixed}."
    )


def _ranked(row: dict[str, Any], metric: str) -> bool:
    """The row has a value of the ranking metric (completed runs that logged it)."""
    return not math.isnan(row[f"{metric}_mean"])


def not_started(sweep_dir: Path, missing: Sequence[str], shown: int = 10) -> str:
    """The line naming the jobs of the sweep that have no run dir (`jobs.unstarted`): not
    started yet while the sweep holds its dir, else never (it stopped before them)."""
    names = ", ".join(f"`{m}`" for m in missing[:shown])
    if len(missing) > shown:
        names += f" and {len(missing) - shown} more"
    if run_dir_holder(sweep_dir) is not None:
        return (
            f"**{len(missing)} job(s) of this sweep have not started yet** (the sweep is "
            f"running): {names}. This report is of the jobs so far."
        )
    return (
        f"**{len(missing)} job(s) of the last sweep into this dir never started** (its "
        f"multirun.yaml asks for them; the sweep stopped before them): {names}. The table "
        f"and the verdict leave them out; the same command with "
        f"`hydra.sweep.dir={sweep_dir.resolve()}` runs them, keeping the finished jobs."
    )


def table_metrics(rows: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """The metric columns of the table: every run's four, and the averaged model's when a
    run logged them (trainer.average) or the report ranks by one."""
    averaged = [m for m in METRICS if m not in BASE_METRICS]
    shown = metric in averaged or any(
        not math.isnan(r[f"{m}_mean"]) for r in rows for m in averaged
    )
    return list(BASE_METRICS) + (averaged if shown else [])


def _tied_with_top(
    rows: list[dict[str, Any]], comparisons: list[Comparison], metric: str
) -> list[tuple[dict[str, Any], str]]:
    """The rows with completed runs that the paired comparisons do not find significantly
    worse than the top row, each with why when it had no test (one shared seed, or none)."""
    top = rows[0]["config"]
    by_pair = {frozenset((c.a, c.b)): c for c in comparisons}
    tied = []
    for r in rows[1:]:
        if not _ranked(r, metric):
            continue  # no completed run: in the table, not in the running for first
        c = by_pair.get(frozenset((top, r["config"])))
        if c is None:
            tied.append((r, " (no shared seed)"))
        elif c.n < 2:
            tied.append((r, " (1 shared seed)"))
        elif c.verdict == f"{r['config']} better":
            tied.append((r, BEATS_TOP))  # on fewer seeds than its mean is over
        elif c.verdict != f"{top} better":
            tied.append((r, ""))
    return tied


BEATS_TOP = "beats the top"  # `_tied_with_top`'s why for a row significantly better than it


def _values(rows: list[dict[str, Any]], metric: str) -> str:
    """The ranking metric beside its twin at the other epoch (best and final val acc, or
    loss), per configuration: a schedule can lead at its best epoch and trail at its last."""
    what = metric.split("_", 1)[1]  # val_acc, val_loss, val_avg_acc or val_avg_loss
    best, final = f"best_{what}", f"final_{what}"
    values = ", ".join(
        f"`{r['config']}` {r[f'{best}_mean']:.4f} / {r[f'{final}_mean']:.4f}" for r in rows
    )
    return f"Mean {_name(best)} / {_name(final)}: {values}."


HEADLINE_NAMES = 6  # configurations the headline names at most; the table has them all


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def headline(rows: list[dict[str, Any]], comparisons: list[Comparison], metric: str) -> str:
    """The report's first line: a winner by `metric` only when the paired, Holm-corrected
    comparisons find the top row better than every other row with completed runs; else "No
    significant winner", naming those it ties with. (A bare "Winner" above a table of `=1`
    ranks announced a result the data did not give.)"""
    mean = f"{metric}_mean"
    if len(rows) < 2 or math.isnan(rows[0][mean]):
        return ""
    first, second = rows[0], rows[1]
    if math.isnan(second[mean]):
        others = _outcomes([r for r in rows[1:] if not _ranked(r, metric)])
        return (
            f"Only `{first['config']}` has completed runs (the others: {others}): nothing to "
            f"rank it against.{_uncounted(first)}"
        )
    how = f"by mean {_name(metric)} (paired by seed, Holm-corrected, family-wise error {ALPHA:g})"
    if tied := _tied_with_top(rows, comparisons, metric):
        names = [f"`{r['config']}`{why}" for r, why in tied if why != BEATS_TOP]
        if len(names) > HEADLINE_NAMES:  # an Optuna study of 50 one-seed trials: 49 names
            more = f"{len(names) - HEADLINE_NAMES + 1} more (the table's `=1` rows)"
            names = [*names[: HEADLINE_NAMES - 1], more]
        said = f"`{first['config']}` leads" + (f", tied with {_join(names)}" if names else "")
        if better := [r for r, why in tied if why == BEATS_TOP]:
            # the means are over different seeds (runs that diverged or failed, seeds
            # added to one configuration): the paired test on the shared ones says otherwise
            who = _join([f"`{r['config']}`" for r in better])
            said += (
                f", but {who} "
                f"{'is' if len(better) == 1 else 'are'} significantly better than it on the "
                "seeds both completed (the means are over different seeds)"
            )
        return (
            f"**No significant winner** {how}: {said}. "
            f"{_values([first, *(r for r, _ in tied[: HEADLINE_NAMES - 1])], metric)}"
            f"{_uncounted(first)}"
        )
    gap = abs(first[mean] - second[mean])
    lower = "" if METRICS[metric][2] else " (lower is better)"
    return (
        f"**Winner: `{first['config']}`** {how}: significantly better than every other "
        f"configuration; ahead of `{second['config']}` by {gap:.4f}{lower}. "
        f"{_values([first, second], metric)}{_uncounted(first)}"
    )


def _outcomes(rows: Sequence[dict[str, Any]]) -> str:
    """How the rows' runs that are no result ended: `3 diverged and 1 failed`."""
    n = {k: sum(r[k] for r in rows) for k in ("diverged", "failed", "running")}
    return _join([f"{v} {k}" for k, v in n.items() if v]) or "no runs"


def _uncounted(row: dict[str, Any]) -> str:
    """The leader's runs that are no result (diverged, failed, running), said beside the
    headline: its mean and its paired comparisons are over its completed seeds only, so a
    schedule that diverged on some seeds was named the winner by the others alone."""
    if row["completed"] == row["n"]:
        return ""
    return (
        f" Of `{row['config']}`'s {row['n']} runs, {_outcomes([row])}: left out of its "
        f"mean and comparisons, which are over its {row['completed']} completed run(s)."
    )


def _fmt(value: float | None, spec: str = "+.4f") -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (format(value, spec))
    )


def _evidence(e: dict[str, Any], vs: str) -> str:
    """A race comparison as the report prints it: difference with the current best, its
    Holm-adjusted interval and p-value."""
    interval = f"[{_fmt(e.get('ci_holm_low'))}, {_fmt(e.get('ci_holm_high'))}]"
    return (
        f"vs `{vs}` on {e.get('n')} seeds: {_fmt(e.get('mean_diff'))}, Holm-adjusted interval "
        f"{interval}, p (Holm) = {_fmt(e.get('p_holm'), '.3g')}"
    )


def race_markdown(race: dict[str, Any], suffix: str = "") -> list[str]:
    """The race's decisions (race.json) as a report section: each configuration's fate
    with its evidence, and the runs used against the full grid."""
    settings = race["settings"]
    configs = race["configurations"]
    label = {c["index"]: c["label"] for c in configs}
    n_rounds = len(race["rounds"])
    reason = race.get("reason")
    grid = race["full_grid"]
    saved = grid - race["runs_used"]
    lines = [
        f"## Race: `{settings['metric']}`, alpha {settings['alpha']:g}, Holm-corrected",
        "",
        f"Runs used: **{race['runs_used']} of the full grid's {grid}** ({len(configs)} "
        f"configurations x {settings['max_seeds']} seeds, hydra.sweeper.max_seeds), "
        f"{saved} saved, in {n_rounds} round{'s' * (n_rounds != 1)} (min_seeds "
        f"{settings['min_seeds']}, max_runs {settings['max_runs'] or 'null'}). After each "
        "round every configuration still in the race was compared with the current best "
        "(best mean) on their shared seeds (paired t, two-sided, Holm's correction across "
        "the round's comparisons) and dropped if significantly worse. The paired table "
        "above asks more: every pair at once, Holm-corrected across all of them, so a "
        "configuration the race dropped early (few seeds) can be a tie there; its verdict "
        "here is the race's.",
        "",
    ]
    if race.get("pending"):
        names = ", ".join(f"`{d}`" for d in race["pending"])
        lines += [
            f"The race stopped after round {n_rounds} without deciding it: "
            f"{len(race['pending'])} job(s) pending ({names}), another process was "
            "writing into their dirs; run the same command again once it ends.",
            "",
        ]
    elif reason is None:
        lines += [
            f"The race stopped after round {n_rounds} without finishing (interrupted): "
            "run the same command again to continue it.",
            "",
        ]
    last = race["rounds"][-1] if race["rounds"] else {}
    last_vs = {e["config"]: e for e in last.get("comparisons", [])}
    lines += ["| config | fate | seeds | mean | evidence |", "|---|---|---|---|---|"]
    for c in sorted(configs, key=lambda c: (c["fate"] == "dropped", -c.get("dropped_round", 0))):
        if c["fate"] == "dropped":
            fate = f"dropped in round {c['dropped_round']}"
            evidence = _evidence(c, label[c["vs"]])
        else:
            fate = f"in the race at the end: {reason or 'still racing'}"
            if c["index"] == last.get("best"):
                evidence = f"best mean after round {n_rounds}"
            elif c["index"] in last_vs:
                evidence = "not significantly worse: " + _evidence(
                    last_vs[c["index"]], label[last["best"]]
                )
            else:
                evidence = "—"
        losses = sum(j.get("counted_as_loss", False) for j in c.get("jobs", {}).values())
        if losses:
            evidence += f"; {losses} failed/diverged run(s) counted as a loss"
        lines.append(
            f"| `{c['label']}` | {fate} | {c['seeds']} | {_fmt(c.get('mean'), '.4f')} "
            f"| {evidence} |"
        )
    lines += [
        "",
        f"![race survivors: lr]({suffixed('race_lr.png', suffix)}) "
        f"![race survivors: val acc]({suffixed('race_val_acc.png', suffix)})",
    ]
    return lines


def _race(sweep_dir: Path, jobs: list[Job], suffix: str = "") -> list[str]:
    """The race section and its survivors' overlays, when the sweep was a race."""
    race = read_json(sweep_dir / RACE_FILE)
    if race is None:
        return []
    by_dir = {j.path.name: j for j in jobs}
    survivors = [c for c in race["configurations"] if c["fate"] != "dropped"]
    groups = [
        Group(c["label"], [by_dir[j["dir"]] for j in c["jobs"].values() if j["dir"] in by_dir])
        for c in survivors
    ]
    plot_overlays(groups, sweep_dir, ("lr", "val/acc"), "race_", "race survivors: ", suffix)
    return race_markdown(race, suffix)


def _band(jobs: list[Job], key: str) -> tuple[list[int], list[float], list[float]]:
    """Per-epoch mean and std over the jobs that reached that epoch."""
    length = max((len(j.series(key)) for j in jobs), default=0)
    xs, means, stds = [], [], []
    for e in range(length):
        vals = [s[e] for s in (j.series(key) for j in jobs) if len(s) > e and math.isfinite(s[e])]
        if vals:
            m, s = _mean_std(vals)
            xs.append(e)
            means.append(m)
            stds.append(s)
    return xs, means, stds


OVERLAYS = {  # key -> (file name, title, log y)
    "lr": ("lr.png", "learning rate (first param group)", True),
    "val/loss": ("val_loss.png", "val loss (mean ± std over completed seeds)", False),
    "val/acc": ("val_acc.png", "val accuracy (mean ± std over completed seeds)", False),
}


def plot_overlays(
    groups: list[Group],
    out: Path,
    keys: Sequence[str] = tuple(OVERLAYS),
    prefix: str = "",
    heading: str = "",
    suffix: str = "",
) -> list[Path]:
    """One overlay per key (`<prefix><file name>` in `out`, `<suffix>` before its `.png`,
    titled `<heading><title>`), a line per group."""
    paths = []
    for key in keys:
        fname = suffixed(prefix + OVERLAYS[key][0], suffix)
        paths.append(save_png(overlay_figure(groups, key, heading), out / fname))
    return paths


def plotted(group: Group) -> tuple[list[Job], str]:
    """The runs a configuration's curve is over, and what its legend label adds: its
    completed runs, as the table's statistics are (with a seed that diverged at epoch 5 in
    it, the mean dipped up to that epoch and jumped after it, a curve no run made); a
    configuration with none completed shows its runs' rows so far (where they diverged)."""
    done = group.finished
    if done:
        n = len(group.jobs)
        return done, "" if len(done) == n else f" ({len(done)} of {n} runs: the completed)"
    begun = [j for j in group.jobs if j.rows]
    return begun, " (no completed run)"


def overlay_figure(groups: list[Group], key: str, heading: str = "") -> Any:
    """The overlay of `key` (OVERLAYS), a line per group labelled by its configuration
    below the axes (figures.legend_below: every label whole)."""
    _, title, log_y = OVERLAYS[key]
    fig, ax = new_figure()
    for g in groups:
        jobs, note = plotted(g)
        if not jobs:
            continue
        col = jobs[0].lr_key if key == "lr" else key
        if col is None:
            continue
        xs, means, stds = _band(jobs, col)
        style = line_style(len(ax.lines))
        marker = "o" if len(xs) == 1 else None  # a run that diverged in its first epoch
        (line,) = ax.plot(xs, means, style, label=g.label + note, linewidth=1.6, marker=marker)
        if key != "lr" and len(jobs) > 1:
            lo = [m - s for m, s in zip(means, stds, strict=True)]
            hi = [m + s for m, s in zip(means, stds, strict=True)]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
    if log_y:
        ax.set_yscale("log", nonpositive="mask")  # cosine's lr of 0 leaves a gap, not a cliff
    epoch_axis(ax)
    ax.set_title(heading + title)
    ax.grid(alpha=0.3)
    legend_below(fig, ax)
    return fig


def write_report(
    sweep_dir: Path | str,
    target_acc: float = DEFAULT_TARGET_ACC,
    metric: str = AUTO,
    suffix: str = "",
    also: Sequence[Path] = (),
) -> str:
    """Write report.md, report.csv, comparisons.csv and the overlays into sweep_dir, each
    named with `suffix` before its extension (`report_final_val_acc.md`); return the
    markdown. `metric`: compare.METRICS's, or `auto` (`ranking_metric`). The jobs of the
    `also` dirs join the budget view (runner/sweep/budgets.py) only."""
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    groups = group_jobs(jobs)
    if not groups:
        raise NotASweep(f"{sweep_dir}: {why_no_jobs(sweep_dir)}")
    metric = ranking_metric(groups, metric)
    check_metric(groups, metric)
    rows = sorted((summarize(g, target_acc) for g in groups), key=_sort_key(metric))
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(sweep_dir / suffixed("report.csv", suffix), f.getvalue(), fsync=False)
    by_label = {g.label: g for g in groups}
    ranked = [by_label[r["config"]] for r in rows]
    comparisons = all_pairs(per_seed(ranked, metric), higher_is_better=METRICS[metric][2])
    f = io.StringIO(newline="")
    table = csv.writer(f)
    table.writerow([*Comparison.__dataclass_fields__])
    table.writerows([list(asdict(c).values()) for c in comparisons])
    write_text_atomic(sweep_dir / suffixed("comparisons.csv", suffix), f.getvalue(), fsync=False)
    repeats = sum(len(g.repeats) for g in groups)
    text = markdown(
        rows,
        target_acc,
        sweep_dir,
        common_overrides(jobs),
        comparisons,
        metric,
        repeats,
        refused(sweep_dir),
        suffix,
        unstarted(sweep_dir, jobs),
        jobs,
    )
    race = _race(sweep_dir, jobs, suffix)
    if race:
        text += "\n".join(["", *race, ""])
    pooled = jobs + [j for d in also for j in load_jobs(Path(d))]
    if budgets := budget_view(pooled, metric, sweep_dir, suffix, 1 + len(also)):
        text += "\n".join(["", *budgets, ""])
    write_text_atomic(sweep_dir / suffixed("report.md", suffix), text, fsync=False)
    plot_overlays([by_label[r["config"]] for r in rows], sweep_dir, suffix=suffix)
    return text


class SweepReport(Callback):
    """Hydra callback: writes the report when a multirun ends (in the launching process)."""

    def __init__(self, target_acc: float = DEFAULT_TARGET_ACC, metric: str = AUTO) -> None:
        self.target_acc, self.metric = target_acc, metric

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """The sweep holds its dir from before the sweeper writes multirun.yaml there (the
        CLI took a hydra.sweep.dir given on the command line already): one sweep at a time."""
        take_or_exit(config.hydra.sweep.dir)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        # HydraConfig is not available here in Hydra 1.3; the sweep dir is in the config.
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            print(write_report(sweep_dir, self.target_acc, self.metric))
            print(f"report written to {sweep_dir / 'report.md'}")
        except (FileNotFoundError, NoSuchMetric) as err:
            print(f"no sweep report: {err}")
        except WriteFailed as err:  # the sweep's jobs are done and on disk; only this failed
            print(f"no sweep report: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m runner.sweep.report",
        description="Summarise a sweep dir: a table (md + csv) and overlay plots, best first.",
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun dir, e.g. outputs/multirun/<date>/<time>"
    )
    parser.add_argument(
        "--target-acc",
        type=float,
        default=DEFAULT_TARGET_ACC,
        help=f"accuracy for the epochs-to-target column (default {DEFAULT_TARGET_ACC})",
    )
    parser.add_argument(
        "--metric",
        choices=list(METRICS),
        help="rank by this metric (default: best_val_acc, final_val_loss for language models) "
        "and write report_<metric>.md (and "
        "its csv and plots) beside the sweep's own report.md, which stays as it is",
    )
    parser.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="another sweep dir whose jobs join the budget view (repeatable), e.g. the "
        "sweeps of branches beside a sweep of reruns; the rest of the report is sweep_dir's",
    )
    args = parser.parse_args(argv)
    if not 0 < args.target_acc <= 1:
        parser.error(f"--target-acc {args.target_acc}: must be in (0, 1]")
    for given in (args.sweep_dir, *args.also):
        if not given.is_dir():  # a bad argument: one line, exit 2, like argparse's own
            why = "is not a directory" if given.exists() else "no such directory"
            print(
                f"error: {given}: {why} (give a sweep dir, e.g. outputs/multirun/<date>/<time>)",
                file=sys.stderr,
            )
            raise SystemExit(2)
    # the sweep's own report.md is rewritten only by a plain call: another metric's report
    # is a second opinion beside it (before, --metric overwrote it)
    suffix = "" if args.metric is None else metric_suffix(args.metric)
    try:
        metric = args.metric or AUTO
        print(write_report(args.sweep_dir, args.target_acc, metric, suffix, args.also))
    except (FileNotFoundError, WriteFailed) as err:
        if not isinstance(err, NotASweep):
            raise SystemExit(f"error: {err}") from None
        print(f"error: {err}", file=sys.stderr)  # a bad argument: one line, exit 2
        raise SystemExit(2) from None
    except NoSuchMetric as err:  # a bad argument for these runs: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"report written to {args.sweep_dir / suffixed('report.md', suffix)}")


if __name__ == "__main__":
    main()
