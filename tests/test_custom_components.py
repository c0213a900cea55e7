"""The user's own model and optimizer by `_target_`: trained through the CLI, equal to a
hand-written loop, resumed exactly, and every mistake a config error before anything runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from runner.config.compose import options_first
from runner.config.schema import run_spec
from runner.data.sets import load_data
from runner.run.check import planned_groups, validate
from runner.run.train import train
from schedulers import ConfigError
from tests.helpers import (
    cli_in_process,
    comparable,
    make_cfg,
    make_values,
    read_metrics,
    reference,
    resume_in_process,
    run_cli,
    start,
    wait_for_rows,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ("model=target", "model._target_=tests.user_models.TinyNet")


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    """`tests.user_models` importable by the runner's subprocesses, as a user's package is
    from their project dir."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def hand_loop(epochs: int, seed: int, lr: float, hidden: int) -> list[dict]:
    """TinyNet on digits by hand: SGD momentum 0.9, cosine over the run, batch 64, the
    runner's data order (a generator seeded with the seed, one permutation an epoch)."""
    from tests.user_models import TinyNet

    torch.manual_seed(seed)
    data = load_data(make_values()["data"])
    model = TinyNet(in_channels=1, image_size=8, num_classes=10, hidden=hidden)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    order = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    rows = []
    for epoch in range(epochs):
        lr_used = opt.param_groups[0]["lr"]
        model.train()
        loss_sum, correct = torch.zeros(()), torch.zeros(())
        perm = torch.randperm(n, generator=order)
        for start_ in range(0, n, 64):
            idx = perm[start_ : start_ + 64]
            x, y = data.x_train.index_select(0, idx), data.y_train.index_select(0, idx)
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
        model.eval()
        with torch.no_grad():
            logits = model(data.x_val)
            val_loss = F.cross_entropy(logits.float(), data.y_val, reduction="sum").item()
            val_acc = (logits.argmax(1) == data.y_val).sum().item() / len(data.y_val)
        rows.append(
            {
                "epoch": epoch,
                "lr/group0": lr_used,
                "train/loss": loss_sum.item() / n,
                "train/acc": correct.item() / n,
                "val/loss": val_loss / len(data.y_val),
                "val/acc": val_acc,
            }
        )
        sched.step()
    return rows


@pytest.mark.slow
def test_a_user_model_trains_like_a_hand_written_loop(tmp_path):
    args = [*TINY, "+model.hidden=24", "epochs=3", "logger=none", "optimizer.lr=0.05"]
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "TinyNet on digits" in proc.stdout  # the log names the class
    rows = comparable(read_metrics(tmp_path / "run"))
    expected = hand_loop(epochs=3, seed=0, lr=0.05, hidden=24)
    assert [r["lr/group0"] for r in rows] == [r["lr/group0"] for r in expected]
    for got, want in zip(rows, expected, strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (got["epoch"], key)
    assert rows[-1]["val/acc"] > 0.5  # and it learns


@pytest.mark.slow
def test_a_user_config_dir_adds_model_and_optimizer_options(tmp_path):
    conf = tmp_path / "my_conf"
    (conf / "model").mkdir(parents=True)
    (conf / "optimizer").mkdir()
    (conf / "model" / "tiny.yaml").write_text(
        "_target_: tests.user_models.SmallCNN\nclasses: ${data.num_classes}\nwidth: 4\n"
    )
    (conf / "optimizer" / "rms.yaml").write_text(
        "_target_: torch.optim.RMSprop\n_partial_: true\nlr: 0.003\nalpha: 0.9\n"
        "param_groups: {features.*: 0.5, head.*: 1.0}\n"
    )
    proc = run_cli(
        "--config-dir",
        str(conf),
        "model=tiny",
        "optimizer=rms",
        "model.width=6",
        "epochs=2",
        "logger=none",
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=0.5",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SmallCNN on digits" in proc.stdout and "RMSprop lr=0.003" in proc.stdout
    rows = read_metrics(tmp_path / "run")
    assert [(r["lr/features"], r["lr/head"]) for r in rows] == [(0.0015, 0.003), (0.00075, 0.0015)]


def test_any_torch_optimizer_by_target_logs_each_param_group(tmp_path):
    """RMSprop on the built-in MLP's named parts, then on a user model's name patterns
    (in-process: the CLI path of `_target_` components is tested above)."""
    base = ["optimizer=target", "optimizer._target_=torch.optim.RMSprop", "optimizer.lr=0.002",
            "+optimizer.alpha=0.95", "scheduler=none", "epochs=2", "logger=none"]  # fmt: skip
    train(make_cfg(*base, "optimizer.param_groups={hidden:1.0,head:0.25}"), tmp_path / "parts")
    rows = read_metrics(tmp_path / "parts")
    assert [(r["lr/hidden"], r["lr/head"]) for r in rows] == [(0.002, 0.0005)] * 2
    assert rows[-1]["val/acc"] > 0.5

    groups = "optimizer.param_groups={backbone.*:0.5,head.*:2}"
    train(make_cfg(*base, *TINY, groups), tmp_path / "patterns")
    rows = read_metrics(tmp_path / "patterns")
    assert [(r["lr/backbone"], r["lr/head"]) for r in rows] == [(0.001, 0.004)] * 2


def test_name_patterns_put_every_parameter_in_exactly_one_group():
    cfg = make_cfg(*TINY, "optimizer.param_groups={backbone.*:0.1,head.*:1.0}")
    assert planned_groups(cfg) == [("backbone", 0.1), ("head", 1.0)]
    # patterns work on the built-ins too (the MLP's layers are net.1 and net.3)
    cfg = make_cfg("optimizer.param_groups={net.1.*:0.1,net.3.*:1.0}")
    assert planned_groups(cfg) == [("net.1", 0.1), ("net.3", 1.0)]
    for groups, key, words in [
        ("{backbone.*:0.1}", "optimizer.param_groups", "'head.weight' matches no pattern"),
        ("{backbone.*:0.1,*:1}", "optimizer.param_groups", "matches ['backbone.*', '*']"),
        ("{backbone.*:1,head.*:1,tail.*:2}", "optimizer.param_groups.tail.*", "no parameter"),
        ("{backbone.*:0,head.*:1}", "optimizer.param_groups.backbone.*", "> 0"),
    ]:
        with pytest.raises(ConfigError) as err:
            validate(make_cfg(*TINY, f"optimizer.param_groups={groups}"))
        assert err.value.key == key and words in str(err.value), str(err.value)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact_for_a_user_model(tmp_path):
    args = ["model=target", "model._target_=tests.user_models.SmallCNN",
            "+model.classes=${data.num_classes}", "+model.width=12", "data.batch_size=8",
            "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5", "epochs=4",
            "logger=none", "trainer.progress=line", "trainer.checkpoint_interval_s=0"]  # fmt: skip
    run_dir = tmp_path / "run"
    proc = start([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_rows(run_dir, 2, proc)
    proc.kill()
    proc.communicate()
    assert (run_dir / "last.pt").exists() and len(read_metrics(run_dir)) < 4
    assert resume_in_process(run_dir).status == "completed"  # the job of resume=<dir>
    rows = comparable(read_metrics(run_dir))
    assert [r["epoch"] for r in rows] == list(range(4))
    assert rows == reference(tmp_path, args)


# the three through the CLI: exit 2, one line, nothing written
CLI_BAD = [
    ([*TINY, "+model.hiden=8"], "model.hiden", "TinyNet has no argument 'hiden'"),
    (["model=target", "model._target_=mypkg.nets.Net"], "model._target_", "No module"),
    ([*TINY, "optimizer.param_groups={backbone.*:1}"], "optimizer.param_groups", "head.weight"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "key", "words"), CLI_BAD, ids=[b[1] for b in CLI_BAD])
def test_a_bad_target_is_exit_2_naming_the_key_nothing_written(tmp_path, overrides, key, words):
    # the first as a `python -m runner` process, the others by the same cli() in this process
    run = run_cli if overrides is CLI_BAD[0][0] else cli_in_process
    proc = run(*overrides, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"config error: {key}" in proc.stderr and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()  # no run dir, nothing written


BAD = [
    (["model=target", "model._target_=tests.user_models.Nope"], "model._target_", "imported"),
    (["model=target"], "model._target_", "must be set"),
    (["model=target", "model._target_=tests.user_models.SmallCNN"], "model.classes", "required"),
    ([*TINY, "+model.hidden=-4"], "model._target_", "building the model failed"),
    (["optimizer=target", "optimizer._target_=torch.optim.Nadam"], "optimizer._target_", ""),
    (["optimizer=target", "optimizer._target_=torch.optim.RMSprop", "+optimizer.alfa=0.9"],
     "optimizer.alfa", "RMSprop has no argument"),
    (["optimizer=target", "optimizer._target_=torch.optim.RMSprop", "+optimizer.alpha=-1"],
     "optimizer.alpha", "Invalid alpha"),
    (["optimizer=target", "optimizer._target_=torch.optim.RMSprop", "optimizer.lr=-1"],
     "optimizer.lr", "> 0"),
    (["optimizer=target", "optimizer._target_=torch.optim.RMSprop",
      "+optimizer.weight_decay=-1"], "optimizer.weight_decay", ">= 0"),
    # a word for a parameter torch annotates as a number: the key, not the class failing
    (["scheduler=target", "scheduler._target_=torch.optim.lr_scheduler.ExponentialLR",
      "+scheduler.gamma=abc"], "scheduler.gamma", "ExponentialLR takes a number (float)"),
    (["scheduler=target", "scheduler._target_=torch.optim.lr_scheduler.StepLR",
      "+scheduler.step_size=x"], "scheduler.step_size", "StepLR takes a number (int)"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "key", "words"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_target_is_a_config_error_naming_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    assert err.value.key == key and words in str(err.value), str(err.value)


def test_every_parameter_of_a_pattern_group_trains_at_its_groups_lr():
    """The optimizer built from patterns holds each parameter once, at lr x multiplier."""
    from runner.train.builders import build_training_parts

    cfg = make_cfg(*TINY, "optimizer.lr=0.1", "optimizer.param_groups={backbone.*:0.3,head.*:1}")
    _, _, model, opt = build_training_parts(run_spec(cfg))
    by_group = {g["name"]: (g["lr"], {id(p) for p in g["params"]}) for g in opt.param_groups}
    assert by_group["backbone"][0] == pytest.approx(0.03) and by_group["head"][0] == 0.1
    assert by_group["backbone"][1] == {id(p) for p in model.backbone.parameters()}
    assert by_group["head"][1] == {id(p) for p in model.head.parameters()}
    assert not math.isnan(by_group["head"][0])


@pytest.mark.slow
def test_target_components_run_on_their_own_under_the_fused_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=fused",
        *TINY,
        "seed=0,1",
        "epochs=1",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    notice = "runs on its own: model=TinyNet (fused: mlp, logistic, lenet, cnn1d, gpt)"
    assert out.count(notice) == 2
    statuses = [json.loads(p.read_text()) for p in sweep.glob("*/status.json")]
    assert [s["status"] for s in statuses] == ["completed"] * 2
    assert not any("fused_jobs" in s for s in statuses)


def test_options_are_moved_before_the_overrides_for_hydras_parser():
    argv = ["--config-dir", "c", "model=x", "-m", "seed=0,1", "--cfg", "job", "epochs=2"]
    assert options_first(argv) == [
        "--config-dir",
        "c",
        "-m",
        "--cfg",
        "job",
        "model=x",
        "seed=0,1",
        "epochs=2",
    ]


def test_a_config_dir_that_does_not_exist_is_a_config_error(tmp_path):
    for argv in (["--config-dir", str(tmp_path / "nope")], [f"--config-dir={tmp_path}/nope"]):
        proc = cli_in_process(*argv, "epochs=1", "logger=none", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("config error: --config-dir=") and "no such directory" in (
            proc.stderr
        )
        assert proc.stderr.count("\n") == 1 and not list(tmp_path.iterdir())
