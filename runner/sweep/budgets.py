"""The sweep report's budget view: how long to train, and what each answer cost.

When a sweep's jobs differ in `epochs` (their training budgets), the report groups them by
strategy (a job's overrides without `seed`, `epochs` and `branch_epoch`; `branch=<path>`
read as `branch=<trunk>`, so the branches of every seed's trunk are one strategy) and by
budget, and says per budget the final metric (mean and 95 % t interval over seeds) and the
epochs actually trained. A budget sweep branched from one trunk (Hägele et al. 2024,
docs/branches.md) costs its trunk once plus each branch's own epochs after its branch point
(its metrics.jsonl rows without `from_trunk`); a run per budget from scratch costs every
budget whole. The cost table puts those totals side by side, `budgets.png` the metric
against the budget. Jobs of other sweep dirs (`--also`) may join the view, so that a sweep
of cosine reruns and the sweeps of branches are compared in one table.

A run whose training does not depend on its budget (a constant lr, `scheduler=none`: the
schedule-free optimizers, a constant lr with EMA) is good at any epoch: where its strategy
has no run of a shorter budget, its run of a longer one reports that budget from its row at
that epoch, and is paid for once. A run that averages its weights (trainer.average) also
gives its averaged model's line, from the same runs (no cost of its own).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner.io.files import read_jsonl
from runner.sweep.compare import METRICS, paired_ci
from runner.sweep.figures import legend_below, line_style, new_figure, save_png
from runner.sweep.jobs import (
    Group,
    Job,
    computes,
    in_key_order,
    one_per_seed,
    override_key,
    trunk_of,
)

# override keys a strategy is read without: the seed, the budget, where a branch starts and
# the epochs a run keeps to branch from (they change nothing it computes)
NOT_STRATEGY = ("seed", "epochs", "branch_epoch", "trainer.keep_epochs")
TRUNK = "branch=<trunk>"
READ_FROM = "_read_from_epochs"  # a job's config key in the view: its budget read off a longer run
AVERAGED = " [averaged model]"  # the label suffix of a strategy's averaged-model line


def strategy_overrides(job: Job) -> list[str]:
    """The job's overrides that make its strategy: not its seed, budget or branch point,
    and any trunk as `branch=<trunk>` (each seed's branches have their own trunk)."""
    out = []
    for o in job.overrides:
        key = override_key(o)
        if key not in NOT_STRATEGY and computes(o):
            out.append(TRUNK if key == "branch" else o)
    return out


def budget(job: Job) -> int | None:
    """The job's `epochs`: its config.yaml's, else its override's; None if neither says."""
    value = job.config.get("epochs")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    for o in job.overrides:
        if override_key(o) == "epochs":
            try:
                return int(o.split("=", 1)[1])
            except ValueError:
                return None
    return None


def own_epochs(rows: Sequence[dict[str, Any]]) -> int:
    """Epochs a run trained itself: its epoch rows less those copied from a trunk."""
    return sum(not r.get("from_trunk", False) for r in rows)


def trunk_epochs(trunk: Path) -> int | None:
    """Epochs the trunk trained itself (its metrics.jsonl); None when it is gone."""
    path = trunk / "metrics.jsonl"
    if not path.is_file():
        return None
    return own_epochs([r for r in read_jsonl(path) if r.get("kind") != "step"])


def final_metric(metric: str) -> str:
    """The budget view's metric: the report's at the run's last epoch (best_val_acc ->
    final_val_acc). A budget is where a run stops; its best epoch may be an earlier one, a
    shorter budget's answer."""
    final = "final_" + metric.split("_", 1)[1]
    return final if final in METRICS else metric


def labels(jobs: list[Job]) -> dict[int, str]:
    """Each job's strategy label (by id): its strategy overrides, less those every strategy
    shares when there are two or more. A job that is the trunk of a branch among the jobs
    (a sweep of trunks pooled with their branches) takes its branches' label: it is their
    strategy's run of the longest budget, and paid for once."""
    overrides = {id(j): strategy_overrides(j) for j in jobs}
    common: set[str] = set()
    if len({" ".join(o) for o in overrides.values()}) > 1:
        common = set.intersection(*(set(o) for o in overrides.values()))
    first: dict[str, str] = {}  # in key order -> as first met: one label per strategy
    out = {}
    for j in jobs:
        own = [o for o in overrides[id(j)] if o not in common]
        out[id(j)] = first.setdefault(" ".join(in_key_order(own)), " ".join(own) or "(defaults)")
    trunks = {t: out[id(j)] for j in jobs if (t := trunk_of(j)) is not None}
    for job in jobs:
        if (label := trunks.get(job.path.resolve())) is not None:
            out[id(job)] = label
    return out


def anytime(job: Job) -> bool:
    """Whether the run's training is the same whatever its budget, so that its row at epoch
    b is what a run of b epochs would end with: a constant lr (scheduler `none`, whose
    warmup counts fixed epochs; schedule-free optimizers are run so), no trunk, and no SWA
    (whose start defaults to a share of the epochs)."""
    scheduler = job.config.get("scheduler") or {}
    trainer = job.config.get("trainer") or {}
    return (
        isinstance(scheduler, dict)
        and scheduler.get("name") == "none"
        and trunk_of(job) is None
        and isinstance(trainer, dict)
        and trainer.get("average", "none") in ("none", "ema")
    )


def read_at(job: Job, budget_: int) -> Job:
    """The job as a run of `budget_` epochs: its first epoch rows, marked as read off it
    (trained() counts none of them)."""
    rows = [r for r in job.rows if isinstance(r.get("epoch"), int) and r["epoch"] < budget_]
    return replace(job, rows=rows, config={**job.config, "epochs": budget_, READ_FROM: budget(job)})


def trained(job: Job) -> int:
    """Epochs the job trained itself (own_epochs); none for a budget read off a longer run."""
    return 0 if READ_FROM in job.config else own_epochs(job.rows)


def fill_anytime(groups: dict[int, Group], budgets: set[int]) -> None:
    """An anytime strategy's budgets without runs of their own (each of `budgets` below its
    longest), read off its shortest longer runs."""
    if not all(anytime(j) for g in groups.values() for j in g.jobs + g.repeats):
        return
    for b in sorted(budgets):
        longer = [n for n in groups if n > b]
        if b in groups or not longer:
            continue
        source = groups[min(longer)]
        groups[b] = Group(f"{source.label} read at {b}", [read_at(j, b) for j in source.jobs])


def averages(job: Job) -> bool:
    trainer = job.config.get("trainer") or {}
    return isinstance(trainer, dict) and trainer.get("average", "none") not in ("none", None)


def metric_for(label: str, metric: str) -> str:
    """The view's metric for a line: the averaged model's (val_avg) on an averaged line."""
    if label.endswith(AVERAGED) and "_avg_" not in metric:
        return metric.replace("_val_", "_val_avg_")
    return metric


def by_strategy(jobs: list[Job]) -> dict[str, dict[int, Group]]:
    """Strategy label (`labels`) -> budget -> its jobs, one per seed (repeats aside)."""
    label_of = labels(jobs)
    out: dict[str, dict[int, Group]] = {}
    for job in jobs:
        b = budget(job)
        if b is None:
            continue
        label = label_of[id(job)]
        out.setdefault(label, {}).setdefault(b, Group(f"{label} epochs={b}")).jobs.append(job)
    for groups in out.values():
        for group in groups.values():
            one_per_seed(group)
    every = {b for groups in out.values() for b in groups}
    for groups in out.values():
        fill_anytime(groups, every)
    view: dict[str, dict[int, Group]] = {}
    for label, groups in out.items():
        view[label] = dict(sorted(groups.items()))
        if all(averages(j) for g in groups.values() for j in g.jobs):
            view[label + AVERAGED] = view[label]  # right below its strategy's line
    return view


def cell(group: Group, budget_: int, metric: str) -> dict[str, Any]:
    """One strategy at one budget: the metric over its completed seeds (mean and 95 % t
    interval, NaN bounds for one seed) and the epochs its jobs trained themselves."""
    key, reduce, _ = METRICS[metric]
    values = [reduce(j.series(key)) for j in group.finished]
    mean, lo, hi = paired_ci(values) if values else (math.nan, math.nan, math.nan)
    jobs = group.jobs + group.repeats
    return {
        "budget": budget_,
        "runs": len(jobs),
        "completed": len(values),
        "mean": mean,
        "ci_low": lo,
        "ci_high": hi,
        "epochs_trained": sum(trained(j) for j in jobs),
        "read_from": next((j.config[READ_FROM] for j in jobs if READ_FROM in j.config), None),
        "from_scratch": budget_ * len(jobs),  # a fresh run per budget: each budget whole
    }


def cost(groups: dict[int, Group]) -> dict[str, Any]:
    """A strategy's whole cost in epochs: its jobs' own epochs plus each trunk once (its
    own epochs; a trunk dir that is gone counts up to its latest branch point, `missing`).
    A trunk that is one of its jobs is paid for as that job."""
    jobs = [j for g in groups.values() for j in g.jobs + g.repeats if READ_FROM not in j.config]
    members = {j.path.resolve() for j in jobs}
    trunks: dict[Path, int] = {}
    for job in jobs:
        if (trunk := trunk_of(job)) is not None:
            k = job.config.get("branch_epoch")
            trunks[trunk] = max(trunks.get(trunk, 0), k if isinstance(k, int) else 0)
    read = {t: trunk_epochs(t) for t in trunks if t not in members}
    trunk_total = sum(n if n is not None else trunks[t] for t, n in read.items())
    own = sum(own_epochs(j.rows) for j in jobs)
    # what the budgets it reports would cost as runs from scratch (a budget read off a
    # longer run too)
    scratch = sum(b * len(g.jobs + g.repeats) for b, g in groups.items())
    return {
        "runs": len(jobs),
        "trunks": len(trunks),
        "missing": sum(n is None for n in read.values()),
        "trunk_epochs": trunk_total,
        "own_epochs": own,
        "total_epochs": trunk_total + own,
        "from_scratch": scratch,
    }


def _pm(mean: float, lo: float, hi: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.4f}" + ("" if math.isnan(lo) else f" ± {(hi - lo) / 2:.4f}")


def markdown(view: dict[str, dict[int, Group]], metric: str, png: str, dirs: int) -> list[str]:
    """The budget section of report.md: a row per strategy and budget, then the cost per
    strategy."""
    name = metric.replace("_", " ")
    pooled = f" of these {dirs} sweep dirs" if dirs > 1 else ""
    lines = [
        f"## Budgets: {name} by training budget",
        "",
        f"The runs{pooled} differ in `epochs`, their training budget. A strategy is a "
        "configuration without `seed`, `epochs`, `branch_epoch` and `trainer.keep_epochs` "
        "(`branch=<trunk>`: "
        f"branches of any trunk). {name.capitalize()}: mean ± the 95 % t interval's half "
        "width over completed seeds (none for one seed). Epochs trained: what the runs "
        "trained themselves, all seeds, a branch only after its branch point (its rows "
        "without `from_trunk`); its trunk is counted once in the cost table below. A run "
        "of a constant lr (`scheduler=none`: schedule-free, EMA) reports each shorter budget "
        "from its row at that epoch, paid for once; a line marked `[averaged model]` is the "
        "averaged weights (`val_avg`) of the runs of the line above it.",
        "",
        f"| strategy | budget | seeds | **{name}** | epochs trained |",
        "|---|---|---|---|---|",
    ]
    costs = {}
    for label, groups in view.items():
        for b, group in groups.items():
            c = cell(group, b, metric_for(label, metric))
            seeds = f"{c['completed']}/{c['runs']}"
            trained_ = str(c["epochs_trained"])
            if c["read_from"] is not None:
                trained_ += f" (read off the {c['read_from']}-epoch runs)"
            if label.endswith(AVERAGED):
                trained_ = "(the runs above)"
            lines.append(
                f"| `{label}` | {b} | {seeds} | {_pm(c['mean'], c['ci_low'], c['ci_high'])} "
                f"| {trained_} |"
            )
        if not label.endswith(AVERAGED):  # the same runs as its strategy's line
            costs[label] = cost(groups)
    lines += [
        "",
        "What each strategy cost in epochs trained: its trunks once each (a trunk that is "
        "one of its runs, its sweep in the view, in its own epochs), plus its runs' own "
        "epochs (a budget read off a longer run: none); beside it, one run from scratch per "
        "budget and seed.",
        "",
        "| strategy | runs | trunks | trunk epochs | own epochs | **total epochs** "
        "| one run per budget | total / that |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, c in costs.items():
        ratio = c["total_epochs"] / c["from_scratch"] if c["from_scratch"] else math.nan
        gone = f" ({c['missing']} gone: up to the branch point)" if c["missing"] else ""
        lines.append(
            f"| `{label}` | {c['runs']} | {c['trunks']} | {c['trunk_epochs']}{gone} "
            f"| {c['own_epochs']} | **{c['total_epochs']}** | {c['from_scratch']} "
            f"| {ratio:.2f} |"
        )
    lines += ["", f"![{name} by budget]({png})"]
    return lines


def plot(view: dict[str, dict[int, Group]], metric: str, path: Path) -> Path:
    """The metric against the budget (`budget_figure`) as a png at `path`."""
    return save_png(budget_figure(view, metric), path)


def budget_figure(view: dict[str, dict[int, Group]], metric: str) -> Any:
    """The metric against the budget, a line per strategy, 95 % interval error bars, each
    strategy named whole below the axes (figures.legend_below)."""
    fig, ax = new_figure()
    for label, groups in view.items():
        cells = [cell(g, b, metric_for(label, metric)) for b, g in groups.items()]
        cells = [c for c in cells if not math.isnan(c["mean"])]
        if not cells:
            continue
        half = [0.0 if math.isnan(c["ci_low"]) else (c["ci_high"] - c["ci_low"]) / 2 for c in cells]
        ax.errorbar(
            [c["budget"] for c in cells],
            [c["mean"] for c in cells],
            yerr=half,
            label=label,
            marker="o",
            capsize=3,
            linestyle=line_style(len(ax.containers)),
        )
    ax.set_xticks(sorted({b for groups in view.values() for b in groups}))
    ax.set_xlabel("budget (epochs)")
    ax.set_title(f"{metric.replace('_', ' ')} by budget (mean, 95 % interval over seeds)")
    ax.grid(alpha=0.3)
    legend_below(fig, ax)
    return fig


def budget_view(
    jobs: list[Job], metric: str, out: Path, suffix: str = "", dirs: int = 1
) -> list[str]:
    """The budget section (and `budgets<suffix>.png` in `out`) when the jobs have two
    budgets or more; nothing otherwise."""
    if len({b for j in jobs if (b := budget(j)) is not None}) < 2:
        return []
    view = by_strategy(jobs)
    metric = final_metric(metric)
    if "_avg_" in metric:  # every line is the averaged model's already
        view = {k: v for k, v in view.items() if not k.endswith(AVERAGED)}
    stem, _, ext = "budgets.png".rpartition(".")
    png = f"{stem}{suffix}.{ext}"
    plot(view, metric, out / png)
    return markdown(view, metric, png, dirs)
