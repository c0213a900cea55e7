"""How much faster is a fused sweep (hydra/launcher=fused) than the basic launcher?

Six schedules (the lecture's: step, multistep, exponential, cosine, plateau, lambda),
seed 0, 20 epochs, on digits with the MLP and with LeNet, and the MLP with seeds 0-2
(18 jobs), logger=none. Measured in one
process, interleaved, median of --repeats:
  sweep:    the whole multirun through Hydra (`python -m runner -m ...` in-process):
            Hydra composes every job's config (twice: sweeper and launcher) and
            runs every job through run_job, the same for both launchers; the sweep
            report callback is left out (it is the same work for both)
  training: only the training: train() for each job one after another, as the basic
            launcher calls it, vs runner.sweep.fused.train_group() for all six

    python benchmarks/bench_fused.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from common import interleaved, machine, median, write_or_print  # noqa: E402

from runner.__main__ import main as runner_main  # noqa: E402
from runner.config.compose import CONF, compose_config  # noqa: E402
from runner.run.train import train  # noqa: E402
from runner.sweep.fused import Member, train_group  # noqa: E402

SCHEDULES = ["step", "multistep", "exponential", "cosine", "plateau", "lambda"]
# job -> (overrides, seeds): six jobs each, and the MLP also as 6 schedules x 3 seeds
JOBS = {
    "digits MLP": (["model=mlp"], [0]),
    "digits LeNet": (["model=lenet"], [0]),
    "digits MLP, 3 seeds (18 jobs)": (["model=mlp"], [0, 1, 2]),
}
COMMON = ["epochs=20", "logger=none"]
QUICK_COMMON = ["epochs=2", "logger=none"]
# the runner's Hydra app, with the config dir given absolutely (this is not `-m runner`)
APP = hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")(
    runner_main.__wrapped__
)


def sweep(overrides: list[str], launcher: str, out: Path) -> None:
    """`python -m runner -m <overrides>` in this process (the sweep's axes among them)."""
    argv = sys.argv
    sys.argv = [
        "runner", "-m", *overrides,
        f"hydra/launcher={launcher}", f"hydra.sweep.dir={out}", "~hydra.callbacks.sweep_report",
        "hydra.job_logging.root.level=WARNING", "hydra.hydra_logging.root.level=WARNING",
    ]  # fmt: skip
    try:
        APP()
    finally:
        sys.argv = argv


def separate(configs: list[Any], out: Path) -> None:
    for i, cfg in enumerate(configs):
        assert train(cfg.copy(), out / str(i)).status == "completed"


def fused(configs: list[Any], out: Path) -> None:
    members = [Member(cfg.copy(), out / str(i), [], None) for i, cfg in enumerate(configs)]
    train_group(members)
    assert all(m.result is not None and m.result.status == "completed" for m in members)


def variants(overrides: list[str], configs: list[Any], tmp: Path) -> dict[str, Callable[[], None]]:
    """The four timings of one set of jobs, each call in a fresh dir under `tmp`: the whole
    sweep (`overrides`, its axes among them) with either launcher, and only the training of
    its jobs (`configs`), one after another or fused."""
    runs = itertools.count()

    def fresh() -> Path:
        return tmp / str(next(runs))

    return {
        "sweep basic": lambda: sweep(overrides, "basic", fresh()),
        "sweep fused": lambda: sweep(overrides, "fused", fresh()),
        "training separate": lambda: separate(configs, fresh()),
        "training fused": lambda: fused(configs, fresh()),
    }


def measure(job: tuple[list[str], list[int]], common: list[str], repeats: int) -> dict[str, float]:
    overrides, seeds = [*job[0], *common], job[1]
    configs = [
        compose_config([*overrides, f"scheduler={s}", f"seed={seed}"])
        for s in SCHEDULES
        for seed in seeds
    ]
    axes = [f"scheduler={','.join(SCHEDULES)}", f"seed={','.join(map(str, seeds))}"]
    with tempfile.TemporaryDirectory() as tmp:
        times = interleaved(variants([*axes, *overrides], configs, Path(tmp)), repeats)
    result = {name: median(values) for name, values in times.items()}
    result["sweep ratio"] = result["sweep basic"] / result["sweep fused"]
    result["training ratio"] = result["training separate"] / result["training fused"]
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="MLP, 2 epochs, 1 repeat (smoke)")
    args = parser.parse_args(argv)
    logging.getLogger("schedlab").setLevel(logging.WARNING)
    jobs = {"digits MLP": JOBS["digits MLP"]} if args.quick else JOBS
    common = QUICK_COMMON if args.quick else COMMON
    repeats = 1 if args.quick else args.repeats
    if not args.quick:  # imports and first-call costs out of the way, untimed
        measure(JOBS["digits MLP"], QUICK_COMMON, 1)
    results = {name: measure(job, common, repeats) for name, job in jobs.items()}
    payload = {"machine": machine(), "repeats": repeats, "schedules": SCHEDULES,
               "overrides": common, "results": results}  # fmt: skip
    lines = [
        f"Six schedules ({', '.join(SCHEDULES)}), seed 0 unless said, {' '.join(common)}; "
        f"median of {repeats}.",
        "",
        "| job | sweep: basic s | fused s | **basic/fused** | training: separate s | fused s "
        "| **separate/fused** |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['sweep basic']:.2f} | {r['sweep fused']:.2f} | "
            f"**{r['sweep ratio']:.2f}x** | {r['training separate']:.2f} | "
            f"{r['training fused']:.2f} | **{r['training ratio']:.2f}x** |"
        )
    # a CUDA machine keeps its own file beside the CPU numbers
    name = "fused_gpu" if payload["machine"]["gpu"] else "fused"
    write_or_print(name, payload, "\n".join(lines), args.quick)
    return payload


if __name__ == "__main__":
    main()
