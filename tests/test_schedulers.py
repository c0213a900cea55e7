"""schedulers/: the lecture's six curves, closed forms, modern schedules, warmup, validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

from schedulers import ConfigError, build_scheduler, validate_scheduler
from schedulers.expr import ExpressionError, LrExpression, parse
from schedulers.lecture import LR, MAX_EPOCH, lecture_config, plateau_loss, run_toy
from schedulers.wsd import wsd_factor
from tests.helpers import torch_reference

COMMON = {
    "interval": "epoch",
    "warmup_epochs": 0,
    "warmup_steps": 0,
    "warmup_start_factor": 0.1,
}


# -- the lecture's toy demo, against torch used directly -----------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["step", "multistep", "exponential", "cosine", "plateau", "lambda"]
)
def test_lecture_curve_equals_torch_value_for_value(name):
    assert run_toy(name) == torch_reference(name)


@pytest.mark.slow
def test_lecture_closed_forms_to_1e_12():
    step, expo, cos = run_toy("step"), run_toy("exponential"), run_toy("cosine")
    for t in range(MAX_EPOCH):
        assert step[t][0] == pytest.approx(LR * 0.1 ** (t // 50), abs=1e-12)
        assert expo[t][0] == pytest.approx(LR * 0.95**t, abs=1e-12)
        # eta_t = eta_min + 1/2 (eta_max - eta_min)(1 + cos(pi T_cur / T_max)), period 2 T_max
        assert cos[t][0] == pytest.approx(0.5 * LR * (1 + math.cos(math.pi * t / 50)), abs=1e-12)
    multi = run_toy("multistep")
    for t in range(MAX_EPOCH):
        assert multi[t][0] == pytest.approx(LR * 0.1 ** sum(t >= m for m in (50, 125, 160)))


def test_lecture_plateau_drops_after_patience_plus_cooldown_until_min_lr():
    lrs = [row[0] for row in run_toy("plateau")]
    drops = [t for t in range(1, MAX_EPOCH) if lrs[t] < lrs[t - 1]]
    # best 0.4 at epoch 5; 10 bad epochs (patience) -> reduce after epoch 16; then cooldown 10
    # + patience 10 + 1 between reductions, until min_lr=1e-4 stops them.
    assert drops == [17, 38, 59]
    assert lrs[-1] == pytest.approx(1e-4)


def test_lecture_lambda_two_groups_follow_their_expressions():
    lrs = run_toy("lambda")
    for t, (g0, g1) in enumerate(lrs):
        assert g0 == pytest.approx(LR * 0.1 ** (t // 20), rel=1e-12)
        assert g1 == pytest.approx(LR * 0.95**t, rel=1e-12)


# -- modern schedules, warmup, interval ----------------------------------------------------------
def lrs_of(cfg: dict, epochs: int = 20, steps: int = 5, base: float = 0.1) -> list[float]:
    """lr at the start of every unit (epoch or batch) when stepped like the loop steps it."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base, momentum=0.9)
    sched = build_scheduler({**COMMON, **cfg}, opt, epochs=epochs, steps_per_epoch=steps)
    out = []
    for _ in range(epochs):
        for _ in range(steps):
            if sched.interval == "step":
                out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step_batch()
        if sched.interval == "epoch":
            out.append(opt.param_groups[0]["lr"])
        sched.step_epoch({"val/loss": 1.0})
    return out


def test_warmup_rises_linearly_to_the_base_lr_then_runs_the_schedule():
    got = lrs_of({"name": "cosine", "T_max": None, "eta_min": 0.0, "warmup_epochs": 4}, epochs=20)
    assert got[0] == pytest.approx(0.1 * 0.1)  # warmup_start_factor
    assert got[:5] == pytest.approx([0.01, 0.0325, 0.055, 0.0775, 0.1])
    assert got[4] == pytest.approx(0.1)  # reached at the end of warmup
    for t in range(4, 20):  # the cosine over the remaining 16 epochs
        assert got[t] == pytest.approx(0.05 * (1 + math.cos(math.pi * (t - 4) / 16)), abs=1e-12)


def test_warmup_in_front_of_plateau_feeds_the_metric_afterwards():
    cfg = {**lecture_config("plateau"), "monitor": "val/loss", "patience": 2, "cooldown": 0}
    got = lrs_of({**cfg, "warmup_epochs": 3}, epochs=12)
    assert got[3] == pytest.approx(0.1)
    assert min(got[4:]) < 0.1  # the never-improving metric reduces it after warmup


def test_onecycle_steps_per_batch_over_the_whole_run():
    epochs, steps = 4, 5
    got = lrs_of(BASE["onecycle"], epochs=epochs, steps=steps)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    ref = tls.OneCycleLR(opt, max_lr=0.1, total_steps=epochs * steps)
    expected = []
    for _ in range(epochs * steps):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert got == expected
    assert len(set(got[:steps])) == steps  # the lr moves inside the first epoch


def test_cyclic_triangular_bounces_between_max_over_10_and_max():
    cfg = BASE["cyclic"]
    got = lrs_of(cfg, epochs=8, steps=5)
    assert got[0] == pytest.approx(0.01)  # base = max / 10
    assert got[10] == pytest.approx(0.1)  # up in 2 epochs (10 batches)
    assert got[20] == pytest.approx(0.01)  # and back down
    assert max(got) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("cfg", "formula"),
    [
        (
            {"name": "linear", "start_factor": 1.0, "end_factor": 0.0, "total_iters": None},
            lambda t: 0.1 * (1 - t / 20),
        ),
        ({"name": "poly", "total_iters": None, "power": 2.0}, lambda t: 0.1 * (1 - t / 20) ** 2),
        (
            {"name": "cosine_restarts", "T_0": 5, "T_mult": 2, "eta_min": 0.0},
            lambda t: (
                0.05
                * (
                    1
                    + math.cos(
                        math.pi
                        * (t if t < 5 else t - 5 if t < 15 else t - 15)
                        / (5 if t < 5 else 10 if t < 15 else 20)
                    )
                )
            ),
        ),
        ({"name": "exponential", "gamma": 0.8}, lambda t: 0.1 * 0.8**t),
        (
            {"name": "lambda", "lr_lambda": "max(0.1, 1 - epoch / 10)"},
            lambda t: 0.1 * max(0.1, 1 - t / 10),
        ),
    ],
)
def test_schedules_match_their_closed_forms(cfg, formula):
    for t, lr in enumerate(lrs_of(cfg, epochs=20)):
        assert lr == pytest.approx(formula(t), abs=1e-12), t


def test_wsd_is_stable_then_decays_over_its_last_fraction():
    cfg = {
        "name": "wsd",
        "warmup_epochs": 2,
        "decay_fraction": 0.25,
        "decay_shape": "linear",
        "final_lr_scale": 0.0,
    }
    got = lrs_of(cfg, epochs=18)
    assert got[2:14] == pytest.approx([0.1] * 12)  # 16 post-warmup epochs: 12 stable, 4 decaying
    assert got[14:] == pytest.approx([0.1, 0.075, 0.05, 0.025])
    assert wsd_factor(9, 10, 0.5, "sqrt", 0.1) == pytest.approx(1 - 0.9 * math.sqrt(0.8))
    assert wsd_factor(7, 10, 0.5, "cosine", 0.0) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.4))
    )


def test_schedule_state_round_trips_mid_run():
    cfg = {**COMMON, "name": "cosine", "T_max": None, "eta_min": 0.0, "warmup_epochs": 3}

    def make():
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        return opt, build_scheduler(cfg, opt, epochs=12, steps_per_epoch=1)

    opt, sched = make()
    for _ in range(5):
        opt.step()
        sched.step_epoch({})
    state, lr = sched.state_dict(), opt.param_groups[0]["lr"]
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = lr
    for _ in range(6):
        opt.step()
        opt2.step()
        sched.step_epoch({})
        sched2.step_epoch({})
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


# -- lambda expressions ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.1 ** (epoch // 20)", 0.1 ** (45 // 20)),
        ("0.95 ** epoch", 0.95**45),
        ("min(1, (epoch + 1) / 5) * cos(pi * epoch / 90) ", min(1, 46 / 5) * math.cos(math.pi / 2)),
        ("exp(-epoch / 10) + log(1 + epoch % 7) - -sin(0)", math.exp(-4.5) + math.log(1 + 45 % 7)),
    ],
)
def test_allowed_expressions_evaluate_like_python(text, value):
    assert LrExpression(text)(45) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("__import__('os').system('true')", "is not allowed"),
        ("epoch.real", "attribute access"),
        ("torch.ones(1)", "is not allowed"),
        ("foo * epoch", "unknown name 'foo'"),
        ("open('x')", "call of 'open'"),
        ("(lambda: 1)()", "is not allowed"),
        ("[1, 2]", "is not allowed"),
        ("'text'", "only numbers"),
        ("epoch +", "not a valid expression"),
        ("max(a=1)", "positional"),
    ],
)
def test_forbidden_expressions_are_rejected(text, complaint):
    with pytest.raises(ExpressionError, match=complaint):
        parse(text)


def test_lambda_state_is_only_its_text():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    cfg = {**COMMON, "name": "lambda", "lr_lambda": "0.9 ** epoch"}
    state = build_scheduler(cfg, opt, epochs=5, steps_per_epoch=1).state_dict()
    assert state["main"]["lr_lambdas"] == [{"text": "0.9 ** epoch"}]


# -- validation ---------------------------------------------------------------------------------
def _yaml_defaults() -> dict[str, dict]:
    """Every schedule's defaults as conf/scheduler/<name>.yaml gives them."""
    import yaml

    from runner.config.compose import CONF

    return {
        p.stem: {**COMMON, **yaml.safe_load(p.read_text())}
        for p in sorted((CONF / "scheduler").glob("*.yaml"))
        if p.stem != "target"  # names no class until it is given one
    }


BASE = _yaml_defaults()
del BASE["none"]


BAD = [
    ("step", {"gamma": 0.0}, "scheduler.gamma"),
    ("step", {"gamma": 1.5}, "scheduler.gamma"),
    ("step", {"step_size": 0}, "scheduler.step_size"),
    ("step", {"step_size": 2.5}, "scheduler.step_size"),
    ("step", {"gama": 0.1}, "scheduler.gama"),
    ("step", {"interval": "batch"}, "scheduler.interval"),
    ("step", {"warmup_epochs": 10}, "scheduler.warmup_epochs"),
    ("step", {"warmup_epochs": -1}, "scheduler.warmup_epochs"),
    ("step", {"warmup_start_factor": 0.0}, "scheduler.warmup_start_factor"),
    ("multistep", {"milestones": [5, 3]}, "scheduler.milestones"),
    ("multistep", {"milestones": [3, 3]}, "scheduler.milestones"),
    ("multistep", {"milestones": [0, 3]}, "scheduler.milestones"),
    ("multistep", {"milestones": []}, "scheduler.milestones"),
    ("multistep", {"milestones": [2.5]}, "scheduler.milestones"),
    ("exponential", {"gamma": -0.5}, "scheduler.gamma"),
    ("cosine", {"T_max": 0}, "scheduler.T_max"),
    ("cosine", {"eta_min": 0.1}, "scheduler.eta_min"),
    ("cosine", {"eta_min": -1.0}, "scheduler.eta_min"),
    ("plateau", {"mode": "up"}, "scheduler.mode"),
    ("plateau", {"factor": 1.0}, "scheduler.factor"),
    ("plateau", {"factor": 0.0}, "scheduler.factor"),
    ("plateau", {"patience": -1}, "scheduler.patience"),
    ("plateau", {"threshold_mode": "relative"}, "scheduler.threshold_mode"),
    ("plateau", {"cooldown": -2}, "scheduler.cooldown"),
    ("plateau", {"min_lr": -1.0}, "scheduler.min_lr"),
    ("plateau", {"monitor": "val/los"}, "scheduler.monitor"),
    ("plateau", {"monitor": "val/acc", "mode": "min"}, "scheduler.mode"),
    ("plateau", {"monitor": "val/loss", "mode": "max"}, "scheduler.mode"),
    ("plateau", {"interval": "step"}, "scheduler.interval"),
    ("lambda", {"lr_lambda": "__import__('os')"}, "scheduler.lr_lambda"),
    ("lambda", {"lr_lambda": "1 / (epoch - 3)"}, "scheduler.lr_lambda"),
    ("lambda", {"lr_lambda": "-1"}, "scheduler.lr_lambda"),
    ("lambda", {"lr_lambda": ["1", "1", "1"]}, "scheduler.lr_lambda"),
    ("onecycle", {"pct_start": 1.0}, "scheduler.pct_start"),
    ("onecycle", {"anneal_strategy": "cosine"}, "scheduler.anneal_strategy"),
    ("onecycle", {"warmup_epochs": 2}, "scheduler.warmup_epochs"),
    ("onecycle", {"max_lr": 0}, "scheduler.max_lr"),
    ("cyclic", {"base_lr": 0.5}, "scheduler.base_lr"),
    ("cyclic", {"mode": "sawtooth"}, "scheduler.mode"),
    ("cosine_restarts", {"T_0": 0}, "scheduler.T_0"),
    ("cosine_restarts", {"T_mult": 1.5}, "scheduler.T_mult"),
    ("linear", {"start_factor": 0.0}, "scheduler.start_factor"),
    ("linear", {"end_factor": 2.0}, "scheduler.end_factor"),
    ("poly", {"power": 0}, "scheduler.power"),
    ("wsd", {"decay_fraction": 0.0}, "scheduler.decay_fraction"),
    ("wsd", {"decay_shape": "exp"}, "scheduler.decay_shape"),
    ("wsd", {"final_lr_scale": 1.0}, "scheduler.final_lr_scale"),
]


@pytest.mark.parametrize("name", sorted(BASE))
def test_base_configs_are_valid(name):
    validate_scheduler({**COMMON, **BASE[name]}, epochs=10, steps_per_epoch=4, base_lrs=[0.1])


@pytest.mark.parametrize(("name", "change", "key"), BAD)
def test_bad_values_fail_naming_key_value_and_rule(name, change, key):
    cfg = {**COMMON, **BASE[name], **change}
    metrics = ("val/loss", "val/acc")
    with pytest.raises(ConfigError) as err:
        validate_scheduler(cfg, epochs=10, steps_per_epoch=4, base_lrs=[0.1], metrics=metrics)
    assert err.value.key == key
    message = str(err.value)
    assert message.startswith(f"{key}=") and ": " in message  # key=value: rule


def test_unknown_name_lists_every_schedule():
    with pytest.raises(ConfigError) as err:
        validate_scheduler({**COMMON, "name": "nope"}, epochs=10, steps_per_epoch=1, base_lrs=[0.1])
    for name in BASE:
        assert f"'{name}'" in str(err.value)


# -- internals trace ---------------------------------------------------------------------------
def _lecture_schedule(name: str):
    from schedulers.lecture import toy_params

    params = toy_params(name)
    opt = torch.optim.SGD([{"params": [p]} for p in params], lr=LR, momentum=0.9)
    return build_scheduler(lecture_config(name), opt, epochs=MAX_EPOCH, steps_per_epoch=1)


def test_trace_flags_exactly_the_multistep_milestones():
    from schedulers.trace import flagged_epochs, trace_schedule

    rows = trace_schedule(_lecture_schedule("multistep"), MAX_EPOCH)
    assert flagged_epochs(rows) == [50, 125, 160]
    for r in rows:
        assert r["last_epoch"] == r["epoch"] and r["base_lr"] == LR
        assert r["get_last_lr"] == r["lr_in_use"]
        if r["differs"]:  # the decay applied a second time
            assert r["get_lr_outside_step"] == pytest.approx(r["lr_in_use"] * 0.1)
    assert [r["lr_in_use"] for r in rows] == [row[0] for row in run_toy("multistep")]


def test_trace_of_plateau_matches_torchs_counters():
    from schedulers.trace import trace_schedule

    rows = trace_schedule(_lecture_schedule("plateau"), 60, plateau_loss)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR, momentum=0.9)
    ref = tls.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=10, cooldown=10, min_lr=1e-4)
    for epoch, row in enumerate(rows):
        assert row["lr_in_use"] == opt.param_groups[0]["lr"]
        ref.step(plateau_loss(epoch))
        assert (row["best"], row["num_bad_epochs"], row["cooldown_counter"]) == (
            ref.best,
            ref.num_bad_epochs,
            ref.cooldown_counter,
        )
    assert not any(r["differs"] for r in rows)


# -- plateau: the mode follows the monitored metric ---------------------------------------------
def _plateau_lrs(cfg: dict, accs: list[float]) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = build_scheduler(
        {**COMMON, **BASE["plateau"], **cfg}, opt, epochs=len(accs), steps_per_epoch=1
    )
    lrs = []
    for acc in accs:
        sched.step_epoch({"val/acc": acc, "val/loss": 1 - acc})
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("mode", ["auto", "max"])
def test_plateau_on_val_acc_cuts_the_lr_only_when_acc_stops_improving(mode):
    """mode auto (the default) is max for an accuracy: rising acc keeps the lr, a flat one
    cuts it after `patience` epochs (the old default, min, cut it on every improvement)."""
    accs = [0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.9]
    lrs = _plateau_lrs({"monitor": "val/acc", "mode": mode, "patience": 0}, accs)
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.001, 0.001])


def test_plateau_auto_on_a_loss_is_min():
    lrs = _plateau_lrs({"monitor": "val/loss", "patience": 0}, [0.5, 0.6, 0.7, 0.7])
    # the loss (1 - acc) falls, then stays: cut once it stops falling
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01])
    assert BASE["plateau"]["mode"] == "auto"


def test_plateau_mode_contradicting_its_monitor_names_the_key_in_targets_and_phases():
    t = "torch.optim.lr_scheduler.ReduceLROnPlateau"
    cases = [
        ({"_target_": t, "monitor": "val/acc", "mode": "min"}, "scheduler.mode"),
        (
            {"name": "sequence", "phases": [
                {"name": "none", "length": 2},
                {"name": "plateau", "length": None, "monitor": "val/acc", "mode": "min"},
            ]},
            "scheduler.phases.1.mode",
        ),
    ]  # fmt: skip
    for cfg, key in cases:
        with pytest.raises(ConfigError, match="contradicts") as err:
            validate_scheduler({**COMMON, **cfg}, epochs=10, steps_per_epoch=1, base_lrs=[0.1])
        assert err.value.key == key


def test_a_target_plateau_without_mode_follows_its_monitor():
    t = "torch.optim.lr_scheduler.ReduceLROnPlateau"
    for mode in ({}, {"mode": "auto"}):
        cfg = {**COMMON, "_target_": t, "monitor": "val/acc", "patience": 0, **mode}
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched = build_scheduler(cfg, opt, epochs=5, steps_per_epoch=1)
        assert sched.main.mode == "max"


def test_a_plateau_phase_follows_its_monitor():
    phases = [{"name": "none", "length": 1}, {"name": "plateau", "length": None,
              "monitor": "val/acc", "patience": 0}]  # fmt: skip
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    cfg = {**COMMON, "name": "sequence", "phases": phases}
    sched = build_scheduler(cfg, opt, epochs=6, steps_per_epoch=1)
    assert sched.main._schedulers[1].mode == "max"
