"""Issue #34: `python -m runner -m +experiment=mnist1d_budgets` (make budgets) asks "how long
should I train?" in one sweep dir: hydra/sweeper=budgets trains the cosine reruns, the
anytime runs (schedule-free, constant lr + EMA) and the WSD trunks (keeping where each
shorter budget's decay starts) first, then the trunks' branches; the report's budget view
reads each anytime run at every shorter budget and pays for it once. The plan and the view
are tested in process (job dirs written without training); one tiny sweep end to end is
slow."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from runner.config.compose import compose_config
from runner.run.branch_points import branch_point
from runner.sweep import budget_sweeps as plan
from runner.sweep.launch import sweep_combinations
from runner.sweep.report import write_report
from schedulers import ConfigError
from tests.helpers import budget_row, cli_in_process

PRESET = "+experiment=mnist1d_budgets"


def sweeper(*overrides: str) -> dict:
    node = compose_config([PRESET, *overrides], with_hydra=True).hydra.sweeper
    return OmegaConf.to_container(node)


def keep_of(node: dict, *overrides: str) -> dict[str, list[int]]:
    budgets = plan.check_plan(node["budgets"], node)
    return {
        name: plan.keep_epochs(compose_config, branch_point, [PRESET, *overrides], o, budgets)
        for name, o in node["trunks"].items()
    }


# -- the plan ------------------------------------------------------------------------------------
KEEP = "trainer.keep_epochs=[13,25]"


def test_the_preset_plans_reruns_per_budget_one_trunk_keeping_its_decay_starts_and_anytime_runs():
    node = sweeper()
    assert node["_target_"] == "hydra_plugins.schedlab_budgets.budget_sweeper.BudgetSweeper"
    budgets = plan.check_plan(node["budgets"], node)
    assert budgets == [15, 30, 60]
    # WSD (warmup 2, decay 0.2) of 15 and 30 epochs decays from epochs 12 and 24, where the
    # lr is still the base lr: their first 13 and 25 epochs are the 60-epoch trunk's
    keep = keep_of(node)
    assert keep == {"wsd": [13, 25]}
    combos = sweep_combinations([PRESET], node["params"])
    assert combos == [[f"seed={s}", PRESET] for s in range(3)]
    jobs, trunks = plan.first_batch(combos, budgets, node, keep)
    assert len(jobs) == 3 * (3 + 3 + 1)  # per seed: cosine x 3 budgets, 3 anytime, 1 trunk
    seed0 = [j[2:] for j in jobs if j[0] == "seed=0"]
    assert seed0 == [
        ["scheduler=cosine", "epochs=15"],
        ["scheduler=cosine", "epochs=30"],
        ["scheduler=cosine", "epochs=60"],
        ["optimizer=schedulefree_sgd", "scheduler=none", "epochs=60"],
        ["optimizer=schedulefree_adamw", "scheduler=none", "epochs=60"],
        ["scheduler=none", "trainer.average=ema", "trainer.ema_decay=0.99", "epochs=60"],
        [
            "scheduler=wsd",
            "scheduler.decay_fraction=0.2",
            "epochs=60",
            "trainer.keep_epochs=[13,25]",
        ],
    ]
    assert trunks == {
        6 + 7 * s: ("wsd", [f"seed={s}", PRESET, "scheduler=wsd", "scheduler.decay_fraction=0.2"])
        for s in range(3)
    }
    # the command's seeds replace the preset's; its other overrides join every job
    assert sweep_combinations([PRESET, "seed=4", "data.num_samples=500"], node["params"]) == [
        [PRESET, "seed=4", "data.num_samples=500"]
    ]


def test_branches_are_planned_for_the_trunks_that_completed_each_shorter_budget(tmp_path):
    done, failed = tmp_path / "epochs=60,seed=0", tmp_path / "epochs=60,seed=1"
    for trunk, status in ((done, "completed"), (failed, "failed")):
        trunk.mkdir()
        (trunk / "status.json").write_text(json.dumps({"status": status}))
    shared = ["scheduler=wsd", "seed=0"]
    jobs = plan.branch_batch([(shared, done), (["seed=1"], failed)], [15, 30, 60])
    assert jobs == [[*shared, f"branch='{done}'", f"epochs={b}"] for b in (15, 30)]
    # the quoted dir (its `=` and `,` as a sweep names its jobs) reads back whole
    (parsed,) = OverridesParser.create().parse_overrides([jobs[0][2]])
    assert parsed.value() == str(done)


def test_a_trunk_strategy_whose_shorter_budgets_leave_it_at_once_is_refused():
    node = sweeper()
    node["trunks"] = {"cosine": ["scheduler=cosine", "scheduler.interval=step"]}
    with pytest.raises(ConfigError) as err:
        keep_of(node)
    assert err.value.key == "hydra.sweeper.trunks"
    assert "a run of 15 epochs shares no epoch of its lr with the 60-epoch trunk" in str(err.value)


@pytest.mark.parametrize(
    "args, says",
    [
        (["epochs=10"], "config error: epochs='10': the budget sweeper sets it per job"),
        (["trainer.keep_epochs=[3]"], "config error: trainer.keep_epochs='[3]': the budget"),
        (["hydra.sweeper.budgets=[30]"], "config error: hydra.sweeper.budgets=[30]: give two"),
        (
            ["+hydra.sweeper.reruns.long=['epochs=90']"],
            "config error: hydra.sweeper.reruns.long='epochs=90': the sweeper sets epochs",
        ),
        (["hydra.sweeper.reruns=null", "hydra.sweeper.trunks=null", "hydra.sweeper.anytime=null"],
         "config error: hydra.sweeper='budgets': give at least one strategy in reruns, trunks"),
    ],
)  # fmt: skip
def test_a_bad_budget_sweep_is_exit_2_before_hydra_starts(tmp_path, args, says):
    result = cli_in_process("-m", PRESET, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(says), result.stderr
    assert list(tmp_path.iterdir()) == []  # no sweep dir


class Launcher:
    """A launcher that trains nothing: each job's dir under `root` gets a status.json
    (`failed` for a job whose overrides hold `fail`); it returns what Hydra's launchers
    return, as far as the sweeper reads it (hydra_cfg: the job's run dir)."""

    def __init__(self, root: Path, fail: str = "") -> None:
        self.root, self.fail, self.batches = root, fail, []

    def launch(self, jobs: list[list[str]], initial_job_idx: int) -> list[SimpleNamespace]:
        self.batches.append((initial_job_idx, jobs))
        out = []
        for i, overrides in enumerate(jobs, initial_job_idx):
            run_dir = self.root / f"job{i}"
            run_dir.mkdir(parents=True)
            failed = self.fail and self.fail in overrides
            status = {"status": "failed" if failed else "completed"}
            (run_dir / "status.json").write_text(json.dumps(status))
            runtime = {"hydra": {"runtime": {"output_dir": str(run_dir)}}}
            out.append(SimpleNamespace(hydra_cfg=OmegaConf.create(runtime)))
        return out


def budget_sweeper(sweep: Path, launcher: Launcher) -> Any:
    """hydra/sweeper=budgets as Hydra builds it from the preset, set up in this process
    (configs composed by the compose API, the launcher above)."""
    from hydra_plugins.schedlab_budgets.budget_sweeper import BudgetSweeper

    config = compose_config([PRESET, f"hydra.sweep.dir={sweep}"], with_hydra=True)
    node = {k: v for k, v in config.hydra.sweeper.items() if k != "_target_"}
    sweeper = BudgetSweeper(**node)
    sweeper.config, sweeper.launcher = config, launcher
    sweeper.hydra_context = SimpleNamespace(config_loader=None)
    sweeper._compose = compose_config
    sweeper.validate_batch_is_legal = lambda batch: None
    return sweeper


def test_the_sweeper_launches_the_trunks_first_then_branches_of_the_completed_ones(tmp_path):
    launcher = Launcher(tmp_path / "jobs", fail="seed=1")
    budget_sweeper(tmp_path / "sweep", launcher).sweep([PRESET, "seed=0,1"])
    (start, first), (then, branches) = launcher.batches
    assert (start, len(first), then) == (0, 14, 14)  # 2 seeds x (3 cosine, 3 anytime, a trunk)
    wsd = [PRESET, "seed=0", "scheduler=wsd", "scheduler.decay_fraction=0.2"]
    assert first[6] == [*wsd, "epochs=60", KEEP]
    trunk = f"branch='{tmp_path / 'jobs' / 'job6'}'"  # seed 1's trunk (job 13) failed
    assert branches == [[*wsd, trunk, f"epochs={b}"] for b in (15, 30)]
    assert (tmp_path / "sweep" / "multirun.yaml").is_file()


def test_the_sweeper_says_a_bad_plan_in_one_line_exit_2(tmp_path, capsys):
    launcher = Launcher(tmp_path / "jobs")
    with pytest.raises(SystemExit) as exit_:
        budget_sweeper(tmp_path / "sweep", launcher).sweep([PRESET, "epochs=5"])
    assert exit_.value.code == 2 and launcher.batches == []
    assert capsys.readouterr().err.startswith("config error: epochs='5': the budget sweeper")


@pytest.mark.parametrize("launched", ["mnist1d_budgets", "mnist1d_schedules", None])
def test_a_preset_job_resumed_by_its_sweep_keeps_its_experiment_override(tmp_path, launched):
    """A sweep of +experiment=mnist1d_budgets continued after an interrupt resumes its
    interrupted jobs: the group choice it gives again is the one the job was launched
    with (.hydra/overrides.yaml). Another preset, or none recorded, is still refused."""
    from runner.run.rundir import apply_resume_overrides

    if launched is not None:
        (tmp_path / ".hydra").mkdir()
        first = [f"+experiment={launched}", "seed=0"]
        (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(first))
    saved, given = OmegaConf.create({"seed": 0}), OmegaConf.create({"seed": 0})
    overrides = [PRESET, "seed=0"]
    if launched == "mnist1d_budgets":
        assert apply_resume_overrides(saved, given, overrides, tmp_path) == []
        return
    with pytest.raises(ConfigError) as err:
        apply_resume_overrides(saved, given, overrides, tmp_path)
    assert err.value.key == "experiment"


# -- the budget view: anytime runs read at every budget, costs that add up ----------------------
def job(sweep: Path, overrides: list[str], config: dict, accs: list[float], **extra) -> Path:
    """A job dir as the runner leaves it: epoch rows with val/acc `accs` (and val_avg/acc,
    shifted, when `avg`), the first `from_trunk` of them marked."""
    path = sweep / ",".join(overrides).replace("/", "_")  # as job_dir names a path
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "status.json").write_text(json.dumps({"status": "completed", "wall_time_s": 1.0}))
    rows = []
    for e, acc in enumerate(accs):
        row = {"epoch": e, "lr/group0": 0.1, "val/acc": acc, "val/loss": 1 - acc}
        if extra.get("avg"):
            row |= {"val_avg/acc": acc + 0.05, "val_avg/loss": 0.95 - acc}
        if e < extra.get("from_trunk", 0):
            row["from_trunk"] = True
        rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(seed: int, epochs: int, scheduler: str, average: str = "none", **more) -> dict:
    return {
        "seed": seed,
        "epochs": epochs,
        "scheduler": {"name": scheduler},
        "trainer": {"average": average},
        **more,
    }


def curve(epochs: int, seed: int) -> list[float]:
    return [round(0.5 + 0.05 * e + 0.01 * seed, 4) for e in range(epochs)]


def budget_sweep(sweep: Path) -> None:
    """As the budget sweeper leaves it, budgets 4 and 8, seeds 0 and 1: cosine reruns, a
    WSD trunk (8 epochs, keeping epoch 3) with its 4-epoch branch, schedule-free and
    constant + EMA runs of 8 epochs only."""
    for s in (0, 1):
        for b in (4, 8):
            job(
                sweep,
                ["scheduler=cosine", f"epochs={b}", f"seed={s}"],
                config(s, b, "cosine"),
                curve(b, s),
            )
        free = ["optimizer=schedulefree_sgd", "scheduler=none", "epochs=8", f"seed={s}"]
        job(sweep, free, config(s, 8, "none"), curve(8, s))
        ema = ["scheduler=none", "trainer.average=ema", "epochs=8", f"seed={s}"]
        job(sweep, ema, config(s, 8, "none", "ema"), curve(8, s), avg=True)
        trunk_over = ["scheduler=wsd", "epochs=8", f"seed={s}", "trainer.keep_epochs=[3]"]
        trunk = job(sweep, trunk_over, config(s, 8, "wsd"), curve(8, s))
        branch = ["scheduler=wsd", f"branch='{trunk}'", "epochs=4", f"seed={s}"]
        job(
            sweep,
            branch,
            config(s, 4, "wsd", branch=str(trunk), branch_epoch=3),
            curve(4, s),
            from_trunk=3,
        )


def test_an_anytime_run_reports_every_shorter_budget_from_its_row_there_paid_for_once(tmp_path):
    budget_sweep(tmp_path)
    text = write_report(tmp_path, metric="final_val_acc").split("## Budgets")[1]
    free = "`optimizer=schedulefree_sgd scheduler=none`"
    # the 4-epoch budget: the 8-epoch runs' rows at epoch 3 (0.65, 0.66), nothing trained
    assert budget_row(text, free, "| 4 |")[2:] == [
        "2/2",
        "0.6550 ± 0.0635",
        "0 (read off the 8-epoch runs)",
    ]
    assert budget_row(text, free, "| 8 |")[2:] == ["2/2", "0.8550 ± 0.0635", "16"]
    # constant + EMA: the raw weights' line, and the averaged model's from the same runs
    ema = "`scheduler=none trainer.average=ema`"
    assert budget_row(text, ema, "| 4 |")[3] == "0.6550 ± 0.0635"
    avg = "`scheduler=none trainer.average=ema [averaged model]`"
    assert budget_row(text, avg, "| 4 |")[2:] == ["2/2", "0.7050 ± 0.0635", "(the runs above)"]
    assert budget_row(text, avg, "| 8 |")[3] == "0.9050 ± 0.0635"
    lines = [x for x in text.splitlines() if x.startswith("| `")]
    assert (
        lines.index(row_line(text, avg, "| 4 |")) == lines.index(row_line(text, ema, "| 8 |")) + 1
    )


def row_line(text: str, *parts: str) -> str:
    (line,) = [x for x in text.splitlines() if x.startswith("| `") and all(p in x for p in parts)]
    return line


def test_the_budget_costs_add_up_trunk_and_cooldowns_vs_reruns_and_anytime_once(tmp_path):
    budget_sweep(tmp_path)
    text = write_report(tmp_path, metric="final_val_acc").split("## Budgets")[1]
    costs = text.split("| strategy | runs |")[1]
    scratch = 2 * (4 + 8)  # one run per budget and seed
    # cosine: every budget whole; WSD: the trunks (the 8-epoch runs) and 1 epoch per branch
    assert budget_row(costs, "`scheduler=cosine`") == [
        "`scheduler=cosine`",
        "4",
        "0",
        "0",
        "24",
        "**24**",
        str(scratch),
        "1.00",
    ]
    wsd = budget_row(costs, "branch=<trunk>")
    assert wsd[1:] == ["4", "2", "0", str(2 * 8 + 2 * 1), "**18**", str(scratch), "0.75"]
    # the anytime runs: 8 epochs per seed, once, for both budgets; the averaged line no cost
    for label in (
        "`optimizer=schedulefree_sgd scheduler=none`",
        "`scheduler=none trainer.average=ema`",
    ):
        assert budget_row(costs, label)[1:] == ["2", "0", "0", "16", "**16**", str(scratch), "0.67"]
    assert "[averaged model]" not in costs
    # the table's epochs trained per cell add up to each strategy's total
    cells = text.split("| strategy | runs |")[0]
    per_cell = sum(
        int(r.split("|")[5].split()[0])
        for r in cells.splitlines()
        if r.startswith("| `") and "averaged" not in r
    )
    assert per_cell == 24 + 18 + 16 + 16


def test_a_constant_lr_strategy_with_runs_of_its_own_at_each_budget_reads_none_off(tmp_path):
    """Runs of every budget are used as they are; SWA (its start a share of the epochs) and
    a decaying schedule are never read off a longer run."""
    for s in (0, 1):
        for b in (4, 8):
            job(
                tmp_path,
                ["scheduler=none", f"epochs={b}", f"seed={s}"],
                config(s, b, "none"),
                [0.1] * b,
            )
        job(
            tmp_path,
            ["trainer.average=swa", "scheduler=none", "epochs=8", f"seed={s}"],
            config(s, 8, "none", "swa"),
            curve(8, s),
            avg=True,
        )
    text = write_report(tmp_path, metric="final_val_acc").split("## Budgets")[1]
    assert "(read off the" not in text
    # labels without the override both share (scheduler=none)
    assert budget_row(text, "`(defaults)`", "| 4 | 2/2")[2:] == ["2/2", "0.1000 ± 0.0000", "8"]
    assert "`trainer.average=swa` | 4 |" not in text
    assert (
        budget_row(text, "`trainer.average=swa [averaged model]`", "| 8 |")[3] == "0.9050 ± 0.0635"
    )
