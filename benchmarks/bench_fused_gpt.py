"""K = 4 tiny GPTs: a fused sweep (stacked, runner/sweep/stacked_gpt.py) against one by one.

Seeds 0-3 of one small GPT on data=text (a 2-layer, 64-wide GPT, block 64, batch 16,
2 epochs of 20 steps, AdamW with cosine, logger=none, one torch thread), measured in one
process, interleaved, median of --repeats after one untimed round:
  sweep:    the whole multirun through Hydra (bench_fused.py's `sweep`), basic vs fused
  training: train() for each job one after another vs train_group() for all four

    python benchmarks/bench_fused_gpt.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fused import variants  # noqa: E402
from common import interleaved, machine, median, paired, write_or_print  # noqa: E402

from runner.config.compose import compose_config  # noqa: E402

SEEDS = [0, 1, 2, 3]
GPT = [
    "model=gpt", "model.n_layer=2", "model.n_embd=64", "model.n_head=2",
    "data=text", "data.source_tokens=65536", "data.block_size=64", "data.batch_size=16",
    "data.tokens_per_epoch=20480", "data.val_tokens=4096",
    "optimizer=adamw", "optimizer.lr=0.003", "scheduler=cosine",
    "epochs=2", "logger=none", "trainer.num_threads=1",
]  # fmt: skip
QUICK = ["epochs=1", "data.tokens_per_epoch=1024", "data.val_tokens=1024", "model.n_layer=1"]


def measure(overrides: list[str], repeats: int, warm: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*overrides, f"data.cache_dir={tmp}/cache"]  # the text stream, made once
        configs = [compose_config([*overrides, f"seed={seed}"]) for seed in SEEDS]
        timings = variants([f"seed={','.join(map(str, SEEDS))}", *overrides], configs, Path(tmp))
        if warm:  # the text cache, imports and first calls, untimed
            interleaved(timings, 1)
        times = interleaved(timings, repeats)
    result: dict[str, Any] = {name: median(values) for name, values in times.items()}
    result["sweep ratio"], result["sweep ratio min"] = paired(times, "sweep basic", "sweep fused")
    result["training ratio"], result["training ratio min"] = paired(
        times, "training separate", "training fused"
    )
    result["times"] = times
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    logging.getLogger("schedlab").setLevel(logging.WARNING)
    overrides = [*GPT, *QUICK] if args.quick else GPT
    repeats = 1 if args.quick else args.repeats
    r = measure(overrides, repeats, warm=not args.quick)
    payload = {"machine": machine(), "repeats": repeats, "seeds": SEEDS,
               "overrides": overrides, "results": {"tiny GPT x4": r}}  # fmt: skip
    lines = [
        f"Seeds {SEEDS} of {' '.join(overrides)}; median of {repeats} interleaved rounds "
        "(ratios: the median of each round's ratio, and its lowest).",
        "",
        "| job | sweep: basic s | fused s | **basic/fused** | training: separate s | fused s "
        "| **separate/fused** |",
        "|---|---|---|---|---|---|---|",
        f"| tiny GPT x4 | {r['sweep basic']:.2f} | {r['sweep fused']:.2f} | "
        f"**{r['sweep ratio']:.2f}x** (min {r['sweep ratio min']:.2f}) | "
        f"{r['training separate']:.2f} | {r['training fused']:.2f} | "
        f"**{r['training ratio']:.2f}x** (min {r['training ratio min']:.2f}) |",
    ]
    name = "fused_gpt_gpu" if payload["machine"]["gpu"] else "fused_gpt"
    write_or_print(name, payload, "\n".join(lines), args.quick)
    return payload


if __name__ == "__main__":
    main()
