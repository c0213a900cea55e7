"""The lecture's toy demo, exactly: one weight, SGD(lr=0.1, momentum=0.9), 200 epochs of 10
iterations, the lr recorded each epoch before training and `scheduler.step()` after it.

`python -m schedulers.lecture [--out DIR]` writes one PNG and one CSV per scheduler.
The schedulers are built from configs through `build_scheduler`, the same path a
training run takes, and stepped by `schedulers.simulate`, so the figures show what schedlab
does, not a separate demo.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import torch

from schedulers import simulate
from schedulers.plot import plot_lr_curves

LR = 0.1
MAX_EPOCH = 200
ITERATIONS = 10
COMMON = {
    "interval": "epoch",
    "warmup_epochs": 0,
    "warmup_steps": 0,
    "warmup_start_factor": 0.1,
}

# name -> (scheduler config, number of param groups), parameters as in the lecture's scripts
LECTURE: dict[str, dict[str, Any]] = {
    "step": {"name": "step", "step_size": 50, "gamma": 0.1},
    "multistep": {"name": "multistep", "milestones": [50, 125, 160], "gamma": 0.1},
    "exponential": {"name": "exponential", "gamma": 0.95},
    "cosine": {"name": "cosine", "T_max": 50, "eta_min": 0.0},
    "plateau": {
        "name": "plateau",
        "monitor": "loss",
        "mode": "min",
        "factor": 0.1,
        "patience": 10,
        "threshold": 1e-4,
        "threshold_mode": "rel",
        "cooldown": 10,
        "min_lr": 1e-4,
        "eps": 1e-8,
    },
    "lambda": {"name": "lambda", "lr_lambda": ["0.1 ** (epoch // 20)", "0.95 ** epoch"]},
}


def lecture_config(name: str) -> dict[str, Any]:
    return {**COMMON, **LECTURE[name]}


def toy_params(name: str) -> list[Any]:
    """One weight; the LambdaLR demo's two groups hold a 6x3x5x5 and a 5x5 tensor."""
    torch.manual_seed(1)
    if name == "lambda":
        return [torch.randn(6, 3, 5, 5, requires_grad=True), torch.ones(5, 5, requires_grad=True)]
    return [torch.randn(1, requires_grad=True)]


def plateau_loss(epoch: int) -> float:
    """The lecture's monitored value: 0.5, then 0.4 from epoch 5 on, never improving again."""
    return 0.4 if epoch >= 5 else 0.5


def run_toy(name: str, cfg: dict[str, Any] | None = None) -> list[list[float]]:
    """lr of every param group at each epoch of the toy demo. The toy's training does not move
    the lr (Plateau is fed the lecture's metric, not the toy's loss), so the schedule is
    simulated over as many param groups; tests check it against the lecture's script."""
    groups = len(toy_params(name))
    sim = simulate(
        cfg or lecture_config(name),
        epochs=MAX_EPOCH,
        steps_per_epoch=ITERATIONS,
        base_lrs=[LR] * groups,
        metric=plateau_loss,
    )
    return sim.per_epoch


def _at(lrs: list[list[float]], group: int) -> str:
    """A group's lr at the epochs where the lecture's curves turn (its printout's columns)."""
    return " ".join(f"{lrs[e][group]:.3g}" for e in (0, 50, 100, 150, 199))


def write_curves(out: Path) -> list[Path]:
    written = []
    for name, cfg in LECTURE.items():
        lrs = run_toy(name)
        groups = len(lrs[0])
        epochs = list(range(MAX_EPOCH))
        with (out / f"lecture_{name}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", *(f"lr/group{g}" for g in range(groups))])
            w.writerows([e, *row] for e, row in zip(epochs, lrs, strict=True))
        curves = {f"group {g}": (epochs, [row[g] for row in lrs]) for g in range(groups)}
        params = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "name")
        title = f"{name}: {params}"
        written.append(plot_lr_curves(curves, out / f"lecture_{name}.png", title))
        for g in range(groups):  # every group: LambdaLR's two follow different functions
            label = name if groups == 1 else f"{name} group {g}"
            print(f"{label:<16} lr at epochs 0/50/100/150/199: " + _at(lrs, g))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m schedulers.lecture",
        description="Reproduce the lecture's six lr curves on its toy problem "
        f"(one weight, SGD lr={LR} momentum=0.9, {MAX_EPOCH} epochs x {ITERATIONS} iterations).",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/lecture_curves"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = write_curves(args.out)
    print(f"wrote {len(paths)} figures and lr tables to {args.out}")


if __name__ == "__main__":
    main()
