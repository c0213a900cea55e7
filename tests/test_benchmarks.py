"""The benchmarks stay runnable (they are not timed here: `make bench` measures)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from schedulers.binder import plain

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_overhead_benchmark_runs_its_quick_job():
    import bench_overhead

    payload = bench_overhead.main(["--quick", "--no-lightning"])
    result = payload["results"]["digits MLP"]
    assert result["hand"] > 0 and result["runner"] > 0 and result["hand + guarantees"] > 0
    assert result["runner, bare"] > 0
    assert payload["machine"]["cores"] >= 1


def test_the_bare_runner_keeps_no_checkpoint_and_sends_nothing_to_w_and_b(tmp_path):
    """bench_overhead's "runner, bare": the runner's loop with nothing to pay for but its
    metrics.jsonl, so its ratio to the hand loop is the engine's own share."""
    import bench_overhead

    from runner.config.schema import run_spec
    from runner.io.background import Background
    from runner.io.loggers import open_logger
    from runner.train.builders import build_run
    from tests.helpers import make_cfg

    cfg = make_cfg(*bench_overhead.BARE, "epochs=2", "trainer.progress=line")
    data = build_run(run_spec(cfg)).data
    with (
        Background() as background,
        open_logger(cfg.logger, tmp_path, {}, [], None, background=background) as logger,
    ):
        assert logger.wandb_run is None
        bench_overhead.runner_loop(cfg, data, logger, tmp_path, background, "")
    assert not list(tmp_path.glob("*.pt"))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) >= 2


def test_the_hand_loop_with_the_guarantees_keeps_what_the_runner_keeps(tmp_path, monkeypatch):
    """bench_overhead's "hand + guarantees": last.pt (before the first batch, then the last
    epoch, every RNG in it), best.pt, and one W&B row per epoch."""
    import bench_overhead
    import torch

    from runner.config.compose import compose_config
    from runner.config.schema import run_spec
    from runner.train.builders import build_run

    cfg = compose_config(["epochs=3", "trainer.device=cpu"])
    data = build_run(run_spec(cfg)).data
    saves, logged = [], []
    real_save = bench_overhead.Guarantees.save

    def save(self, obj, name):
        saves.append((name, obj["epoch"]))
        real_save(self, obj, name)

    class Run:  # records what reaches W&B
        def log(self, row):
            logged.append(row)

    monkeypatch.setattr(bench_overhead.Guarantees, "save", save)
    bench_overhead.hand_loop(cfg, data, (Run(), tmp_path))
    assert saves[0] == ("last.pt", 0) and ("last.pt", 3) in saves
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert last["epoch"] == 3 and len(last["rng"]) == 4
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["epoch"] == 1 + max(range(3), key=lambda e: (logged[e]["val/acc"], -e))
    assert [r["epoch"] for r in logged] == [0, 1, 2]
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_fused_benchmark_runs_its_quick_sweep():
    import bench_fused

    payload = bench_fused.main(["--quick"])
    result = payload["results"]["digits MLP"]
    assert result["sweep basic"] > 0 and result["sweep fused"] > 0
    assert result["training ratio"] > 0


@pytest.mark.slow
def test_stream_benchmark_runs_its_quick_jobs():
    import math

    import bench_stream

    payload = bench_stream.main(["--quick"])
    (job,) = payload["results"]["vs hand"].values()
    assert job["hand"] > 0 and job["runner"] > 0 and math.isfinite(job["ratio"])
    assert job["hand, longer"] > 0 and job["runner, longer"] > 0
    assert math.isfinite(job["per-epoch ratio"]) and math.isfinite(job["runner fixed s"])
    assert job["steps"]["hand"] == job["steps"]["runner"] == 2  # 128 samples, batch 64, 1 epoch
    digits = payload["results"]["digits"]
    assert digits["in memory"] > 0 and digits["streamed"] > 0 and digits["hand"] > 0
    assert all(math.isfinite(digits[k]) for k in ("streamed / in memory", "streamed / hand"))
    assert set(digits["steps"].values()) == {23}  # 1437 training digits, batch 64, 1 epoch


@pytest.mark.slow
def test_lm_benchmark_runs_its_quick_job_and_prints_the_ratio(capsys):
    import math

    import bench_lm

    payload = bench_lm.main(["--quick", "--device", "cpu"])
    ((title, result),) = payload["results"].items()
    for name in ("hand", "runner, bare", "runner"):
        assert result[f"{name} tokens/s"] > 0
    assert math.isfinite(result["ratio"]) and math.isfinite(result["bare ratio"])
    out = capsys.readouterr().out
    assert f"{title}: hand " in out and f"ratio runner / hand {result['ratio']:.3f}" in out


@pytest.mark.slow
def test_the_lm_hand_loop_trains_what_the_runner_trains(tmp_path):
    """bench_lm compares like with like: the hand-written loop's last validation loss is the
    runner's (the same GPT, init, AdamW groups, per-step cosine, clipping and windows)."""
    import bench_lm
    import torch

    from runner.config.compose import compose_config
    from runner.data.sets import load_data
    from runner.run.train import train
    from tests.helpers import read_metrics

    overrides = [*bench_lm.COMMON, *bench_lm.QUICK[next(iter(bench_lm.QUICK))], *bench_lm.BARE]
    overrides += ["trainer.device=cpu", f"data.cache_dir={tmp_path / 'cache'}"]
    cfg = compose_config(overrides)
    assert train(cfg.copy(), tmp_path / "run").status == "completed"
    runner_val = read_metrics(tmp_path / "run")[-1]["val/loss"]
    hand_val = bench_lm.hand_loop(cfg, load_data(plain(cfg.data)), torch.device("cpu"), False)
    assert abs(hand_val - runner_val) < 1e-4 * runner_val


def test_a_language_models_accuracy_is_counted_without_argmax(monkeypatch):
    """bench_lm found torch's CPU argmax over a 256-byte vocabulary costing more than the
    head's matmul, 3-4 % of a small GPT's step: the next-token accuracy (train/acc per step,
    val/acc) compares the target's score with the row's max instead, with the same counts."""
    import torch

    from runner.train import steps

    torch.manual_seed(0)
    logits = torch.randn(4, 8, 256)
    y = torch.randint(0, 256, (4, 8))
    y[0, :5] = logits[0, :5].argmax(-1)  # some right
    right = logits.argmax(-1) == y
    assert right.sum() >= 5

    def no_argmax(*args, **kwargs):
        raise AssertionError("argmax on a language model's scores")

    monkeypatch.setattr(torch.Tensor, "argmax", no_argmax)
    assert torch.equal(steps.hits(logits, y), right.float().mean(-1).sum())
    _, (acc,) = steps.evaluate(lambda x: logits, [(None, y)])
    assert acc == right.sum().item() / y.numel()


def test_a_language_model_validates_in_batches_of_about_4096_tokens(tmp_path):
    """bench_lm found one validation batch of all 16k tokens costing 20-35 % more CPU time
    than batches of 4096 (the activations outgrow the caches): a language model's
    validation batches hold 4096 tokens (at least the training batch); others 1024 samples."""
    import torch

    from runner.config.schema import run_spec
    from runner.run.train import SingleModel
    from runner.train.builders import build_run
    from tests.helpers import make_cfg

    def val_batch(*overrides):
        spec = run_spec(make_cfg(*overrides, "trainer.device=cpu", "logger=none"))
        return SingleModel(spec, build_run(spec), torch.Generator()).val_batch_size

    text = ("model=gpt", "data=text", f"data.cache_dir={tmp_path}", "data.source_tokens=65536")
    assert val_batch(*text, "data.block_size=64", "data.batch_size=16") == 64
    assert val_batch(*text, "data.block_size=32", "data.batch_size=256") == 256
    assert val_batch("data.batch_size=64") == 1024  # digits


def test_the_startup_benchmark_trains_each_round_into_new_run_dirs(tmp_path):
    """bench_startup timed "already complete" from its second round on, when every round
    ran into one run dir: each round's training commands now name dirs of their own, and
    only the last row runs a command again into its complete run dir (exit 0: nothing to
    do), as a user rerunning it would."""
    import bench_startup

    rounds = [bench_startup._commands("python", tmp_path, r) for r in range(2)]
    assert list(rounds[0]) == list(rounds[1])
    trains = ("python -m runner epochs=1 (W&B offline)", "python -m runner epochs=1 logger=none")
    dirs = [
        [a for a in commands[name][0] if a.startswith("hydra.run.dir=")]
        for commands in rounds
        for name in trains
    ]
    assert all(len(d) == 1 for d in dirs) and len({d[0] for d in dirs}) == 4
    for commands in rounds:
        again = commands["the same command again (its run dir complete)"]
        assert again == commands["python -m runner epochs=1 logger=none"]
        assert commands["python -m runner optimizer.lr=-1 (a config error)"][1] == 2
