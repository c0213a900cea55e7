"""Schedules by `_target_` and `name: sequence`: equal to torch's own classes, resumable,
validated before anything is built."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import yaml
from torch.optim import lr_scheduler as tls

from schedulers import SCHEDULES, ConfigError, build_scheduler, schedule_label, validate_scheduler
from tests.helpers import CONF, make_cfg, read_metrics, run_cli

COMMON = {
    "interval": "epoch",
    "warmup_epochs": 0,
    "warmup_steps": 0,
    "warmup_start_factor": 0.1,
}
T = "torch.optim.lr_scheduler."
LRS = (0.1, 0.03)  # two param groups with different lrs
METRICS = ("val/loss", "val/acc")


def optimizer(lrs=LRS):
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def units(sched, epochs: int, steps: int, metric=lambda t: 1.0, start: int = 0):
    """Step an LRSchedule like the loop; the lrs of every unit (epoch or batch) it runs."""
    opt, out = sched.optimizer, []
    for epoch in range(start, start + epochs):
        for _ in range(steps):
            if sched.interval == "step":
                out.append([g["lr"] for g in opt.param_groups])
            opt.step()
            sched.step_batch()
        if sched.interval == "epoch":
            out.append([g["lr"] for g in opt.param_groups])
        sched.step_epoch({"val/loss": metric(epoch), "val/acc": 0.5})
    return out


def ours(cfg: dict, epochs: int, steps: int = 1, metric=lambda t: 1.0, lrs=LRS):
    sched = build_scheduler({**COMMON, **cfg}, optimizer(lrs), epochs=epochs, steps_per_epoch=steps)
    return units(sched, epochs, steps, metric)


def torch_lrs(make, n: int, lrs=LRS):
    """lr of every unit with torch's schedulers used directly: make(opt) -> scheduler."""
    opt = optimizer(lrs)
    sched, out = make(opt), []
    for _ in range(n):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def seq(*phases, **top):
    return {"name": "sequence", "phases": list(phases), **top}


# -- equal to torch --------------------------------------------------------------------------
@pytest.mark.parametrize(("interval", "steps", "first"), [("epoch", 1, 4), ("step", 3, 7)])
def test_linear_then_cosine_equals_sequential_lr(interval, steps, first):
    epochs = 9
    n = epochs * steps
    cfg = seq(
        {"name": "linear", "length": first, "start_factor": 0.1, "end_factor": 1.0},
        {"name": "cosine", "length": None, "eta_min": 0.001},
        interval=interval,
    )
    got = ours(cfg, epochs, steps)

    def reference(opt):
        return tls.SequentialLR(
            opt,
            [
                tls.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=first),
                tls.CosineAnnealingLR(opt, T_max=n - first, eta_min=0.001),
            ],
            milestones=[first],
        )

    assert len(got) == n
    assert got == torch_lrs(reference, n)  # float equality, both groups


def test_three_phases_each_restart_from_the_base_lrs_like_sequential_lr():
    cfg = seq(
        {"name": "exponential", "length": 3, "gamma": 0.5},
        {"name": "step", "length": 4, "step_size": 2, "gamma": 0.1},
        {"name": "none", "length": None},
    )

    def reference(opt):
        scheds = [
            tls.ExponentialLR(opt, gamma=0.5),
            tls.StepLR(opt, step_size=2, gamma=0.1),
            tls.LambdaLR(opt, lambda _: 1.0),
        ]
        return tls.SequentialLR(opt, scheds, milestones=[3, 7])

    got = ours(cfg, 10)
    assert got == torch_lrs(reference, 10)
    assert got[3] == got[7] == list(LRS)


def test_target_phases_equal_the_same_builtin_phases():
    builtin = seq(
        {"name": "linear", "length": 3, "start_factor": 0.2, "end_factor": 1.0},
        {"name": "cosine", "length": None, "eta_min": 0.0},
    )
    target = seq(
        {"_target_": T + "LinearLR", "length": 3, "start_factor": 0.2, "total_iters": 3},
        {"_target_": T + "CosineAnnealingLR", "_partial_": True, "length": None, "T_max": 7},
    )
    assert ours(target, 10) == ours(builtin, 10)


@pytest.mark.parametrize("warmup", [0, 3])
def test_target_exponential_equals_builtin_exponential(warmup):
    target = {"_target_": T + "ExponentialLR", "_partial_": True, "gamma": 0.8}
    builtin = {"name": "exponential", "gamma": 0.8}
    got = ours({**target, "warmup_epochs": warmup}, 10)
    assert got == ours({**builtin, "warmup_epochs": warmup}, 10)
    assert got[warmup] == list(LRS)


def test_target_without_partial_and_with_step_interval_steps_per_batch():
    cfg = {"_target_": T + "StepLR", "step_size": 4, "gamma": 0.5, "interval": "step"}
    got = ours(cfg, epochs=3, steps=5)
    assert got == torch_lrs(lambda opt: tls.StepLR(opt, step_size=4, gamma=0.5), 15)


def test_warmup_in_front_of_a_sequence_then_the_sequence():
    cfg = seq(
        {"name": "none", "length": 2},
        {"name": "cosine", "length": None},
        warmup_epochs=3,
    )
    got = ours(cfg, 12)
    assert [row[0] for row in got[:4]] == pytest.approx([0.01, 0.04, 0.07, 0.1])
    ref = torch_lrs(
        lambda opt: tls.SequentialLR(
            opt, [tls.LambdaLR(opt, lambda _: 1.0), tls.CosineAnnealingLR(opt, T_max=7)], [2]
        ),
        9,
    )
    flat = [lr for row in got[3:] for lr in row]
    assert flat == pytest.approx([lr for row in ref for lr in row], abs=1e-15)


def test_a_last_onecycle_phase_runs_over_its_phase_from_the_base_lrs():
    cfg = seq(
        {"name": "linear", "length": 2, "start_factor": 0.1, "end_factor": 1.0},
        {"name": "onecycle", "length": None},
        interval="step",
    )
    got = ours(cfg, epochs=4, steps=3)
    assert got[:2] == [[lr * 0.1 for lr in LRS], [lr * 0.55 for lr in LRS]]
    ref = torch_lrs(lambda opt: tls.OneCycleLR(opt, max_lr=list(LRS), total_steps=10), 10)
    assert got[2:] == ref


# -- plateau in a sequence ---------------------------------------------------------------------
PLATEAU_SEQ = seq(
    {"name": "linear", "length": 2, "start_factor": 0.5, "end_factor": 1.0},
    {"name": "plateau", "length": None, "patience": 2, "factor": 0.5},
)


def test_sequence_ending_in_plateau_cuts_the_lr_on_a_flat_metric():
    sched = build_scheduler({**COMMON, **PLATEAU_SEQ}, optimizer(), epochs=10, steps_per_epoch=1)
    assert sched.monitor == "val/loss"
    got = [row[0] for row in units(sched, 10, 1, metric=lambda t: 1.0)]
    # epochs 2.. are the plateau's: a baseline at 2, bad 3 4 5 > patience 2 -> cut after 5
    assert got[:6] == pytest.approx([0.05, 0.075, 0.1, 0.1, 0.1, 0.1])
    assert got[6] == pytest.approx(0.05)
    assert got[9] == pytest.approx(0.025)


def test_sequence_ending_in_plateau_keeps_the_lr_while_the_metric_improves():
    got = ours(PLATEAU_SEQ, 10, metric=lambda t: 1.0 / (t + 1))
    assert got[2:] == [list(LRS)] * 8


def test_plateau_target_phase_gets_its_monitor():
    cfg = seq(
        {"name": "none", "length": 2},
        {"_target_": T + "ReduceLROnPlateau", "monitor": "val/acc", "mode": "max", "patience": 0},
    )
    sched = build_scheduler({**COMMON, **cfg}, optimizer(), epochs=6, steps_per_epoch=1)
    assert sched.monitor == "val/acc"
    got = units(sched, 6, 1)  # val/acc stays 0.5: a baseline at epoch 2, then a cut every epoch
    assert [row[0] for row in got] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.001])


# -- resume ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("stop", [4, 9])  # in the cosine phase, in the plateau phase
def test_state_round_trips_through_torch_save_mid_sequence(stop):
    cfg = {
        **COMMON,
        **seq(
            {"name": "linear", "length": 2, "start_factor": 0.1, "end_factor": 1.0},
            {"name": "cosine", "length": 4, "eta_min": 0.001},
            {"name": "plateau", "length": None, "patience": 1, "factor": 0.5},
        ),
        "warmup_epochs": 1,
    }
    epochs = 16

    def make():
        opt = optimizer()
        return opt, build_scheduler(cfg, opt, epochs=epochs, steps_per_epoch=1)

    opt, sched = make()
    units(sched, stop, 1)
    buf = io.BytesIO()
    torch.save({"scheduler": sched.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2, sched2 = make()
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert sched2.main.index == sched.main.index == (1 if stop == 4 else 2)
    rest = units(sched, epochs - stop, 1, start=stop)
    assert units(sched2, epochs - stop, 1, start=stop) == rest
    assert min(row[0] for row in rest) < 0.1 * 0.5  # the plateau did cut


# -- validation --------------------------------------------------------------------------------
def test_every_yaml_equals_its_specs_defaults():
    for name, spec in SCHEDULES.items():
        values = yaml.safe_load((CONF / "scheduler" / f"{name}.yaml").read_text())
        assert values.pop("name") == name
        own = {k: v for k, v in values.items() if k not in COMMON}
        assert own == dict(spec.params), name
    names = {p.stem for p in (CONF / "scheduler").glob("*.yaml")}
    assert names == {*SCHEDULES, "sequence", "target"}


def test_the_sequence_yaml_is_valid_and_fits_the_default_run():
    values = yaml.safe_load((CONF / "scheduler" / "sequence.yaml").read_text())
    for epochs in (6, 20, 30):
        validate_scheduler({**COMMON, **values}, epochs=epochs, steps_per_epoch=4, base_lrs=[0.1])


def test_labels():
    assert schedule_label({"name": "cosine"}) == "cosine"
    assert schedule_label(seq({"name": "none"})) == "sequence"
    assert schedule_label({"_target_": T + "CosineAnnealingLR"}) == "CosineAnnealingLR"


COS = T + "CosineAnnealingLR"
P = "scheduler.phases"
NONE, HOLD = {"name": "none"}, {"name": "none", "length": 2}
BAD = [
    ({"_target_": T + "Nope"}, "scheduler._target_"),
    ({"_target_": "no_such_pkg.Sched"}, "scheduler._target_"),
    ({"_target_": COS, "T_maxx": 5}, "scheduler.T_maxx"),
    ({"_target_": COS}, "scheduler.T_max"),  # required, missing
    ({"_target_": COS, "T_max": 5, "_partial_": False}, "scheduler._partial_"),
    ({"name": "cosine", "T_max": None, "eta_min": 0.0, "_target_": COS}, "scheduler._target_"),
    ({"_target_": T + "StepLR", "step_size": 0}, "scheduler"),  # torch divides by it
    ({"_target_": T + "ExponentialLR", "gamma": -0.5}, "scheduler"),  # negative lr at step 1
    ({"_target_": T + "ReduceLROnPlateau", "factor": 2.0}, "scheduler.factor"),  # torch raises
    ({"_target_": T + "ReduceLROnPlateau", "monitor": "val/los"}, "scheduler.monitor"),
    ({"_target_": T + "ReduceLROnPlateau", "interval": "step"}, "scheduler.interval"),
    ({"_target_": T + "OneCycleLR", "max_lr": 0.1, "total_steps": 5}, "scheduler"),  # overrun
    (seq(), P),
    ({"name": "sequence"}, P),
    (seq({"name": "cosine"}, NONE), f"{P}.0.length"),  # only the last may leave it out
    (seq({"name": "cosine", "length": 0}, NONE), f"{P}.0.length"),
    (seq({"name": "cosine", "length": 6}, {**NONE, "length": 5}), f"{P}.1.length"),  # 11 > 10
    (seq({"name": "cosine", "length": 10}, NONE), f"{P}.1.length"),  # no room for the last
    (seq(HOLD, seq(NONE)), f"{P}.1.name"),  # nested
    (seq(HOLD, {"name": "cosine", "gamma": 0.1}), f"{P}.1.gamma"),
    (seq(HOLD, {"name": "cosine", "eta_min": 0.5}), f"{P}.1.eta_min"),
    (seq({"name": "nope", "length": 2}, NONE), f"{P}.0.name"),
    (seq({"_target_": COS, "T_maxx": 3, "length": 3}, NONE), f"{P}.0.T_maxx"),
    (seq({"_target_": COS, "length": 3}, NONE), f"{P}.0.T_max"),
    (seq(HOLD, {"name": "plateau"}, interval="step"), "scheduler.interval"),
    (seq(HOLD, {"name": "onecycle", "length": 3}), f"{P}.1"),  # steps past its total
    (seq({"name": "onecycle", "length": 3}, NONE), f"{P}.0.name"),  # only last
    (seq({"_target_": T + "OneCycleLR", "max_lr": 0.1, "total_steps": 3, "length": 3}, NONE),
     f"{P}.0._target_"),
    (seq({"name": "linear", "length": 5}, NONE, warmup_epochs=5), f"{P}.1.length"),
    (seq(NONE, gamma=0.1), "scheduler.gamma"),
    (seq("cosine"), f"{P}.0"),
]  # fmt: skip


@pytest.mark.parametrize(("cfg", "key"), BAD)
def test_config_errors_name_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        validate_scheduler(
            {**COMMON, **cfg}, epochs=10, steps_per_epoch=4, base_lrs=[0.1, 0.05], metrics=METRICS
        )
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}=")


def test_a_dry_run_failure_names_the_step():
    cfg = {**COMMON, "_target_": T + "ExponentialLR", "gamma": -0.5}
    with pytest.raises(ConfigError, match="fails at epoch 1: gives lr -0.05"):
        validate_scheduler(cfg, epochs=10, steps_per_epoch=4, base_lrs=[0.1])


# -- through the CLI -----------------------------------------------------------------------------
def _lr0(run: Path) -> float:
    return yaml.safe_load((run / "config.yaml").read_text())["optimizer"]["lr"]


def test_a_training_run_with_a_sequence_logs_sequential_lrs(tmp_path):
    """In-process (the CLI path of scheduler overrides is tested by the `_target_` runs)."""
    from runner.run.train import train

    run = tmp_path / "run"
    phases = "[{name:linear,length:2,start_factor:0.1,end_factor:1.0},{name:cosine,length:null}]"
    cfg = make_cfg("logger=none", "epochs=6", "scheduler=sequence", f"scheduler.phases={phases}")
    assert train(cfg, run).status == "completed"
    lr = _lr0(run)
    expected = torch_lrs(
        lambda opt: tls.SequentialLR(
            opt,
            [
                tls.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=2),
                tls.CosineAnnealingLR(opt, T_max=4),
            ],
            milestones=[2],
        ),
        6,
        lrs=(lr,),
    )
    assert [r["lr/group0"] for r in read_metrics(run)] == [row[0] for row in expected]


@pytest.mark.slow
def test_cli_target_scheduler(tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        f"hydra.run.dir={run}",
        "logger=none",
        "epochs=4",
        "scheduler=target",
        f"scheduler._target_={T}ExponentialLR",
        "+scheduler.gamma=0.5",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lr = _lr0(run)
    assert [r["lr/group0"] for r in read_metrics(run)] == [lr * 0.5**t for t in range(4)]


@pytest.mark.slow
def test_cli_target_config_error(tmp_path):
    proc = run_cli(
        f"hydra.run.dir={tmp_path / 'run'}",
        "logger=none",
        "scheduler=target",
        f"scheduler._target_={COS}",
        "+scheduler.T_maxx=5",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "scheduler.T_maxx" in proc.stderr
    assert "Traceback" not in proc.stderr
