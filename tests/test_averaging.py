"""Weight averaging (#34): trainer.average=ema|swa keeps a torch AveragedModel beside the
trained one, validated every epoch as val_avg/loss and val_avg/acc (BatchNorm statistics
recomputed for it by update_bn), kept in checkpoints (exact resume), rankable in the sweep
report (--metric final_val_avg_acc) and monitorable (trainer.monitor=val_avg/acc)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch.optim.swa_utils import AveragedModel, update_bn

import runner.run.train
from runner.data.sets import batches
from runner.run.check import validate
from runner.run.train import train
from runner.sweep.fused import why_not_fusable
from runner.sweep.launch import SWEEP_REPORT, check_callbacks
from runner.sweep.report import main
from runner.train.builders import build_run
from schedulers import ConfigError
from tests.helpers import (
    assert_same_rows,
    make_cfg,
    read_metrics,
    resumed_and_straight,
    tensorboard_scalars,
    train_members,
    train_separate,
    train_stopped_at_step,
)

FAST = ("logger=none", "trainer.progress=line", "trainer.log_every_n_steps=0")
# digits: 1437 training samples in batches of 512 -> 3 optimizer steps an epoch
FEW_STEPS = ("data.batch_size=512", "scheduler=none")
STEPS = 3


def _recording(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """The model's parameters after every optimizer step of the runs that follow."""
    seen, real = [], runner.run.train.train_step

    def step(model, *a, **kw):
        out = real(model, *a, **kw)
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return out

    monkeypatch.setattr(runner.run.train, "train_step", step)
    return seen


def _averaged(run_dir, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / name, weights_only=True)["average"]


# -- config errors


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["trainer.average=mean"], "trainer.average"),
        (["trainer.ema_decay=1.0"], "trainer.ema_decay"),
        (["trainer.ema_decay=0"], "trainer.ema_decay"),
        (["trainer.swa_start=-1"], "trainer.swa_start"),
        (["trainer.swa_start=half"], "trainer.swa_start"),
        (["trainer.swa_lr=0"], "trainer.swa_lr"),
        # SWA averages epochs swa_start..epochs-1: none at all is an error, not an empty row
        (["trainer.average=swa", "epochs=5", "trainer.swa_start=5"], "trainer.swa_start"),
        (
            ["trainer.average=ema", "trainer.monitor=val_avg/acc", "trainer.monitor_mode=min"],
            "trainer.monitor_mode",
        ),
    ],
)
def test_bad_averaging_keys_are_config_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=rf"^{key}="):
        validate(make_cfg(*overrides))


@pytest.mark.parametrize("metric", ["val_avg/acc", "val_avg/loss"])
def test_monitoring_the_averaged_model_without_one_is_a_config_error(metric):
    with pytest.raises(ConfigError, match=rf"^trainer\.monitor='{metric}': needs an averaged"):
        validate(make_cfg(f"trainer.monitor={metric}"))


def test_averaging_keys_that_fit_validate():
    validate(make_cfg("trainer.average=ema", "trainer.monitor=val_avg/loss"))
    validate(
        make_cfg("trainer.average=swa", "epochs=5", "trainer.swa_start=4", "trainer.swa_lr=0.01")
    )


# -- EMA and SWA against their definitions


def test_ema_is_the_hand_computed_ema_of_the_optimizer_steps_and_is_validated(
    tmp_path, monkeypatch, caplog
):
    """torch's EMA: the first update copies the weights after step 1, then each optimizer
    step avg = d * avg + (1 - d) * weights. The checkpoint holds it (and the update count);
    each row's val_avg/* is that model on the val split, different from val/*, and reaches
    TensorBoard like the other metrics."""
    decay = 0.8
    args = (*FAST, *FEW_STEPS, "logger=tensorboard", "epochs=2", "trainer.average=ema",
            f"trainer.ema_decay={decay}")  # fmt: skip
    seen = _recording(monkeypatch)
    caplog.set_level("INFO", logger="schedlab")
    assert train(make_cfg(*args), tmp_path).status == "completed"
    assert len(seen) == 2 * STEPS
    ema = dict(seen[0])
    for weights in seen[1:]:
        ema = {n: decay * ema[n] + (1 - decay) * w for n, w in weights.items()}
    saved = _averaged(tmp_path)
    assert int(saved["n_averaged"]) == 2 * STEPS
    for name, value in ema.items():
        torch.testing.assert_close(saved[f"module.{name}"], value, rtol=1e-5, atol=1e-6)

    rows = read_metrics(tmp_path)
    assert all("val_avg/acc" in r and "val_avg/loss" in r for r in rows)
    assert all(r["val_avg/loss"] != r["val/loss"] for r in rows)
    run = build_run(make_cfg(*args))
    run.model.load_state_dict(
        {k[len("module.") :]: v for k, v in saved.items() if k != "n_averaged"}
    )
    with torch.no_grad():
        logits = run.model(run.data.x_val)
    loss = torch.nn.functional.cross_entropy(logits, run.data.y_val).item()
    acc = (logits.argmax(1) == run.data.y_val).float().mean().item()
    assert rows[-1]["val_avg/loss"] == pytest.approx(loss, rel=1e-5)
    assert rows[-1]["val_avg/acc"] == pytest.approx(acc)
    scalars = tensorboard_scalars(tmp_path)
    assert [v for _, v in scalars["val_avg/acc"]] == pytest.approx([r["val_avg/acc"] for r in rows])
    assert f"val_avg/acc={rows[-1]['val_avg/acc']:.3f}" in caplog.text


def test_swa_is_the_mean_of_the_epoch_end_weights_from_swa_start(tmp_path, monkeypatch):
    """SWA from epoch 1 of 4: the mean of the weights at the ends of epochs 1, 2 and 3;
    no val_avg before epoch 1's end. Monitored by val_avg/acc, best.pt is the best of the
    averaged model's epochs. swa_lr holds the lr from swa_start on (SWALR)."""
    args = (*FAST, *FEW_STEPS, "epochs=4", "trainer.average=swa", "trainer.swa_start=1",
            "trainer.monitor=val_avg/acc", "trainer.swa_lr=0.02")  # fmt: skip
    seen = _recording(monkeypatch)
    assert train(make_cfg(*args), tmp_path).status == "completed"
    ends = [seen[STEPS * e + STEPS - 1] for e in (1, 2, 3)]
    saved = _averaged(tmp_path)
    assert int(saved["n_averaged"]) == 3
    for name in ends[0]:
        mean = sum(w[name] for w in ends) / 3
        torch.testing.assert_close(saved[f"module.{name}"], mean, rtol=1e-5, atol=1e-6)

    rows = read_metrics(tmp_path)
    assert "val_avg/acc" not in rows[0]
    assert all("val_avg/acc" in r for r in rows[1:])
    assert rows[1]["val_avg/loss"] == pytest.approx(rows[1]["val/loss"])  # one epoch averaged
    assert rows[3]["val_avg/loss"] != rows[3]["val/loss"]
    assert [r["lr/group0"] for r in rows] == [0.05, 0.02, 0.02, 0.02]
    best = torch.load(tmp_path / "best.pt", weights_only=True)["progress"]
    assert best["best_metric"] == max(r["val_avg/acc"] for r in rows[1:])


def test_the_averaged_models_batchnorm_statistics_are_update_bns(tmp_path):
    """A model with BatchNorm: the averaged model's running statistics are not the raw
    model's (nor left at their initial values) but update_bn's over the training split in
    order, with the averaged weights."""
    args = (*FAST, *FEW_STEPS, "epochs=2", "model=target", "trainer.average=ema",
            "model._target_=tests.user_models.BnNet", "+model.hidden=16",
            "trainer.ema_decay=0.9")  # fmt: skip
    train(make_cfg(*args), tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    saved, raw = state["average"], state["model"]
    run = build_run(make_cfg(*args))
    expected = AveragedModel(run.model, use_buffers=False)
    expected.load_state_dict(saved)
    for key in ("body.2.running_mean", "body.2.running_var"):
        expected.module.get_buffer(key).fill_(7.0)  # update_bn must reset and recompute them
    data = run.data
    update_bn(((x, y) for x, y in batches(data.x_train, data.y_train, 512)), expected)
    for key in ("body.2.running_mean", "body.2.running_var"):
        torch.testing.assert_close(saved[f"module.{key}"], expected.module.get_buffer(key))
        assert not torch.allclose(saved[f"module.{key}"], raw[key], atol=1e-3)
    assert not torch.allclose(saved["module.body.2.running_var"], torch.ones(16), atol=1e-3)


@pytest.mark.slow
def test_streamed_data_recalibrates_batchnorm_as_data_in_memory_does(tmp_path):
    """data=dataset through a DataLoader (data.in_memory=false): update_bn reads the train
    split in order from the loader, as the in-memory path reads its tensors."""
    blobs = "tests.user_datasets.Blobs"
    args = [*FAST, "epochs=2", "data=dataset", f"data.train={{_target_:{blobs},size:90}}",
            f"data.val={{_target_:{blobs},size:30,offset:1}}", "data.batch_size=32",
            "model=target", "model._target_=tests.user_models.BnNet", "+model.hidden=16",
            "trainer.average=ema", "trainer.ema_decay=0.5"]  # fmt: skip
    for where in ("true", "false"):
        train(make_cfg(*args, f"data.in_memory={where}"), tmp_path / where)
    streamed, held = read_metrics(tmp_path / "false"), read_metrics(tmp_path / "true")
    assert [r["val_avg/loss"] for r in streamed] == pytest.approx(
        [r["val_avg/loss"] for r in held], rel=1e-5
    )
    a, b = _averaged(tmp_path / "false"), _averaged(tmp_path / "true")
    torch.testing.assert_close(a["module.body.2.running_var"], b["module.body.2.running_var"])
    assert not torch.allclose(a["module.body.2.running_var"], torch.ones(16), atol=1e-3)


# -- exact resume


@pytest.mark.parametrize(
    "average",
    [
        ["trainer.average=ema", "trainer.ema_decay=0.9"],
        ["trainer.average=swa", "trainer.swa_start=1", "trainer.swa_lr=0.02"],
    ],
)
def test_a_run_with_averaging_stopped_mid_epoch_resumes_exactly(tmp_path, monkeypatch, average):
    """Stopped in epoch 2 (of 4), resumed: rows (val_avg included) and the averaged
    weights equal an uninterrupted run's: the average, and SWALR's place, are in last.pt."""
    args = [*FAST, *FEW_STEPS, "epochs=4", "trainer.checkpoint_interval_s=0", *average]
    run_dir = tmp_path / "run"
    train_stopped_at_step(monkeypatch, args, run_dir, 2 * STEPS + 1)
    assert len(read_metrics(run_dir)) == 2
    rows, ref = resumed_and_straight(args, run_dir, tmp_path / "ref")
    assert rows == ref and "val_avg/acc" in rows[-1]
    resumed, straight = _averaged(run_dir), _averaged(tmp_path / "ref")
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key


def test_extending_an_swa_run_whose_start_is_a_share_of_the_run_is_refused(tmp_path):
    """swa_start null is 3/4 of the run: resumed with more epochs it would move (and the
    average and SWALR with it). With swa_start set, the run extends."""
    args = [*FAST, *FEW_STEPS, "epochs=2", "trainer.average=swa"]
    train(make_cfg(*args), tmp_path / "share")
    given = [f"resume={tmp_path / 'share'}", "epochs=3"]
    with pytest.raises(ConfigError, match=r"^epochs=3: cannot extend .*trainer\.swa_start is null"):
        train(make_cfg(*given), tmp_path / "share", overrides=given)
    train(make_cfg(*args, "trainer.swa_start=1"), tmp_path / "set")
    given = [f"resume={tmp_path / 'set'}", "epochs=3"]
    assert train(make_cfg(*given), tmp_path / "set", overrides=given).status == "completed"
    assert int(_averaged(tmp_path / "set")["n_averaged"]) == 2


# -- fused sweeps


@pytest.mark.parametrize(
    "average",
    [
        ["trainer.average=ema", "trainer.ema_decay=0.9"],
        ["trainer.average=swa", "trainer.swa_start=1", "trainer.swa_lr=0.02"],
    ],
)
def test_fused_members_average_like_separate_runs(tmp_path, average):
    """One AveragedModel over the stacked net averages each member's slice as its own run
    averages its model: rows (val_avg included) and each member's checkpointed average (a
    single run's format) equal the separate runs'; SWALR sets each member's lr."""
    common = [*FAST, *FEW_STEPS, "epochs=3", *average]
    jobs = [[*common, "seed=1"], [*common, "seed=2", "optimizer.lr=0.1"]]
    assert why_not_fusable(make_cfg(*jobs[0])) is None
    members = train_members(tmp_path, jobs)
    assert [m.result.status for m in members] == ["completed"] * 2
    for member, overrides in zip(members, jobs, strict=True):
        separate = train_separate(tmp_path, overrides)
        assert_same_rows(member.run_dir, separate)
        for row, ref in zip(read_metrics(member.run_dir), read_metrics(separate), strict=True):
            for key in ("val_avg/loss", "val_avg/acc"):
                if key in ref:  # SWA: not before swa_start (assert_same_rows: same keys)
                    assert row[key] == pytest.approx(ref[key], rel=1e-4), key
        assert "val_avg/acc" in read_metrics(member.run_dir)[-1]
        fused, alone = _averaged(member.run_dir), _averaged(separate)
        assert fused.keys() == alone.keys()
        for key, value in alone.items():
            torch.testing.assert_close(fused[key], value, rtol=1e-4, atol=1e-6)


# -- the sweep report


def _job(sweep, name: str, seed: int, val: list[float], avg: list[float] | None) -> None:
    """A completed job's run dir as the runner leaves it, without training."""
    job = sweep / f"{name}_seed{seed}"
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"trainer.ema_decay={name}", f"seed={seed}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    (job / "status.json").write_text(json.dumps({"status": "completed", "wall_time_s": 1.0}))
    rows = []
    for epoch, acc in enumerate(val):
        row = {"epoch": epoch, "lr/group0": 0.1, "val/acc": acc, "val/loss": 1 - acc}
        if avg is not None:
            row.update({"val_avg/acc": avg[epoch], "val_avg/loss": 1 - avg[epoch]})
        rows.append(row)
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_ranks_by_the_averaged_models_final_accuracy(tmp_path, capsys):
    """`--metric final_val_avg_acc`: a wins on the raw model's accuracy, b on the averaged
    model's; the report ranks b first and shows the averaged columns."""
    sweep = tmp_path / "sweep"
    noise = [0.004, -0.006, 0.005, -0.003, 0.0]
    for seed, (e, f) in enumerate(zip(noise, reversed(noise), strict=True)):
        _job(sweep, "a", seed, [0.80, 0.95 + e], [0.70, 0.85 + e])
        _job(sweep, "b", seed, [0.80, 0.90 + f], [0.75, 0.97 + f])
    main([str(sweep), "--metric", "final_val_avg_acc"])
    text = (sweep / "report_final_val_avg_acc.md").read_text()
    assert text.splitlines()[2].startswith(
        "**Winner: `trainer.ema_decay=b`** by mean final val avg acc"
    )
    assert (
        "Mean best val avg acc / final val avg acc: `trainer.ema_decay=b` 0.9700 / 0.9700" in text
    )
    assert "| **final val avg acc** |" in text
    # the sweep's own report ranks by best val acc, and shows the averaged columns too
    main([str(sweep)])
    own = (sweep / "report.md").read_text()
    assert own.splitlines()[2].startswith("**Winner: `trainer.ema_decay=a`**")
    assert "| best val avg acc |" in own
    assert "final_val_avg_acc_mean" in (sweep / "report.csv").read_text()


def test_report_by_an_averaged_metric_of_runs_without_one_is_a_clear_error(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for seed in range(2):
        _job(sweep, "a", seed, [0.8, 0.9], None)
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--metric", "final_val_avg_acc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--metric final_val_avg_acc: no completed run of this sweep logged val_avg/acc" in err
    assert "trainer.average=ema or swa" in err
    assert not (sweep / "report_final_val_avg_acc.md").exists()
    main([str(sweep)])  # the plain report has no averaged columns
    assert "val avg" not in (sweep / "report.md").read_text()


def test_the_sweep_reports_metric_may_be_an_averaged_one():
    check_callbacks({"report": {"_target_": SWEEP_REPORT, "metric": "final_val_avg_acc"}})
    with pytest.raises(ConfigError, match=r"^hydra\.callbacks\.report\.metric="):
        check_callbacks({"report": {"_target_": SWEEP_REPORT, "metric": "final_val_avg"}})


def test_plain_runs_log_no_averaged_metrics(tmp_path):
    train(make_cfg(*FAST, *FEW_STEPS, "epochs=1"), tmp_path)
    row = read_metrics(tmp_path)[0]
    assert not any(k.startswith("val_avg/") for k in row)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["average"] is None
    assert math.isfinite(row["val/acc"])
