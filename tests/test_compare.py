"""The report's paired seed-by-seed comparison on synthetic run dirs with known values."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest

from runner.sweep.compare import compare, paired_ci, seeds_needed
from runner.sweep.report import write_report
from tests.helpers import write_job

T_975_DF2 = 4.302652729911275  # Student t quantiles, from tables
T_975_DF4 = 2.7764451051977987


def fake_job(
    sweep, num: int, schedule: str, seed: int, best_acc: float, best_loss: float = 0.5
) -> None:
    rows = [
        {"epoch": 0, "lr/group0": 0.1, "val/acc": best_acc - 0.05, "val/loss": 1.0},
        {"epoch": 1, "lr/group0": 0.05, "val/acc": best_acc, "val/loss": best_loss},
    ]
    overrides = [f"scheduler={schedule}", f"seed={seed}"]
    write_job(sweep / str(num), overrides, seed, "completed", rows)


def sweep_of(tmp_path, cosine: list[float], step: list[float]):
    sweep = tmp_path / "sweep"
    n = 0
    for schedule, values in (("cosine", cosine), ("step", step)):
        for seed, v in enumerate(values):
            fake_job(sweep, n, schedule, seed, v)
            n += 1
    return sweep


def test_three_seeds_all_won_is_still_a_tie(tmp_path):
    sweep = sweep_of(tmp_path, [0.90, 0.92, 0.94], [0.89, 0.90, 0.91])  # diffs .01 .02 .03
    text = write_report(sweep)
    (row,) = list(csv.DictReader((sweep / "comparisons.csv").open()))
    half = T_975_DF2 * 0.01 / math.sqrt(3)
    assert (row["a"], row["b"], row["n"]) == ("scheduler=cosine", "scheduler=step", "3")
    assert float(row["mean_diff"]) == pytest.approx(0.02)
    assert float(row["ci_low"]) == pytest.approx(0.02 - half)
    assert float(row["ci_high"]) == pytest.approx(0.02 + half)
    assert (row["a_wins"], row["b_wins"]) == ("3", "0")
    assert "tie" in row["verdict"] and "few" in row["verdict"]
    assert "`scheduler=cosine` beat `scheduler=step` on 3 of 3 seeds" in text
    assert "| =1 | `scheduler=step`" in text  # ranked level with the winner


def test_five_seeds_separate_a_real_difference(tmp_path):
    cosine = [0.91, 0.92, 0.93, 0.92, 0.92]
    step = [0.90, 0.90, 0.90, 0.90, 0.90]  # diffs .01 .02 .03 .02 .02
    sweep = sweep_of(tmp_path, cosine, step)
    text = write_report(sweep)
    (row,) = list(csv.DictReader((sweep / "comparisons.csv").open()))
    sd = math.sqrt(sum((d - 0.02) ** 2 for d in (0.01, 0.02, 0.03, 0.02, 0.02)) / 4)
    assert float(row["ci_low"]) == pytest.approx(0.02 - T_975_DF4 * sd / math.sqrt(5))
    assert row["verdict"] == "scheduler=cosine better"
    assert "| 2 | `scheduler=step`" in text


def test_one_seed_cannot_tell(tmp_path):
    sweep = sweep_of(tmp_path, [0.95], [0.90])
    write_report(sweep)
    (row,) = list(csv.DictReader((sweep / "comparisons.csv").open()))
    assert row["verdict"] == "cannot tell: 1 shared seed"
    assert row["ci_low"] == "nan"


def test_losses_compare_lower_as_better():
    c = compare(
        "a", {0: 0.30, 1: 0.31, 2: 0.29}, "b", {0: 0.50, 1: 0.52, 2: 0.49}, higher_is_better=False
    )
    assert c.a_wins == 3 and c.verdict == "a better"
    mean, lo, hi = paired_ci([1.0, 1.0, 1.0])
    assert (mean, lo, hi) == (1.0, 1.0, 1.0)


# ---- Holm's correction and the seeds a tie needs, against scipy directly

PER_SEED = {  # three configurations x 4 seeds: one clear gap, one small, one in between
    "cosine": [0.95, 0.96, 0.94, 0.97],
    "plateau": [0.94, 0.95, 0.945, 0.955],
    "step": [0.90, 0.92, 0.89, 0.93],
}


def test_holm_adjusted_p_and_intervals_equal_scipy(tmp_path):
    from scipy import stats

    sweep = tmp_path / "sweep"
    n = 0
    for schedule, vals in PER_SEED.items():
        for seed, v in enumerate(vals):
            fake_job(sweep, n, schedule, seed, v)
            n += 1
    write_report(sweep)
    rows = list(csv.DictReader((sweep / "comparisons.csv").open()))
    assert len(rows) == 3
    for col in ("p_value", "p_holm", "ci_holm_low", "ci_holm_high", "seeds_needed"):
        assert col in rows[0]

    # direct: scipy's paired t test, Holm's step-down by hand, scipy's t interval
    raw = {}
    for row in rows:
        a, b = (PER_SEED[row[k].split("=")[1]] for k in ("a", "b"))
        raw[(row["a"], row["b"])] = (
            stats.ttest_rel(a, b).pvalue,
            [x - y for x, y in zip(a, b, strict=True)],
        )
    order = sorted(raw, key=lambda k: raw[k][0])
    m, alpha, running = len(order), 0.05, 0.0
    for i, pair in enumerate(order):
        p, diffs = raw[pair]
        running = max(running, min(1.0, (m - i) * p))
        (row,) = [r for r in rows if (r["a"], r["b"]) == pair]
        assert float(row["p_value"]) == pytest.approx(p)
        assert float(row["p_holm"]) == pytest.approx(running)
        lo, hi = stats.t.interval(
            1 - alpha / (m - i), len(diffs) - 1, loc=statistics.fmean(diffs), scale=stats.sem(diffs)
        )
        assert (float(row["ci_holm_low"]), float(row["ci_holm_high"])) == pytest.approx((lo, hi))
        assert ("better" in row["verdict"]) == (running < alpha)
        assert (row["seeds_needed"] == "nan") == (running < alpha)  # sized for ties only
    # the uncorrected interval stays what it was
    (top,) = [r for r in rows if (r["a"], r["b"]) == ("scheduler=cosine", "scheduler=plateau")]
    d = [x - y for x, y in zip(PER_SEED["cosine"], PER_SEED["plateau"], strict=True)]
    lo, hi = stats.t.interval(0.95, 3, loc=statistics.fmean(d), scale=stats.sem(d))
    assert (float(top["ci_low"]), float(top["ci_high"])) == pytest.approx((lo, hi))


def scipy_seeds_needed(effect: float, alpha: float = 0.05, target: float = 0.8) -> int:
    """The smallest n whose two-sided paired t test has power >= target (scipy's nct)."""
    from scipy import stats

    n = 2
    while True:
        crit = stats.t.ppf(1 - alpha / 2, n - 1)
        nc = effect * math.sqrt(n)
        if stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc) >= target:
            return n
        n += 1


def test_seeds_needed_is_the_paired_t_power_formula(tmp_path):
    assert seeds_needed([0.0, 1.0]) == scipy_seeds_needed(0.5 / statistics.stdev([0.0, 1.0]))
    # the textbook case: effect 0.5 sd, two-sided 5 %, 80 % power -> 34 pairs
    diffs = [0.5 + x for x in (-1.0, 1.0, -1.0, 1.0)]
    effect = statistics.fmean(diffs) / statistics.stdev(diffs)
    assert seeds_needed(diffs) == scipy_seeds_needed(effect)
    assert scipy_seeds_needed(0.5) == 34
    assert seeds_needed([0.01, -0.01, 0.01, -0.01]) == math.inf  # no difference to resolve

    # and in comparisons.csv for a tie: 3 seeds, diffs .01 .00 .02
    sweep = sweep_of(tmp_path, [0.91, 0.90, 0.92], [0.90, 0.90, 0.90])
    text = write_report(sweep)
    (row,) = list(csv.DictReader((sweep / "comparisons.csv").open()))
    assert "tie" in row["verdict"]
    effect = 0.01 / statistics.stdev([0.01, 0.0, 0.02])
    assert int(row["seeds_needed"]) == scipy_seeds_needed(effect)
    assert f"~{scipy_seeds_needed(effect)} seeds would resolve" in text
    assert "Holm" in text


def test_seeds_needed_of_a_tie_in_a_family_is_sized_at_its_holm_level():
    """In a family of m pairs, the pair with the i-th smallest p is decided at alpha/(m - i):
    its seeds-needed figure is the power formula at that level (here more seeds than the
    ties have; at the family's plain 0.05 it could be fewer)."""
    from runner.sweep.compare import all_pairs

    values = {  # 4 seeds: a clear gap to c, a small one between a and b
        "a": {0: 0.91, 1: 0.92, 2: 0.90, 3: 0.93},
        "b": {0: 0.90, 1: 0.92, 2: 0.90, 3: 0.91},
        "c": {0: 0.80, 1: 0.83, 2: 0.79, 3: 0.81},
    }
    pairs = all_pairs(values, higher_is_better=True)
    ranked = sorted(pairs, key=lambda c: c.p_value)
    for i, c in enumerate(ranked):
        if not c.tie:
            continue
        diffs = [values[c.a][s] - values[c.b][s] for s in range(4)]
        effect = statistics.fmean(diffs) / statistics.stdev(diffs)
        assert c.seeds_needed == scipy_seeds_needed(effect, alpha=0.05 / (len(ranked) - i))
        assert c.seeds_needed > c.n
    assert any(c.tie for c in pairs)


def sweep_of_configs(tmp_path, configs: dict[str, list[float]]):
    sweep, n = tmp_path / "sweep", 0
    for schedule, values in configs.items():
        for seed, v in enumerate(values):
            fake_job(sweep, n, schedule, seed, v)
            n += 1
    return sweep


def table_rows(text: str) -> dict[str, list[str]]:
    """The report table's cells by config (rank first)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[0].lstrip("=").isdigit() and cells[1].startswith("`sch"):
            rows[cells[1].strip("`").split("=", 1)[1]] = cells
    return rows


def test_a_rank_is_shared_only_with_the_first_row_of_that_rank(tmp_path):
    """a ~ b and b ~ c (noisy, not significant) but a is significantly better than c: the
    ranks are 1, =1, 3 (ties chained through b gave c '=1' while the table said 'better')."""
    noise = [0.004, -0.006, 0.005, -0.003, 0.0, 0.006, -0.005, 0.002]
    a = [0.96 + e for e in noise]
    wobble = [0.02, -0.03, 0.01, 0.025, -0.02, 0.0, 0.03, -0.02]
    b = [0.95 + e + f for e, f in zip(noise, wobble, strict=True)]
    c = [0.94 + e for e in noise]
    text = write_report(sweep_of_configs(tmp_path, {"a": a, "b": b, "c": c}))
    rows = table_rows(text)
    pair = next(
        line for line in text.splitlines() if line.startswith("| `scheduler=a` | `scheduler=c`")
    )
    assert pair.rstrip(" |").endswith("better")  # the paired table: a significantly better than c
    assert [rows[k][0] for k in ("a", "b", "c")] == ["1", "=1", "3"]


def test_zero_spread_differences_get_the_sign_tests_p_not_zero():
    from runner.sweep.compare import paired_p

    assert paired_p([0.0111, 0.0111]) == 0.5  # 2 of 2 seeds: no evidence at 5 %
    assert paired_p([0.01] * 6) == 2 * 0.5**6 < 0.05
    assert paired_p([0.0, 0.0, 0.0]) == 1.0
    assert seeds_needed([0.01, 0.01]) == 6


@pytest.mark.slow
def test_single_seeds_exact_ties_and_empty_configs_are_said_as_such(tmp_path):
    text = write_report(sweep_of_configs(tmp_path, {"a": [0.9], "b": [0.8]}))
    assert "0.9000 ±" not in text and "| 0.9000 |" in text  # one seed: no spread shown
    tie = write_report(sweep_of_configs(tmp_path / "t", {"a": [0.9, 0.8], "b": [0.9, 0.8]}))
    assert "No significant winner" in tie and "Winner:" not in tie
    sweep = sweep_of_configs(tmp_path / "e", {"a": [0.9, 0.8], "b": [0.7, 0.6]})
    for job in ("2", "3"):  # b: one stopped, one completed with no readable row
        status = "interrupted" if job == "2" else "completed"
        (sweep / job / "status.json").write_text(json.dumps({"status": status}))
        (sweep / job / "metrics.jsonl").write_text("" if job == "3" else "{}\n")
    text = write_report(sweep)
    assert table_rows(text)["b"][2:6] == ["2", "0", "0", "2"]  # runs, done, diverged, failed
    assert "Only `scheduler=a` has completed runs" in text and "by nan" not in text


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_the_report_cli_refuses_a_target_acc_outside_0_1(tmp_path, capsys, value):
    from runner.sweep.report import main

    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--target-acc", value])
    assert exit_.value.code == 2
    assert "must be in (0, 1]" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_the_table_ranks_by_the_reports_metric(tmp_path):
    """--metric best_val_loss: ranked by it, lowest first (before: by best val acc, while
    the shared ranks came from the loss comparisons)."""
    sweep = tmp_path / "sweep"
    for seed in range(3):  # a: the better accuracy; b: the lower loss
        fake_job(sweep, seed, "a", seed, 0.95 + 0.01 * seed, best_loss=0.40 + 0.01 * seed)
        fake_job(sweep, 3 + seed, "b", seed, 0.90 + 0.01 * seed, best_loss=0.30 + 0.01 * seed)
    by_acc = write_report(sweep)
    assert list(table_rows(by_acc)) == ["a", "b"]
    text = write_report(sweep, metric="best_val_loss")
    rows = table_rows(text)
    assert list(rows) == ["b", "a"] and rows["b"][0] == "1"  # a: "=1", 3 seeds tell nothing
    assert "Best first, by mean best val loss" in text
    # 3 seeds tell nothing: the headline names no winner (it said "Winner: `scheduler=b`")
    assert (
        "**No significant winner** by mean best val loss (paired by seed, Holm-corrected, "
        "family-wise error 0.05): `scheduler=b` leads, tied with `scheduler=a`." in text
    )


def test_a_repeated_configuration_and_seed_counts_once(tmp_path):
    """`seed=0,0` (or one job run twice): before, both copies were pooled as two runs."""
    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, "a", 0, 0.90)
    fake_job(sweep, 1, "a", 0, 0.80)  # the same configuration and seed again
    fake_job(sweep, 2, "a", 1, 0.92)
    fake_job(sweep, 3, "b", 0, 0.85)
    fake_job(sweep, 4, "b", 1, 0.86)
    text = write_report(sweep)
    a = table_rows(text)["a"]
    assert a[2:4] == ["2", "2"]  # runs, done
    assert a[7] == f"{statistics.fmean([0.90, 0.92]):.4f} ± {statistics.stdev([0.90, 0.92]):.4f}"
    assert "1 job(s) repeat a configuration and seed already in the table" in text
    assert "repeat a configuration" not in write_report(sweep_of(tmp_path / "x", [0.9], [0.8]))
