"""What does a budget sweep cost through branches, against a run from scratch per budget?

Hägele et al. (NeurIPS 2024): cooldowns branched from the kept checkpoints of one WSD run
give a whole sweep of training budgets for about the cost of its longest member. On digits
with the MLP (logger=none), budgets 10, 20 and 40 epochs of scheduler=wsd
(decay_fraction 0.2, warmup 2 epochs), measured in one process, interleaved, median of
--repeats:
  reruns:   each budget trained from scratch (train() one after another)
  branches: the longest budget trained once as the trunk, keeping the epochs where the
            shorter budgets' decays start (trainer.keep_epochs), then a branch per shorter
            budget (branch=<trunk>, branch_epoch null: each starts where its decay does)
Epochs trained are counted from the runs' metrics.jsonl (a branch's rows without
`from_trunk`); a branch equals its rerun row for row on CPU, so both give the same final
val accuracies (checked).

    python benchmarks/bench_budgets.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, machine, median, write_or_print  # noqa: E402

from runner.config.compose import compose_config  # noqa: E402
from runner.io.files import read_jsonl  # noqa: E402
from runner.run.train import train  # noqa: E402
from runner.sweep.budgets import own_epochs  # noqa: E402

BUDGETS, DECAY = [10, 20, 40], 0.2
# the smallest budgets whose decay has an epoch below the base lr: at 0.2 that is 10 epochs
QUICK_BUDGETS, QUICK_DECAY = [5, 6], 0.5
WARMUP = 2
BASE = [
    "logger=none",
    "trainer.progress=line",
    "scheduler=wsd",
    f"scheduler.warmup_epochs={WARMUP}",
]


def common(decay: float) -> list[str]:
    return [*BASE, f"scheduler.decay_fraction={decay}"]


def decay_start(budget: int, decay: float) -> int:
    """The epoch a WSD run of `budget` epochs starts its decay (conf/scheduler/wsd.yaml)."""
    return budget - round((budget - WARMUP) * decay)


def run(overrides: list[str], run_dir: Path) -> Path:
    result = train(compose_config(overrides), run_dir, overrides=overrides)
    assert result.status == "completed", (run_dir, result.status)
    return run_dir


def reruns(budgets: list[int], decay: float, out: Path) -> list[Path]:
    return [run([*common(decay), f"epochs={b}"], out / f"rerun_{b}") for b in sorted(budgets)]


def branches(budgets: list[int], decay: float, out: Path) -> list[Path]:
    """The longest budget is the trunk (it is that budget's run); the others branch off it
    where their decay starts (branch_epoch null finds it)."""
    *shorter, longest = sorted(budgets)
    keep = ",".join(str(decay_start(b, decay)) for b in shorter)
    trunk_args = [*common(decay), f"epochs={longest}", f"trainer.keep_epochs=[{keep}]"]
    trunk = run(trunk_args, out / "trunk")
    cooldowns = [
        run([*common(decay), f"epochs={b}", f"branch={trunk}"], out / f"branch_{b}")
        for b in shorter
    ]
    return [*cooldowns, trunk]


def epochs_and_finals(dirs: list[Path]) -> tuple[int, list[float]]:
    """Epochs the runs trained themselves, and each run's final val acc (budget order)."""
    rows = [[r for r in read_jsonl(d / "metrics.jsonl") if r.get("kind") != "step"] for d in dirs]
    return sum(own_epochs(r) for r in rows), [r[-1]["val/acc"] for r in rows]


def measure(budgets: list[int], decay: float, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**6))
        last: dict[str, list[Path]] = {}
        cpu: dict[str, list[float]] = {"reruns": [], "branches": []}

        def fresh(name: str, fn: Any) -> None:
            t0 = time.process_time()  # every thread's: less moved by a shared machine's load
            last[name] = fn(budgets, decay, Path(tmp) / str(next(runs)))
            cpu[name].append(time.process_time() - t0)

        times = interleaved(
            {
                "reruns": lambda: fresh("reruns", reruns),
                "branches": lambda: fresh("branches", branches),
            },
            repeats,
        )
        epochs_r, finals_r = epochs_and_finals(last["reruns"])
        epochs_b, finals_b = epochs_and_finals(last["branches"])
    result: dict[str, Any] = {f"{k} s": median(v) for k, v in times.items()}
    result.update({f"{k} cpu s": median(v) for k, v in cpu.items()})
    result.update(
        {
            "reruns epochs": epochs_r,
            "branches epochs": epochs_b,
            "epochs ratio": epochs_r / epochs_b,
            "time ratio": result["reruns s"] / result["branches s"],
            "cpu ratio": result["reruns cpu s"] / result["branches cpu s"],
            "same final val acc": finals_r == finals_b,
            "final val acc": dict(zip(map(str, sorted(budgets)), finals_b, strict=True)),
        }
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="budgets 5 and 6 (decay_fraction 0.5), 1 repeat (smoke)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("schedlab").setLevel(logging.WARNING)
    budgets, decay = (QUICK_BUDGETS, QUICK_DECAY) if args.quick else (BUDGETS, DECAY)
    repeats = 1 if args.quick else args.repeats
    if not args.quick:  # imports and first-call costs out of the way, untimed
        measure(QUICK_BUDGETS, QUICK_DECAY, 1)
    load = os.getloadavg()[0]  # a shared machine's wall times say little; its CPU times more
    r = measure(budgets, decay, repeats)
    payload = {"machine": machine(), "load average": load, "repeats": repeats, "budgets": budgets,
               "overrides": common(decay), "results": {"digits MLP": r}}  # fmt: skip
    lines = [
        f"Budgets {', '.join(map(str, budgets))} epochs, digits MLP, {' '.join(common(decay))}; "
        f"median of {repeats}. Branches: the longest budget is the trunk, the others branch "
        f"where their decay starts. Load average {load:.1f} at the start (wall s on a shared "
        "machine move with it; CPU s, every thread's, less).",
        "",
        "| job | reruns: epochs | wall s | CPU s | branches: epochs | wall s | CPU s "
        "| **epochs ratio** | **wall ratio** | **CPU ratio** | same final val acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| digits MLP | {r['reruns epochs']} | {r['reruns s']:.2f} | {r['reruns cpu s']:.2f} "
        f"| {r['branches epochs']} | {r['branches s']:.2f} | {r['branches cpu s']:.2f} "
        f"| **{r['epochs ratio']:.2f}x** | **{r['time ratio']:.2f}x** "
        f"| **{r['cpu ratio']:.2f}x** | {'yes' if r['same final val acc'] else 'no'} |",
    ]
    name = "budgets_gpu" if payload["machine"]["gpu"] else "budgets"
    write_or_print(name, payload, "\n".join(lines), args.quick)
    return payload


if __name__ == "__main__":
    main()
