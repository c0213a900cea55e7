"""Start-up cost: `python -m runner --help` and a 1-epoch run, against `import torch`.

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
        commands = {
            'python -c "import torch"': [py, "-c", "import torch"],
            "python -m runner --help": [py, "-m", "runner", "--help"],
            "python -m runner epochs=1 (W&B offline)": [
                py, "-m", "runner", "epochs=1", f"hydra.run.dir={tmp}/run",
            ],
            "python -m runner epochs=1 logger=none": [
                py, "-m", "runner", "epochs=1", "logger=none", f"hydra.run.dir={tmp}/run2",
            ],
        }  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):  # interleaved
            for name, cmd in commands.items():
                times[name].append(
                    timed(
                        lambda cmd=cmd: subprocess.run(
                            cmd, cwd=tmp, env=env, check=True, capture_output=True
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


if __name__ == "__main__":
    main()
