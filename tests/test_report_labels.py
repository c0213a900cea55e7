"""The sweep report's labels (issue #34/#36 follow-up). A branch's row named its trunk by the
trunk's overrides, the branch's own among them again (`scheduler=wsd ... branch=<trunk:
scheduler=wsd ... epochs=60 ...> epochs=15`); and the overlays' legends, inside the axes,
were wider than the figure: labels were cut before `epochs=`, so the 15- and 30-epoch
branches could not be told apart. Sweep dirs are written without training
(tests/helpers.py write_job), as tests/test_report_branches.py does."""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib.image
import yaml

from runner.sweep.budgets import budget_figure, by_strategy
from runner.sweep.figures import save_png
from runner.sweep.jobs import group_jobs, load_jobs
from runner.sweep.report import OVERLAYS, overlay_figure
from tests.helpers import write_job

ROWS = [{"epoch": e, "lr/group0": 0.1, "val/acc": 0.5 + e / 10, "val/loss": 1.0} for e in range(3)]
WSD = ["scheduler=wsd", "scheduler.decay_fraction=0.2"]
KEEP = ["epochs=60", "trainer.keep_epochs=[13,25]"]
# what a branch sets itself beside its budget: a label of ~200 characters once its trunk's
# part and its `epochs=` are added
LONG = [
    *WSD,
    "scheduler.warmup_epochs=2",
    "optimizer=sgd",
    "optimizer.momentum=0.95",
    "optimizer.weight_decay=0.0005",
    "model.hidden=[256,256,256]",
    "trainer.average=ema",
    "trainer.ema_decay=0.999",
]


def short_name(overrides: list[str]) -> str:
    """A job dir's name from its overrides, short enough for the file system."""
    return f"job_{zlib.crc32(','.join(overrides).encode()):08x}"


def trunk_and_branches(root: Path, own: list[str], trunk: list[str], seeds: int = 3) -> None:
    """Per seed a trunk (under root/trunks) and its branches of 15 and 30 epochs (in
    root/sweep) setting `own`, beside a cosine run, so that no override is every job's."""
    for seed in range(seeds):
        trunk_dir = root / "trunks" / short_name([*trunk, f"seed={seed}"])
        if not trunk_dir.exists():
            write_job(trunk_dir, [*trunk, f"seed={seed}"], seed, "completed", ROWS)
        for epochs in (15, 30):
            overrides = [f"seed={seed}", *own, f"branch={trunk_dir}", f"epochs={epochs}"]
            job = root / "sweep" / short_name(overrides)
            write_job(job, overrides, seed, "completed", ROWS)
            config = {"seed": seed, "epochs": epochs, "branch": str(trunk_dir)}
            (job / "config.yaml").write_text(yaml.safe_dump(config))
        cosine = [f"seed={seed}", "scheduler=cosine", "epochs=15"]
        if not (root / "sweep" / ",".join(cosine)).exists():
            write_job(root / "sweep" / ",".join(cosine), cosine, seed, "completed", ROWS)


def test_a_branch_label_names_only_what_its_trunk_sets_differently(tmp_path):
    trunk_and_branches(tmp_path, WSD, [*WSD, *KEEP])
    groups = {
        g.label: sorted(j.seed for j in g.jobs) for g in group_jobs(load_jobs(tmp_path / "sweep"))
    }
    assert groups == {
        "scheduler=wsd scheduler.decay_fraction=0.2 "
        "branch=<trunk: epochs=60 trainer.keep_epochs=[13,25]> epochs=15": [0, 1, 2],
        "scheduler=wsd scheduler.decay_fraction=0.2 "
        "branch=<trunk: epochs=60 trainer.keep_epochs=[13,25]> epochs=30": [0, 1, 2],
        "scheduler=cosine epochs=15": [0, 1, 2],
    }


def test_trunks_that_differ_only_in_what_their_branches_set_stay_two_rows(tmp_path):
    """A WSD trunk and a trunk of the default schedule, each with WSD branches: left out of
    both, `scheduler=wsd` would merge them into one row; both keep their whole trunk part."""
    trunk_and_branches(tmp_path, ["scheduler=wsd"], ["scheduler=wsd", "epochs=60"], seeds=1)
    trunk_and_branches(tmp_path, ["scheduler=wsd"], ["epochs=60"], seeds=1)
    labels = sorted(g.label for g in group_jobs(load_jobs(tmp_path / "sweep")))
    assert labels == [
        "scheduler=cosine epochs=15",
        "scheduler=wsd branch=<trunk: epochs=60> epochs=15",
        "scheduler=wsd branch=<trunk: epochs=60> epochs=30",
        "scheduler=wsd branch=<trunk: scheduler=wsd epochs=60> epochs=15",
        "scheduler=wsd branch=<trunk: scheduler=wsd epochs=60> epochs=30",
    ]


def assert_every_label_whole(fig, labels: list[str], png: Path) -> None:
    """Each label in the figure's legend, whole (wrapped between overrides at most), the
    legend inside the figure and below the axes' curves, ticks and title; and the saved png
    is that figure, no more and no less."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    (ax,) = fig.axes
    assert ax.get_legend() is None  # not over the curves
    page = fig.bbox
    for box in [legend.get_window_extent(renderer)] + [
        t.get_window_extent(renderer) for t in legend.get_texts()
    ]:
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
    assert legend.get_window_extent(renderer).y1 <= ax.get_tightbbox(renderer).y0 + 1
    assert [" ".join(t.get_text().split()) for t in legend.get_texts()] == labels
    assert max(len(label) for label in labels) > 150  # long enough to have been cut
    size = (round(page.height), round(page.width))
    save_png(fig, png)
    assert matplotlib.image.imread(png).shape[:2] == size


def test_every_legend_label_is_whole_inside_the_saved_figure(tmp_path):
    trunk_and_branches(tmp_path, LONG, [*WSD, *KEEP])
    jobs = load_jobs(tmp_path / "sweep")
    groups = group_jobs(jobs)
    for key in OVERLAYS:
        fig = overlay_figure(groups, key)
        assert_every_label_whole(fig, [g.label for g in groups], tmp_path / "overlay.png")
    view = by_strategy(jobs)
    assert_every_label_whole(budget_figure(view, "final_val_acc"), list(view), tmp_path / "b.png")


def test_eleven_lines_are_eleven_styles(tmp_path):
    """matplotlib has 10 colours: the 11th configuration's line was the 1st's twin."""
    for i in range(11):
        overrides = [f"optimizer.lr=0.0{i + 1:02d}", "seed=0"]
        write_job(tmp_path / short_name(overrides), overrides, 0, "completed", ROWS)
    fig = overlay_figure(group_jobs(load_jobs(tmp_path)), "val/acc")
    (ax,) = fig.axes
    assert len({(line.get_color(), line.get_linestyle()) for line in ax.lines}) == 11


def test_the_epoch_axis_has_whole_epochs_only(tmp_path):
    """A 20-epoch sweep's overlays tick whole epochs (matplotlib alone ticks 2.5, 7.5, ...)."""
    rows = [{"epoch": e, "lr/group0": 0.1, "val/acc": 0.5, "val/loss": 1.0} for e in range(20)]
    for seed in (0, 1):
        overrides = ["scheduler=step", f"seed={seed}"]
        write_job(tmp_path / short_name(overrides), overrides, seed, "completed", rows)
    for key in OVERLAYS:
        (ax,) = overlay_figure(group_jobs(load_jobs(tmp_path)), key).axes
        ticks = [t for t in ax.get_xticks() if 0 <= t <= 19]
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks), (key, ticks)
