"""The report's paired seed-by-seed comparison on synthetic run dirs with known values."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml

from runner.compare import compare, paired_ci
from runner.report import write_report

T_975_DF2 = 4.302652729911275  # Student t quantiles, from tables
T_975_DF4 = 2.7764451051977987


def fake_job(sweep, num: int, schedule: str, seed: int, best_acc: float) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"scheduler={schedule}", f"seed={seed}"])
    )
    (job / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    (job / "status.json").write_text(json.dumps({"status": "completed", "wall_time_s": 1.0}))
    rows = [
        {"epoch": 0, "lr/group0": 0.1, "val/acc": best_acc - 0.05, "val/loss": 1.0},
        {"epoch": 1, "lr/group0": 0.05, "val/acc": best_acc, "val/loss": 0.5},
    ]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


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
    c = compare("a", {0: 0.30, 1: 0.31, 2: 0.29}, "b", {0: 0.50, 1: 0.52, 2: 0.49},
                higher_is_better=False)  # fmt: skip
    assert c.a_wins == 3 and c.verdict == "a better"
    mean, lo, hi = paired_ci([1.0, 1.0, 1.0])
    assert (mean, lo, hi) == (1.0, 1.0, 1.0)
