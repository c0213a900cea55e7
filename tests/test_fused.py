"""Fused sweeps (hydra/launcher=fused): stacked models equal separate models, the fused
optimizer equals torch's, and a fused sweep's run dirs equal the basic launcher's."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn import functional as F

from runner.run.train import train
from runner.sweep.fused import group_key, why_not_fusable
from runner.sweep.stacked import FusedOptimizer, StackedNet
from runner.train.models import MLP, LeNet
from tests.helpers import (
    SLOW,
    StopAfter,
    assert_same_rows,
    cli_in_process,
    make_cfg,
    one_torch_thread,
    read_metrics,
    run_cli,
    run_python,
    start,
    sweep_job,
    train_members,
    train_separate,
    wait_for_rows,
    wandb_records,
)


def models(make, seeds):
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(make())
    return out


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: MLP(64, [32, 16], 10, 0.0), (1, 8, 8)),
        (lambda: LeNet(1, 32, 10, 32), (1, 32, 32)),
    ],
)
def test_stacked_net_computes_what_each_member_computes(make, shape):
    """Equal up to rounding: a batched matmul over [K, in, out] weights and a grouped
    convolution sum in another order than nn.Linear / nn.Conv2d (about 1 ulp)."""
    members = models(make, [0, 1, 2])
    net = StackedNet(members)
    x = torch.randn(3, 16, *shape)
    y = torch.randint(0, 10, (3, 16))
    ref = torch.stack([m(x[i]) for i, m in enumerate(members)])
    out = net(x)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    shared = net(x[0])  # one batch for all members (validation)
    assert torch.allclose(shared, torch.stack([m(x[0]) for m in members]), atol=1e-6)
    # members 0-2 reading batches 0, 0, 0 (one seed: gathered once, D = 1) and a net of
    # 4 members reading 2 batches (members 0, 1 batch 0; members 2, 3 batch 1)
    assert torch.allclose(net(x[:1]), torch.stack([m(x[0]) for m in members]), atol=1e-6)
    four = StackedNet(models(make, [0, 1, 2, 3]))
    pairs = torch.stack([m(x[i // 2]) for i, m in enumerate(models(make, [0, 1, 2, 3]))])
    assert torch.allclose(four(x[:2]), pairs, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="must divide"):
        four(x[:3])

    sum(F.cross_entropy(m(x[i]), y[i]) for i, m in enumerate(members)).backward()
    loss = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(3, -1).mean(1)
    loss.sum().backward()
    for p, (stacked, sources) in enumerate(zip(net.stacked_params(), net.sources, strict=True)):
        for k, source in enumerate(sources):
            grad = net.as_member(p, stacked.grad[k])
            assert torch.allclose(grad, source.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "name, hypers",
    [
        ("sgd", [dict(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False),
                 dict(lr=0.03, momentum=0.5, weight_decay=1e-3, nesterov=False)]),
        ("sgd", [dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True),
                 dict(lr=0.2, momentum=0.8, weight_decay=0.0, nesterov=True)]),
        ("adam", [dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
                  dict(lr=3e-3, betas=(0.85, 0.99), eps=1e-6, weight_decay=1e-2)]),
        ("adamw", [dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
                   dict(lr=5e-3, betas=(0.95, 0.98), eps=1e-7, weight_decay=0.0)]),
    ],
)  # fmt: skip
def test_fused_optimizer_steps_like_torch_per_member(name, hypers):
    """Each member's slice follows torch's own optimizer with that member's
    hyper-parameters, including an lr/momentum change between steps (a scheduler)."""
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    torch.manual_seed(0)
    start = [torch.randn(2, 5, 3), torch.randn(2, 5)]  # two stacked params, 2 members
    refs = [[p[k].clone().requires_grad_() for p in start] for k in range(2)]
    opts = [cls(refs[k], **hypers[k]) for k in range(2)]
    stacked = [p.clone().requires_grad_() for p in start]
    fused = FusedOptimizer(stacked, opts, [[0, 0], [0, 0]], name)
    for step in range(6):
        grads = [torch.randn_like(p) for p in start]
        for k in range(2):
            for p, g in zip(refs[k], grads, strict=True):
                p.grad = g[k].clone()
            opts[k].step()
        for p, g in zip(stacked, grads, strict=True):
            p.grad = g.clone()
        fused.step()
        for k in range(2):
            for p, ref in zip(stacked, refs[k], strict=True):
                torch.testing.assert_close(p[k], ref, rtol=1e-6, atol=1e-7)
        if step == 2:  # what a scheduler does between steps; the fused step must follow
            for opt in opts:
                opt.param_groups[0]["lr"] *= 0.5
                if name == "sgd":
                    opt.param_groups[0]["momentum"] = 0.7
                else:
                    opt.param_groups[0]["betas"] = (0.8, 0.99)
            fused.refresh()


@pytest.mark.slow
def test_fusable_jobs_share_a_key_and_others_say_why_not():
    base = make_cfg("epochs=2")
    variants = [
        make_cfg("epochs=2", "scheduler=plateau", "seed=3"),
        make_cfg("epochs=2", "optimizer.lr=0.2", "optimizer.momentum=0.5", "logger=none"),
        make_cfg("epochs=2", "optimizer.param_groups={hidden:1.0,head:0.1}"),
    ]
    assert all(group_key(v) == group_key(base) for v in variants)
    assert group_key(make_cfg("epochs=3")) != group_key(base)
    assert group_key(make_cfg("epochs=2", "data.batch_size=32")) != group_key(base)
    assert group_key(make_cfg("epochs=2", "optimizer=adam")) != group_key(base)
    assert why_not_fusable(base) is None
    assert why_not_fusable(make_cfg("model=lenet")) is None
    assert "model=resnet18" in why_not_fusable(make_cfg("model=resnet18"))
    assert "dropout" in why_not_fusable(make_cfg("model.dropout=0.2"))
    assert "optimizer.lr=find" in why_not_fusable(make_cfg("optimizer.lr=find"))
    assert "invalid" in why_not_fusable(make_cfg("optimizer.lr=-1"))


@pytest.mark.slow
def test_fused_group_member_forced_to_diverge_is_frozen_and_the_others_match(tmp_path):
    jobs = [
        ["epochs=3", "logger=none", "scheduler=step", "optimizer.lr=1e20"],  # NaN in epoch 0
        ["epochs=3", "logger=none", "scheduler=step", "seed=1"],
        ["epochs=3", "logger=none", "scheduler=plateau", "trainer.log_every_n_steps=10"],
    ]
    members = train_members(tmp_path, jobs)
    statuses = [json.loads((m.run_dir / "status.json").read_text()) for m in members]
    assert [s["status"] for s in statuses] == ["diverged", "completed", "completed"]
    assert statuses[0]["epochs_done"] == 1 and statuses[1]["fused_jobs"] == 3
    assert math.isnan(read_metrics(members[0].run_dir)[0]["train/loss"])
    assert any("diverged" in line for _, line in members[0].log_lines)
    for member, overrides in zip(members, jobs, strict=True):
        assert_same_rows(member.run_dir, train_separate(tmp_path, overrides))
        saved = yaml.safe_load((member.run_dir / "config.yaml").read_text())
        assert saved["seed"] == member.cfg.seed
    # the diverged job's rows were never replayed (no launcher here): the same job run
    # again trains nothing (it would only diverge again) but sends its held rows
    assert statuses[0]["rows_sent"] is False
    again = train(make_cfg(*jobs[0]), members[0].run_dir, jobs[0])
    assert (again.status, again.epochs_done) == ("diverged", 1)
    assert json.loads((members[0].run_dir / "status.json").read_text())["rows_sent"] is True


@pytest.mark.slow
def test_fused_lenet_with_adam_and_param_groups_matches_separate_runs(tmp_path):
    """Conv members: grouped convolutions round differently from one conv per model, so
    this runs few epochs (a chaotic phase of training can amplify rounding)."""
    common = ["model=lenet", "epochs=2", "logger=none", "optimizer=adam",
              "optimizer.param_groups={features:1.0,classifier:0.5}"]  # fmt: skip
    jobs = [[*common, "scheduler=onecycle", "seed=1"], [*common, "scheduler=cosine", "seed=2"]]
    members = train_members(tmp_path, jobs)
    for member, overrides in zip(members, jobs, strict=True):
        assert read_metrics(member.run_dir)[0].keys() >= {"lr/features", "lr/classifier"}
        assert_same_rows(member.run_dir, train_separate(tmp_path, overrides))


def job_dirs(sweep: Path) -> dict[str, Path]:
    return {
        " ".join(yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())): d
        for d in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    }


@pytest.mark.slow
def test_fused_sweep_equals_the_basic_launcher_job_by_job(tmp_path):
    """The acceptance test: 3 schedules x 2 seeds, fused vs basic launcher, per job."""
    sweep_args = ["-m", "scheduler=step,plateau,onecycle", "seed=0,1", "epochs=4"]
    fused = tmp_path / "fused"
    proc = run_cli(*sweep_args, "hydra/launcher=fused", f"hydra.sweep.dir={fused}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Training 6 jobs as one fused model" in proc.stdout + proc.stderr
    fused_jobs = job_dirs(fused)
    assert len(fused_jobs) == 6  # the jobs the basic launcher runs:
    assert sorted(fused_jobs) == sorted(
        f"scheduler={s} seed={n} epochs=4" for s in ("step", "plateau", "onecycle") for n in (0, 1)
    )
    run_ids = set()
    for overrides, job in fused_jobs.items():
        # the basic launcher's job: train() on the job's config, which the basic launcher
        # calls for each job in its one process (runner/__main__.py _run_job); here in
        # this process, on one torch thread as run_cli's sweep (no second interpreter)
        with one_torch_thread():
            basic = train_separate(tmp_path, [*overrides.split(), "logger=none"])
        assert_same_rows(job, basic)
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "completed" and status["fused_jobs"] == 6
        assert "epoch   3/4" in (job / "train.log").read_text()
        # its own W&B run, with its own numbers
        records = wandb_records(job)
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        run_ids.add(run["run_id"])
        assert set(overrides.split()) <= set(run.get("tags", []))
        history = [r["history"]["item"] for r in records if r["type"] == "history"]
        logged = [h["val/acc"] for h in history if "val/acc" in h]
        assert logged == [row["val/acc"] for row in read_metrics(job)]
    assert len(run_ids) == 6
    report = (fused / "report.md").read_text()  # the sweep report works unchanged
    assert all(f"scheduler={s}" in report for s in ("step", "plateau", "onecycle"))


@pytest.mark.slow
def test_jobs_that_cannot_fuse_run_on_their_own_with_a_notice(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=fused",
        "hydra.launcher.max_group=2",
        "model.dropout=0.0,0.3",
        "seed=0,1,2",
        "epochs=2",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert out.count("runs on its own: dropout") == 3
    assert "Training 2 jobs as one fused model: #0, #1" in out  # max_group splits #0-#2
    assert "#2 runs on its own: no job to fuse with" in out
    for overrides, job in job_dirs(sweep).items():
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "completed"
        fused = "dropout=0.0" in overrides and "seed=2" not in overrides
        assert ("fused_jobs" in status) == fused, overrides
        assert len(read_metrics(job)) == 2


@pytest.mark.slow
def test_sigint_stops_a_fused_sweep_and_running_it_again_resumes_each_job(tmp_path):
    """Ctrl-C: every member checkpoints and is marked interrupted; the same command again
    resumes each job from its last.pt on its own."""

    args = [*SLOW, "epochs=6", "seed=0,1", "logger=none"]
    sweep = tmp_path / "sweep"
    command = ["-m", "hydra/launcher=fused", *args, f"hydra.sweep.dir={sweep}"]
    jobs = [sweep_job(sweep, *SLOW, "epochs=6", f"seed={seed}", "logger=none") for seed in (0, 1)]
    proc = start(command, tmp_path)
    wait_for_rows(jobs[0], 1, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert proc.returncode == 128 + signal.SIGINT
    for job in jobs:
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "interrupted"
        assert (job / "last.pt").exists()
        assert 1 <= len(read_metrics(job)) < 6

    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (again.stdout + again.stderr).count("holds a checkpoint of this config") == 2
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
        assert [r["epoch"] for r in read_metrics(job)] == list(range(6))


# the second fused group of a sweep is stopped by Ctrl-C after its epoch 1
SECOND_GROUP_STOPPED = """
import runpy, signal, sys
import runner.sweep.fused as f
real_fit, real_done, calls = f._fit, f.StackedModels.epoch_done, []
def _fit(*args, **kwargs):
    calls.append(1)
    return real_fit(*args, **kwargs)
def epoch_done(self, epoch):
    real_done(self, epoch)
    if len(calls) == 2 and epoch == 1:
        signal.raise_signal(signal.SIGINT)  # the group's handler notes it: it stops there
f._fit, f.StackedModels.epoch_done = _fit, epoch_done
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)  # as python -m runner
"""


@pytest.mark.slow
def test_a_stopped_fused_sweep_loses_no_w_and_b_rows_of_its_groups(tmp_path):
    """Two fused groups (max_group=2), Ctrl-C in the second: the first group's jobs are in
    W&B already (their rows were not held back until every group had trained), and the
    rerun's resumed jobs send their rows from before the stop as well as after it: every
    job ends with one W&B run holding all of metrics.jsonl."""

    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=fused", "hydra.launcher.max_group=2", "seed=0,1,2,3",
            "epochs=4", "trainer.progress=line", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = run_python("-c", SECOND_GROUP_STOPPED, *args, cwd=tmp_path)
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-2000:]

    def logged(job: Path) -> list[float]:
        history = [r["history"]["item"] for r in wandb_records(job) if r["type"] == "history"]
        return [h["val/acc"] for h in history if "val/acc" in h]

    jobs = [
        sweep_job(sweep, f"seed={seed}", "epochs=4", "trainer.progress=line") for seed in range(4)
    ]
    for job in jobs[:2]:  # the first group: complete, and in W&B
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
        assert logged(job) == [r["val/acc"] for r in read_metrics(job)]
    for job in jobs[2:]:  # the second: stopped after epoch 1, nothing sent yet
        assert json.loads((job / "status.json").read_text())["status"] == "interrupted"
        assert [r["epoch"] for r in read_metrics(job)] == [0, 1]
        assert not (job / "wandb").exists()

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    for job in jobs:  # one W&B run each (wandb_records), all rows in it
        rows = read_metrics(job)
        assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
        assert logged(job) == [r["val/acc"] for r in rows]


# Ctrl-C while the launcher sends the second job of a group to W&B (after its first row)
STOPPED_WHILE_SENDING = """
import runpy, sys
from runner.io.loggers import RunLogger
real, calls = RunLogger.resend, []
def resend(self, rows):
    calls.append(1)
    if len(calls) == 2:
        real(self, list(rows)[:1])
        raise KeyboardInterrupt  # as Ctrl-C raises it there
    real(self, rows)
RunLogger.resend = resend
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)  # as python -m runner
"""


@pytest.mark.slow
def test_a_sweep_stopped_while_its_fused_jobs_are_sent_sends_the_rest_when_run_again(tmp_path):
    """The group trained, then Ctrl-C while its jobs' rows went to W&B: the job being sent
    and any after it say so in status.json (rows_sent false), and the same command again
    sends their rows and summary (the job cut short: again, in full, to its W&B run), where
    it would otherwise only have found them complete."""

    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=fused", "seed=0,1", "epochs=3", "trainer.progress=line",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = run_python("-c", STOPPED_WHILE_SENDING, *args, cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr[-2000:]
    first, second = (
        sweep_job(sweep, f"seed={seed}", "epochs=3", "trainer.progress=line") for seed in (0, 1)
    )
    status = [json.loads((job / "status.json").read_text()) for job in (first, second)]
    assert [s["status"] for s in status] == ["completed", "completed"]
    assert [s["rows_sent"] for s in status] == [True, False]

    def logged(job: Path, newest: bool = False) -> list[float]:
        records = wandb_records(job, newest)
        history = [r["history"]["item"] for r in records if r["type"] == "history"]
        return [h["val/acc"] for h in history if "val/acc" in h]

    assert len(logged(second)) == 1  # cut short after its first row
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (again.stdout + again.stderr).count("sending them now") == 1
    assert json.loads((second / "status.json").read_text())["rows_sent"] is True
    for job in (first, second):  # the first was sent once, and only once (one file)
        rows = [r["val/acc"] for r in read_metrics(job)]
        assert len(rows) == 3 and logged(job, newest=job == second) == rows
    summary = [r for r in wandb_records(second, newest=True) if r["type"] == "summary"]
    assert summary, "the summary was sent too"


@pytest.mark.slow
def test_extending_a_fused_job_already_sent_to_w_and_b_sends_only_its_new_rows(tmp_path):
    """A fused member's last.pt says its rows went to W&B only after training (the
    launcher's replay); once replayed, `resume=<dir> epochs=...` sends the new epochs only,
    not the replayed ones a second time."""
    from runner.sweep.fused import replay

    jobs = [["epochs=2", "scheduler=step"], ["epochs=2", "scheduler=step", "seed=1"]]
    member = train_members(tmp_path, jobs)[0]  # as the launcher holds it after training
    run_dir = member.run_dir
    replay(member)
    assert json.loads((run_dir / "status.json").read_text())["rows_sent"] is True
    extend = [f"resume={run_dir}", "epochs=4"]
    assert train(make_cfg(*extend), run_dir, extend).status == "completed"
    history = [
        r["history"]["item"] for r in wandb_records(run_dir, newest=True) if r["type"] == "history"
    ]
    assert [h["epoch"] for h in history if "val/acc" in h] == [2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fused_checkpoints_resume_with_the_ordinary_runner(tmp_path, monkeypatch, optimizer):
    """A fused member's last.pt is a single run's checkpoint: stopped after epoch 2 of 5,
    each job resumed by train() ends like a separate run that never stopped."""
    import contextlib

    import runner.sweep.fused

    steps_per_epoch = 23  # digits: 1437 training images, batch 64
    stop = StopAfter(2 * steps_per_epoch)
    monkeypatch.setattr(runner.sweep.fused, "stop_on_signals", lambda: contextlib.nullcontext(stop))
    common = [
        "epochs=5",
        "logger=none",
        f"optimizer={optimizer}",
        "trainer.checkpoint_interval_s=0",
    ]
    jobs = [[*common, "scheduler=plateau"], [*common, "scheduler=onecycle", "seed=1"]]
    with pytest.raises(SystemExit):
        train_members(tmp_path, jobs)
    for i, overrides in enumerate(jobs):
        run_dir = tmp_path / "fused" / str(i)
        assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
        result = train(make_cfg(*overrides), run_dir)  # finds its checkpoint, resumes
        assert result.status == "completed"
        assert [r["epoch"] for r in read_metrics(run_dir)] == list(range(5))
        assert_same_rows(run_dir, train_separate(tmp_path, overrides))


@pytest.mark.slow
def test_optuna_trials_are_fused_batch_by_batch(tmp_path):
    """The sweeper hands the launcher n_jobs trials at a time; each batch trains fused and
    Optuna gets every trial's best val accuracy back."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "+hparams_search=optuna",
        "hydra/launcher=fused",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "epochs=3",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "Training 2 jobs as one fused model: #0, #1" in out
    assert "Training 2 jobs as one fused model: #2, #3" in out
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = max(max(r["val/acc"] for r in read_metrics(d)) for d in job_dirs(sweep).values())
    assert result["best_value"] == pytest.approx(best)


def test_a_crash_in_a_fused_group_marks_its_members_failed_and_returns(tmp_path, monkeypatch):
    """Like a crashing job under the basic launcher: recorded, and the sweep goes on."""
    import runner.sweep.stacked
    from runner.sweep.fused import replay

    def broken(self, x):
        raise RuntimeError("boom in the stacked forward")

    monkeypatch.setattr(runner.sweep.stacked.StackedNet, "forward", broken)
    members = train_members(tmp_path, [["epochs=2", "logger=none"], ["epochs=2", "seed=1"]])
    for member in members:
        status = json.loads((member.run_dir / "status.json").read_text())
        assert status["status"] == "failed" and "boom" in status["error"]
        assert replay(member) == 0.0  # the worst objective, as a failed single job returns


def test_a_bad_max_group_is_a_config_error_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli_in_process(  # the CLI's checks before Hydra starts, in this process
        "-m",
        "hydra/launcher=fused",
        "hydra.launcher.max_group=0",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "hydra.launcher.max_group=0: must be >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not sweep.exists()  # nothing started
