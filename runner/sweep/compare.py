"""Is the winner real? Paired per-seed comparisons of a sweep's configurations.

Two configurations run with the same seeds share their data order and initial
weights' RNG stream, so the per-seed difference of their metric removes much of
the seed-to-seed noise. For every pair with shared seeds: the mean difference,
its 95 % confidence interval from the paired t distribution (scipy.stats.t), the
two-sided paired-t p-value, and how many seeds each won.

A report pairs many configurations at once (the lecture's six schedules: 15 pairs), and
15 uncorrected 95 % intervals find a "difference" by chance far more often than 5 % of
the time. So the verdict uses Holm's step-down correction across all the pairs of the
report (or of a race round): the family-wise error stays at `alpha` whatever the number
of pairs, and Holm is never less powerful than Bonferroni. A pair whose Holm-adjusted
p-value is >= alpha is a tie; for each tie, `seeds_needed` says how many seeds a paired t
test would need to resolve a difference of the observed size (80 % power, at the level
Holm asks of that comparison: alpha / (m - i) for the i-th smallest of m p-values), so "tie" says
how far from an answer it is. One shared seed cannot tell anything.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import combinations

METRICS = {  # name -> (row key, reduce over epochs, higher is better)
    "best_val_acc": ("val/acc", max, True),
    "final_val_acc": ("val/acc", lambda s: s[-1], True),
    "best_val_loss": ("val/loss", min, False),
    "final_val_loss": ("val/loss", lambda s: s[-1], False),
    # the averaged model's (trainer.average: ema or swa; runner/train/averaging.py)
    "best_val_avg_acc": ("val_avg/acc", max, True),
    "final_val_avg_acc": ("val_avg/acc", lambda s: s[-1], True),
    "best_val_avg_loss": ("val_avg/loss", min, False),
    "final_val_avg_loss": ("val_avg/loss", lambda s: s[-1], False),
}
BASE_METRICS = tuple(m for m in METRICS if "_avg_" not in m)  # every run's rows have these
FEW_SEEDS = 5
ALPHA = 0.05  # family-wise error rate of the report's comparisons
POWER = 0.8  # the power `seeds_needed` asks for
MAX_SEEDS_NEEDED = 100_000  # beyond this the answer is "inf": no sweep will get there


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    n: int  # shared seeds
    mean_diff: float  # a - b
    ci_low: float  # the uncorrected 95 % paired-t interval
    ci_high: float
    a_wins: int
    b_wins: int
    draws: int
    verdict: str
    p_value: float = math.nan  # raw two-sided paired-t p-value
    p_holm: float = math.nan  # Holm-adjusted over the family (see `holm`)
    ci_holm_low: float = math.nan  # Holm-adjusted interval (see `holm_levels`)
    ci_holm_high: float = math.nan
    # ties only: seeds a paired t test needs to resolve a difference of the observed size
    # with 80 % power at its two-sided Holm level (`seeds_needed`); inf when the difference is 0
    seeds_needed: float = math.nan

    @property
    def tie(self) -> bool:
        return not self.verdict.endswith("better")


def paired_ci(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the paired-t confidence interval of the differences (NaN bounds for n < 2)."""
    # scipy: not at --help (launch.py imports this module). t's quantile from
    # scipy.special, the function scipy.stats.t.ppf calls: the same values, without
    # importing scipy.stats (0.4 s of CPU at every sweep's report)
    from scipy.special import stdtrit

    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, math.nan, math.nan
    half = stdtrit(n - 1, 0.5 + level / 2) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_p(diffs: Sequence[float]) -> float:
    """Two-sided p-value of the paired t test that the mean difference is 0 (NaN for n < 2).
    Differences that are all equal have no spread, so no t: p is then the exact sign
    test's, 2 * 0.5**n when they are not 0 (every seed on the same side: 0.5 for 2 seeds,
    < 0.05 from 6), else 1. On digits this is common: accuracies move in steps of 1/360."""
    from scipy.special import stdtr  # what scipy.stats.t.sf calls (see `paired_ci`)

    n = len(diffs)
    if n < 2:
        return math.nan
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:
        return 1.0 if mean == 0 else min(1.0, 2 * 0.5**n)
    t = mean / (sd / math.sqrt(n))
    return float(2 * stdtr(n - 1, -abs(t)))


def holm_levels(p_values: Sequence[float]) -> list[tuple[float, int, int]]:
    """Holm's step-down correction of a family of p-values.

    Returns, for each p-value in the given order, (adjusted p, i, m): m is the size of the
    family (the finite p-values; a NaN one, from a pair with one shared seed, is left out
    and gets a NaN adjusted p), i the 0-based rank of this p-value among them by ascending
    raw p (ties by position). The adjusted p-value is the running maximum
    p_holm(i) = max over j <= i of min(1, (m - j) * p(j)), so that p_holm < alpha exactly
    when Holm's procedure at family-wise level alpha rejects this hypothesis.

    The Holm-adjusted confidence interval of the comparison ranked i is the paired-t
    interval at level 1 - alpha / (m - i): the interval whose exclusion of 0 is Holm's test
    of that rank on its own (alpha / m for the smallest p, alpha for the largest). The
    verdict uses the adjusted p; the interval shows the size of the difference at the
    matching confidence.
    """
    finite = [k for k, p in enumerate(p_values) if not math.isnan(p)]
    order = sorted(finite, key=lambda k: (p_values[k], k))
    m = len(order)
    out: list[tuple[float, int, int]] = [(math.nan, -1, m)] * len(p_values)
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[k]))
        out[k] = (running, i, m)
    return out


def power(n: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t test with n pairs at level alpha when the true mean
    difference is `effect` standard deviations: P(|T| > t_{1-alpha/2, n-1}) for T
    noncentral t with n - 1 degrees of freedom and noncentrality effect * sqrt(n)."""
    from scipy import stats  # scipy: not at --help

    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed(diffs: Sequence[float], alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest number of seeds n >= 2 at which a two-sided paired t test at level
    alpha has power >= target against a true difference of the observed size (the effect
    mean / sd of these per-seed differences, taken as the truth). inf when the observed
    difference is 0 (no number of seeds resolves it) or needs more than MAX_SEEDS_NEEDED;
    NaN for fewer than 2 differences (no spread to size it by). Power grows with n, so a
    doubling search then bisection finds the smallest n."""
    if len(diffs) < 2:
        return math.nan
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if mean == 0:
        return math.inf
    if sd == 0:  # no spread: paired_p is the sign test's, below alpha from this many seeds
        return math.floor(math.log2(2 / alpha)) + 1
    effect = abs(mean) / sd
    if power(2, effect, alpha) >= target:
        return 2
    lo, hi = 2, 4  # power(lo) < target
    while power(hi, effect, alpha) < target:
        lo, hi = hi, hi * 2
        if lo > MAX_SEEDS_NEEDED:
            return math.inf
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power(mid, effect, alpha) >= target else (mid, hi)
    return hi


def compare(
    a: str,
    a_vals: dict[int, float],
    b: str,
    b_vals: dict[int, float],
    higher_is_better: bool = True,
) -> Comparison | None:
    """One pair on its own, uncorrected (a family of one); `all_pairs` corrects a family."""
    pairs = all_pairs({a: a_vals, b: b_vals}, higher_is_better)
    return pairs[0] if pairs else None


def raw_comparison(
    a: str, a_vals: dict[int, float], b: str, b_vals: dict[int, float], higher_is_better: bool
) -> tuple[Comparison, list[float]] | None:
    """A pair on its shared seeds before any correction (verdict empty), with the per-seed
    differences a - b that `corrected` needs; None when no seed is shared."""
    shared = sorted(set(a_vals) & set(b_vals))
    if not shared:
        return None
    diffs = [a_vals[s] - b_vals[s] for s in shared]
    mean, lo, hi = paired_ci(diffs)
    better = (lambda d: d > 0) if higher_is_better else (lambda d: d < 0)
    a_wins = sum(better(d) for d in diffs)
    b_wins = sum(better(-d) for d in diffs)
    n = len(shared)
    c = Comparison(
        a, b, n, mean, lo, hi, a_wins, b_wins, n - a_wins - b_wins, "", p_value=paired_p(diffs)
    )
    return c, diffs


def corrected(
    raw: list[tuple[Comparison, list[float]]], higher_is_better: bool, alpha: float = ALPHA
) -> list[Comparison]:
    """The comparisons of one family with Holm-adjusted p-values and intervals, verdicts
    from the adjusted p-value, and the seeds needed for every tie."""
    levels = holm_levels([c.p_value for c, _ in raw])
    out = []
    for (c, diffs), (p_holm, rank, m) in zip(raw, levels, strict=True):
        if c.n < 2:
            out.append(replace(c, verdict="cannot tell: 1 shared seed"))
            continue
        level = alpha / (m - rank)  # what Holm asks of this comparison's own p-value
        _, lo, hi = paired_ci(diffs, level=1 - level)
        if p_holm < alpha:
            a_ahead = (c.mean_diff > 0) == higher_is_better
            verdict, needed = f"{c.a if a_ahead else c.b} better", math.nan
        else:
            # sized at that same level: the seeds at which this comparison, in this family,
            # would come out decided (at the family's plain alpha it could say "~3 seeds"
            # of a tie that already has 4)
            needed = seeds_needed(diffs, level)
            verdict = f"tie: Holm-adjusted p = {p_holm:.3g} >= {alpha:g}"
            if not any(diffs):  # the same value on every seed: more seeds narrow nothing
                verdict += f"; equal on all {c.n} seeds (the same training? compare their lr)"
            elif math.isinf(needed):
                verdict += "; no number of seeds resolves a difference this small"
            else:
                verdict += f"; ~{needed:.0f} seeds would resolve a difference this size"
            if c.n < FEW_SEEDS and any(diffs):
                verdict += f" ({c.n} seeds are few; more would narrow it)"
        out.append(
            replace(
                c,
                verdict=verdict,
                p_holm=p_holm,
                ci_holm_low=lo,
                ci_holm_high=hi,
                seeds_needed=needed,
            )
        )
    return out


def all_pairs(
    values: dict[str, dict[int, float]], higher_is_better: bool, alpha: float = ALPHA
) -> list[Comparison]:
    """Every pair, in the given (ranked) order of configurations, Holm-corrected as one
    family."""
    raw = []
    for a, b in combinations(values, 2):
        r = raw_comparison(a, values[a], b, values[b], higher_is_better)
        if r is not None:
            raw.append(r)
    return corrected(raw, higher_is_better, alpha)


def _fmt_interval(lo: float, hi: float) -> str:
    return "—" if math.isnan(lo) else f"[{lo:+.4f}, {hi:+.4f}]"


def _fmt_p(p: float) -> str:
    return "—" if math.isnan(p) else f"{p:.3g}"


def markdown(comparisons: list[Comparison], metric: str) -> list[str]:
    if not comparisons:
        return ["No two configurations have completed runs on a shared seed: nothing to pair."]
    m = sum(not math.isnan(c.p_value) for c in comparisons)
    family = (
        f"The verdict uses Holm's correction across all {m} comparisons with two or more "
        "shared seeds"
        if m
        else "No pair shares two completed seeds, so none has a verdict: a paired test needs "
        "2 or more (sweep `seed=0,1,2`, or add seeds into this sweep dir with "
        "`hydra.sweep.dir=`). Holm's correction then applies"
    )
    lines = [
        f"## Is it noise? Paired by seed, metric `{metric}`",
        "",
        "Mean of the per-seed differences A − B with a 95 % confidence interval from the "
        "paired t distribution; wins count the seeds where each was better.",
        f"{family} (family-wise error "
        f"{ALPHA:g}): p (Holm) is the adjusted p-value and the Holm CI the paired-t interval at "
        f"level 1 − {ALPHA:g}/(m − i) for the i-th smallest p (i from 0); a tie says how many "
        f"seeds would resolve a difference of its observed size (paired t, "
        f"{POWER:.0%} power at that same level).",
        "",
        "| A | B | seeds | mean A − B | 95 % CI | Holm CI | p | p (Holm) | A wins | B wins "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| `{c.a}` | `{c.b}` | {c.n} | {c.mean_diff:+.4f} "
            f"| {_fmt_interval(c.ci_low, c.ci_high)} "
            f"| {_fmt_interval(c.ci_holm_low, c.ci_holm_high)} | {_fmt_p(c.p_value)} "
            f"| {_fmt_p(c.p_holm)} | {c.a_wins} | {c.b_wins} | {c.verdict} |"
        )
    top = comparisons[0]
    lines += ["", f"`{top.a}` beat `{top.b}` on {top.a_wins} of {top.n} seeds; {top.verdict}."]
    return lines
