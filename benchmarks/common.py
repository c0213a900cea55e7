"""Shared by the benchmarks: timing helpers, machine description, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Run every variant once per round, rotating the order, so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(variants[name]))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired(times: dict[str, list[float]], a: str, b: str) -> tuple[float, float]:
    """(median, min) of a / b round by round: `interleaved` runs both in each round, so a
    round's ratio shares that moment's machine speed, where the ratio of two medians can
    pair a fast round of one with a slow round of the other (a shared machine's drift)."""
    ratios = [x / y for x, y in zip(times[a], times[b], strict=True)]
    return median(ratios), min(ratios)


def per_epoch_split(median_s: dict[str, float], epochs: int, longer: int) -> dict[str, float]:
    """From the medians of "hand" and "runner" at `epochs` and of "hand, longer" and
    "runner, longer" at `longer` times them: runner / hand over the extra epochs alone, and
    what the runner costs once a run beyond the hand loop (its start and end)."""
    extra = epochs * (longer - 1)
    per_epoch = {k: (median_s[f"{k}, longer"] - median_s[k]) / extra for k in ("hand", "runner")}
    fixed_s = (median_s["runner"] - median_s["hand"]) - epochs * (
        per_epoch["runner"] - per_epoch["hand"]
    )
    return {"per-epoch ratio": per_epoch["runner"] / per_epoch["hand"], "runner fixed s": fixed_s}


def write(name: str, payload: dict[str, Any], table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    m = payload["machine"]
    header = (
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, torch {m['torch']}, "
        f"{m['torch_threads']} threads{', GPU ' + m['gpu'] if m['gpu'] else ', no GPU'}).\n\n"
    )
    (RESULTS / f"{name}.md").write_text(header + table + "\n")
    print(header + table)


def write_or_print(name: str, payload: dict[str, Any], table: str, quick: bool) -> None:
    """A full run's results go to benchmarks/results/; a --quick smoke run only prints."""
    if quick:
        print(table)
    else:
        write(name, payload, table)
