"""Names a person can read (#33): run dirs outputs/runs/<name>/<date>_<time>, a sweep's jobs
named by their overrides, range tests under outputs/lr_find/, W&B runs named as their dirs."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

import runner.__main__ as entry
from runner.config.compose import compose_config
from runner.config.resolvers import dir_name
from runner.io.loggers import run_label
from runner.run.train import train
from runner.train.builders import build_run
from schedulers.binder import plain
from tests.helpers import (
    cli_in_process,
    make_cfg,
    make_values,
    read_metrics,
    release_kept_locks,
    sweep_job,
)

STAMP = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}"  # <date>_<time>, microseconds in it


def run_dir_of(*overrides: str) -> str:
    """hydra.run.dir as Hydra resolves it for `python -m runner <overrides>`."""
    return str(compose_config(list(overrides), with_hydra=True).hydra.run.dir)


@pytest.mark.parametrize(("overrides", "name"), [
    ([], "mlp-cosine"),  # <model>-<scheduler> as chosen
    (["model=lenet", "scheduler=step"], "lenet-step"),
    (["+experiment=lecture_lenet"], "lecture_lenet"),  # the experiment preset's name
    (["+experiment=lecture_lenet", "name=mine"], "mine"),  # the name key wins
    (["name=a/b"], "a_b"),  # one dir, not two
])  # fmt: skip
def test_a_run_dir_is_named_by_the_run(overrides, name):
    """Before: outputs/runs/<date>/<time> whatever the run."""
    assert re.fullmatch(f"outputs/runs/{re.escape(name)}/{STAMP}", run_dir_of(*overrides))


def test_resume_still_names_its_own_dir(tmp_path):
    assert run_dir_of(f"resume={tmp_path}") == str(tmp_path)


def job_dir_of(*overrides: str) -> str:
    """hydra.sweep.subdir as a sweep's job with these overrides gets it."""
    cfg = compose_config(list(overrides), with_hydra=True)
    with open_dict(cfg):
        cfg.hydra.job.num = 3
    return str(cfg.hydra.sweep.subdir)


def test_a_sweep_job_dir_is_named_by_its_overrides():
    """Before: 0, 1, ... by launch order."""
    assert job_dir_of("seed=1", "scheduler=cosine") == "scheduler=cosine,seed=1"
    assert job_dir_of() == "job3"  # no override of its own: not the sweep dir itself
    assert job_dir_of("data=mnist1d", "data.root=/tmp/x") == "data.root=_tmp_x,data=mnist1d"
    # resume= is not what a job is
    assert job_dir_of("seed=1", "resume=somewhere", "epochs=2") == "epochs=2,seed=1"
    # a long value: its head and a hash, the other keys still in sight; other values differ
    a, b = (job_dir_of("data=mnist1d", f"data.root=/{c * 60}", "seed=0") for c in "ab")
    assert a.startswith("data.root=_aaaaaaaaaaa~") and a.endswith(",data=mnist1d,seed=0")
    assert a != b and len(a) < 80


def test_long_names_stay_one_valid_name():
    long_a, long_b = "x=" + "a" * 300, "x=" + "a" * 299 + "b"
    assert len(dir_name(long_a).encode()) <= 240 and dir_name(long_a) != dir_name(long_b)
    assert dir_name("..") == "__"


def test_resume_takes_a_sweep_job_dir_as_given(tmp_path):
    """`resume=<sweep>/epochs=1,logger=none,seed=0` as a shell passes it: before, Hydra's
    override parser read its `=` as a syntax error (and a `,` as a sweep)."""
    overrides = ["epochs=1", "logger=none", "seed=0"]
    job = sweep_job(tmp_path / "sweep", *overrides)
    assert train(make_cfg(*overrides), job, overrides=overrides).status == "completed"
    proc = cli_in_process(f"resume={job}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "is already complete" in proc.stdout


def test_w_and_b_names_a_run_as_its_dir_says():
    """Before: a single run without overrides had W&B's random name, a sweep's job its
    overrides in the order given (not its dir's name)."""
    run = Path("/x/outputs/runs/mlp-cosine/2026-12-06_17-34-01-123456")
    assert run_label(run, None) == "mlp-cosine/2026-12-06_17-34-01-123456"
    job = Path("/x/outputs/multirun/2026-12-06/17-34-01-123456/scheduler=cosine,seed=1")
    assert run_label(job, "2026-12-06_17-34-01-123456") == "scheduler=cosine,seed=1"


@contextlib.contextmanager
def logging_kept():
    """Hydra configures logging for its run (disabling the loggers that exist, `schedlab`
    among them): put every logger back as it was for the tests after this one."""
    loggers = [logging.getLogger(), *(
        x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)
    )]  # fmt: skip
    saved = [(x, x.level, x.disabled, list(x.handlers), x.propagate) for x in loggers]
    try:
        yield
    finally:
        for logger, level, disabled, handlers, propagate in saved:
            logger.setLevel(level)
            logger.disabled, logger.handlers[:], logger.propagate = disabled, handlers, propagate


def in_process(*args: str, cwd: Path, monkeypatch) -> int:
    """`python -m runner <args>` run whole in this process (Hydra included); its exit code."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "")
    monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")  # conf/ found from the file, as -m runner
    monkeypatch.setattr(sys, "argv", ["runner", *args])
    monkeypatch.setattr(entry, "_CLI_STOP", None)
    try:
        with logging_kept(), contextlib.redirect_stdout(io.StringIO()):
            entry.cli()
        return 0
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        release_kept_locks()


QUIET = ("hydra/job_logging=disabled", "hydra/hydra_logging=disabled")


@pytest.mark.slow
def test_a_sweep_names_its_jobs_by_their_overrides_and_reports_them(tmp_path, monkeypatch):
    """Before: jobs 0 and 1. The report finds them under their names, and the same sweep
    run again finds each job complete in its dir (by name, whatever the launch order)."""
    sweep = tmp_path / "sweep"
    args = ["-m", "epochs=1", "logger=none", "seed=1,0", f"hydra.sweep.dir={sweep}", *QUIET]
    assert in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch) == 0
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["epochs=1,logger=none,seed=0", "epochs=1,logger=none,seed=1"]
    for job in jobs:
        assert [r["epoch"] for r in read_metrics(sweep / job)] == [0]
    assert "| `(defaults)` | 2 | 2 | 0 |" in (sweep / "report.md").read_text()  # both found
    before = {job: (sweep / job / "metrics.jsonl").read_bytes() for job in jobs}
    args[3] = "seed=0,1"  # the other order: each job still finds its own dir
    assert in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch) == 0
    assert {job: (sweep / job / "metrics.jsonl").read_bytes() for job in jobs} == before


def test_a_range_test_goes_under_outputs_lr_find(tmp_path, monkeypatch):
    """Before: outputs/runs/<date>/<time>, among the training runs."""
    from runner.lr_find import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")  # as in_process
    monkeypatch.setattr(
        sys, "argv", ["runner.lr_find", "logger=none", "lr_find.num_iters=10", *QUIET]
    )
    with logging_kept(), contextlib.redirect_stdout(io.StringIO()):
        cli()
    (found,) = (tmp_path / "outputs").glob("*/*/*/lr_find.csv")
    where = found.parent.relative_to(tmp_path / "outputs")
    assert re.fullmatch(f"lr_find/mlp-cosine/{STAMP}", str(where))


def test_a_run_saved_before_the_later_keys_resumes(tmp_path):
    """config.yaml and last.pt without the keys added since (`name`, trainer.save_best,
    the trainer knobs, no_decay, branch...): the resume fills each in as that run behaved,
    where it failed validation (a key missing)."""
    from runner.config.later import LATER_KEYS

    def drop(cfg):
        for key in LATER_KEYS:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            del node[leaf]

    run_dir = tmp_path / "old"
    cfg = make_cfg("epochs=1", "logger=none", "scheduler=step")  # explicit lengths: extendable
    assert train(cfg, run_dir).status == "completed"
    saved = OmegaConf.load(run_dir / "config.yaml")
    drop(saved)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    state = torch.load(run_dir / "last.pt", weights_only=False)
    trained = OmegaConf.create(state["config"])
    drop(trained)
    state["config"] = OmegaConf.to_yaml(trained)
    torch.save(state, run_dir / "last.pt")
    more = [f"resume={run_dir}", "epochs=2"]
    result = train(make_cfg(*more, "logger=none"), tmp_path / "x", overrides=more)
    assert result.status == "completed" and result.epochs_done == 2
    resumed = OmegaConf.load(run_dir / "config.yaml")
    for key, value in LATER_KEYS.items():  # as it ran before
        assert OmegaConf.select(resumed, key) == value, key


# -- trainer.save_best: what best.pt holds -------------------------------------------------------
RESUMABLE = {"optimizer", "scheduler", "rng", "scaler", "wandb_id", "rows_sent"}


@pytest.mark.parametrize("save_best", ["full", "weights", "false"])
def test_save_best_decides_what_best_pt_holds(tmp_path, save_best):
    """Before: best.pt was always a whole checkpoint (optimizer, scheduler, RNGs), a second
    last.pt in size once the best epoch was not the last."""
    cfg = make_cfg(
        "epochs=2",
        "logger=none",
        "optimizer=adam",
        "trainer.checkpoint_interval_s=0",
        f"trainer.save_best={save_best}",
    )
    assert train(cfg, tmp_path).status == "completed"
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(last) >= RESUMABLE  # resume= needs all of it, whatever best.pt holds
    if save_best == "false":
        assert not (tmp_path / "best.pt").exists()
        return
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    rows = read_metrics(tmp_path)
    assert best["progress"]["best_metric"] == max(r["val/acc"] for r in rows)
    model = build_run(cfg).model
    model.load_state_dict(best["model"])  # loads into the model either way
    if save_best == "full":
        assert set(best) >= RESUMABLE
    else:
        assert set(best) == {"model", "progress", "config", "data"}
        size = (tmp_path / "best.pt").stat().st_size
        assert size < 0.6 * (tmp_path / "last.pt").stat().st_size  # no Adam moments, no RNGs


@pytest.mark.slow
def test_a_resume_is_exact_with_best_pt_weights_only(tmp_path):
    """best.pt of the default trainer.save_best=weights cannot resume a run: last.pt does,
    to the same rows as a run never stopped."""
    args = ["logger=none", "scheduler=step", "trainer.checkpoint_interval_s=0"]
    train(make_cfg(*args, "epochs=1"), tmp_path / "a")
    more = [f"resume={tmp_path / 'a'}", "epochs=2"]
    train(make_cfg(*more, *args), tmp_path / "x", overrides=more)
    train(make_cfg(*args, "epochs=2"), tmp_path / "b")
    strip = [
        {k: v for k, v in r.items() if not k.startswith("time/")}
        for r in read_metrics(tmp_path / "a")
    ]
    assert strip == [
        {k: v for k, v in r.items() if not k.startswith("time/")}
        for r in read_metrics(tmp_path / "b")
    ]


# -- the data set loaded once per process ------------------------------------------------------
@pytest.fixture
def loads(monkeypatch):
    """The data sets built from their settings in this process (each a full load)."""
    from runner.data import sets

    built = []

    def counting(settings):
        built.append(settings["name"])
        return real(settings)

    real = sets._build
    sets.clear_cache()
    monkeypatch.setattr(sets, "_build", counting)
    yield built
    sets.clear_cache()


STREAMED = ("data=dataset", "data.in_memory=true")  # FakeData; num_classes: null, inferred


@pytest.mark.slow
def test_a_run_and_its_resume_load_the_data_once(tmp_path, monkeypatch, loads):
    """Before: 4 loads for the run (the CLI's check and the run's validation each loaded it
    with num_classes null, then again filled in), none fewer on the resume's way."""
    run = tmp_path / "run"
    args = ["epochs=1", "logger=none", "scheduler=step", *STREAMED, *QUIET]
    assert in_process(*args, f"hydra.run.dir={run}", cwd=tmp_path, monkeypatch=monkeypatch) == 0
    assert (
        in_process(f"resume={run}", "epochs=2", *QUIET, cwd=tmp_path, monkeypatch=monkeypatch) == 0
    )
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1]
    assert loads == ["dataset"]


@pytest.mark.slow
def test_a_sweep_in_one_process_loads_the_data_once(tmp_path, monkeypatch, loads):
    """Before: twice per job (null num_classes, then filled in, evicting each other)."""
    args = ["-m", "epochs=1", "logger=none", "seed=0,1", *STREAMED, *QUIET]
    assert (
        in_process(
            *args, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, monkeypatch=monkeypatch
        )
        == 0
    )
    assert len(list((tmp_path / "sweep").glob("*/last.pt"))) == 2
    assert loads == ["dataset"]


def test_a_relative_and_an_absolute_root_are_the_same_data(tmp_path, monkeypatch, loads):
    """Before: the CLI's check read data.root=data, the run the absolute path it records:
    mnist1d's set loaded (and read from its cache file) twice."""
    from runner.data.sets import load_data

    monkeypatch.chdir(tmp_path)
    small = ["data=mnist1d", "data.num_samples=100"]
    first = load_data(make_values(*small, "data.root=data")["data"])
    again = load_data(make_values(*small, f"data.root={tmp_path / 'data'}")["data"])
    assert again is first and loads == ["mnist1d"]
    load_data(make_values(*small, "data.seed=1")["data"])  # other data: loaded
    assert loads == ["mnist1d", "mnist1d"]


def test_data_a_run_wrote_into_is_loaded_again(loads, caplog):
    """The held tensors are shared by every run in the process: one changed in place (a
    model writing into its input batch, a view of them) is not handed to the next run."""
    from runner.data.sets import load_data

    cfg = make_cfg("logger=none")
    data = load_data(plain(cfg.data))
    assert load_data(plain(cfg.data)) is data and loads == ["digits"]
    batch = data.x_val[:8]  # a val batch is a view of the held tensor
    batch.relu_()
    fresh = load_data(plain(cfg.data))
    assert loads == ["digits", "digits"] and "changed in place" in caplog.text
    assert fresh is not data and fresh.x_val.min() < 0  # standardised: the negatives are back


def test_a_job_dir_given_as_resume_or_branch_is_quoted_for_hydra(tmp_path):
    """A sweep job's dir holds `=` and `,` (named by its overrides), which Hydra's override
    parser misreads: given to resume=, hydra.run.dir= or branch= (a trunk trained in a
    sweep) it is quoted, and the quoted override parses back to the path."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from runner.cli import quote_run_dirs

    job = tmp_path / "epochs=6,seed=0,trainer.keep_epochs=[3]"
    job.mkdir()
    args = quote_run_dirs([f"{k}={job}" for k in ("resume", "hydra.run.dir", "branch")])
    parsed = OverridesParser.create().parse_overrides(args)
    assert [o.value() for o in parsed] == [str(job)] * 3
    assert quote_run_dirs([f"branch={tmp_path / 'missing,x'}"]) == [
        f"branch={tmp_path / 'missing,x'}"  # not a dir: left for the check to name
    ]
