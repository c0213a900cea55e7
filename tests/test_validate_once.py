"""A run is validated once: the CLI's start-up check is what the job in the same process
uses, and optimizer.lr=find checks again only what the found lr decides."""

from __future__ import annotations

import contextlib
import io
import sys

import pytest

import runner.run.check
import runner.run.train
from runner.run.check import validate, validate_and_hand_on
from runner.run.train import train
from schedulers import ConfigError
from tests.helpers import CONF, make_cfg, read_metrics, release_kept_locks

FAST = ("logger=none", "trainer.progress=line", "model.hidden=[16]", "epochs=1")
# a data set that says how many classes it has (3): data.num_classes null is read from it
BLOBS = ("data=dataset", "data.train={_target_:tests.user_datasets.Blobs,size:40}",
         "data.val={_target_:tests.user_datasets.Blobs,size:20,offset:40}")  # fmt: skip


@pytest.fixture
def model_checks(monkeypatch):
    """Every validate_model call the start-up check makes (one per full check)."""
    calls = []
    real = runner.run.check.validate_model

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner.run.check, "validate_model", counted)
    return calls


@pytest.mark.slow
def test_a_single_run_from_the_cli_is_validated_once(tmp_path, monkeypatch, model_checks):
    """`python -m runner ...` in this process, Hydra included: the check made before Hydra
    starts is the one the job uses (it was made twice)."""
    import runner.__main__ as entry

    run_dir = tmp_path / "run"
    args = [*FAST, f"hydra.run.dir={run_dir}", "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled"]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "")  # cli() sets it for Hydra: undone after the test
    # in this process Hydra finds conf/ by its path, not as runner/../conf
    monkeypatch.setattr(sys, "argv", ["runner", "--config-path", str(CONF), *args])
    monkeypatch.setattr(entry, "_CLI_STOP", None)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            entry.cli()
    finally:
        release_kept_locks()
    assert len(read_metrics(run_dir)) == 1  # it trained
    assert len(model_checks) == 1


def test_the_handed_on_result_is_taken_once_and_fills_inferred_values(model_checks):
    """The job takes the CLI's result for the same config, with data.num_classes: null
    filled as the check fills it; a later check of it checks anew."""
    checked = validate_and_hand_on(make_cfg(*FAST, *BLOBS))
    job = make_cfg(*FAST, *BLOBS)
    assert job.data.num_classes is None
    assert validate(job) == checked and len(model_checks) == 1
    assert job.data.num_classes == checked.num_classes == 3
    validate(job)
    assert len(model_checks) == 2


def test_another_config_is_validated_whole(model_checks):
    validate_and_hand_on(make_cfg(*FAST))
    with pytest.raises(ConfigError, match="optimizer.lr"):
        validate(make_cfg(*FAST, "optimizer.lr=-1"))
    assert len(model_checks) == 2


def found_lr(monkeypatch, lr: float) -> None:
    """The range test, skipped: it chooses `lr`."""
    monkeypatch.setattr(runner.run.train, "find_lr", lambda cfg, out: (lr, None))


def test_lr_find_checks_again_only_what_the_lr_decides(tmp_path, monkeypatch, model_checks):
    found_lr(monkeypatch, 0.02)
    train(make_cfg(*FAST, "optimizer.lr=find"), tmp_path)
    assert read_metrics(tmp_path)[0]["lr/group0"] == pytest.approx(0.02)
    assert len(model_checks) == 1  # the model was checked at start-up (it was twice)


def test_lr_find_checks_the_schedule_against_the_found_lr(tmp_path, monkeypatch):
    """eta_min 0.5 is below the largest lr the test can return (lr_find.end_lr, 10), what
    the start-up check holds it against, but not below the lr the test chose."""
    found_lr(monkeypatch, 0.02)
    cfg = make_cfg(*FAST, "optimizer.lr=find", "scheduler=cosine", "scheduler.eta_min=0.5")
    with pytest.raises(ConfigError, match=r"scheduler.eta_min=0.5: must be below the lr \(0.02"):
        train(cfg, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()
