"""Language-model polish (issue #35): `scheduler.warmup_steps`, a warmup counted in optimizer
steps (nanoGPT's warmup_iters) for per-step schedules, in the simulator, sequences, the
preview, branches and the LM presets; a language model's W&B summary keeping its monitored
best (best/val_loss); `data=text` on the default MLP pointing at +experiment=lm."""

from __future__ import annotations

import json
import logging

import pytest
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import LinearLR

from runner import preview
from runner.run.branch import trunk_config
from runner.run.branch_points import branch_point
from runner.run.check import validate
from runner.run.train import outcome, stored_best, train
from runner.train.engine import Result
from schedulers import ConfigError, simulate, validate_scheduler
from schedulers.binder import plain
from schedulers.registry import SCHEDULES
from schedulers.schedule import throwaway_optimizer
from tests.helpers import GPT_ON_TOKENS, make_cfg, read_metrics, wandb_records

COMMON = {
    "interval": "step",
    "warmup_epochs": 0,
    "warmup_steps": 5,
    "warmup_start_factor": 0.1,
}
COSINE = {**COMMON, "name": "cosine", "T_max": None, "eta_min": 0.0}
RUN = {"epochs": 3, "steps_per_epoch": 4, "base_lrs": [0.1, 0.02]}


def linear_warmup(base_lrs: list[float], steps: int, factor: float = 0.1) -> list[list[float]]:
    """torch's LinearLR warmup alone: the lr of each group at each of its `steps` steps."""
    optimizer = throwaway_optimizer(base_lrs)
    warmup = LinearLR(optimizer, start_factor=factor, total_iters=steps)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        warmup.step()
    return out


# -- scheduler.warmup_steps -------------------------------------------------------------------
def test_warmup_steps_is_torchs_linear_warmup_step_by_step_then_the_schedule():
    """5 optimizer steps of warmup in a 12-step run (not whole epochs of 4): each of those
    steps has LinearLR's lr, then the cosine starts at the base lr over the 7 steps left."""
    per_step = simulate(COSINE, **RUN).per_step
    warmup = linear_warmup([0.1, 0.02], 5)
    assert [lr for row in per_step[:5] for lr in row] == pytest.approx(
        [lr for row in warmup for lr in row], rel=1e-12
    )
    assert per_step[5] == pytest.approx([0.1, 0.02])
    assert per_step[-1][0] < per_step[6][0] < 0.1  # the cosine over what is left


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        ({"interval": "epoch"}, "scheduler.warmup_steps", "scheduler.interval=step"),
        ({"warmup_epochs": 1}, "scheduler.warmup_epochs", "scheduler.warmup_steps=5"),
        ({"warmup_steps": 12}, "scheduler.warmup_steps", "below the run's 12 optimizer steps"),
        ({"warmup_steps": -1}, "scheduler.warmup_steps", ">= 0"),
    ],
)
def test_a_warmup_steps_that_cannot_work_is_an_error_naming_the_key(change, key, says):
    with pytest.raises(ConfigError) as err:
        validate_scheduler({**COSINE, **change}, **RUN)
    assert err.value.key == key and says in str(err.value)
    validate_scheduler({**COSINE, "warmup_steps": 11}, **RUN)  # one step left: fine


def test_a_schedule_with_its_own_start_refuses_warmup_steps():
    onecycle = {"name": "onecycle", **SCHEDULES["onecycle"].params}
    with pytest.raises(ConfigError) as err:
        validate_scheduler({**COMMON, **onecycle}, **RUN)
    assert err.value.key == "scheduler.warmup_steps" and "shapes its own start" in str(err.value)


def test_a_sequence_starts_after_the_warmup_steps():
    """The phases share the run's steps once the warmup is done: 12 - 5 = 7."""
    constant = {"name": "none", "length": 3}
    linear = {"name": "linear", "start_factor": 1.0, "end_factor": 0.5, "total_iters": 4}
    seq = {**COMMON, "name": "sequence", "phases": [constant, {**linear, "length": 4}]}
    per_step = [r[0] for r in simulate(seq, **RUN).per_step]
    assert per_step[:5] == pytest.approx([r[0] for r in linear_warmup([0.1, 0.02], 5)])
    assert per_step[5:8] == pytest.approx([0.1] * 3)
    assert per_step[8:] == pytest.approx([0.1, 0.0875, 0.075, 0.0625])
    too_long = {**seq, "phases": [constant, {**linear, "length": 5}]}
    with pytest.raises(ConfigError, match="more than the run's 7"):
        validate_scheduler(too_long, **RUN)


def test_the_preview_and_its_trace_warm_up_over_the_steps():
    """`python -m runner.preview scheduler.interval=step scheduler.warmup_steps=7`: the
    run's config (the YAML default, then the override) through the runner's checks."""
    cfg = make_cfg("scheduler.interval=step", "scheduler.warmup_steps=7", "epochs=2")
    validate(cfg)
    sim = preview.simulate(cfg, steps_per_epoch=5)
    lr = cfg.optimizer.lr
    assert [r[0] for r in sim["per_step"][:7]] == pytest.approx(
        [r[0] for r in linear_warmup([lr], 7)]
    )
    assert sim["per_step"][7][0] == pytest.approx(lr)
    rows = preview.trace(cfg, steps_per_epoch=5)  # one row a step: the group's lr
    assert [r["lr_in_use"] for r in rows] == pytest.approx([r[0] for r in sim["per_step"]])
    assert [r["last_epoch"] for r in rows[6:9]] == [6, 0, 1]  # LinearLR's, then the cosine's


def test_the_lm_presets_warm_up_over_an_epochs_optimizer_steps():
    """+experiment=lm_tiny: 32 steps an epoch, the warmup its first 32 steps as LinearLR
    gives them, set in steps (scheduler.warmup_steps=N sets any other number)."""
    cfg = make_cfg("+experiment=lm_tiny")
    assert (cfg.scheduler.warmup_steps, cfg.scheduler.warmup_epochs) == (32, 0)
    lr = cfg.optimizer.lr
    per_step = [r[0] for r in preview.simulate(cfg)["per_step"]]
    assert per_step[:32] == pytest.approx([r[0] for r in linear_warmup([lr], 32)], rel=1e-12)
    assert per_step[32] == pytest.approx(lr)
    wsd = make_cfg("+experiment=lm_tiny", "lm_schedule=wsd", "scheduler.warmup_steps=10")
    validate(wsd)  # wsd's own warmup_epochs: 2 is the preset's 0
    assert preview.simulate(wsd)["per_step"][10][0] == pytest.approx(lr)


def test_a_branch_cooldown_keeps_the_trunks_warmup_steps():
    """lm_budgets' WSD trunk of 12 epochs (384 steps) and a 6-epoch budget (192), both
    warming up over 20 steps (not whole epochs): the budget's 1-sqrt cooldown is its last
    round(0.2 x 172) = 34 steps, from step 158 in epoch 4, so it branches at epoch 4."""
    common = ("+experiment=lm_tiny", "lm_schedule=wsd", "scheduler.warmup_steps=20")
    trunk, budget = make_cfg(*common, "epochs=12"), make_cfg(*common, "epochs=6")
    assert branch_point(budget, trunk) == 4
    other = make_cfg("+experiment=lm_tiny", "lm_schedule=wsd", "scheduler.warmup_steps=21")
    assert branch_point(other, trunk) == 0  # another warmup leaves the trunk at once


def test_a_trunk_saved_before_warmup_steps_existed_reads_as_it_ran(tmp_path):
    """A trunk's config.yaml without the key (saved before it existed): read with
    warmup_steps 0, what it ran with, so its schedule can be compared with a branch's."""
    saved = OmegaConf.to_container(make_cfg("scheduler=wsd"))
    del saved["scheduler"]["warmup_steps"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    trunk = trunk_config(tmp_path, str(tmp_path))
    assert trunk.scheduler.warmup_steps == 0 and trunk.scheduler.warmup_epochs == 2
    validate_scheduler(plain(trunk.scheduler), epochs=20, steps_per_epoch=4, base_lrs=[0.05])


def test_a_schedule_free_optimizer_under_warmup_steps_warns_naming_the_key(caplog):
    """It warms up by itself (optimizer.warmup_steps): a scheduler warmup on top, now in
    steps too, warns as warmup_epochs does."""
    args = ("optimizer=schedulefree_sgd", "scheduler=none", "scheduler.interval=step")
    with caplog.at_level(logging.WARNING, logger="schedlab"):
        validate(make_cfg(*args, "scheduler.warmup_steps=3"))
    assert "optimizer=schedulefree_sgd with scheduler.warmup_steps=3" in caplog.text
    assert "scheduler.warmup_steps=0" in caplog.text


# -- a language model's W&B summary: its monitored best ----------------------------------------
def test_the_outcome_keeps_the_monitored_best_in_status_and_summary():
    result = Result("completed", 0.3, 4, best=("val/loss", 1.5))
    status, summary = outcome(result, 2.0)
    assert summary["best/val_loss"] == 1.5 and summary["best/val_acc"] == 0.3
    assert stored_best(json.loads(json.dumps(status))) == ("val/loss", 1.5)  # a later send
    assert "monitor" not in outcome(Result("completed", 0.3, 4), 2.0)[0]


@pytest.mark.slow
def test_a_language_models_wandb_summary_has_its_best_val_loss(tmp_path):
    """trainer.monitor auto is val/loss for a language model: the offline W&B run's summary
    holds the lowest val/loss of its epochs as best/val_loss (best/val_acc as before)."""
    args = (*GPT_ON_TOKENS, "epochs=3", "logger=wandb", "optimizer.lr=0.05")
    assert train(make_cfg(*args), tmp_path).status == "completed"
    losses = [r["val/loss"] for r in read_metrics(tmp_path)]
    summary = {}
    for record in wandb_records(tmp_path):
        if record["type"] == "summary":
            summary.update(record["summary"]["update"])
    assert summary["best/val_loss"] == pytest.approx(min(losses))
    assert "best/val_acc" in summary
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["monitor"], status["best_monitored"]) == ("val/loss", min(losses))


# -- data=text on the default model --------------------------------------------------------------
def test_text_on_the_default_mlp_points_at_the_lm_preset(tmp_path, monkeypatch):
    """`python -m runner data=text`: the MLP cannot read token windows; the error says
    +experiment=lm (model=gpt alone would train it with the default SGD)."""
    monkeypatch.chdir(tmp_path)  # the bundled source's cache
    cfg = make_cfg("data=text", "data.source_tokens=65536")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == "model.name" and "+experiment=lm" in str(err.value)
