"""Reproduce the whole lecture with one command and read it as one page.

    python -m runner.lecture [part=all|curves|lenet|schedulers|init_lr|mnist1d|budgets]
                             [quick=true] [fresh=true] [data=<group> data.<key>=<value> ...]
                             [--config-dir DIR]

Parts: (1) the six toy curves of the lecture plus the StepLR/MultiStepLR internals
trace, (2) the lecture's LeNet training setting, (3) a sweep of the six schedulers
over seeds with the paired report, (4) the initial-lr advice: the small-value sweep,
the LR range test and a run at its suggestion, (5) the same schedule comparison on
MNIST-1D, a task where the choice of schedule visibly matters (digits stays the
lecture's own data), (6) how long to train: +experiment=mnist1d_budgets on a reduced grid
(cosine per budget, a WSD trunk with cooldowns, schedule-free, constant lr + EMA).
Output: outputs/lecture/<time>/ with index.md and a self-contained index.html (figures
embedded). A rerun continues in the newest such dir made the same way (quick or full) and
reuses finished parts; fresh=true starts a new one.

`data=` and `data.<key>=` overrides move parts 2-4 (LeNet, the scheduler sweep, the
initial-lr advice) from digits to other data, the runner's own groups or yours (e.g.
data=dataset with data.train={_target_: ...}, streamed through a DataLoader); the page names
the data on each of those sections. Parts 1, 5 and 6 keep their own (the toy problem,
MNIST-1D). `--config-dir DIR` adds a project's own groups (data=<its group>), as for
`python -m runner`.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from runner.cli import check_config_dirs
from runner.config.compose import compose_config, one_line
from runner.config.schema import run_spec
from runner.io import files
from runner.run.check import validate
from runner.run.train import train
from runner.train.range_test import find_lr
from schedulers import ConfigError
from schedulers.lecture import LR, MAX_EPOCH, lecture_config, write_curves
from schedulers.simulator import throwaway_schedule
from schedulers.trace import as_markdown, flagged_epochs, trace_schedule

PARTS = ("curves", "lenet", "schedulers", "init_lr", "mnist1d", "budgets")
OPTIONS = {"part": "all", "quick": "false", "fresh": "false", "out": "outputs/lecture"}
ON_DATA = ("lenet", "schedulers", "init_lr")  # the parts that data= overrides move


@dataclass
class Section:
    """One lecture section of the page: the claim, how to reproduce it, what came out."""

    title: str
    claim_en: str
    claim_zh: str
    command: str
    figures: list[str] = field(default_factory=list)  # paths relative to the page
    table: str = ""  # markdown
    differs: str = ""  # where the result departs from the lecture
    in_lecture: bool = True  # False: the claim is the page's own (parts 5, 6), not the lecture's


def _on_data(section: Section, data: list[str]) -> Section:
    """A part run on data= given to the lecture: its command says so, and its notes about
    digits give way to the data it ran on."""
    if data:
        commands = section.command.split(" ; ")
        section.command = " ; ".join(f"{c} {shlex.join(data)}" for c in commands)
        section.differs = (
            f"Run on {shlex.join(data)} (given to the lecture), not on the lecture's data "
            "or the bundled digits."
        )
    return section


def _runner_cli(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"python -m runner {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


QUICK_SWEEP = ["epochs=3", "hydra.sweeper.params.seed='0,1'"]  # quick=true: 3 epochs, 2 seeds


def _sweep(sweep: Path, experiment: str, extra: list[str]) -> Path:
    """`python -m runner -m +experiment=<experiment>` into `sweep` (its report written there)."""
    args = ["-m", f"+experiment={experiment}", "logger=none", f"hydra.sweep.dir={sweep}"]
    _runner_cli([*args, *extra], cwd=Path.cwd())
    return sweep


def _with(command: str, extra: list[str]) -> str:
    """A part's command with the overrides the page ran it with (quick=true's shorter runs,
    part 4's 10 epochs, part 6's reduced grid): the command reproduces the page's numbers."""
    return f"{command} {shlex.join(extra)}" if extra else command


def _sweep_figures(part: str) -> list[str]:
    """The sweep report's lr and val curves of a part, relative to the page."""
    return [f"{part}/sweep/{name}.png" for name in ("lr", "val_acc", "val_loss")]


def _report_table(sweep: Path) -> str:
    """The ranking table and the paired comparisons of a sweep report."""
    lines = (sweep / "report.md").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| # |"))
    end = next((i for i, ln in enumerate(lines) if ln.startswith("![")), len(lines))
    body = [f"**{ln[3:]}**" if ln.startswith("## ") else ln for ln in lines[start:end]]
    return "\n".join(body).strip()


LECTURE_SCRIPT = (
    "the lecture's LeNet script: sgd momentum 0.9, lr 0.01, scheduler step (StepLR 10, 0.1), "
    "batch 16, 10 epochs"
)


def _setting(overrides: list[str], varied: str) -> str:
    """What a part trained with, read from its composed config, less the `varied` setting
    ("lr" or "scheduler") its sweep compares: a sweep's table shows only what its jobs
    differ by, and these parts do not train at the lecture script's setting."""
    cfg = _compose([o for o in overrides if not o.startswith("hydra.")])
    opt = cfg.optimizer
    momentum = f" momentum {opt.momentum:g}" if opt.get("momentum") is not None else ""
    setting = {
        "model": f"{cfg.model.name} on {cfg.data.name}",
        "optimizer": f"{opt.name}{momentum}",
        "lr": f"lr {opt.lr:g}",
        "scheduler": f"scheduler {cfg.scheduler.name}",
        "batch": f"batch {cfg.data.get('batch_size')}",
        "epochs": f"{cfg.epochs} epochs",
    }
    shown = ", ".join(v for k, v in setting.items() if k != varied)
    return f"**Setting:** {shown} ({LECTURE_SCRIPT})."


def part_curves(out: Path, quick: bool, data: list[str]) -> Section:
    out.mkdir(parents=True, exist_ok=True)
    paths = write_curves(out)
    traces = {}
    for name in ("step", "multistep"):
        schedule = throwaway_schedule(
            lecture_config(name), epochs=MAX_EPOCH, steps_per_epoch=1, base_lrs=[LR]
        )
        rows = trace_schedule(schedule, MAX_EPOCH)
        files.write_text_atomic(out / f"trace_{name}.md", as_markdown(rows, name), fsync=False)
        traces[name] = flagged_epochs(rows)
    return Section(
        title="1. Six schedulers on the lecture's toy problem",
        claim_en="A scheduler (_LRScheduler) holds its optimizer, last_epoch (the epoch "
        "count, from -1) and base_lrs (each param group's initial lr); optimizer.param_groups is "
        "a list of dicts, each group with its own lr. "
        "scheduler.step() runs once per epoch, after the batch loop, and sets the next "
        "epoch's lr (get_lr() computes it): StepLR and MultiStepLR decay in steps, "
        "ExponentialLR geometrically, CosineAnnealingLR along a cosine, ReduceLROnPlateau when "
        "a monitored metric stalls, "
        "LambdaLR by any function (one per param group).",
        claim_zh="调度器（_LRScheduler）保存 optimizer（关联的优化器）、last_epoch（epoch 计数，"
        "从 -1 开始）与 base_lrs（各参数组的初始学习率）；optimizer.param_groups 是字典列表，"
        "每个参数组有自己的 lr。"
        "scheduler.step() 在每个 epoch 的 batch 循环之后调用一次，"
        "设置下一个 epoch 的学习率（由 get_lr() 计算）："
        "StepLR 与 MultiStepLR 阶梯下降，ExponentialLR 指数衰减，CosineAnnealingLR 余弦变化，"
        "ReduceLROnPlateau 在监控指标不再下降时调整，LambdaLR 按自定义函数（每个参数组一个）调整。",
        command="python -m schedulers.lecture   # and: python -m runner.preview "
        "scheduler=multistep trace=true",
        figures=[f"curves/{p.name}" for p in paths],
        table="Internals traces (last_epoch, base_lrs, lr in use, get_last_lr, get_lr outside "
        "step): [StepLR](curves/trace_step.md), [MultiStepLR](curves/trace_multistep.md).",
        differs="The curves are the lr in optimizer.param_groups (= get_last_lr()). The lecture's "
        "scripts printed get_lr(), which called outside step() differs from the lr in use at "
        f"StepLR epochs {traces['step']} and MultiStepLR epochs {traces['multistep']}: there it "
        "applies the decay a second time. The traces show last_epoch 0 in the first epoch: "
        "the constructor steps once from -1, setting the first epoch's lr.",
    )


CONFIG_DIR = "--config-dir="  # how a --config-dir given to the lecture sits among its data args


def _compose(args: list[str]) -> Any:
    """The config of the runner's command line `args` (overrides and --config-dir=DIR)."""
    dirs = [a.removeprefix(CONFIG_DIR) for a in args if a.startswith(CONFIG_DIR)]
    return compose_config([a for a in args if not a.startswith(CONFIG_DIR)], config_dirs=dirs)


def _train(overrides: list[str], run_dir: Path) -> list[dict[str, Any]]:
    train(_compose([*overrides, "logger=none", "trainer.progress=line"]), run_dir)
    return [r for r in files.read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") != "step"]


def _plot_run(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib  # ~0.5 s: only when a plot is drawn

    matplotlib.use("Agg")  # before pyplot: no display needed
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    a.plot(epochs, [r["lr/group0"] for r in rows], marker="o")
    a.set_title("lr")
    b.plot(epochs, [r["val/acc"] for r in rows], marker="o", label="val acc")
    b.plot(epochs, [r["train/acc"] for r in rows], marker="o", label="train acc")
    b.set_title("accuracy")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    files.replace_atomic(path, lambda tmp: fig.savefig(tmp, format="png"), fsync=False)
    plt.close(fig)


def part_lenet(out: Path, quick: bool, data: list[str]) -> Section:
    out.mkdir(parents=True, exist_ok=True)
    shorter = ["epochs=3"] if quick else []
    overrides = ["+experiment=lecture_lenet", *data, *shorter]
    rows = _train(overrides, out / "run")
    on = shlex.join(data) if data else "digits"
    _plot_run(rows, out / "lenet.png", f"LeNet, the lecture's setting, on {on}")
    table = (
        "| epoch | lr | train loss | train acc | val loss | val acc |\n|---|---|---|---|---|---|\n"
    )
    table += "\n".join(
        f"| {r['epoch']} | {r['lr/group0']:.4g} | {r['train/loss']:.4f} | {r['train/acc']:.3f} "
        f"| {r['val/loss']:.4f} | {r['val/acc']:.3f} |"
        for r in rows
    )
    return Section(
        title="2. The lecture's LeNet training script",
        claim_en="LeNet, seed 1, batch 16, SGD lr 0.01 momentum 0.9, StepLR(step_size=10, "
        "gamma=0.1), 10 epochs, validating every epoch and stepping the scheduler after it.",
        claim_zh="LeNet，随机种子 1，batch 16，SGD（lr 0.01，momentum 0.9），StepLR(step_size=10, "
        "gamma=0.1)，训练 10 个 epoch，每个 epoch 验证一次并在其后调用 scheduler.step()。",
        command=_with("python -m runner +experiment=lecture_lenet", shorter),
        figures=["lenet/lenet.png"],
        table=table,
        differs="The lecture trained on a small two-class image set that is not available here; "
        "this runs on scikit-learn's 8x8 digits (10 classes) upsampled to LeNet's 32x32. "
        "With step_size=10 over 10 epochs the lr never decays, as in the lecture.",
    )


def part_schedulers(out: Path, quick: bool, data: list[str]) -> Section:
    extra = [*data, *(QUICK_SWEEP if quick else [])]
    sweep = _sweep(out / "sweep", "lecture_schedulers", extra)
    setting = _setting(["+experiment=lecture_schedulers", *extra], varied="scheduler")
    return Section(
        title="3. Which scheduler wins on a real model, and is it noise?",
        claim_en="Ordered schedules (Step, MultiStep, Exponential, Cosine), the adaptive one "
        "(ReduceLROnPlateau) and the custom one (LambdaLR) lead to different training curves; "
        "comparing them needs several seeds.",
        claim_zh="有序调整（Step、MultiStep、Exponential、Cosine）、自适应调整（ReduceLROnPlateau）"
        "与自定义调整（LambdaLR）会得到不同的训练曲线；比较它们需要多个随机种子。",
        command=_with("python -m runner -m +experiment=lecture_schedulers", extra[len(data) :]),
        figures=_sweep_figures("schedulers"),
        table=f"{setting}\n\n{_report_table(sweep)}",
        differs="The lecture's parameters were for 200 epochs; here they are scaled to the run "
        "(step_size 50/200 of the epochs, gamma 0.95 -> 0.95^(200/epochs), ...). On digits the "
        "top schedules are usually within the paired 95 % interval of each other.",
    )


def part_init_lr(out: Path, quick: bool, data: list[str]) -> Section:
    epochs = 3 if quick else 10
    extra = [*data, *(QUICK_SWEEP if quick else [f"epochs={epochs}"])]
    sweep = _sweep(out / "small_values", "init_lr", extra)
    model = ["model=lenet", *data, "logger=none", "trainer.progress=line"]
    lr, result = find_lr(run_spec(_compose(model)), out / "range_test")
    rows = _train([*model, f"optimizer.lr={lr}", f"epochs={epochs}"], out / "at_found")
    _plot_run(rows, out / "at_found.png", f"LeNet at the range test's lr {lr:.3g}")
    found_acc = max(r["val/acc"] for r in rows)
    with (sweep / "report.csv").open() as f:
        best_small = next(csv.DictReader(f))  # ranked best first
    setting = _setting(["+experiment=init_lr", *extra], varied="lr")
    table = (
        f"{setting}\n\n"
        + _report_table(sweep)
        + (
            f"\n\nLR range test: steepest descent at lr = {result.suggestions['steepest']:.4g}, "
            f"min-loss lr / 10 = {result.suggestions['min_loss_div_10']:.4g} (used). Training at "
            f"{lr:.4g} reached best val acc {found_acc:.3f}; the best small value "
            f"({best_small['config']}) reached {float(best_small['best_val_acc_mean']):.3f} "
            "(mean over seeds)."
        )
    )
    return Section(
        title="4. Choosing the initial learning rate",
        claim_en="Either start small (0.01, 0.001, 0.0001) or search for the largest lr at "
        "which "
        "the loss still falls, with Smith's LR range test (2017), and train at it.",
        claim_zh="初始学习率：可以设置较小的数（0.01、0.001、0.0001），"
        "或用 Smith（2017）的 LR range "
        "test 搜索损失仍在快速下降的最大学习率，并用它训练。",
        command=_with("python -m runner -m +experiment=init_lr", extra[len(data) :])
        + " ; python -m runner.lr_find model=lenet ; "
        f"python -m runner model=lenet optimizer.lr=find epochs={epochs}",
        figures=[
            "init_lr/small_values/val_acc.png",
            "init_lr/range_test/lr_find.png",
            "init_lr/at_found.png",
        ],
        table=table,
        differs=f"Same data and model for all three; on digits with {epochs} epochs the smallest "
        "values barely learn (see the table), which the lecture's advice does not warn about. "
        "The range test's steepest-descent point sits high for LeNet, so the page trains at "
        "the more conservative min-loss / 10 (lr_find.suggestion).",
    )


def part_mnist1d(out: Path, quick: bool, data: list[str]) -> Section:
    extra = [*QUICK_SWEEP, "data.num_samples=1000"] if quick else []
    sweep = _sweep(out / "sweep", "mnist1d_schedules", extra)
    return Section(
        title="5. The same question where the schedule matters: MNIST-1D",
        in_lecture=False,
        claim_en="On digits every sensible schedule ends within noise of the others. MNIST-1D "
        "(Greydanus 2020), 1-D signals built to separate models, also separates schedules: "
        "the lecture's six, a constant lr and one-cycle on the paper's 1-D CNN, 5 seeds each.",
        claim_zh="在 digits 上，各种合理的调度最终都在噪声范围内难分高下。MNIST-1D（Greydanus "
        "2020）是为区分模型而设计的一维信号数据集，也能区分学习率调度：在论文的一维 CNN 上比较"
        "课程的六种调度、恒定学习率与 one-cycle，每种 5 个随机种子。",
        command=_with("python -m runner -m +experiment=mnist1d_schedules", extra),
        figures=_sweep_figures("mnist1d"),
        table=_report_table(sweep),
        differs="Not in the lecture: a second data set, generated locally by the mnist1d "
        "package (no download). The schedules' parameters are the lecture's, scaled to the "
        "run's epochs as in part 3; all its jobs train as one fused model"
        + (" (quick: 3 epochs, seeds 0 and 1, 1000 signals)." if quick else "."),
    )


# +experiment=mnist1d_budgets reduced so `make lecture` stays minutes (make budgets: 15/30/60)
BUDGETS = ["hydra.sweeper.budgets=[10,20]"]
BUDGETS_QUICK = ["hydra.sweeper.budgets=[10,12]", "seed=0", "data.num_samples=500"]


def _budget_table(sweep: Path) -> str:
    """The budget view of a sweep report: the metric per strategy and budget, the costs."""
    lines = (sweep / "report.md").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| strategy | budget |"))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("![") and i > start)
    return "\n".join(lines[start:end]).strip()


def part_budgets(out: Path, quick: bool, data: list[str]) -> Section:
    extra = BUDGETS_QUICK if quick else BUDGETS
    sweep = _sweep(out / "sweep", "mnist1d_budgets", ["trainer.progress=line", *extra])
    return Section(
        title="6. How long should I train, and does the schedule need to know?",
        in_lecture=False,
        claim_en="A cosine schedule is set for one budget, so a sweep of budgets reruns it for "
        "each. A constant lr with a short cooldown (WSD) matches it, and cooldowns branched "
        "from one constant-lr trunk give every budget for about the cost of the longest "
        "(Hägele et al. 2024); schedule-free optimizers and a constant lr with EMA need no "
        "schedule at all, and one run of theirs reports every budget.",
        claim_zh="余弦调度只对应一个训练预算，比较多个预算时每个都要重跑。恒定学习率加短暂冷却"
        "（WSD）可与之相当，而从同一条恒定学习率主干分出的冷却分支，只需约最长一次训练的代价就能"
        "覆盖所有预算（Hägele 等，2024）；无调度优化器（schedule-free）与恒定学习率加 EMA 则"
        "完全不需要调度，一次训练即可报告每个预算。",
        command=_with("python -m runner -m +experiment=mnist1d_budgets", extra)
        + "   # the full grid: make budgets",
        figures=["budgets/sweep/budgets.png"],
        table=_budget_table(sweep),
        differs="Not in the lecture. A reduced grid (budgets "
        + ("10 and 12 epochs, one seed, 500 signals" if quick else "10 and 20 epochs, 3 seeds")
        + ") so the page stays minutes; make budgets runs 15, 30 and 60 epochs "
        "(docs/budgets.md has its results).",
    )


RUNNERS: dict[str, Callable[[Path, bool, list[str]], Section]] = {
    "curves": part_curves,
    "lenet": part_lenet,
    "schedulers": part_schedulers,
    "init_lr": part_init_lr,
    "mnist1d": part_mnist1d,
    "budgets": part_budgets,
}


def _label(section: Section) -> tuple[str, str]:
    """What a section's claim is headed by, in English and Chinese: a claim of the page's own
    headed "Lecture:" would put words in the lecture's mouth."""
    return ("Lecture", "讲座") if section.in_lecture else ("Beyond the lecture", "课程之外")


def to_markdown(sections: list[Section]) -> str:
    out = ["# The lecture, reproduced / 学习率调整策略：复现", ""]
    for s in sections:
        out += [
            f"## {s.title}",
            "",
            f"**{_label(s)[0]}:** {s.claim_en}",
            "",
            f"**{_label(s)[1]}：** {s.claim_zh}",
            "",
            "```bash",
            s.command,
            "```",
            "",
        ]
        out += [f"![{Path(f).stem}]({f})" for f in s.figures] + [""]
        if s.table:
            out += [s.table, ""]
        if s.differs:
            out += [f"**Where it differs from the lecture:** {s.differs}", ""]
    return "\n".join(out)


# [text](href) in a paragraph (part 1's links to its traces), after html.escape
MD_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
LINK = r'<a href="\2">\1</a>'


def _md_blocks_to_html(text: str) -> str:
    """The little markdown the sections use: tables, paragraphs and their links (shown as
    raw `[StepLR](curves/trace_step.md)` in the html before)."""
    out, rows = [], []

    def close_table() -> None:
        if rows:
            head = "".join(f"<th>{c}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                rows.append([html.escape(c.strip().strip("`")) for c in line.strip("|").split("|")])
            continue
        close_table()
        if line.strip():
            text = html.escape(line.replace("**", "").replace("`", ""))
            out.append("<p>" + MD_LINK.sub(LINK, text) + "</p>")
    close_table()
    return "".join(out)


def to_html(sections: list[Section], root: Path) -> str:
    """Self-contained: every figure is embedded as a data: URI."""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>The lecture, reproduced</title><style>body{font-family:sans-serif;max-width:"
        "1100px;margin:auto;padding:1em}img{width:49%;border:1px solid #ddd;margin:2px 0}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "pre{background:#f4f4f4;padding:8px;overflow-x:auto}</style></head><body>",
        "<h1>The lecture, reproduced / 学习率调整策略：复现</h1>",
    ]
    for s in sections:
        parts += [
            f"<h2>{html.escape(s.title)}</h2>",
            f"<p><b>{_label(s)[0]}:</b> {html.escape(s.claim_en)}</p>",
            f"<p lang='zh'><b>{_label(s)[1]}：</b>{html.escape(s.claim_zh)}</p>",
            f"<pre>{html.escape(s.command)}</pre>",
        ]
        for f in s.figures:
            data = base64.b64encode((root / f).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(f)}' src='data:image/png;base64,{data}'>")
        if s.table:
            parts.append(_md_blocks_to_html(s.table))
        if s.differs:
            parts.append(
                f"<p><b>Where it differs from the lecture:</b> {html.escape(s.differs)}</p>"
            )
    # lets a headless browser report broken images (tests/browser_check.py reads the DOM)
    parts.append(
        "<script>window.addEventListener('load',()=>{for(const i of document.images)"
        "{i.dataset.ok=String(i.complete&&i.naturalWidth>0)}});</script>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def bad_argument(message: str) -> NoReturn:
    """One line and exit 2, as every command of the runner says a bad argument."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv: list[str]) -> dict[str, Any]:
    """The lecture's options, and under "data" the data= / data.<key>= overrides in order
    (with each --config-dir DIR as --config-dir=DIR)."""
    opts: dict[str, Any] = dict(OPTIONS)
    opts["data"] = []
    args = iter(argv)
    for arg in args:
        if arg in ("--help", "-h"):
            print(__doc__)
            raise SystemExit(0)
        if arg in ("--config-dir", "-cd"):
            arg = CONFIG_DIR + next(args, "")
        if arg.startswith(CONFIG_DIR):
            if arg == CONFIG_DIR:
                bad_argument("--config-dir needs a directory")
            opts["data"].append(arg)
            continue
        key, sep, value = arg.partition("=")
        if sep and (key == "data" or key.startswith("data.")):
            opts["data"].append(arg)
            continue
        if not sep or key not in OPTIONS:
            bad_argument(
                f"{arg!r}: expected key=value with key in {[*OPTIONS, 'data']} or data.<key>"
            )
        opts[key] = value
    if opts["part"] not in ("all", *PARTS):
        bad_argument(f"part={opts['part']!r}: choose from {['all', *PARTS]}")
    for key in ("quick", "fresh"):
        if opts[key] not in ("true", "false"):
            bad_argument(f"{key}={opts[key]!r}: must be true or false")
    return opts


PAGE = "page.json"  # how a page dir's parts were run: {"quick": bool, "data": [overrides]}


def output_dir(base: Path, fresh: bool, quick: bool = False, data: list[str] | None = None) -> Path:
    """The newest page made the same way (quick or full, on the same data), to continue;
    else a new dated dir. A quick page is never continued by a full run or the other way
    round, nor a page on digits by one on other data: its sweeps hold runs of another
    config, and its sections would be shown as the other kind's."""
    made = {"quick": quick, "data": data or []}
    existing = sorted(p for p in base.glob("*") if p.is_dir()) if base.exists() else []
    same = [p for p in existing if _made(p) == made]
    if same and not fresh:
        return same[-1]
    new = base / time.strftime("%Y-%m-%d_%H-%M-%S")
    while new.exists():  # two pages started within a second
        new = new.with_name(new.name + "_")
    return new


def _made(page: Path) -> dict[str, Any] | None:
    """How a page was made (a page from before "data" was recorded ran on digits)."""
    made = files.read_json(page / PAGE)
    return {"quick": made.get("quick"), "data": made.get("data", [])} if made else None


def check_data(data: list[str], wanted: tuple[str, ...]) -> None:
    """data= overrides checked before any part runs: a typo'd key, an unknown group, a bad
    value or a dataset that cannot be built is one line and exit 2, as in `python -m runner`."""
    if not data or not set(wanted) & set(ON_DATA):
        return

    try:
        check_config_dirs([a.removeprefix(CONFIG_DIR) for a in data if a.startswith(CONFIG_DIR)])
        validate(_compose(["+experiment=lecture_lenet", *data]))
    except (HydraException, ConfigError, OmegaConfBaseException) as err:
        print(f"config error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> Path:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    quick, data = opts["quick"] == "true", opts["data"]
    wanted = PARTS if opts["part"] == "all" else (opts["part"],)
    check_data(data, wanted)
    root = output_dir(Path(opts["out"]), opts["fresh"] == "true", quick, data)
    root.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(root / PAGE, {"quick": quick, "data": data}, fsync=False)
    for i, name in enumerate(PARTS, 1):
        done = root / name / "section.json"
        if name not in wanted:
            continue
        if done.exists():
            print(f"[{i}/{len(PARTS)}] {name}: done before, reused ({done.parent})")
            continue
        print(f"[{i}/{len(PARTS)}] {name}: running{' (quick)' if quick else ''} ...", flush=True)
        t0 = time.perf_counter()
        try:
            section = RUNNERS[name](root / name, quick, data)
            if name in ON_DATA:
                section = _on_data(section, data)
        except RuntimeError as err:  # a sweep that failed: its own error, not a traceback
            raise SystemExit(f"error: part {name} failed ({root / name}): {err}") from None
        files.write_text_atomic(done, json.dumps(section.__dict__, ensure_ascii=False, indent=2))
        print(f"[{i}/{len(PARTS)}] {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    sections = [
        Section(**json.loads((root / n / "section.json").read_text()))
        for n in PARTS
        if (root / n / "section.json").exists()
    ]
    files.write_text_atomic(root / "index.md", to_markdown(sections), fsync=False)
    files.write_text_atomic(root / "index.html", to_html(sections, root), fsync=False)
    print(f"wrote {root / 'index.md'} and {root / 'index.html'}")
    return root


if __name__ == "__main__":
    main()
