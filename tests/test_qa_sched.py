"""QA of the schedules and the LR range test as a user runs them (session 19): the lr the
range test tries is optimizer.lr whatever the param groups' multipliers, and a test whose
loss is lowest at an end of its range says which end to move."""

from __future__ import annotations

import logging

import pytest

import runner.train.range_test as rt
from runner.config.schema import run_spec
from runner.run.check import validate
from schedulers import ConfigError
from tests.helpers import make_cfg

SMALL = (
    "logger=none",
    "trainer.progress=line",
    "model.hidden=[16]",
    "data=fake",
    "data.train_size=64",
    "data.val_size=32",
    "data.batch_size=16",
)


def test_the_range_test_tries_optimizer_lr_with_each_groups_multiplier(tmp_path, monkeypatch):
    # {hidden: 0.1, head: 1.0}: training with optimizer.lr=<found> gives the head <found>
    # and the hidden layer a tenth of it; the test must try the same (it gave the hidden
    # layer the tried lr and the head 10x it, so the found lr came out 10x too small)
    groups = "optimizer.param_groups={hidden: 0.1, head: 1.0}"
    cfg = make_cfg(*SMALL, groups, "lr_find.num_iters=10")
    tried: list[dict[str, float]] = []
    real_step = rt.train_step

    def step(model, optimizer, *a, **kw):
        tried.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        return real_step(model, optimizer, *a, **kw)

    monkeypatch.setattr(rt, "train_step", step)
    _, result = rt.find_lr(run_spec(cfg), tmp_path)
    assert len(tried) >= len(result.lrs) >= 3
    for lr, groups in zip(result.lrs, tried, strict=False):
        assert groups["head"] == pytest.approx(lr)
        assert groups["hidden"] == pytest.approx(0.1 * lr)


def _test(lrs: list[float], losses: list[float], stopped: bool) -> rt.RangeTest:
    return rt.RangeTest(lrs=lrs, losses=losses, smooth=losses, stopped_early=stopped)


def test_a_loss_still_falling_at_end_lr_says_to_raise_it():
    # min_loss_div_10 is then end_lr / 10: the user's range, not the model, decided it
    note = rt.edge_note(_test([1e-4, 1e-3, 1e-2], [2.3, 2.0, 1.5], stopped=False))
    assert note is not None and "lr_find.end_lr" in note and "0.01" in note


def test_a_loss_lowest_at_start_lr_says_to_lower_it():
    note = rt.edge_note(_test([1.0, 2.0, 4.0, 8.0], [2.3, 2.4, 9.0, 30.0], stopped=True))
    assert note is not None and "lr_find.start_lr" in note


def test_a_loss_that_never_falls_nor_diverges_says_the_test_saw_no_learning():
    # not "lower start_lr": a range far too low is flat noise, lowest anywhere
    note = rt.edge_note(_test([1e-6, 1e-5, 1e-4], [2.30, 2.31, 2.305], stopped=False))
    assert note is not None and "no learning" in note and "lower lr_find.start_lr" not in note


def test_a_loss_that_turns_up_inside_the_range_has_no_note():
    assert rt.edge_note(_test([1e-3, 1e-2, 1e-1, 1.0], [2.3, 1.0, 1.2, 9.0], stopped=True)) is None
    # stopped on divergence right after its lowest point: it did turn up
    assert rt.edge_note(_test([1e-3, 1e-2, 1e-1], [2.3, 1.5, 1.0], stopped=True)) is None


def test_find_lr_logs_the_note_so_train_log_keeps_it(tmp_path, caplog):
    cfg = make_cfg(*SMALL, "lr_find.num_iters=10", "lr_find.start_lr=1e-3", "lr_find.end_lr=1e-2")
    with caplog.at_level(logging.WARNING, logger="schedlab"):
        rt.find_lr(run_spec(cfg), tmp_path)
    assert any("raise lr_find.end_lr" in r.getMessage() for r in caplog.records)


def test_the_range_test_steps_as_training_does_clipped_and_label_smoothed(tmp_path, monkeypatch):
    # it stepped unclipped and without smoothing: trainer.grad_clip_norm=0.1 gave the same
    # curve and lr as no clipping, while clipped training survives a far higher lr
    cfg = make_cfg(
        *SMALL, "trainer.grad_clip_norm=0.1", "trainer.label_smoothing=0.2", "lr_find.num_iters=10"
    )
    seen: list[dict[str, object]] = []
    real_step = rt.train_step

    def step(*a, **kw):
        seen.append(kw)
        return real_step(*a, **kw)

    monkeypatch.setattr(rt, "train_step", step)
    rt.find_lr(run_spec(cfg), tmp_path)
    assert seen and all(kw.get("clip_norm") == 0.1 for kw in seen)
    assert all(kw.get("label_smoothing") == 0.2 and kw.get("params") for kw in seen)


def test_the_plot_title_carries_the_note():
    # lr_find.png said only "a decade below where the loss turns up" of a curve that never did
    result = _test([1e-4, 1e-3, 1e-2], [2.3, 2.0, 1.5], stopped=False)
    assert "raise lr_find.end_lr" in " ".join(rt.plot_title(result, "min_loss_div_10").split())
    turned = _test([1e-3, 1e-2, 1e-1, 1.0], [2.3, 1.0, 1.2, 9.0], stopped=True)
    assert "note" not in rt.plot_title(turned, "min_loss_div_10")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("scheduler=onecycle",), "scheduler.cycle_momentum"),
        (("scheduler=cyclic", "scheduler.cycle_momentum=true"), "scheduler.cycle_momentum"),
        (
            ("scheduler=sequence", "scheduler.phases=[{name: none, length: 1}, {name: onecycle}]"),
            "scheduler.phases.1.cycle_momentum",
        ),
    ],
)
def test_cycling_momentum_over_sgd_without_momentum_is_a_config_error(overrides, key):
    # it trained at momentum 0.85..0.95, which torch writes into the group, after the user
    # turned momentum off (only the momentum/ columns showed it)
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*SMALL, "epochs=4", "optimizer.momentum=0", *overrides))
    assert err.value.key == key and "false" in str(err.value)


def test_momentum_off_with_a_schedule_that_leaves_momentum_alone_validates():
    validate(make_cfg(*SMALL, "epochs=4", "optimizer.momentum=0", "scheduler=cyclic"))
    validate(
        make_cfg(
            *SMALL,
            "epochs=4",
            "optimizer.momentum=0",
            "scheduler=onecycle",
            "scheduler.cycle_momentum=false",
        )
    )


def test_val_every_leaving_under_3_points_names_val_every_not_start_lr():
    # the test ran, recorded 2 val losses and said "the loss diverged within 2 points:
    # lower lr_find.start_lr": untrue, and the wrong key
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*SMALL, "optimizer.lr=find", "lr_find.val_every=40"))
    assert err.value.key == "lr_find.val_every" and "lr_find.num_iters=100" in str(err.value)
    validate(make_cfg(*SMALL, "optimizer.lr=find", "lr_find.val_every=33"))  # 3 points


def test_the_range_test_accumulates_as_training_does(tmp_path, monkeypatch):
    # trainer.accumulate=4 trains on steps of 4 batches; the test stepped on one batch (the
    # lr of a 4x smaller step's noise: 0.033 found where the accumulated test finds 0.14)
    cfg = make_cfg(*SMALL, "trainer.accumulate=4", "lr_find.num_iters=10")
    micros: list[list[float]] = []
    real_step = rt.train_step

    def step(model, optimizer, micro, *a, **kw):
        micros.append([weight for _, _, weight in micro])
        return real_step(model, optimizer, micro, *a, **kw)

    monkeypatch.setattr(rt, "train_step", step)
    _, result = rt.find_lr(run_spec(cfg), tmp_path)
    assert len(micros) == len(result.lrs)  # one point per optimizer step
    assert all(w == pytest.approx([0.25] * 4) for w in micros)


@pytest.mark.parametrize(
    ("overrides", "nulls"),
    [
        (["scheduler=onecycle", "scheduler.max_lr=0.5"], ["scheduler.max_lr=null"]),
        (
            ["scheduler=cyclic", "scheduler.max_lr=0.5", "scheduler.base_lr=0.01"],
            ["scheduler.max_lr=null", "scheduler.base_lr=null"],
        ),
        (["scheduler=onecycle"], []),
        (["scheduler=step", "scheduler.step_size=3"], []),
    ],
)
def test_the_printed_command_trains_at_the_found_lr_under_a_schedule_with_its_own_bounds(
    overrides, nulls
):
    # `scheduler=onecycle scheduler.max_lr=0.5 optimizer.lr=<found>` peaked at 0.5: the
    # found lr did nothing; optimizer.lr=find resets the bounds, the printed command now too
    from runner.lr_find import next_step

    cfg = make_cfg(*SMALL, *overrides)
    text = next_step(["logger=none", *overrides], 0.03, rt.bounds_from_lr(cfg.scheduler))
    command = text.splitlines()[1]
    assert command.endswith("optimizer.lr=0.03")
    assert all(n in command for n in nulls) and "max_lr=0.5" not in command
    assert ("null" in command) == bool(nulls)
