"""Hostile values: non-finite or overflowing numbers, seeds numpy cannot take, lr_lambda
expressions that fail only at some epoch, deeply nested overrides. Each is a config error
naming the key, found before anything is built (in-process), and through the CLI: exit 2,
one line on stderr naming the key, no traceback, no run dir."""

from __future__ import annotations

import json

import pytest

from runner.run.check import validate
from schedulers import ConfigError
from tests.helpers import cli_in_process, make_cfg, quiet_env, read_metrics, run_cli

PLATEAU = "scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau"

HOSTILE = [
    # non-finite or overflowing numbers (1e400 parses as inf)
    (["optimizer.lr=inf"], "optimizer.lr"),
    (["optimizer.lr=nan"], "optimizer.lr"),
    (["optimizer.lr=1e400"], "optimizer.lr"),
    (["optimizer.weight_decay=inf"], "optimizer.weight_decay"),
    (["optimizer.weight_decay=nan"], "optimizer.weight_decay"),
    (["trainer.diverge_loss=inf"], "trainer.diverge_loss"),
    (["trainer.diverge_loss=nan"], "trainer.diverge_loss"),
    (["optimizer=adam", "optimizer.eps=inf"], "optimizer.eps"),
    (["optimizer=adam", "optimizer.eps=nan"], "optimizer.eps"),
    (["optimizer=adam", "optimizer.betas=[nan,0.999]"], "optimizer.betas"),
    (["optimizer=adam", "optimizer.betas=[0.9,1e400]"], "optimizer.betas"),
    (["lr_find.start_lr=nan"], "lr_find.start_lr"),
    (["optimizer.lr=find", "lr_find.end_lr=1e400"], "lr_find.end_lr"),
    (["scheduler=step", "scheduler.gamma=nan"], "scheduler.gamma"),
    (["scheduler=plateau", "scheduler.factor=nan"], "scheduler.factor"),
    (["scheduler=onecycle", "scheduler.max_lr=inf"], "scheduler.max_lr"),
    (["scheduler.warmup_start_factor=nan"], "scheduler.warmup_start_factor"),
    # torch's ReduceLROnPlateau takes factor=nan and then never lowers the lr
    (["scheduler=target", PLATEAU, "+scheduler.factor=nan"], "scheduler.factor"),
    (["scheduler=target", PLATEAU, "+scheduler.threshold=inf"], "scheduler.threshold"),
    # integers numpy / torch cannot take
    (["seed=4294967296"], "seed"),
    (["seed=99999999999999999999"], "seed"),
    (["data.split_seed=4294967296"], "data.split_seed"),
    (["epochs=99999999999999999999"], "epochs"),
    (["scheduler=step", "scheduler.step_size=99999999999999999999"], "scheduler.step_size"),
    (["logger.wandb.tags=[[1]]"], "logger.wandb.tags"),
    # lr_lambda expressions that fail only at some epoch
    (["scheduler=lambda", "scheduler.lr_lambda='log(epoch)'"], "scheduler.lr_lambda"),
    (["scheduler=lambda", "scheduler.lr_lambda='1/(epoch-5)'"], "scheduler.lr_lambda"),
    (["scheduler=lambda", "scheduler.lr_lambda='1/((epoch-5)**2)'"], "scheduler.lr_lambda"),
    (["scheduler=lambda", "scheduler.lr_lambda='(-1) ** 0.5'"], "scheduler.lr_lambda"),
    (["scheduler=lambda", "scheduler.lr_lambda='exp(epoch*100)'"], "scheduler.lr_lambda"),
    (["scheduler=lambda", "scheduler.lr_lambda='max(1, epoch) ** 400'"], "scheduler.lr_lambda"),
    # deeply nested overrides: an unknown key at its first level
    (["+model.a.b.c.d.e.f=1"], "model.a"),
    (["+optimizer.a.b.c.d.e.f.g.h=1"], "optimizer.a"),
    (["+trainer.x=" + "[" * 50 + "1" + "]" * 50], "trainer.x"),
]


@pytest.mark.parametrize(("overrides", "key"), HOSTILE, ids=[" ".join(o) for o, _ in HOSTILE])
def test_hostile_value_is_a_config_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    assert err.value.key == key
    assert "\n" not in str(err.value)


def test_the_largest_seed_numpy_takes_is_accepted_and_the_range_is_said():
    validate(make_cfg("seed=4294967295"))
    with pytest.raises(ConfigError, match=r"\[0, 4294967295\]"):
        validate(make_cfg("seed=4294967296"))


@pytest.mark.parametrize(
    ("expr", "where"),
    [
        ("log(epoch)", "epoch 0 (ValueError: math domain error)"),
        ("1/((epoch-5)**2)", "epoch 5 (ZeroDivisionError"),
        ("(-1) ** 0.5", "complex number"),
        ("exp(epoch*100)", "epoch 8 (OverflowError"),
        # the value LambdaLR computes at the step after the last epoch counts too
        ("log(20 - epoch)", "epoch 20 (ValueError"),
    ],
)
def test_lr_lambda_error_names_the_expression_and_the_epoch(expr, where):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("scheduler=lambda", f"scheduler.lr_lambda='{expr}'", "epochs=20"))
    assert err.value.key == "scheduler.lr_lambda"
    assert expr in str(err.value) and where in str(err.value)


def test_lr_lambda_is_checked_at_every_step_with_interval_step():
    """Digits: 23 batches per epoch, so 2 epochs are 46 steps: step 30 exists only per batch."""
    expr = "scheduler.lr_lambda='1/((epoch-30)**2)'"
    validate(make_cfg("scheduler=lambda", expr, "epochs=2"))
    with pytest.raises(ConfigError, match="at step 30"):
        validate(make_cfg("scheduler=lambda", expr, "epochs=2", "scheduler.interval=step"))


def test_lr_lambda_is_checked_over_the_run_after_warmup():
    """10 epochs with 3 of warmup: LambdaLR sees epochs 0..7."""
    expr = "scheduler.lr_lambda='log(8 - epoch)'"
    validate(make_cfg("scheduler=lambda", expr, "epochs=10", "scheduler.warmup_epochs=3"))
    with pytest.raises(ConfigError, match="at epoch 8"):
        validate(make_cfg("scheduler=lambda", expr, "epochs=10", "scheduler.warmup_epochs=2"))


CLI = [
    (["optimizer.lr=1e400"], "optimizer.lr"),
    (["seed=4294967296"], "seed"),
    (["optimizer=adam", "optimizer.betas=[0.9,nan]"], "optimizer.betas"),
    (["scheduler=lambda", "scheduler.lr_lambda='log(epoch)'"], "scheduler.lr_lambda"),
    (["+model.a.b.c.d.e.f=1"], "model.a"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "key"), CLI, ids=[" ".join(o) for o, _ in CLI])
def test_hostile_value_on_the_command_line_exits_2_with_one_line(tmp_path, overrides, key):
    # the first as a `python -m runner` process, the others by the same cli() in this process
    result = (
        run_cli(*overrides, cwd=tmp_path, timeout=120)
        if overrides is CLI[0][0]
        else cli_in_process(*overrides, cwd=tmp_path)
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"config error: {key}="), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "outputs").exists()


def test_a_1000_deep_list_is_a_config_error_without_traceback(tmp_path):
    result = run_cli("+model.x=" + "[" * 1000 + "1" + "]" * 1000, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_wandb_online_without_a_server_costs_its_timeout_and_one_warning(tmp_path):
    """A key and no reachable server (a closed local port): wandb.init gives up after
    logger.wandb.init_timeout_s instead of its own 90 s, the run warns once and completes
    with metrics.jsonl."""
    import subprocess
    import sys
    import time

    env = quiet_env()
    env |= {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    run_dir = tmp_path / "run"
    args = ["logger.wandb.mode=online", "logger.wandb.init_timeout_s=3", "epochs=1",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert elapsed < 60, elapsed  # imports + 1 epoch + 3 s; W&B's own default waits 90 s
    log = (run_dir / "train.log").read_text()
    warnings = [line for line in log.splitlines() if "W&B could not start" in line]
    assert len(warnings) == 1 and "continuing with metrics.jsonl" in warnings[0], log
    assert "Traceback" not in proc.stderr
    assert len(read_metrics(run_dir)) == 1
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
