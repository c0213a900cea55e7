"""Issue #33: the report's headline says "Winner" only when the paired, Holm-corrected
comparisons give one, names its metric with the best- and final-epoch values side by side,
and `--metric` writes its own report beside the sweep's. A schedule phase that rounds to
nothing in the run is refused (a share of the run) or warned about (a count beyond it)."""

from __future__ import annotations

import logging

import pytest

from runner.sweep.report import main, write_report
from tests.helpers import write_job

NOISE = [0.004, -0.006, 0.005, -0.003, 0.0]


def fake_job(sweep, schedule: str, seed: int, best: float, final: float) -> None:
    """A completed job's run dir as the runner leaves it, without training: val/acc peaks
    at `best` (epoch 1) and ends at `final` (epoch 2)."""
    rows = [
        {"epoch": 0, "lr/group0": 0.1, "val/acc": best - 0.05, "val/loss": 1.0},
        {"epoch": 1, "lr/group0": 0.05, "val/acc": best, "val/loss": 0.6},
        {"epoch": 2, "lr/group0": 0.01, "val/acc": final, "val/loss": 0.5},
    ]
    job = sweep / f"scheduler={schedule},seed={seed}"
    write_job(job, [f"scheduler={schedule}", f"seed={seed}"], seed, "completed", rows)


def sweep_of(tmp_path, configs: dict[str, list[tuple[float, float]]]):
    sweep = tmp_path / "sweep"
    for schedule, values in configs.items():
        for seed, (best, final) in enumerate(values):
            fake_job(sweep, schedule, seed, best, final)
    return sweep


def headline(text: str) -> str:
    """The line under the title."""
    return text.splitlines()[2]


def test_a_top_tied_with_the_others_is_no_significant_winner(tmp_path):
    """Three schedules within noise of each other (every pair a tie, ranks 1, =1, =1): the
    headline said "Winner: scheduler=none" above them."""
    sweep = sweep_of(
        tmp_path,
        {
            "none": [(0.92, 0.91), (0.90, 0.89), (0.93, 0.92)],
            "cosine": [(0.90, 0.90), (0.92, 0.92), (0.91, 0.91)],
            "step": [(0.91, 0.88), (0.89, 0.88), (0.92, 0.90)],
        },
    )
    line = headline(write_report(sweep))
    assert line.startswith("**No significant winner** by mean best val acc (paired by seed, ")
    assert "`scheduler=none` leads, tied with `scheduler=cosine` and `scheduler=step`." in line
    assert "Winner" not in line
    # the ranking metric beside its final-epoch twin, per tied configuration
    assert (
        "Mean best val acc / final val acc: `scheduler=none` 0.9167 / 0.9067, "
        "`scheduler=cosine` 0.9100 / 0.9100, `scheduler=step` 0.9067 / 0.8867." in line
    )


def test_a_top_tied_with_one_of_two_others_names_that_one(tmp_path):
    """a is significantly better than c, not than b: no winner, tied with b only; and one
    shared seed (no test at all) is a tie too, said as such."""
    a = [(0.96 + e, 0.96 + e) for e in NOISE]
    wobble = [0.02, -0.03, 0.01, 0.025, -0.02]
    b = [(0.95 + e + w, 0.94 + e + w) for e, w in zip(NOISE, wobble, strict=True)]
    c = [(0.90 + e, 0.90) for e in NOISE]
    line = headline(write_report(sweep_of(tmp_path, {"a": a, "b": b, "c": c})))
    assert "`scheduler=a` leads, tied with `scheduler=b`. " in line
    assert "scheduler=c" not in line
    one = headline(write_report(sweep_of(tmp_path / "one", {"a": [(0.9, 0.9)], "b": [(0.8, 0.8)]})))
    assert one.startswith("**No significant winner**")
    assert "tied with `scheduler=b` (1 shared seed)." in one


def test_a_clear_winner_is_named_with_its_metric(tmp_path):
    a = [(0.96 + e, 0.95 + e) for e in NOISE]
    wobble = [0.002, -0.001, 0.0, 0.001, -0.002]
    b = [(0.90 + e + w, 0.89) for e, w in zip(NOISE, wobble, strict=True)]
    c = [(0.80 + e, 0.80) for e in NOISE]
    text = write_report(sweep_of(tmp_path, {"a": a, "b": b, "c": c}))
    line = headline(text)
    assert line.startswith(
        "**Winner: `scheduler=a`** by mean best val acc (paired by seed, Holm-corrected, "
        "family-wise error 0.05): significantly better than every other configuration; "
        "ahead of `scheduler=b` by 0.0600."
    )
    assert "Mean best val acc / final val acc: `scheduler=a` 0.9600 / 0.9500, " in line
    assert "| **best val acc** | final val acc |" in text  # the ranking column, marked


def test_metric_writes_its_own_report_beside_the_sweeps(tmp_path, capsys):
    """`--metric final_val_acc` overwrote the sweep's report.md (and csv, plots)."""
    a = [(0.96 + e, 0.90 + e) for e in NOISE]
    b = [(0.96 - e, 0.95 - e) for e in NOISE]  # b: the better last epoch
    sweep = sweep_of(tmp_path, {"a": a, "b": b})
    write_report(sweep)
    before = {p.name: p.read_bytes() for p in sweep.iterdir() if p.is_file()}
    assert {"report.md", "report.csv", "comparisons.csv", "lr.png"} <= set(before)

    main([str(sweep), "--metric", "final_val_acc"])

    assert {p.name: p.read_bytes() for p in sweep.iterdir() if p.name in before} == before
    new = {p.name for p in sweep.iterdir() if p.is_file()} - set(before)
    suffixed = ("report_{}.md", "report_{}.csv", "comparisons_{}.csv", "lr_{}.png")
    suffixed += ("val_loss_{}.png", "val_acc_{}.png")
    assert new == {n.format("final_val_acc") for n in suffixed}
    text = (sweep / "report_final_val_acc.md").read_text()
    assert headline(text).startswith("**Winner: `scheduler=b`** by mean final val acc")
    assert "![lr](lr_final_val_acc.png)" in text
    assert str(sweep / "report_final_val_acc.md") in capsys.readouterr().out


# -- a schedule phase that the run's length rounds away (schedulers/phases.py)


COMMON = {
    "interval": "epoch",
    "warmup_epochs": 0,
    "warmup_steps": 0,
    "warmup_start_factor": 0.1,
}


def check(name: str, epochs: int, **keys) -> None:
    """validate_scheduler on a built-in with its registry defaults, 10 batches an epoch."""
    from schedulers import SCHEDULES, validate_scheduler

    cfg = {**COMMON, "name": name, **SCHEDULES[name].params, **keys}
    validate_scheduler(cfg, epochs=epochs, steps_per_epoch=10, base_lrs=[0.1])


def test_wsd_whose_decay_rounds_to_nothing_is_a_config_error(tmp_path):
    """The issue's run: `scheduler=wsd epochs=8` (2 of warmup) decays over round(0.2 x 6)
    = 1 epoch, whose lr is the base lr: it never decayed, and nothing said so."""
    from runner.run.check import validate
    from schedulers import ConfigError
    from tests.helpers import cli_in_process, make_cfg

    with pytest.raises(ConfigError) as err:
        validate(make_cfg("scheduler=wsd", "epochs=8"))
    assert err.value.key == "scheduler.decay_fraction"
    assert "the decay phase rounds to 0 of the run's 6 epochs after warmup" in str(err.value)
    assert "use scheduler.interval=step" in str(err.value)
    assert "a decay_fraction of at least 0.34" in str(err.value)
    proc = cli_in_process("scheduler=wsd", "epochs=8", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("config error: scheduler.decay_fraction=0.2: the decay phase")

    validate(make_cfg("scheduler=wsd", "epochs=8", "scheduler.interval=step"))  # per batch: fine
    check("wsd", 8, warmup_epochs=2, decay_fraction=0.34)  # round(2.04) = 2 epochs: one decays
    with pytest.raises(ConfigError, match=r"rounds to 0 of the run's 8 epochs \(round"):
        check("wsd", 8, decay_fraction=0.1)  # no warmup: round(0.8) = 1
    with pytest.raises(ConfigError, match="use scheduler.interval=step .* or more epochs$"):
        check("wsd", 3, warmup_epochs=2)  # 1 epoch left: no fraction can decay in it


def test_wsd_on_8_epochs_decays_per_step_only():
    """What the error says, checked: per epoch the issue's wsd never leaves its base lr;
    with scheduler.interval=step the same schedule ends far below it."""
    from schedulers import SCHEDULES, simulate

    cfg = {**COMMON, "warmup_epochs": 2, "name": "wsd", **SCHEDULES["wsd"].params}
    by_epoch = simulate(cfg, epochs=8, steps_per_epoch=10, base_lrs=[0.1]).per_step
    assert by_epoch[-1] == [0.1]  # what the run had: no decay at all
    by_step = simulate({**cfg, "interval": "step"}, epochs=8, steps_per_epoch=10, base_lrs=[0.1])
    assert by_step.per_step[-1][0] < 0.01


def test_onecycle_counted_in_epochs_with_no_rise_is_a_config_error():
    """pct_start x epochs <= 1: no warm-up, the run starts at max_lr; at exactly 1 torch's
    OneCycleLR divided by zero when the run built it (after validation passed)."""
    from schedulers import ConfigError

    for epochs, pct in ((3, 0.3), (10, 0.1)):
        with pytest.raises(ConfigError, match="the warm-up rounds to 0 of the run's") as err:
            check("onecycle", epochs, interval="epoch", pct_start=pct)
        assert err.value.key == "scheduler.pct_start"
    check("onecycle", 4, interval="epoch")  # 0.3 x 4 = 1.2: a one-epoch rise
    check("onecycle", 3, interval="step")  # its default: 0.3 x 30 batches


@pytest.mark.parametrize(
    ("name", "epochs", "keys", "says"),
    [
        ("step", 3, {}, "scheduler.step_size=10: the lr never steps in the run's 3 epochs; "
         "give step_size below 3, or more epochs (with scheduler.interval=step, step_size "
         "counts batches)"),
        ("multistep", 3, {}, "scheduler.milestones=[8, 14, 17]: none falls within the run's "
         "3 epochs, so the lr never decays"),
        ("multistep", 12, {"warmup_epochs": 2}, "scheduler.milestones=[8, 14, 17]: 14, 17 fall "
         "at or after the end of the run's 10 epochs after warmup: 1 of 3 decays happen"),
        ("cosine_restarts", 5, {}, "scheduler.T_0=5: no restart within the run's 5 epochs"),
    ],
)  # fmt: skip
def test_a_count_beyond_the_run_is_a_warning_naming_the_key(caplog, name, epochs, keys, says):
    with caplog.at_level(logging.WARNING, logger="schedlab"):
        check(name, epochs, **keys)
    assert [r.getMessage()[: len(says)] for r in caplog.records] == [says]


def test_counts_within_the_run_say_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="schedlab"):
        check("step", 3, step_size=2)
        check("step", 3, interval="step")  # 10 batches of 30
        check("multistep", 18)  # the last milestone, 17, is the run's last epoch
        check("cosine_restarts", 6)
    assert not caplog.records


def test_a_phase_counted_in_steps_that_rounds_away_is_a_warning(caplog):
    """A run of a handful of batches (a smoke test of a preset, a tiny set) already counts
    in steps: nothing in the schedule's keys can lengthen it, so onecycle's rise or wsd's
    decay rounding away is said, naming the key, and the run goes on; at exactly one step
    of rise torch's OneCycleLR would divide by zero, so that stays an error."""
    from schedulers import SCHEDULES, ConfigError, validate_scheduler

    def tiny(name: str, steps: int, **keys) -> None:
        cfg = {**COMMON, "name": name, **SCHEDULES[name].params, "interval": "step", **keys}
        validate_scheduler(cfg, epochs=1, steps_per_epoch=steps, base_lrs=[0.1])

    with caplog.at_level("WARNING"):
        tiny("onecycle", 1)  # 0.3 x 1 step
        tiny("wsd", 3)  # round(3 x 0.2) = 1 step
    said = caplog.text
    assert "scheduler.pct_start=0.3: the warm-up rounds to 0 of the run's 1 step" in said
    assert "scheduler.decay_fraction=0.2: the decay phase rounds to 0" in said
    with pytest.raises(ConfigError, match="the warm-up rounds to 0"):
        tiny("onecycle", 10, pct_start=0.1)  # 0.1 x 10 = 1: torch divides by 0
