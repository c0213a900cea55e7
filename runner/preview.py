"""Preview lr curves without data or training: `python -m runner.preview scheduler=<name>`.

Takes the same overrides as `python -m runner` (same Hydra config, same
composition), and simulates the real schedule (schedulers.simulate: built on dummy tensors
with the run's param groups, stepped through the run's epochs and batches). Sweep syntax
(`scheduler=step,cosine`) previews each and overlays them in compare.png.
ReduceLROnPlateau is fed the lecture's metric (0.5, then 0.4 from epoch 5 on,
never improving again). `trace=true` (or --trace) also prints and writes the
scheduler's internals per epoch (see schedulers/trace.py). `trunk=true` (or --trunk) with
several budgets (`scheduler=wsd epochs=15,30,60`) draws them as docs/branches.md trains them:
the longest as the trunk, each other one branched where its schedule leaves the trunk's, and
prints the epochs each costs as a branch and as a rerun.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from runner.cli import check_config_dirs
from runner.config.compose import compose_config, expand, one_line
from runner.run.branch_points import branch_point, run_groups
from runner.run.check import validate
from schedulers import ConfigError, schedule_label
from schedulers import simulate as simulate_schedule
from schedulers.lecture import plateau_loss
from schedulers.plot import plot_lr_curves
from schedulers.simulator import throwaway_schedule
from schedulers.trace import as_markdown, fields, trace_schedule


def check(cfg: Any) -> None:
    """The runner's own checks (every key, typed, in range), and a number for the lr: a
    preview has no data to run the LR range test on."""
    validate(cfg)
    if cfg.optimizer.lr == "find":
        raise ConfigError(
            "optimizer.lr",
            "find",
            "the preview needs a number (find is "
            "decided by the LR range test on the data: run python -m "
            "runner.lr_find, then preview with optimizer.lr=<its lr>)",
        )


def simulate(cfg: Any, steps_per_epoch: int | None = None) -> dict[str, Any]:
    """The configured schedule stepped like the loop does (schedulers.simulate); lr per epoch
    and per batch, per group. A Plateau schedule sees the lecture's metric: 0.5, then 0.4 from
    epoch 5 on."""
    names, lrs, steps_per_epoch = run_groups(cfg, steps_per_epoch)
    sim = simulate_schedule(
        cfg.scheduler,
        epochs=cfg.epochs,
        steps_per_epoch=steps_per_epoch,
        base_lrs=lrs,
        metric=plateau_loss,
    )
    return {
        "names": names,
        "per_epoch": sim.per_epoch,
        "per_step": sim.per_step,
        "steps_per_epoch": steps_per_epoch,
        "interval": cfg.scheduler.interval,
    }


def trace(cfg: Any, steps_per_epoch: int | None = None) -> list[dict[str, Any]]:
    """The schedule's internals at every unit it steps in (epochs, or batches)."""
    _, lrs, spe = run_groups(cfg, steps_per_epoch)
    schedule = throwaway_schedule(
        cfg.scheduler, epochs=cfg.epochs, steps_per_epoch=spe, base_lrs=lrs
    )
    units = cfg.epochs * (spe if schedule.interval == "step" else 1)
    return trace_schedule(schedule, units, plateau_loss)


def curves(label: str, sim: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """x in epochs; per-batch schedules are drawn at batch resolution."""
    if sim["interval"] == "step":
        rows, spe = sim["per_step"], sim["steps_per_epoch"]
        xs = [i / spe for i in range(len(rows))]
    else:
        rows = sim["per_epoch"]
        xs = list(range(len(rows)))
    names = sim["names"]
    return {
        (label if len(names) == 1 else f"{label} {n}"): (xs, [r[g] for r in rows])
        for g, n in enumerate(names)
    }


def table(labels: list[str], sims: list[dict[str, Any]]) -> str:
    """Per-epoch lr (the lr each epoch starts with), one column per schedule and group."""
    header, columns = ["epoch"], []
    for label, sim in zip(labels, sims, strict=True):
        for g, name in enumerate(sim["names"]):
            header.append(label if len(sim["names"]) == 1 else f"{label} {name}")
            columns.append([row[g] for row in sim["per_epoch"]])
    widths = [max(5, len(h)) for h in header]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    for e in range(len(columns[0])):
        cells = [str(e), *(f"{c[e]:.6g}" for c in columns)]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


def check_budgets(combos: list[list[str]]) -> None:
    """trunk=true previews one strategy's budgets: at least two, differing only in `epochs`."""
    if len(combos) < 2:
        raise ConfigError(
            "trunk", True, "needs several budgets to draw as a trunk and branches: epochs=15,30,60"
        )
    first = [o for o in combos[0] if not o.startswith("epochs=")]
    for combo in combos[1:]:
        rest = [o for o in combo if not o.startswith("epochs=")]
        if rest != first:
            differs = next(iter(set(rest) ^ set(first)), str(rest))
            raise ConfigError(
                "trunk",
                True,
                f"the budgets must differ only in epochs (a branch has its trunk's config), "
                f"not in {differs}",
            )


def branch_costs(cfgs: list[Any], steps_per_epoch: int | None = None) -> list[tuple[int, int]]:
    """Per run, in the given order: (its budget, the epoch it branches at); the first longest
    budget is the trunk and, like a rerun, starts at 0."""
    trunk = max(cfgs, key=lambda c: c.epochs)
    return [(c.epochs, 0 if c is trunk else branch_point(c, trunk, steps_per_epoch)) for c in cfgs]


def trunk_index(points: list[tuple[int, int]]) -> int:
    """Which of the (budget, branch point)s is the trunk: the first longest (branch_costs)."""
    budgets = [b for b, _ in points]
    return budgets.index(max(budgets))


def cost_table(points: list[tuple[int, int]]) -> str:
    """Epochs each budget costs as a branch (the trunk all of its own, a branch those after
    its branch point) and as a rerun from scratch, and the totals."""
    trunk = trunk_index(points)
    lines = ["budget  branch at  as a branch  as a rerun"]
    for i, (budget, k) in sorted(enumerate(points), key=lambda p: p[1]):
        at = "(trunk)" if i == trunk else str(k)
        lines.append(f"{budget:6d}  {at:>9}  {budget - k:11d}  {budget:10d}")
    branched = sum(b - k for b, k in points)
    rerun = sum(b for b, _ in points)
    lines.append(f"{'total':>17}  {branched:11d}  {rerun:10d}  ({rerun / branched:.2f}x)")
    return "\n".join(lines)


Curves = dict[str, tuple[list[float], list[float]]]


def trunk_curves(
    sims: list[dict[str, Any]], points: list[tuple[int, int]]
) -> tuple[Curves, Curves]:
    """The trunk's whole curve, each branch's from its last point shared with the trunk on
    (so it is seen leaving it), and the branch points as marks on the trunk's curve."""
    trunk = trunk_index(points)
    trunk_x, trunk_y = next(iter(curves("", sims[trunk]).values()))  # the first param group
    lines = curves(f"trunk epochs={points[trunk][0]}", sims[trunk])
    marks: tuple[list[float], list[float]] = ([], [])
    for i, (sim, (budget, k)) in enumerate(zip(sims, points, strict=True)):
        if i == trunk:
            continue
        for label, (xs, ys) in curves(f"epochs={budget} from {k}", sim).items():
            start = max(0, next(j for j, x in enumerate(xs) if x >= k) - 1)
            lines[label] = (xs[start:], ys[start:])
        if k:
            marks[0].append(k)
            marks[1].append(trunk_y[trunk_x.index(k)])
    return lines, {"branch points": marks}


def label_of(combo: list[str], scheduler: Any) -> str:
    """A preview's name: its scheduler overrides (`step,step_size=5`), else the schedule's
    name or, for a `_target_`, its class name."""
    keys = []
    for override in combo:
        bare = override.lstrip("+")
        if not bare.startswith("scheduler"):  # also `~scheduler` (a deletion): no label
            continue
        if bare.startswith("scheduler._target_="):
            keys.append(bare.split("=", 1)[1].rsplit(".", 1)[-1])
        else:
            keys.append(bare.removeprefix("scheduler=").removeprefix("scheduler."))
    return ",".join(keys) or schedule_label(scheduler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.preview",
        description="Print and plot the lr a schedule gives each epoch, without data or training.",
        epilog="examples:\n"
        "  python -m runner.preview scheduler=step epochs=30\n"
        "  python -m runner.preview scheduler=step,cosine,onecycle epochs=30\n"
        "  python -m runner.preview scheduler=cosine scheduler.warmup_epochs=3\n"
        "  python -m runner.preview scheduler=sequence trace=true\n"
        "  python -m runner.preview scheduler=wsd epochs=15,30,60 trunk=true\n"
        "  python -m runner.preview scheduler=target "
        "scheduler._target_=torch.optim.lr_scheduler.ExponentialLR +scheduler.gamma=0.8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m runner")
    parser.add_argument("--out", type=Path, default=Path("outputs/preview"), help="PNG folder")
    parser.add_argument(
        "--steps-per-epoch", type=int, default=None, help="default: from the data config"
    )
    parser.add_argument("--small", action="store_true", help="thumbnail-sized figures")
    parser.add_argument(
        "--config-dir",
        "-cd",
        action="append",
        default=[],
        dest="config_dirs",
        help="your own config dir beside schedlab's (as for python -m runner)",
    )
    parser.add_argument("--quiet", action="store_true", help="no table, only the PNG paths")
    parser.add_argument(
        "--trace", action="store_true", help="internals per epoch (also: trace=true)"
    )
    parser.add_argument(
        "--trunk",
        action="store_true",
        help="the budgets (epochs=15,30,60) as one trunk and its branches (also: trunk=true)",
    )
    args = parser.parse_intermixed_args(argv)  # overrides before and after --flags
    for flag in ("trace", "trunk"):
        if f"{flag}=true" in args.overrides:
            args.overrides.remove(f"{flag}=true")
            setattr(args, flag, True)

    labels, sims, combos, cfgs, points = [], [], [], [], []
    try:
        check_config_dirs(args.config_dirs)
        combos = expand(args.overrides or [])
        if args.trunk:
            if args.trace:
                raise ConfigError("trunk", True, "draws no trace: preview with trace=true alone")
            check_budgets(combos)
        for combo in combos:
            cfg = compose_config(combo, config_dirs=args.config_dirs)
            check(cfg)
            labels.append(label_of(combo, cfg.scheduler))
            sims.append(simulate(cfg, args.steps_per_epoch))
            cfgs.append(cfg)
        if args.trunk:
            points = branch_costs(cfgs, args.steps_per_epoch)
    except (ConfigError, HydraException, OmegaConfBaseException) as err:
        print(f"config error: {one_line(err)}", file=sys.stderr)  # as python -m runner says it
        return 2
    if args.trunk:
        print(cost_table(points))
        lines, marks = trunk_curves(sims, points)
        title = f"{labels[0]}: trunk and branches"
        png = args.out / "trunk.png"
        print(f"wrote {plot_lr_curves(lines, png, title, small=args.small, marks=marks)}")
        return 0
    if not args.quiet:
        print(table(labels, sims))
    args.out.mkdir(parents=True, exist_ok=True)
    for label, sim in zip(labels, sims, strict=True):
        png = args.out / f"{label.replace('/', '_')}.png"
        path = plot_lr_curves(curves(label, sim), png, label, small=args.small)
        print(f"wrote {path}")
    if args.trace:
        for label, combo in zip(labels, combos, strict=True):
            cfg = compose_config(combo, config_dirs=args.config_dirs)
            rows = trace(cfg, args.steps_per_epoch)
            text = as_markdown(rows, label)
            print(text)
            stem = args.out / f"{label.replace('/', '_')}_trace"
            stem.with_suffix(".md").write_text(text)
            with stem.with_suffix(".csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields(rows))
                writer.writeheader()
                writer.writerows(rows)
            print(f"wrote {stem}.md and {stem}.csv")
    if len(sims) > 1:
        overlay = {
            k: v
            for label, sim in zip(labels, sims, strict=True)
            for k, v in curves(label, sim).items()
        }
        print(f"wrote {plot_lr_curves(overlay, args.out / 'compare.png', 'lr schedules')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
