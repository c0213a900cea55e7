"""QA of the lecture reproduction (session 19): the MNIST-1D cache never hands a run data of
other arguments, and the lecture page says what each part trained with, what the lecture
says about a scheduler's state, and which claims are the page's own, not the lecture's."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shlex
import shutil

import numpy as np
import pytest

import runner.lecture as lecture
from runner.data import mnist1d
from schedulers.binder import plain
from schedulers.lecture import LECTURE
from tests.helpers import make_cfg

EPOCHS = (0, 50, 100, 150, 199)  # the printout's columns


def _mnist1d(root, samples: int) -> dict:
    return plain(make_cfg("data=mnist1d", f"data.root={root}", f"data.num_samples={samples}").data)


@pytest.fixture
def schedlab_warnings(monkeypatch, caplog):
    """The warnings of the `schedlab` logger (an in-process Hydra run earlier in this worker
    may have disabled it: logging.config's disable_existing_loggers)."""
    monkeypatch.setattr(logging.getLogger("schedlab"), "disabled", False)
    with caplog.at_level(logging.WARNING, logger="schedlab"):
        yield caplog


def test_a_readable_cache_of_other_data_is_generated_again_not_trained_on(
    tmp_path, schedlab_warnings
):
    """A valid .npz of another config's set (copied over this one's name) or with shapes and
    labels the generator never makes was read as this set: 240 signals trained where 160
    were asked for, labels up to 99, exit 0. Now it is generated again, with a warning."""
    small, other = _mnist1d(tmp_path, 200), _mnist1d(tmp_path, 300)
    expected = mnist1d.load_mnist1d(small)
    mnist1d.load_mnist1d(other)
    path = mnist1d.cache_path(small)
    args = json.loads(str(np.load(path)["args"]))

    def loads_as_generated() -> None:
        got = mnist1d.load_mnist1d(small)
        for g, e in zip(got, expected, strict=True):
            assert g.shape == e.shape and (g == e).all()

    shutil.copy(mnist1d.cache_path(other), path)  # another set under this one's name
    loads_as_generated()
    assert "records other generator arguments" in schedlab_warnings.text
    # the right arguments recorded, but not what they generate
    crafted = {
        "x": np.zeros((160, 7), np.float32),  # 7 points, not 40
        "y": np.zeros(160, np.int64),
        "x_test": np.zeros((40, 7), np.float32),
        "y_test": np.zeros(40, np.int64),
    }
    wrong_labels = {**crafted, "x": np.zeros((160, 40)), "x_test": np.zeros((40, 40))}
    not_finite = {**wrong_labels, "x": np.full((160, 40), np.nan)}
    wrong_labels["y"] = np.full(160, 99)
    for arrays, why in (
        (crafted, "signals are not [N, 40]"),
        (wrong_labels, "labels are not digits"),
        (not_finite, "not finite"),
    ):
        np.savez(path, **arrays, args=np.array(json.dumps(args)))
        loads_as_generated()
        assert why in schedlab_warnings.text
    assert np.load(path)["x"].shape == (160, 40)  # and written again whole


def _no_training(monkeypatch, tmp_path) -> None:
    """Parts 3-5 with their sweeps, range test and runs replaced: what they write on the page
    around the results is what is checked."""

    def sweep(out, experiment, extra):
        out.mkdir(parents=True)
        (out / "report.csv").write_text("config,best_val_acc_mean\noptimizer.lr=0.01,0.9\n")
        return out

    class Found:
        suggestions = {"steepest": 0.3, "min_loss_div_10": 0.03}

    monkeypatch.setattr(lecture, "_sweep", sweep)
    monkeypatch.setattr(lecture, "_report_table", lambda sweep: "| # | config |")
    monkeypatch.setattr(lecture, "_budget_table", lambda sweep: "| strategy | budget |")
    monkeypatch.setattr(lecture, "find_lr", lambda spec, out: (0.03, Found()))
    monkeypatch.setattr(lecture, "_train", lambda overrides, run_dir: [{"val/acc": 0.9}])
    monkeypatch.setattr(lecture, "_plot_run", lambda rows, path, title: None)


@pytest.mark.parametrize("quick", [False, True])
def test_the_sweep_parts_say_what_they_trained_with(tmp_path, monkeypatch, quick):
    """Parts 3 and 4 train LeNet at lr 0.02, batch 64, 20 epochs, and at a cosine schedule,
    batch 64, 10 epochs: the page said neither, beside the lecture's script (lr 0.01, batch 16,
    StepLR, 10 epochs) a student is reproducing. Each now states its setting, less what its
    sweep varies, and the lecture script's."""
    _no_training(monkeypatch, tmp_path)
    epochs = 3 if quick else None
    schedulers = lecture.part_schedulers(tmp_path / "schedulers", quick, []).table
    assert schedulers.startswith(
        "**Setting:** lenet on digits, sgd momentum 0.9, lr 0.02, batch 64, "
        f"{epochs or 20} epochs (the lecture's LeNet script: sgd momentum 0.9, lr 0.01, "
        "scheduler step (StepLR 10, 0.1), batch 16, 10 epochs)."
    )
    init_lr = lecture.part_init_lr(tmp_path / "init_lr", quick, ["data.batch_size=32"]).table
    assert init_lr.startswith(
        f"**Setting:** lenet on digits, sgd momentum 0.9, scheduler cosine, batch 32, "
        f"{epochs or 10} epochs ("
    )


def test_the_page_says_what_a_scheduler_holds_and_heads_its_own_claims_as_its_own(
    tmp_path, monkeypatch
):
    """The lecture's _LRScheduler (optimizer, last_epoch from -1, base_lrs) and param_groups
    as dicts with their own lr were not on the page, whose traces show last_epoch 0 in the
    first epoch; and parts 5 and 6 (MNIST-1D, budgets) headed claims the lecture never made
    "Lecture:"."""
    monkeypatch.setattr(lecture, "write_curves", lambda out: [])  # the figures: tested elsewhere
    curves = lecture.part_curves(tmp_path / "curves", False, [])
    for said in ("_LRScheduler", "optimizer", "last_epoch", "from -1", "base_lrs"):
        assert said in curves.claim_en
    assert "param_groups is a list of dicts, each group with its own lr" in curves.claim_en
    assert "last_epoch" in curves.claim_zh and "字典列表" in curves.claim_zh
    assert "the constructor steps once from -1" in curves.differs
    _no_training(monkeypatch, tmp_path)
    mnist = lecture.part_mnist1d(tmp_path / "mnist1d", True, [])
    assert curves.in_lecture and not mnist.in_lecture
    page = lecture.to_markdown([curves, mnist])
    ours = page.split("\n## ")[2]
    assert "**Beyond the lecture:**" in ours and "**课程之外：**" in ours
    assert "Lecture:" not in ours and "**Lecture:**" in page.split("\n## ")[1]
    no_figures = dataclasses.replace(mnist, figures=[])  # its sweep's figures: not made here
    assert "<b>Beyond the lecture:</b>" in lecture.to_html([no_figures], tmp_path)
    # a section.json written before the field existed still loads (as the lecture's)
    old = {k: v for k, v in mnist.__dict__.items() if k != "in_lecture"}
    assert lecture.Section(**old).in_lecture


def test_make_lecture_curves_prints_every_param_groups_lr_as_torch_gives_it(
    tmp_path, monkeypatch, capsys
):
    """`make lecture-curves` printed group 0 alone: LambdaLR's second group (0.95 ** epoch),
    half of the lecture's demo, was not in the printout. Each line is its CSV's column
    (which tests/test_lecture.py checks equals torch's); spot-checked against torch's here."""
    from schedulers import lecture as toy

    monkeypatch.setattr(toy, "plot_lr_curves", lambda curves, path, title: path)
    toy.write_curves(tmp_path)
    printed = {
        line.split(" lr at ")[0].strip(): [float(v) for v in line.split(": ")[1].split()]
        for line in capsys.readouterr().out.splitlines()
    }
    assert set(printed) == {*LECTURE, "lambda group 0", "lambda group 1"} - {"lambda"}
    for label, lrs in printed.items():
        name, _, group = label.partition(" group ")
        with (tmp_path / f"lecture_{name}.csv").open() as f:
            column = [float(row[1 + int(group or 0)]) for row in list(csv.reader(f))[1:]]
        assert lrs == pytest.approx([column[e] for e in EPOCHS], rel=1e-3)
    assert printed["lambda group 1"] == pytest.approx([0.1 * 0.95**e for e in EPOCHS], rel=1e-3)


def test_a_single_runs_dir_given_to_the_report_says_how_to_plot_it(tmp_path):
    """A student's `python -m runner +experiment=lecture_lenet` writes no plot; the report,
    given its run dir, only said it is not a sweep dir. It now names the run's metrics and
    the command that plots it: the report of the dir above, every run of that name."""
    from runner.sweep.report import why_no_jobs

    run = tmp_path / "outputs" / "runs" / "lecture_lenet" / "2026-12-07_08-00-00-000000"
    (run / ".hydra").mkdir(parents=True)
    why = why_no_jobs(run)
    assert str(run / "metrics.jsonl") in why
    assert why.endswith(f"python -m runner.sweep.report {run.parent}")


def test_each_parts_command_carries_the_overrides_the_page_ran_it_with(tmp_path, monkeypatch):
    """Part 4 trained at epochs=10 but showed `+experiment=init_lr` (20 epochs) and
    `optimizer.lr=find` (20 epochs); part 6 showed the full grid for its reduced one; a quick
    page showed every command without its 3 epochs and 2 seeds. Each command now runs what
    its numbers came from (part 5's note: its quick jobs, not 40)."""
    _no_training(monkeypatch, tmp_path)
    init_lr = lecture.part_init_lr(tmp_path / "init_lr", False, []).command
    assert init_lr == (
        "python -m runner -m +experiment=init_lr epochs=10 ; python -m runner.lr_find "
        "model=lenet ; python -m runner model=lenet optimizer.lr=find epochs=10"
    )
    budgets = lecture.part_budgets(tmp_path / "budgets", False, [])
    assert budgets.command.startswith(
        "python -m runner -m +experiment=mnist1d_budgets 'hydra.sweeper.budgets=[10,20]'"
    )
    quick = lecture.part_schedulers(tmp_path / "quick", True, ["data=fake"])
    assert quick.command == (
        "python -m runner -m +experiment=lecture_schedulers epochs=3 "
        + shlex.join(["hydra.sweeper.params.seed='0,1'"])
    )
    mnist = lecture.part_mnist1d(tmp_path / "mnist1d", True, [])
    assert "data.num_samples=1000" in mnist.command and "40 jobs" not in mnist.differs


def test_a_presets_sweep_run_without_m_says_it_is_one_run(monkeypatch):
    """`python -m runner +experiment=lecture_schedulers` (the -m forgotten) trained one
    cosine job named lecture_schedulers, no sweep and no report, and said nothing: now a
    note names the swept keys it left at the config's values and says to add -m. A single
    job of the preset (every swept key given) and a preset without a sweep get no note."""
    from runner.cli import check_composition, unswept_note
    from runner.config.compose import compose_config
    from runner.run import check

    preset = "+experiment=lecture_schedulers"
    monkeypatch.setattr(check, "validate_and_hand_on", lambda cfg: None)  # the run's own check
    said = check_composition([preset, "logger=none"])  # python -m runner prints it
    assert said.startswith("note: the preset sweeps +lecture_schedule, seed (hydra.sweeper")
    assert "add -m to run the sweep" in said
    params = compose_config([preset], with_hydra=True).hydra.sweeper.params
    assert unswept_note(params, [preset, "+lecture_schedule=step", "seed=1"]) == ""
    assert unswept_note(params, [preset, "seed=1"]).startswith("note: the preset sweeps +lec")
    lenet = compose_config(["+experiment=lecture_lenet"], with_hydra=True).hydra.sweeper
    assert unswept_note(lenet.get("params"), ["+experiment=lecture_lenet"]) == ""


def test_the_html_page_links_part_1s_traces(tmp_path):
    """index.html showed part 1's links as raw markdown, `[StepLR](curves/trace_step.md)`;
    they are links now (relative to the page, as in index.md), the text around them escaped."""
    section = lecture.Section(
        "1. t", "en", "zh", "cmd", table="Traces: [StepLR](curves/trace_step.md), a<b."
    )
    page = lecture.to_html([section], tmp_path)
    assert '<p>Traces: <a href="curves/trace_step.md">StepLR</a>, a&lt;b.</p>' in page
    assert "](curves" not in page
