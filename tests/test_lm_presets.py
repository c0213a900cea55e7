"""The language-model presets and defaults (issue #35): +experiment=lm (AdamW beta2 0.95,
clipping 1.0, per-step schedules), lm_tiny, lm_schedules (five schedules at one peak lr by
three seeds), lm_schedules_gpu and lm_budgets; data=text's small default epoch; best.pt by
val/loss for a language model (trainer.monitor auto) and its last log line saying val/loss;
a user's text file through the CLI."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from runner.config.compose import compose_config, expand
from runner.data.sets import steps_per_epoch
from runner.run.check import validate
from runner.run.rundir import nothing_to_do
from runner.run.train import train
from runner.train.engine import lm_outcome, monitored, scores
from schedulers import ConfigError
from tests.helpers import GPT_ON_TOKENS, make_cfg, read_metrics, run_cli

SCHEDULES = ["cosine", "linear", "wsd", "constant", "schedulefree"]


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job a multirun of `overrides` launches, as Hydra's
    BasicSweeper combines the preset's hydra.sweeper.params (in their order) with them."""
    params = compose_config(overrides, with_hydra=True).hydra.sweeper.params or {}
    swept = [f"{key}={value}" for key, value in params.items()]
    return expand([*swept, *(o for o in overrides if not o.startswith("hydra."))])


# -- the presets ------------------------------------------------------------------------------
def test_lm_schedules_runs_five_schedules_by_three_seeds_seed_by_seed():
    jobs = sweep_jobs(["+experiment=lm_schedules"])
    assert len(jobs) == 15
    # seed first: a sweep cut short has compared every schedule on its first seeds
    assert [j[:2] for j in jobs[:5]] == [["seed=0", f"lm_schedule={s}"] for s in SCHEDULES]
    assert {j[0] for j in jobs} == {"seed=0", "seed=1", "seed=2"}
    hydra = compose_config(["+experiment=lm_schedules"], with_hydra=True).hydra
    assert hydra.launcher.n_jobs == 2  # joblib, a torch thread each (the preset says why)


def test_every_lm_schedule_has_one_peak_lr_and_the_lm_defaults():
    """Same peak lr, AdamW betas (0.9, 0.95), weight decay 0.1, clipping 1.0, per-step
    schedules with the same warmup (schedule-free: its own, of the same steps); each
    schedule's own shape: cosine to 10 %, linear to zero, WSD's 20 % 1-sqrt cooldown."""
    cfgs = {s: make_cfg("+experiment=lm_schedules", f"lm_schedule={s}") for s in SCHEDULES}
    spe = steps_per_epoch(32768 // 64, 16)
    for name, cfg in cfgs.items():
        assert (cfg.data.name, cfg.model.name, cfg.optimizer.lr) == ("text", "gpt", 0.003), name
        assert list(cfg.optimizer.betas) == [0.9, 0.95] and cfg.optimizer.weight_decay == 0.1
        assert cfg.trainer.grad_clip_norm == 1.0 and cfg.scheduler.interval == "step"
        assert cfg.trainer.num_threads == 1 and cfg.epochs == 10
    assert cfgs["cosine"].scheduler.eta_min == pytest.approx(0.0003)
    linear = cfgs["linear"].scheduler
    assert (linear.name, linear.start_factor, linear.end_factor) == ("linear", 1.0, 0.0)
    wsd = cfgs["wsd"].scheduler
    assert (wsd.decay_fraction, wsd.decay_shape, wsd.final_lr_scale) == (0.2, "sqrt", 0.0)
    assert cfgs["constant"].scheduler.name == "none"
    free = cfgs["schedulefree"]
    assert (free.optimizer.name, free.scheduler.name) == ("schedulefree_adamw", "none")
    assert free.scheduler.warmup_steps == 0 and free.optimizer.warmup_steps == spe == 32
    scheduled = [c.scheduler for n, c in cfgs.items() if n != "schedulefree"]
    assert all((s.warmup_steps, s.warmup_epochs) == (spe, 0) for s in scheduled)  # in steps


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_lm_schedule_passes_start_up_validation(schedule):
    """Each job of the sweep as `python -m runner` checks it before training (a key one
    schedule's file leaves in the scheduler node is an unknown key for the next one's)."""
    validate(make_cfg("+experiment=lm_schedules", f"lm_schedule={schedule}"))


def test_tied_settings_follow_an_override():
    """cosine's floor is 10 % of whatever peak lr; schedule-free's warmup is one epoch's
    steps at whatever batch size."""
    cfg = make_cfg("+experiment=lm_tiny", "optimizer.lr=0.01")
    assert cfg.scheduler.eta_min == pytest.approx(0.001)
    free = make_cfg("+experiment=lm_tiny", "lm_schedule=schedulefree", "data.batch_size=8")
    assert free.optimizer.warmup_steps == 64


def test_the_gpu_preset_is_bf16_and_compiled_one_job_at_a_time():
    jobs = sweep_jobs(["+experiment=lm_schedules_gpu"])
    assert len(jobs) == 15 and {j[1] for j in jobs} == {f"lm_schedule={s}" for s in SCHEDULES}
    hydra = compose_config(["+experiment=lm_schedules_gpu"], with_hydra=True).hydra
    assert "BasicLauncher" in hydra.launcher._target_
    cfg = make_cfg("+experiment=lm_schedules_gpu", "lm_schedule=schedulefree")
    assert cfg.trainer.amp and cfg.trainer.compile and cfg.trainer.device == "cuda"
    assert cfg.optimizer.warmup_steps == 50  # 819200 // 256 windows in batches of 64
    validate(make_cfg("+experiment=lm_schedules_gpu", "trainer.device=cpu"))


def test_lm_budgets_is_the_budget_grid_on_the_lm_task():
    """Needs hydra/sweeper=budgets (hydra_plugins/schedlab_budgets): skipped without it."""
    pytest.importorskip("hydra_plugins.schedlab_budgets")
    hydra = compose_config(["+experiment=lm_budgets"], with_hydra=True).hydra
    assert list(hydra.sweeper.budgets) == [3, 6, 12]
    assert dict(hydra.sweeper.params) == {"seed": "0,1,2"}  # lm_schedule: the strategies'
    assert list(hydra.sweeper.trunks.wsd) == ["lm_schedule=wsd"] and hydra.launcher.n_jobs == 2
    cfg = make_cfg("+experiment=lm_budgets", "lm_schedule=wsd", "epochs=12")
    assert cfg.model.n_embd == 64 and cfg.data.tokens_per_epoch == 32768
    validate(cfg)


def test_a_plain_text_run_is_a_short_one_by_default():
    """`python -m runner data=text model=gpt`: 20 epochs of 4 steps, validation on 8k
    tokens (not every window of the 2 M-token source each epoch: over ten minutes on a
    laptop)."""
    cfg = make_cfg("data=text", "model=gpt")
    windows = cfg.data.tokens_per_epoch // cfg.data.block_size
    assert cfg.epochs * steps_per_epoch(windows, cfg.data.batch_size) == 80
    assert cfg.data.val_tokens == 8192


# -- best.pt and the last line of a language model's run ------------------------------------
def test_monitor_auto_is_val_loss_for_a_language_model_else_val_acc():
    assert monitored("auto", language_model=True) == "val/loss"
    assert monitored("auto", language_model=False) == "val/acc"
    assert monitored("train/acc", language_model=True) == "train/acc"  # a choice is kept
    assert make_cfg().trainer.monitor == "auto"


def test_monitor_auto_with_a_mode_is_a_config_error_naming_the_mode():
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("trainer.monitor_mode=min"))
    assert err.value.key == "trainer.monitor_mode" and "monitor=auto" in str(err.value)
    validate(make_cfg("trainer.monitor=val/loss", "trainer.monitor_mode=min"))


def test_a_language_models_outcome_and_last_line_say_val_loss():
    lm_rows = [
        {"epoch": 0, "val/loss": 2.5, "val/bpb": 3.6},
        {"epoch": 1, "val/loss": 2.0, "val/bpb": 2.9},
        {"epoch": 2, "val/loss": 2.1, "val/bpb": 3.0},
    ]
    losses = lm_outcome(lm_rows)
    assert losses == {"final_val_loss": 2.1, "best_val_loss": 2.0}
    assert scores({"best_val_acc": 0.41, **losses}) == "final val/loss=2.1000 (best 2.0000)"
    classifier = [{"epoch": 0, "val/loss": 0.5, "val/acc": 0.41}]
    assert lm_outcome(classifier) == {}
    assert scores({"best_val_acc": 0.41}) == "best val/acc=0.4100"


TOKENS = (*GPT_ON_TOKENS, "trainer.checkpoint_interval_s=0")


def test_a_language_models_best_pt_is_its_lowest_val_loss(tmp_path, caplog):
    cfg = make_cfg(*TOKENS, "epochs=2")
    with caplog.at_level(logging.INFO, logger="schedlab"):
        assert train(cfg.copy(), tmp_path).status == "completed"
    losses = [r["val/loss"] for r in read_metrics(tmp_path)]
    best = torch.load(tmp_path / "best.pt", weights_only=False)["progress"]
    assert best["best_metric"] == pytest.approx(min(losses))  # not the best val/acc
    assert best["epoch"] == losses.index(min(losses)) + 1
    assert f"completed: final val/loss={losses[-1]:.4f}" in caplog.text
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["final_val_loss"] == losses[-1] and status["best_val_loss"] == min(losses)
    assert "final val/loss=" in nothing_to_do(tmp_path, status, cfg)  # a rerun's message


@pytest.mark.slow
def test_a_user_text_file_trains_through_the_cli(tmp_path):
    """A text file of the user's, a tiny GPT on it: bits per byte, no val/gap (no source to
    know the optimum of), best.pt by val/loss and the last line saying so."""
    text = tmp_path / "notes.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 400)  # 18 kB
    proc = run_cli(
        "data=text",
        f"data.path={text}",
        "model=gpt",
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
        "data.block_size=32",
        "data.batch_size=8",
        "data.tokens_per_epoch=4096",
        "data.val_tokens=512",
        "epochs=2",
        "optimizer=adamw",
        "optimizer.lr=0.01",
        "trainer.num_threads=1",
        "logger=none",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and "val/gap" not in rows[-1]
    assert rows[-1]["val/bpb"] == pytest.approx(rows[-1]["val/loss"] / math.log(2))
    assert rows[-1]["val/loss"] < math.log(256)  # below a uniform guess over bytes
    assert "completed: final val/loss=" in proc.stdout + proc.stderr
    assert (tmp_path / "data" / "cache").is_dir()  # the tokens cached under the launch dir


def test_the_readme_lm_commands_start_up(tmp_path, monkeypatch):
    """README "A small GPT on text": `+experiment=lm` on the bundled source and
    `+experiment=lm_tiny data.path=my.txt` on the user's text pass start-up validation
    (with the paths a run resolves: the cache under the working dir)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.txt").write_text("to be or not to be, that is the question.\n" * 300)
    validate(make_cfg("+experiment=lm_tiny", f"data.path={tmp_path / 'my.txt'}"))
    validate(make_cfg("+experiment=lm", "data.source_tokens=65536"))
    with pytest.raises(ConfigError, match="data.path"):
        validate(make_cfg("+experiment=lm_tiny", f"data.path={tmp_path / 'nothing.txt'}"))
