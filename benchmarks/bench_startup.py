"""Start-up cost: `python -m runner --help`, a config error, a 1-epoch run and that run's
command again, against `import torch`. The config error (exit 2) and the command again (its
run dir complete: nothing to do) are start-up's checks alone: the config composed and
validated, the model checked on a batch of the data, nothing trained.

python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median, timed, write  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    py = sys.executable
    env = {**os.environ, "WANDB_SILENT": "true"}
    with tempfile.TemporaryDirectory() as tmp:
        names = list(_commands(py, Path(tmp), 0))
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.repeats):  # interleaved; each round's runs in dirs of their own
            for name, (cmd, expected) in _commands(py, Path(tmp), r).items():
                times[name].append(
                    timed(
                        lambda cmd=cmd, expected=expected: _ran(
                            subprocess.run(cmd, cwd=tmp, env=env, capture_output=True),
                            expected,
                        )
                    )
                )
    base = median(times['python -c "import torch"'])
    lines = ["| command | median s | vs import torch |", "|---|---|---|"]
    for name, ts in times.items():
        lines.append(f"| `{name}` | {median(ts):.2f} | {median(ts) - base:+.2f} s |")
    help_s = median(times["python -m runner --help"])
    lines.append(
        f"\nTarget: --help ≤ import torch + 1 s: {help_s:.2f} s vs {base + 1:.2f} s "
        f"({'met' if help_s <= base + 1 else 'missed'}; --help does not import torch)."
    )
    payload = {"machine": machine(), "times": times}
    write("startup", payload, "\n".join(lines))
    return payload


def _commands(py: str, tmp: Path, r: int) -> dict[str, tuple[list[str], int]]:
    """Round r's commands and the exit status each must end with, in the order run. Each
    round trains into new run dirs: a run dir that holds the complete run of the same
    config ends at once ("already complete"), which is the last command's measure."""
    run = [py, "-m", "runner", "epochs=1", "logger=none", f"hydra.run.dir={tmp}/none_{r}"]
    return {
        'python -c "import torch"': ([py, "-c", "import torch"], 0),
        "python -m runner --help": ([py, "-m", "runner", "--help"], 0),
        "python -m runner optimizer.lr=-1 (a config error)": (
            [py, "-m", "runner", "optimizer.lr=-1", f"hydra.run.dir={tmp}/refused"],
            2,
        ),
        "python -m runner epochs=1 (W&B offline)": (
            [py, "-m", "runner", "epochs=1", f"hydra.run.dir={tmp}/wandb_{r}"],
            0,
        ),
        "python -m runner epochs=1 logger=none": (run, 0),
        "the same command again (its run dir complete)": (run, 0),
    }


def _ran(proc: subprocess.CompletedProcess, expected: int) -> None:
    """A timing counts only for the command's own outcome (a crash is not start-up)."""
    if proc.returncode != expected:
        raise SystemExit(f"{proc.args} exited {proc.returncode}: {proc.stderr[-2000:]!r}")


if __name__ == "__main__":
    main()
