"""schedulers.simulate: one simulator for every lr curve computed without training (the
preview, the trace, the lecture's curves, the start-up dry runs), checked against closed
forms; and no other place steps a throwaway optimizer."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch.optim import lr_scheduler as tls

import schedulers
from schedulers import SCHEDULES, ConfigError, Simulation, simulate, validate_scheduler
from schedulers.simulator import throwaway_schedule
from schedulers.trace import trace_schedule

COMMON = {
    "interval": "epoch",
    "warmup_epochs": 0,
    "warmup_steps": 0,
    "warmup_start_factor": 0.1,
}
ROOT = Path(__file__).resolve().parents[1]


def config(name: str, **keys) -> dict:
    """A built-in schedule with its defaults, as build_scheduler takes it."""
    return {**COMMON, "name": name, **SCHEDULES[name].params, **keys}


def test_a_per_epoch_schedule_gives_a_row_per_step_and_one_per_epoch():
    sim = simulate(
        config("step", step_size=3, gamma=0.5), epochs=10, steps_per_epoch=4, base_lrs=[0.1]
    )
    assert isinstance(sim, Simulation) and (sim.interval, sim.steps_per_epoch) == ("epoch", 4)
    assert len(sim.per_step) == 40  # every optimizer step, each the lr it trains with
    assert sim.per_epoch == [[0.1 * 0.5 ** (e // 3)] for e in range(10)]
    assert sim.per_step == [row for row in sim.per_epoch for _ in range(4)]  # flat in an epoch


def test_cosine_follows_its_closed_form():
    sim = simulate(config("cosine", eta_min=0.01), epochs=20, steps_per_epoch=3, base_lrs=[0.1])
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * e / 20)) / 2 for e in range(20)]
    assert [r[0] for r in sim.per_epoch] == pytest.approx(expected, abs=1e-12)


def test_a_per_step_warmup_then_cosine_moves_at_every_batch():
    epochs, spe, warm = 5, 4, 4  # warmup_epochs=1 with interval=step: 4 batches
    cfg = config("cosine", interval="step", warmup_epochs=1, warmup_start_factor=0.1)
    sim = simulate(cfg, epochs=epochs, steps_per_epoch=spe, base_lrs=[0.2])
    got = [r[0] for r in sim.per_step]
    assert sim.interval == "step" and len(got) == epochs * spe
    assert got[:warm] == pytest.approx([0.2 * (0.1 + 0.9 * k / warm) for k in range(warm)])
    rest = epochs * spe - warm  # the cosine's T_max: the run once warmup is done
    cosine = [0.1 * (1 + math.cos(math.pi * (k - warm) / rest)) for k in range(warm, len(got))]
    assert got[warm:] == pytest.approx(cosine, abs=1e-12)
    assert sim.per_epoch == sim.per_step[::spe]


def test_plateau_follows_the_given_metric_sequence_or_callable():
    cfg = config("plateau", patience=1, factor=0.5)
    metric = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.5]
    # 0.9 stalls from epoch 2: two bad epochs (> patience 1) cut the lr after epochs 3 and 5
    expected = [0.1] * 4 + [0.05] * 2 + [0.025] * 2
    for given in (metric, metric.__getitem__):
        sim = simulate(cfg, epochs=8, steps_per_epoch=2, base_lrs=[0.1], metric=given)
        assert [r[0] for r in sim.per_epoch] == pytest.approx(expected)


def test_plateau_without_a_metric_for_every_epoch_is_an_error():
    cfg = config("plateau")
    with pytest.raises(ValueError, match="monitors 'val/loss'"):
        simulate(cfg, epochs=4, steps_per_epoch=1, base_lrs=[0.1])
    with pytest.raises(ValueError, match="3 values, one per epoch is 4"):
        simulate(cfg, epochs=4, steps_per_epoch=1, base_lrs=[0.1], metric=[1.0, 1.0, 1.0])


def test_every_param_group_keeps_its_own_lr():
    sim = simulate(
        config("exponential", gamma=0.5), epochs=4, steps_per_epoch=1, base_lrs=[0.1, 0.01]
    )
    for e, row in enumerate(sim.per_epoch):
        assert row == pytest.approx([0.1 * 0.5**e, 0.01 * 0.5**e])
    lam = simulate(
        config("lambda", lr_lambda=["0.5 ** epoch", "1.0"]),
        epochs=3,
        steps_per_epoch=1,
        base_lrs=[0.2, 0.3],
    )
    assert [row[0] for row in lam.per_epoch] == pytest.approx([0.2, 0.1, 0.05])
    assert [row[1] for row in lam.per_epoch] == [0.3, 0.3, 0.3]


def test_a_target_and_a_sequence_are_simulated_as_torch_runs_them():
    target = {**COMMON, "_target_": "torch.optim.lr_scheduler.ExponentialLR", "gamma": 0.8}
    sim = simulate(target, epochs=5, steps_per_epoch=2, base_lrs=[0.1])
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ref, expected = tls.ExponentialLR(opt, gamma=0.8), []
    for _ in range(5):
        expected.append([opt.param_groups[0]["lr"]])
        opt.step()
        ref.step()
    assert sim.per_epoch == expected
    phases = [
        {"name": "linear", "length": 2, "start_factor": 0.5, "end_factor": 1.0},
        {"name": "plateau", "length": None, "patience": 0, "factor": 0.5},
    ]
    seq = simulate(
        {**COMMON, "name": "sequence", "phases": phases},
        epochs=5,
        steps_per_epoch=1,
        base_lrs=[0.1],
        metric=[1.0] * 5,
    )
    # linear 0.05 -> 0.1, then the plateau restarts at 0.1 and halves at every flat epoch
    # after its first (the best so far)
    assert [r[0] for r in seq.per_epoch] == pytest.approx([0.05, 0.075, 0.1, 0.1, 0.05])


def test_a_bad_config_is_the_config_error_a_run_gets():
    with pytest.raises(ConfigError) as err:
        simulate(config("step", step_size=0), epochs=4, steps_per_epoch=1, base_lrs=[0.1])
    assert err.value.key == "scheduler.step_size"


def test_the_trace_of_a_plateau_phase_reads_its_counters_after_each_epoch():
    """The trace walks the schedule with simulate's loop: its lrs are the simulation's, and a
    plateau's counters are those after it saw the epoch's metric."""
    phases = [
        {"name": "step", "length": 2, "step_size": 1, "gamma": 0.5},
        {"name": "plateau", "length": None, "patience": 1, "factor": 0.5},
    ]
    cfg = {**COMMON, "name": "sequence", "phases": phases}
    metric = [1.0, 1.0, 0.8, 0.9, 0.9, 0.9, 0.9]
    schedule = throwaway_schedule(cfg, epochs=7, steps_per_epoch=1, base_lrs=[0.1])
    rows = trace_schedule(schedule, 7, metric.__getitem__)
    sim = simulate(cfg, epochs=7, steps_per_epoch=1, base_lrs=[0.1], metric=metric)
    assert [r["lr_in_use"] for r in rows] == [r[0] for r in sim.per_epoch]
    plateau = [r for r in rows if r["phase"] == "1"]
    assert [r["metric"] for r in plateau] == metric[2:]
    assert [r["best"] for r in plateau] == [0.8] * 5
    assert [r["num_bad_epochs"] for r in plateau] == [0, 1, 0, 1, 0]  # cut at 2 > patience
    assert "best" not in rows[0]  # the step phase has no plateau columns


def test_a_dry_run_steps_exactly_the_schedules_length_and_names_the_step():
    """validate_scheduler tries a `_target_` through its whole length on the simulator's loop
    (10 epochs: the lr after the last one included, as a run computes it), not one step
    further, and a failure names the step it happened at."""
    target = {**COMMON, "_target_": "tests.user_schedulers.BreaksAt"}
    with pytest.raises(ConfigError, match="BreaksAt fails at epoch 10: RuntimeError: broken at 10"):
        validate_scheduler({**target, "epoch": 10}, epochs=10, steps_per_epoch=3, base_lrs=[0.1])
    validate_scheduler({**target, "epoch": 11}, epochs=10, steps_per_epoch=3, base_lrs=[0.1])


# -- one loop: nothing else steps a throwaway optimizer -----------------------------------------
SCANNED = [
    *sorted((ROOT / "schedulers").glob("*.py")),
    ROOT / "runner/preview.py",
    ROOT / "runner/lecture.py",
]


def _stepping_calls(path: Path) -> list[str]:
    """Calls that build an SGD or step an optimizer (`<x>.step()` on opt/optimizer)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else ""
            if node.func.attr == "SGD" or (
                node.func.attr == "step" and name in ("opt", "optimizer")
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_the_simulators_loop_steps_a_throwaway_optimizer():
    found = [hit for path in SCANNED for hit in _stepping_calls(path)]
    assert [h.split(":")[0] for h in found] == ["schedulers/schedule.py"] * 2, found


def test_simulate_is_exported():
    assert schedulers.simulate is simulate and "simulate" in schedulers.__all__
