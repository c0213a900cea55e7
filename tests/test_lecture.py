"""`python -m runner.lecture quick=true`: every part runs and the page holds what it claims."""

from __future__ import annotations

import base64
import csv
import io
import re
from pathlib import Path

import pytest

from runner.lecture import BUDGETS, BUDGETS_QUICK, PARTS, main, parse_args
from schedulers.lecture import LECTURE
from tests import browser_check
from tests.helpers import (
    CONF,
    check_tiny_budget_sweep,
    job_dirs,
    make_cfg,
    read_metrics,
    report_rows,
    torch_reference,
)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("lecture")
    return main(["quick=true", f"out={out}"])


@pytest.mark.slow
def test_every_part_has_a_section_with_its_figures(page):
    text = (page / "index.md").read_text()
    titles = re.findall(r"^## (.+)$", text, flags=re.M)
    assert len(titles) == len(PARTS) == 6
    for i, section in enumerate(text.split("\n## ")[1:], 1):
        ours = i > 4  # parts 5 and 6: the page's own question, not the lecture's
        heads = ["**Beyond the lecture:**", "**课程之外：**"] if ours else ["**Lecture:**"]
        heads += [] if ours else ["**讲座：**"]
        assert all(h in section for h in heads) and "```bash" in section
        figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section)
        assert figures, section[:80]
        for f in figures:
            assert (page / f).stat().st_size > 1000, f
    assert "get_lr()" in text  # the documented difference at the milestones


@pytest.mark.slow
def test_the_budgets_part_trains_trunks_before_branches_into_one_budget_report(page):
    """Part 6 is `python -m runner -m +experiment=mnist1d_budgets` at budgets 10 and 12, one
    seed, 500 signals: hydra/sweeper=budgets end to end (tests/test_budget_preset.py has the
    sweeper's plan and order in process)."""
    check_tiny_budget_sweep(page / "budgets" / "sweep")


@pytest.mark.slow
def test_the_scheduler_sweep_ranks_all_six_and_lambda_keeps_one_lr_per_group(page):
    """Part 3's sweep (+experiment=lecture_schedulers, quick: 3 epochs, seeds 0 and 1)."""

    sweep = page / "schedulers" / "sweep"
    rows = report_rows(sweep)
    names = ["step", "multistep", "exponential", "cosine", "plateau", "lambda"]
    assert set(rows) == {f"+lecture_schedule={n}" for n in names}
    assert all(r["completed"] == "2" for r in rows.values())
    lams = [d for o, d in job_dirs(sweep).items() if o.startswith("+lecture_schedule=lambda")]
    assert len(lams) == 2
    for row in (r for lam in lams for r in read_metrics(lam)):  # its scaled lecture lambdas
        e = row["epoch"]
        assert row["lr/features"] == pytest.approx(0.02 * 0.1 ** (e * 10 // 3), rel=1e-12)
        assert row["lr/classifier"] == pytest.approx(0.02 * 0.95 ** (e * 200 / 3), rel=1e-12)


@pytest.mark.slow
def test_the_toy_curves_on_the_page_equal_torch(page):
    for name in LECTURE:
        with (page / "curves" / f"lecture_{name}.csv").open() as f:
            rows = list(csv.reader(f))[1:]
        assert [[float(v) for v in r[1:]] for r in rows] == torch_reference(name)


@pytest.mark.slow
def test_html_is_self_contained_and_every_image_decodes(page):
    from PIL import Image

    doc = (page / "index.html").read_text()
    images = re.findall(r"<img [^>]*src='data:image/png;base64,([^']+)'", doc)
    markdown_figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (page / "index.md").read_text())
    assert len(images) == len(markdown_figures) >= 10
    for data in images:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        img.verify()
    assert "src='http" not in doc and 'src="' not in doc  # nothing fetched from elsewhere


@pytest.mark.slow
def test_rerun_reuses_finished_parts(page, capsys):
    again = main(["quick=true", f"out={page.parent}", "part=lenet"])
    assert again == page
    assert "lenet: done before, reused" in capsys.readouterr().out


def test_help_shows_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "part=all|curves|lenet|schedulers|init_lr|mnist1d|budgets" in out
    assert "--config-dir" in out


@pytest.mark.parametrize("arg", ["part=nope", "quick=maybe", "colour=red", "quick"])
def test_bad_arguments_are_refused(arg, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args([arg])
    assert exit_.value.code == 2  # a bad argument, as the runner's other commands say it
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.slow
@pytest.mark.skipif(
    browser_check.chromium() is None, reason="needs Chromium (apt-get install chromium)"
)
def test_page_renders_in_headless_chromium_with_no_broken_image(page):
    shot = page / "screenshot.png"
    total, loaded = browser_check.check(page / "index.html", shot)
    assert total >= 10 and loaded == total
    assert shot.stat().st_size > 10_000


# -- every preset, quick and full: every job of its sweep validates ------------------------------
def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job a multirun with `overrides` launches: the preset's own
    hydra.sweeper.params first, the command line after (it wins for a key in both), as
    Hydra's BasicSweeper combines them."""
    from runner.config.compose import compose_config, expand

    params = compose_config(overrides, with_hydra=True).hydra.sweeper.params or {}
    swept = [f"{key}={value}" for key, value in params.items()]
    return expand([*swept, *(o for o in overrides if not o.startswith("hydra."))])


def budget_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs hydra/sweeper=budgets launches first (runner/sweep/budget_sweeps.py): its
    branches need their trunks on disk, and each is a config check of its trunk's."""
    from omegaconf import OmegaConf

    from runner.config.compose import compose_config
    from runner.run.branch_points import branch_point
    from runner.sweep import budget_sweeps as plan
    from runner.sweep.launch import sweep_combinations

    node = OmegaConf.to_container(compose_config(overrides, with_hydra=True).hydra.sweeper)
    budgets = plan.check_plan(node["budgets"], node)
    task = [o for o in overrides if not o.startswith("hydra.")]
    combos = sweep_combinations(task, node["params"])
    keep = {
        name: plan.keep_epochs(compose_config, branch_point, combos[0], o, budgets)
        for name, o in node["trunks"].items()
    }
    return plan.first_batch(combos, budgets, node, keep)[0]


QUICK_SWEEP = ["epochs=3", "hydra.sweeper.params.seed='0,1'"]
PRESETS = {
    # runner.lecture's parts (runner/lecture.py), quick and full
    "lenet": [["+experiment=lecture_lenet"]],
    "lenet quick": [["+experiment=lecture_lenet", "epochs=3"]],
    "schedulers": sweep_jobs(["+experiment=lecture_schedulers", "logger=none"]),
    "schedulers quick": sweep_jobs(["+experiment=lecture_schedulers", "logger=none", *QUICK_SWEEP]),
    "init_lr": [
        *sweep_jobs(["+experiment=init_lr", "logger=none", "epochs=10"]),
        ["model=lenet", "logger=none", "optimizer.lr=find", "epochs=10"],  # range test + run
    ],
    "init_lr quick": [
        *sweep_jobs(["+experiment=init_lr", "logger=none", *QUICK_SWEEP]),
        ["model=lenet", "logger=none", "optimizer.lr=find", "epochs=3"],
    ],
    "mnist1d": sweep_jobs(["+experiment=mnist1d_schedules", "logger=none"]),
    "mnist1d quick": sweep_jobs(
        ["+experiment=mnist1d_schedules", "logger=none", "data.num_samples=1000", *QUICK_SWEEP]
    ),
    "budgets": budget_jobs(["+experiment=mnist1d_budgets", "logger=none", *BUDGETS]),
    "budgets quick": budget_jobs(["+experiment=mnist1d_budgets", "logger=none", *BUDGETS_QUICK]),
    # conf/experiment/*.yaml as the README runs them (cifar10_fast: below, it needs CIFAR)
    "experiment=mnist1d_budgets": budget_jobs(["+experiment=mnist1d_budgets"]),
    "experiment=mnist1d_models": sweep_jobs(["+experiment=mnist1d_models"]),
    "experiment=lecture_schedulers": sweep_jobs(["+experiment=lecture_schedulers"]),
    "experiment=init_lr": sweep_jobs(["+experiment=init_lr"]),
    "experiment=lecture_lenet": [["+experiment=lecture_lenet"]],
}


def test_the_presets_cover_every_experiment_file():
    named = {
        o.split("=")[1]
        for jobs in PRESETS.values()
        for job in jobs
        for o in job
        if o.startswith("+experiment=")
    }
    # cifar10_fast needs CIFAR; the language-model presets' jobs: tests/test_lm_presets.py
    elsewhere = {"cifar10_fast", "lm", "lm_tiny", "lm_schedules", "lm_schedules_gpu", "lm_budgets"}
    assert named | elsewhere == {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    assert len(PRESETS["schedulers"]) == 18 and len(PRESETS["schedulers quick"]) == 12
    assert len(PRESETS["mnist1d"]) == 40 and len(PRESETS["experiment=mnist1d_models"]) == 20
    # 3 seeds x (3 cosine budgets, 3 anytime runs, a trunk); quick: 1 seed x (2 + 3 + 1)
    assert len(PRESETS["experiment=mnist1d_budgets"]) == 21
    assert len(PRESETS["budgets quick"]) == 6


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_job_of_every_preset_validates(preset):
    from runner.run.check import validate

    for job in PRESETS[preset]:
        validate(make_cfg(*job))


def test_the_cifar10_preset_validates_given_its_data(monkeypatch):
    """cifar10_fast needs CIFAR-10 on disk: its files' check and loading are stood in for by
    the shape and size the real data set has (and two samples of that shape, which start-up
    runs the model on)."""
    import torch

    import runner.data.sets
    import runner.run.check
    from runner.config.schema import SCHEMAS, check_node
    from runner.data.sets import TensorData
    from runner.run.check import validate

    class Cifar(TensorData):
        @property
        def n_train(self) -> int:
            return 50_000

    x, y = torch.zeros(2, 3, 32, 32), torch.tensor([0, 9])
    fake = Cifar(x, y, x, y, num_classes=10)
    for module in (runner.data.sets, runner.run.check):
        monkeypatch.setattr(module, "load_data", lambda cfg: fake)
    monkeypatch.setattr(
        runner.data.sets,  # the data's checker (check_data) calls it there
        "validate_data",
        lambda cfg: check_node("data", cfg, SCHEMAS["data"]["cifar10"]),
    )
    for epochs in ([], ["epochs=3"]):
        validate(make_cfg("+experiment=cifar10_fast", *epochs))


def test_scaled_lecture_milestones_stay_strictly_increasing():
    from runner.config.resolvers import lecture_milestones

    assert lecture_milestones([50, 125, 160], 200) == [50, 125, 160]
    assert lecture_milestones([50, 125, 160], 20) == [5, 12, 16]
    for epochs in range(1, 60):
        ms = lecture_milestones([50, 125, 160], epochs)
        assert ms[0] >= 1 and all(b > a for a, b in zip(ms, ms[1:], strict=False)), epochs


def test_a_config_error_shows_resolved_values_not_interpolations():
    from runner.run.check import validate
    from schedulers import ConfigError

    with pytest.raises(ConfigError) as err:
        validate(make_cfg("scheduler=multistep", "scheduler.milestones=[${epochs},${epochs}]"))
    assert "scheduler.milestones=[20, 20]" in str(err.value) and "${" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("model.hidden=[${epochs},0]"))
    assert "model.hidden=[20, 0]" in str(err.value)


def test_a_quick_page_is_never_continued_by_a_full_run(tmp_path):
    """Each kind continues its own newest page; a page from before page.json is not reused."""
    from runner.lecture import PAGE, output_dir

    base = tmp_path / "lecture"
    (base / "2026-01-01_00-00-00").mkdir(parents=True)  # an old page: mode unknown
    quick_page = base / "2026-01-02_00-00-00"
    quick_page.mkdir()
    (quick_page / PAGE).write_text('{"quick": true}')
    assert output_dir(base, fresh=False, quick=True) == quick_page
    full = output_dir(base, fresh=False, quick=False)
    assert full.parent == base and full not in (quick_page, base / "2026-01-01_00-00-00")
    assert output_dir(base, fresh=True, quick=True) != quick_page


@pytest.mark.slow
def test_the_lenet_part_runs_on_streamed_data_given_to_the_lecture(tmp_path):
    """data= moves the LeNet run onto other data, here torchvision FakeData streamed
    through a DataLoader; the page says so, and a page on digits is not continued by it."""
    from omegaconf import OmegaConf

    from runner.lecture import PAGE

    data = ["data=dataset", "data.in_memory=false", "data.num_workers=0"]
    page = main(["quick=true", f"out={tmp_path}", "part=lenet", *data])
    assert OmegaConf.load(page / PAGE) == {"quick": True, "data": data}
    run = OmegaConf.load(page / "lenet" / "run" / "config.yaml")
    assert run.data.name == "dataset" and run.data.in_memory is False and run.data.batch_size == 16
    rows = [r for r in read_metrics(page / "lenet" / "run") if r.get("kind") != "step"]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[-1]["time/data_s"] > 0
    (section,) = (page / "index.md").read_text().split("\n## ")[1:]
    assert "Run on data=dataset data.in_memory=false data.num_workers=0" in section
    assert "8x8" not in section  # digits' note gave way
    # the command reproduces the page: its quick epochs=3, then the data given
    assert "python -m runner +experiment=lecture_lenet epochs=3 " + " ".join(data) in section
    assert main(["quick=true", f"out={tmp_path}", "part=curves"]) != page  # on digits: its own


def test_the_sweep_parts_hand_the_data_to_their_sweeps(tmp_path, monkeypatch):
    """Parts 3 and 4 run their sweeps with the data given to the lecture (the sweep itself,
    the range test and the run at its lr on streamed data: tests/test_stream.py; the
    in-process runs go through the same _compose as part 2's, tested above)."""
    import runner.lecture as lecture

    data = ["--config-dir=conf", "data=dataset", "data.in_memory=false"]
    swept: list[list[str]] = []

    def sweep_refused(args: list[str], cwd: Path) -> None:
        swept.append(args)
        raise RuntimeError("recorded")

    monkeypatch.setattr(lecture, "_runner_cli", sweep_refused)
    for part in (lecture.part_schedulers, lecture.part_init_lr):
        with pytest.raises(RuntimeError, match="recorded"):
            part(tmp_path / part.__name__, True, data)
    assert len(swept) == 2
    for args in swept:
        assert all(a in args for a in data) and args.index(data[1]) < args.index(data[2])


@pytest.mark.parametrize(
    "arg, key",
    [("data=nope", "data"), ("data.batch_size=0", "data.batch_size"),
     ("data.nope=1", "nope")],
)  # fmt: skip
def test_bad_data_for_the_lecture_is_exit_2_before_any_part_runs(tmp_path, capsys, arg, key):
    with pytest.raises(SystemExit) as exit_:
        main(["quick=true", f"out={tmp_path}", "part=lenet", arg])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("config error:") and key in err and len(err.splitlines()) == 1
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing made


@pytest.mark.slow
def test_a_projects_own_data_group_is_given_with_config_dir(tmp_path, monkeypatch, capsys):
    """`--config-dir DIR data=<its group>`, as for `python -m runner`: the group is found
    and validated (here the custom project's Shapes, one typo'd kwarg refused by name)."""
    from runner.lecture import check_data

    project = Path(__file__).resolve().parents[1] / "examples" / "custom_project"
    monkeypatch.syspath_prepend(str(project))
    for argv in (["--config-dir", str(project / "conf")], [f"--config-dir={project / 'conf'}"]):
        opts = parse_args([*argv, "data=shapes", "quick=true"])
        assert opts["data"] == [f"--config-dir={project / 'conf'}", "data=shapes"]
        check_data(opts["data"], ("lenet",))  # found and valid: no exit
    with pytest.raises(SystemExit) as exit_:
        check_data([*opts["data"], "+data.train.nosie=0.2"], ("lenet",))
    assert exit_.value.code == 2 and "nosie" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--config-dir"])
    assert exit_.value.code == 2 and "needs a directory" in capsys.readouterr().err
