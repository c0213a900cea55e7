"""`hydra/sweeper=race`: rounds of seeds, paired tests against the current best with Holm's
correction, a re-run that continues the race, and the report's race section."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from scipy import stats

from runner.config.compose import compose_config
from runner.sweep.launch import check_sweeper, configurations
from runner.sweep.race import Race, RaceSettings, job_subdir
from runner.sweep.report import write_report
from tests.helpers import cli_in_process, fake_run, quiet_env, race_json, read_metrics, run_cli

BAD, CLOSE = "optimizer.lr=0.0001", ("optimizer.lr=0.05", "optimizer.lr=0.045")
# 1e-4 is far behind after 3 epochs; 0.05 and 0.045 win and lose seeds against each other
# (paired p 0.2-0.5 at 3, 4 and 5 seeds), so they race on to max_seeds
RACE = ("-m", "hydra/sweeper=race", "optimizer.lr=0.0001,0.05,0.045", "epochs=3",
        "logger=none", "hydra.sweeper.max_seeds=5")  # fmt: skip
REL = 1e-4  # the fused launcher's tolerance (tests/test_fused.py)


def decisions(race: dict) -> list[tuple]:
    """What a race decided: each configuration's fate, round and seeds, and the rounds."""
    fates = [
        (c["label"], c["fate"], c.get("dropped_round"), c["seeds"]) for c in race["configurations"]
    ]
    rounds = [
        (r["round"], r["seeds"], r["racing"], r["best"], r["dropped"]) for r in race["rounds"]
    ]
    return [fates, rounds, race["runs_used"], race["reason"]]


def values(race: dict) -> dict[tuple[str, str], float]:
    return {
        (c["label"], seed): j["value"]
        for c in race["configurations"]
        for seed, j in c["jobs"].items()
    }


@pytest.fixture(scope="module")
def basic_race(tmp_path_factory) -> Path:
    """The race under the basic launcher, uninterrupted: the reference the others match."""
    cwd = tmp_path_factory.mktemp("race")
    result = run_cli(*RACE, "hydra.sweep.dir=basic", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "basic"


@pytest.mark.slow
def test_race_drops_the_bad_lr_after_min_seeds_and_races_the_close_pair(basic_race):
    race = race_json(basic_race)
    by_label = {c["label"]: c for c in race["configurations"]}
    bad = by_label[BAD]
    assert (bad["fate"], bad["dropped_round"], bad["seeds"]) == ("dropped", 1, 3)
    for label in CLOSE:
        assert (by_label[label]["fate"], by_label[label]["seeds"]) == ("survivor", 5)
    assert race["reason"] == "max_seeds reached" and race["done"]
    assert race["runs_used"] == 3 * 3 + 2 * 2 < race["full_grid"] == 3 * 5

    # every job is an ordinary run dir, its seed the `seed` key, named by config and seed
    dirs = sorted(basic_race.glob("c*_seed*"))
    assert len(dirs) == race["runs_used"]
    for d in dirs:
        seed = int(d.name.split("_seed")[1])
        assert yaml.safe_load((d / "config.yaml").read_text())["seed"] == seed
        assert f"seed={seed}" in yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        assert json.loads((d / "status.json").read_text())["status"] == "completed"

    # round 1's evidence against 1e-4, recomputed with scipy from the runs' own metrics
    first = race["rounds"][0]
    best = race["configurations"][first["best"]]
    per_seed = {
        c["label"]: [
            max(r["val/acc"] for r in read_metrics(basic_race / c["jobs"][str(s)]["dir"]))
            for s in range(3)
        ]
        for c in race["configurations"]
    }
    p = {
        label: stats.ttest_rel(per_seed[label], per_seed[best["label"]]).pvalue
        for label in per_seed
        if label != best["label"]
    }
    (first_label, p1), (_, p2) = sorted(p.items(), key=lambda kv: kv[1])
    holm = [min(1.0, 2 * p1), max(min(1.0, 2 * p1), min(1.0, p2))]  # Holm, m = 2
    assert bad["p_holm"] == pytest.approx(holm[0] if first_label == BAD else holm[1])
    assert bad["mean_diff"] == pytest.approx(
        statistics.fmean(per_seed[BAD]) - statistics.fmean(per_seed[best["label"]])
    )
    assert bad["ci_holm_high"] < 0

    report = (basic_race / "report.md").read_text()
    assert "## Race: `best_val_acc`" in report
    assert "**13 of the full grid's 15**" in report
    assert f"| `{BAD}` | dropped in round 1 | 3 |" in report
    for label in CLOSE:
        assert f"| `{label}` | in the race at the end: max_seeds reached | 5 |" in report
    assert (basic_race / "race_val_acc.png").stat().st_size > 0
    assert (basic_race / "race_lr.png").stat().st_size > 0


@pytest.mark.slow
def test_fused_launcher_races_the_same(basic_race, tmp_path):
    result = run_cli(*RACE, "hydra/launcher=fused", "hydra.sweep.dir=fused", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training 9 jobs as one fused model" in result.stdout + result.stderr
    fused, basic = race_json(tmp_path / "fused"), race_json(basic_race)
    assert decisions(fused) == decisions(basic)
    ref = values(basic)
    assert values(fused) == pytest.approx(ref, rel=REL)


@pytest.mark.slow
def test_interrupted_race_continues_where_it_stopped(basic_race, tmp_path):
    # as run_cli: the same float sums as the reference
    env = quiet_env(one_thread=bool(os.environ.get("PYTEST_XDIST_WORKER")))
    args = [*RACE, "hydra.sweep.dir=sweep"]
    sweep = tmp_path / "sweep"
    log = (tmp_path / "first.log").open("w")  # a file, not a pipe nobody reads while it runs
    cmd = [sys.executable, "-m", "runner", *args]
    # SIGINT as a shell gives it (pytest-xdist's workers ignore it, and an ignored signal
    # stays ignored in a child: one landing between two jobs, where no job's handler is
    # installed, was dropped and the race ran to its end)
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 240
    # round 1 decided and round 2 under way: interrupt inside its first job
    while not (sweep / "race.json").exists() or not any(sweep.glob("c*_seed3/.hydra")):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    log.close()
    assert proc.returncode != 0, "the race ended before the interrupt: nothing was tested"
    stopped = race_json(sweep)
    assert [r["round"] for r in stopped["rounds"]] == [1] and not stopped["done"]
    round_one = [sweep / job_subdir(c, s) / "metrics.jsonl" for c in range(3) for s in range(3)]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in round_one}

    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in round_one} == before
    race = race_json(sweep)
    assert (race["rounds"][0]["launched"], race["rounds"][0]["read_back"]) == (0, 9)
    assert decisions(race) == decisions(race_json(basic_race))
    assert values(race) == pytest.approx(values(race_json(basic_race)))


# ---- the race's logic on run dirs written here (no training): failed jobs, read-back


@pytest.mark.slow
def test_failed_jobs_count_as_a_loss_and_a_rerun_reads_everything_back(tmp_path):
    acc = {"lr=1": [0.90, 0.91, 0.92, 0.93, 0.90], "lr=2": [0.91, 0.90, 0.93, 0.92, 0.91]}
    launched: list[list[str]] = []

    def launch(batch: list[list[str]], initial_job_idx: int) -> None:
        for overrides in batch:
            launched.append(overrides)
            lr = overrides[0]
            seed = int(overrides[1].split("=")[1])
            if lr == "lr=3":  # every job of this configuration crashes
                fake_run(tmp_path, overrides, "failed", 0.0)
            else:
                fake_run(tmp_path, overrides, "completed", acc[lr][seed])

    configs = [["lr=1"], ["lr=2"], ["lr=3"]]
    settings = RaceSettings(min_seeds=3, max_seeds=5)
    Race(settings, configs, tmp_path, launch).run()
    race = race_json(tmp_path)
    failed = race["configurations"][2]
    assert (failed["fate"], failed["dropped_round"]) == ("dropped", 1)
    assert all(j["counted_as_loss"] and j["value"] == 0.0 for j in failed["jobs"].values())
    assert race["reason"] == "max_seeds reached" and race["runs_used"] == 9 + 2 + 2
    assert len(launched) == 13

    launched.clear()  # the same race again: everything is read back, nothing launched
    Race(settings, configs, tmp_path, launch).run()
    assert launched == [] and decisions(race_json(tmp_path)) == decisions(race)
    text = write_report(tmp_path)
    assert "| `lr=3` | dropped in round 1 | 3 |" in text
    assert "3 failed/diverged run(s) counted as a loss" in text


def test_max_runs_ends_the_race_before_a_round_that_would_exceed_it(tmp_path):
    acc = {"lr=1": [0.90, 0.91, 0.92, 0.93], "lr=2": [0.91, 0.90, 0.93, 0.92], "lr=3": [0.2] * 4}

    def launch(batch: list[list[str]], initial_job_idx: int) -> None:
        for overrides in batch:
            seed = int(overrides[1].split("=")[1])
            fake_run(tmp_path, overrides, "completed", acc[overrides[0]][seed])

    settings = RaceSettings(min_seeds=2, max_seeds=10, max_runs=9)
    Race(settings, [["lr=1"], ["lr=2"], ["lr=3"]], tmp_path, launch).run()
    race = race_json(tmp_path)
    # round 1: 3 x 2 = 6 runs, lr=3 dropped; round 2: +2 = 8; round 3 would make 10 > 9
    assert (race["runs_used"], race["reason"], len(race["rounds"])) == (8, "max_runs reached", 2)
    assert "in the race at the end: max_runs reached" in write_report(tmp_path)


# ---- keys checked before Hydra starts (exit 2, the key named)


@pytest.mark.parametrize(
    "override, key",
    [
        ("hydra.sweeper.min_seeds=1", "hydra.sweeper.min_seeds=1"),
        ("hydra.sweeper.max_seeds=2", "hydra.sweeper.max_seeds=2"),
        ("hydra.sweeper.alpha=1.5", "hydra.sweeper.alpha=1.5"),
        ("hydra.sweeper.alpha=0", "hydra.sweeper.alpha=0"),
        ("hydra.sweeper.metric=val_acc", "hydra.sweeper.metric='val_acc'"),
        ("hydra.sweeper.max_runs=0", "hydra.sweeper.max_runs=0"),
        ("hydra.sweeper.max_runs=5", "hydra.sweeper.max_runs=5: round 1 alone needs 2"),
        ("seed=0,1", "seed='0,1'"),
        ("seed=3", "seed='3'"),
    ],
)
def test_bad_race_keys_and_a_seed_override_are_config_errors(tmp_path, override, key):
    result = cli_in_process(
        "-m", "hydra/sweeper=race", "optimizer.lr=0.1,0.05", override, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert f"config error: {key}" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_preset_with_a_seed_list_races_its_configurations_with_the_race_seeds():
    overrides = ["hydra/sweeper=race", "+experiment=mnist1d_schedules",
                 "hydra.sweeper.max_seeds=10"]  # fmt: skip
    composed = compose_config(overrides, with_hydra=True)
    check_sweeper(composed.hydra.sweeper, overrides)  # no error: the preset's seeds are not ours
    assert composed.hydra.sweeper.max_seeds == 10
    configs, ignored = configurations(
        ["+experiment=mnist1d_schedules"], composed.hydra.sweeper.params
    )
    assert ignored == ["seed=0,1,2,3,4"]
    assert len(configs) == 8 and all(not any(o.startswith("seed") for o in c) for c in configs)
