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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.io.files import read_jsonl, replace_atomic
from runner.sweep.compare import METRICS, paired_ci
from runner.sweep.jobs import Group, Job, one_per_seed

# override keys a strategy is read without: the seed, the budget, where a branch starts and
# the epochs a run keeps to branch from (they change nothing it computes)
NOT_STRATEGY = ("seed", "epochs", "branch_epoch", "trainer.keep_epochs")
TRUNK = "branch=<trunk>"


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def strategy_overrides(job: Job) -> list[str]:
    """The job's overrides that make its strategy: not its seed, budget or branch point,
    and any trunk as `branch=<trunk>` (each seed's branches have their own trunk)."""
    out = []
    for o in job.overrides:
        key = _key(o)
        if key not in NOT_STRATEGY:
            out.append(TRUNK if key == "branch" else o)
    return out


def budget(job: Job) -> int | None:
    """The job's `epochs`: its config.yaml's, else its override's; None if neither says."""
    value = job.config.get("epochs")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    for o in job.overrides:
        if _key(o) == "epochs":
            try:
                return int(o.split("=", 1)[1])
            except ValueError:
                return None
    return None


def own_epochs(rows: Sequence[dict[str, Any]]) -> int:
    """Epochs a run trained itself: its epoch rows less those copied from a trunk."""
    return sum(not r.get("from_trunk", False) for r in rows)


def trunk_of(job: Job) -> Path | None:
    """The trunk dir a branch's config.yaml names (a relative one read from the current
    dir, as the runner read it); None for a job that is no branch."""
    trunk = job.config.get("branch")
    return None if trunk in (None, "") else Path(str(trunk)).resolve()


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
    out = {
        id(j): " ".join(o for o in overrides[id(j)] if o not in common) or "(defaults)"
        for j in jobs
    }
    trunks = {t: out[id(j)] for j in jobs if (t := trunk_of(j)) is not None}
    for job in jobs:
        if (label := trunks.get(job.path.resolve())) is not None:
            out[id(job)] = label
    return out


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
    return {label: dict(sorted(groups.items())) for label, groups in out.items()}


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
        "epochs_trained": sum(own_epochs(j.rows) for j in jobs),
        "from_scratch": budget_ * len(jobs),  # a fresh run per budget: each budget whole
    }


def cost(groups: dict[int, Group]) -> dict[str, Any]:
    """A strategy's whole cost in epochs: its jobs' own epochs plus each trunk once (its
    own epochs; a trunk dir that is gone counts up to its latest branch point, `missing`).
    A trunk that is one of its jobs is paid for as that job."""
    jobs = [j for g in groups.values() for j in g.jobs + g.repeats]
    members = {j.path.resolve() for j in jobs}
    trunks: dict[Path, int] = {}
    for job in jobs:
        if (trunk := trunk_of(job)) is not None:
            k = job.config.get("branch_epoch")
            trunks[trunk] = max(trunks.get(trunk, 0), k if isinstance(k, int) else 0)
    read = {t: trunk_epochs(t) for t in trunks if t not in members}
    trunk_total = sum(n if n is not None else trunks[t] for t, n in read.items())
    own = sum(own_epochs(j.rows) for j in jobs)
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
        "without `from_trunk`); its trunk is counted once in the cost table below.",
        "",
        f"| strategy | budget | seeds | **{name}** | epochs trained |",
        "|---|---|---|---|---|",
    ]
    costs = {}
    for label, groups in view.items():
        for b, group in groups.items():
            c = cell(group, b, metric)
            seeds = f"{c['completed']}/{c['runs']}"
            lines.append(
                f"| `{label}` | {b} | {seeds} | {_pm(c['mean'], c['ci_low'], c['ci_high'])} "
                f"| {c['epochs_trained']} |"
            )
        costs[label] = cost(groups)
    lines += [
        "",
        "What each strategy cost in epochs trained: its trunks once each (a trunk that is "
        "one of its runs, its sweep in the view, in its own epochs), plus its runs' own "
        "epochs; beside it, one run from scratch per budget and seed.",
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
    """The metric against the budget, a line per strategy, 95 % interval error bars."""
    import matplotlib  # only when drawn

    matplotlib.use("Agg")  # before pyplot: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, groups in view.items():
        cells = [cell(g, b, metric) for b, g in groups.items()]
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
        )
    ax.set_xticks(sorted({b for groups in view.values() for b in groups}))
    ax.set_xlabel("budget (epochs)")
    ax.set_title(f"{metric.replace('_', ' ')} by budget (mean, 95 % interval over seeds)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    replace_atomic(path, lambda tmp: fig.savefig(tmp, format="png"), False)
    plt.close(fig)
    return path


def budget_view(
    jobs: list[Job], metric: str, out: Path, suffix: str = "", dirs: int = 1
) -> list[str]:
    """The budget section (and `budgets<suffix>.png` in `out`) when the jobs have two
    budgets or more; nothing otherwise."""
    if len({b for j in jobs if (b := budget(j)) is not None}) < 2:
        return []
    view = by_strategy(jobs)
    metric = final_metric(metric)
    stem, _, ext = "budgets.png".rpartition(".")
    png = f"{stem}{suffix}.{ext}"
    plot(view, metric, out / png)
    return markdown(view, metric, png, dirs)
