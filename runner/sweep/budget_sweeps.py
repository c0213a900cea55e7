"""How long should I train, and does my schedule need to know? (`make budgets`)

Three answers to a sweep of training budgets, on MNIST-1D with the paper's 1-D CNN (as
+experiment=mnist1d_schedules trains it), each over the same seeds, then one budget table
(runner/sweep/budgets.py):
  cosine:        a cosine run from scratch per budget (the schedule knows the budget)
  wsd branches:  per seed one WSD run of the longest budget, the trunk, keeping the epochs
                 where the shorter budgets' decays start; each shorter budget a branch of
                 it (Hägele et al. 2024: the sweep for about the cost of its longest run)
  schedule-free: optimizer=schedulefree_sgd, a run per budget (no schedule to know it)

    python -m runner.sweep.budget_sweeps [--out DIR] [--budgets 15,30,60] [--seeds 0,1,2]
        [--decay-fraction 0.2] [override ...]

Overrides after the options go to every run (e.g. `data.num_samples=1000`). Each sweep is
`python -m runner -m ...` into <out>/<name>; the report is <out>/cosine/report.md with the
others' jobs pooled into its budget view (`--also`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

from runner.sweep.report import write_report

BASE = ["data=mnist1d", "model=cnn1d", "logger=none", "trainer.progress=line",
        "hydra/launcher=fused"]  # fmt: skip
SGD = ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9"]
WARMUP = 2  # conf/scheduler/wsd.yaml's warmup_epochs


def decay_start(budget: int, fraction: float) -> int:
    """The epoch a WSD run of `budget` epochs starts its decay (docs/branches.md)."""
    return budget - round((budget - WARMUP) * fraction)


def wsd(fraction: float) -> list[str]:
    return [*SGD, "scheduler=wsd", f"scheduler.decay_fraction={fraction}"]


def first_sweeps(budgets: list[int], seeds: str, fraction: float) -> dict[str, list[str]]:
    """The sweeps that need no other run: sweep name -> `python -m runner` arguments."""
    every = f"epochs={','.join(map(str, budgets))}"
    *shorter, longest = sorted(budgets)
    keep = ",".join(str(decay_start(b, fraction)) for b in shorter)
    common = [*BASE, f"seed={seeds}"]
    return {
        "cosine": ["-m", *common, *SGD, "scheduler=cosine", every],
        "schedulefree": ["-m", *common, "optimizer=schedulefree_sgd", "scheduler=none", every],
        "trunks": [
            "-m",
            *common,
            *wsd(fraction),
            f"epochs={longest}",
            f"trainer.keep_epochs=[{keep}]",
        ],  # fmt: skip
    }


def branch_sweeps(out: Path, budgets: list[int], fraction: float) -> dict[str, list[str]]:
    """Per trunk (each job of <out>/trunks), a sweep of the shorter budgets branched from it,
    with the trunk's seed: sweep name -> arguments."""
    shorter = ",".join(map(str, sorted(budgets)[:-1]))
    sweeps = {}
    for trunk in sorted(p.parent for p in (out / "trunks").glob("*/config.yaml")):
        seed = yaml.safe_load((trunk / "config.yaml").read_text())["seed"]
        sweeps[f"branches_{seed}"] = ["-m", *BASE, *wsd(fraction), f"branch={trunk}",
                                      f"seed={seed}", f"epochs={shorter}"]  # fmt: skip
    return sweeps


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def with_overrides(args: list[str], extra: list[str]) -> list[str]:
    """`args` with the user's overrides last, each replacing an argument of its key (Hydra
    refuses a key given twice)."""
    given = {_key(o) for o in extra}
    return [a for a in args if _key(a) not in given] + extra


def run_sweeps(out: Path, sweeps: dict[str, list[str]], extra: list[str]) -> None:
    for name, args in sweeps.items():
        cmd = [sys.executable, "-m", "runner", *with_overrides(args, extra),
               f"hydra.sweep.dir={out / name}"]  # fmt: skip
        print(f"== {name}: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m runner.sweep.budget_sweeps", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, help="default outputs/budgets/<date>_<time>")
    parser.add_argument("--budgets", default="15,30,60", help="epochs, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    parser.add_argument("--decay-fraction", type=float, default=0.2, help="WSD's (0.2)")
    parser.add_argument("overrides", nargs="*", help="more overrides for every run")
    args = parser.parse_args(argv)
    budgets = sorted({int(b) for b in args.budgets.split(",")})
    if len(budgets) < 2:
        parser.error(f"--budgets {args.budgets}: give two budgets or more")
    out = args.out or Path("outputs/budgets") / time.strftime("%Y-%m-%d_%H-%M-%S")
    out = out.resolve()  # the branches name their trunk by this path
    run_sweeps(out, first_sweeps(budgets, args.seeds, args.decay_fraction), args.overrides)
    branches = branch_sweeps(out, budgets, args.decay_fraction)
    run_sweeps(out, branches, args.overrides)
    also = [out / "schedulefree", out / "trunks", *(out / name for name in branches)]
    text = write_report(out / "cosine", metric="final_val_acc", also=also)
    print(text)
    print(f"report written to {out / 'cosine' / 'report.md'}")
    return text


if __name__ == "__main__":
    main()
