"""Is the winner real? Paired per-seed comparisons of a sweep's configurations.

Two configurations run with the same seeds share their data order and initial
weights' RNG stream, so the per-seed difference of their metric removes much of
the seed-to-seed noise. For every pair with shared seeds: the mean difference,
a 95 % confidence interval from the paired t distribution (scipy.stats.t), and
how many seeds each won. An interval that contains 0 is a tie; one shared seed
cannot tell anything.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from itertools import combinations

METRICS = {  # name -> (row key, reduce over epochs, higher is better)
    "best_val_acc": ("val/acc", max, True),
    "final_val_acc": ("val/acc", lambda s: s[-1], True),
    "best_val_loss": ("val/loss", min, False),
    "final_val_loss": ("val/loss", lambda s: s[-1], False),
}
FEW_SEEDS = 5


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    n: int  # shared seeds
    mean_diff: float  # a - b
    ci_low: float
    ci_high: float
    a_wins: int
    b_wins: int
    draws: int
    verdict: str

    @property
    def tie(self) -> bool:
        return not self.verdict.endswith("better")


def paired_ci(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the paired-t confidence interval of the differences (NaN bounds for n < 2)."""
    from scipy import stats

    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def compare(a: str, a_vals: dict[int, float], b: str, b_vals: dict[int, float],
            higher_is_better: bool = True) -> Comparison | None:  # fmt: skip
    shared = sorted(set(a_vals) & set(b_vals))
    if not shared:
        return None
    diffs = [a_vals[s] - b_vals[s] for s in shared]
    mean, lo, hi = paired_ci(diffs)
    better = (lambda d: d > 0) if higher_is_better else (lambda d: d < 0)
    a_wins = sum(better(d) for d in diffs)
    b_wins = sum(better(-d) for d in diffs)
    n = len(shared)
    if n < 2:
        verdict = "cannot tell: 1 shared seed"
    elif lo > 0 or hi < 0:
        a_ahead = (lo > 0) == higher_is_better
        verdict = f"{a if a_ahead else b} better"
    else:
        verdict = "tie: the 95 % interval contains 0"
        if n < FEW_SEEDS:
            verdict += f" ({n} seeds are few; more would narrow it)"
    return Comparison(a, b, n, mean, lo, hi, a_wins, b_wins, n - a_wins - b_wins, verdict)


def all_pairs(values: dict[str, dict[int, float]], higher_is_better: bool) -> list[Comparison]:
    """Every pair, in the given (ranked) order of configurations."""
    out = []
    for a, b in combinations(values, 2):
        c = compare(a, values[a], b, values[b], higher_is_better)
        if c is not None:
            out.append(c)
    return out


def markdown(comparisons: list[Comparison], metric: str) -> list[str]:
    if not comparisons:
        return ["No two configurations share a seed: nothing to pair."]
    lines = [
        f"## Is it noise? Paired by seed, metric `{metric}`",
        "",
        "Mean of the per-seed differences A − B with a 95 % confidence interval from the "
        "paired t distribution; wins count the seeds where each was better.",
        "",
        "| A | B | seeds | mean A − B | 95 % CI | A wins | B wins | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        ci = "—" if math.isnan(c.ci_low) else f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
        lines.append(
            f"| `{c.a}` | `{c.b}` | {c.n} | {c.mean_diff:+.4f} | {ci} | {c.a_wins} "
            f"| {c.b_wins} | {c.verdict} |"
        )
    top = comparisons[0]
    lines += ["", f"`{top.a}` beat `{top.b}` on {top.a_wins} of {top.n} seeds; {top.verdict}."]
    return lines
