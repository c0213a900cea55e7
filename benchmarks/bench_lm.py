"""Does the runner train a language model as fast as the loop you would write by hand?

model=gpt on data=text (the bundled source), against a hand-written nanoGPT-style loop
(karpathy/nanoGPT train.py) on the same job: the same GPT class (runner/train/gpt.py),
the same AdamW (its groups split as the runner's: no decay on 1-D parameters and
embeddings), the same per-step cosine lr, gradient clipping at 1.0, the same windows
drawn from the same seeded generator (nanoGPT's get_batch), the same batch and block
sizes, the same number of steps, and a validation pass on the same fixed windows after
every epoch (nanoGPT's estimate_loss every eval_interval steps). Measured in one
process, interleaved, median of --repeats; timed: building the model and optimizer and
the training with its validations (not loading the data, nor start-up: see
bench_startup.py). Tokens/s = training tokens / that time; the ratio is runner / hand
(>= 0.97 is the target).
  hand:          the loop, nothing else (loss read back every 50 steps, as the runner's
                 trainer.log_every_n_steps)
  runner, bare:  schedlab's fit() with trainer.checkpoint=false and logger=none
                 (metrics.jsonl is still written)
  runner:        fit() as a run has it by default: checkpoints (last.pt, best.pt) and
                 W&B offline, its writes on the writer thread, flushed before the clock stops
Each timed run is also split at its optimizer steps (a global step hook): the steady
step (the median of the steps inside an epoch) and the rest (the run's time less its
steps at that median: building, the first step's warm-up, the validations, epoch ends
and the end), in wall and CPU time, so a per-step cost and a per-run one show apart.
All of it under the runner's malloc settings (runner/train/heap.py), set before the
first run: the hand loop shares the process, so it would get them after the runner's
first run anyway; without them the runner's larger validation batches paid page faults
that the hand loop's did not (issue #35).
On CUDA both run under bf16 autocast and torch.compile (trainer.amp, trainer.compile),
with larger GPTs.

    python benchmarks/bench_lm.py [--repeats 5] [--quick] [--device cpu|cuda] [--threads N]
                                  [--glibc-default]

On a shared, loaded machine --threads 1 gives steadier numbers: two threads on two busy
cores spin and wait for each other (a step of the small GPT took 5x longer with 2 than
with 1 at a load average of 11).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_overhead import runner_loop  # noqa: E402
from common import interleaved, machine, median, write_or_print  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

from runner.config.compose import compose_config  # noqa: E402
from runner.config.schema import run_spec  # noqa: E402
from runner.data.sets import load_data  # noqa: E402
from runner.io.background import Background  # noqa: E402
from runner.io.loggers import open_logger  # noqa: E402
from runner.run.check import validate  # noqa: E402
from runner.train import heap  # noqa: E402
from runner.train.gpt import GPT  # noqa: E402

LOG_EVERY = 50  # the runner's trainer.log_every_n_steps default: a loss read back


def job(layers: int, embd: int, block: int, batch: int, steps: int, epochs: int) -> list[str]:
    """The overrides of a job: `steps` optimizer steps per epoch (data.tokens_per_epoch)."""
    return [
        f"model.n_layer={layers}",
        f"model.n_embd={embd}",
        "model.n_head=4",
        f"data.block_size={block}",
        f"data.batch_size={batch}",
        f"data.tokens_per_epoch={steps * batch * block}",
        f"epochs={epochs}",
    ]


CPU_JOBS = {
    "GPT 2x64, block 64, batch 16": job(2, 64, 64, 16, steps=40, epochs=3),
    "GPT 4x128, block 128, batch 32 (model=gpt)": job(4, 128, 128, 32, steps=8, epochs=2),
}
GPU_JOBS = {  # nanoGPT's shakespeare-char model, and a wider one
    "GPT 6x384, block 256, batch 64": job(6, 384, 256, 64, steps=100, epochs=3),
    "GPT 12x768, block 512, batch 16": job(12, 768, 512, 16, steps=50, epochs=3),
}
QUICK = {  # a smoke test: less text to make and to validate on
    "GPT 1x32, block 32, batch 8": [
        *job(1, 32, 32, 8, steps=5, epochs=2),
        "data.source_tokens=65536",
        "data.val_tokens=2048",
    ]
}
COMMON = [
    "model=gpt", "data=text", "data.source_tokens=262144", "data.val_tokens=16384",
    "optimizer=adamw", "optimizer.lr=0.001", "optimizer.betas=[0.9,0.95]",
    "optimizer.weight_decay=0.1", "scheduler=cosine", "scheduler.interval=step",
    "trainer.grad_clip_norm=1.0", "trainer.progress=line", "seed=0",
]  # fmt: skip
BARE = ["trainer.checkpoint=false", "logger=none"]
ON_CUDA = ["trainer.amp=true", "trainer.compile=true"]


def hand_loop(cfg: Any, data: Any, device: torch.device, compiled: bool) -> float:
    """What nanoGPT's train.py does with this job: get_batch (offsets from a seeded
    generator, one slice per window, stacked), lr set per step, bf16 autocast and
    torch.compile on CUDA, clip 1.0, AdamW; the loss read back every LOG_EVERY steps;
    estimate_loss on the validation windows after every epoch. Returns the last one (the
    mean over tokens, as the runner's val/loss)."""
    m, d, o = cfg.model, cfg.data, cfg.optimizer
    torch.manual_seed(cfg.seed)
    model = GPT(data.num_classes, d.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout, m.bias)
    model.to(device)
    tables = {id(e.weight) for e in model.modules() if isinstance(e, torch.nn.Embedding)}
    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2 and id(p) not in tables]
    rest = [p for p in params if p.dim() < 2 or id(p) in tables]
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    forward = torch.compile(model) if compiled else model
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if compiled else nullcontext()
    train, block, batch = data.x_train.tokens, d.block_size, d.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = data.n_train // batch
    total = steps * cfg.epochs

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(train) - block, (batch,), generator=gen)
        x = torch.stack([torch.from_numpy(train[i : i + block].astype(np.int64)) for i in ix])
        y = torch.stack(
            [torch.from_numpy(train[i + 1 : i + 1 + block].astype(np.int64)) for i in ix]
        )  # noqa: E501
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(
                device, non_blocking=True
            )
        return x, y

    it, val_loss = 0, math.nan
    for _ in range(cfg.epochs):
        model.train()
        for _ in range(steps):
            lr = o.lr * 0.5 * (1.0 + math.cos(math.pi * it / total))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = get_batch()
            with ctx:
                logits = forward(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            it += 1
            if it % LOG_EVERY == 0:
                loss.item()
        model.eval()
        with torch.no_grad():
            total_loss = torch.zeros((), device=device)
            for i in range(0, len(data.x_val), batch):
                x, y = data.x_val[i : i + batch].to(device), data.y_val[i : i + batch].to(device)
                with ctx:
                    logits = forward(x)
                total_loss += F.cross_entropy(
                    logits.float().flatten(0, 1), y.flatten(), reduction="sum"
                )
            val_loss = total_loss.item() / data.y_val.numel()
    return val_loss


def measure(overrides: list[str], device: torch.device, repeats: int, warm: bool) -> dict[str, Any]:
    """The three variants of one job, interleaved, after one untimed run of each."""
    cuda = device.type == "cuda"
    extra = [*COMMON, f"trainer.device={device.type}", *(ON_CUDA if cuda else [])]
    cfg = compose_config([*extra, *overrides])  # the job's own overrides win
    validate(cfg)
    bare = compose_config([*extra, *overrides, *BARE])
    data = load_data(run_spec(cfg).data)  # loaded once, as a sweep's jobs share it
    tokens = data.n_train // cfg.data.batch_size * cfg.data.batch_size * cfg.data.block_size
    tokens *= cfg.epochs
    with (
        tempfile.TemporaryDirectory() as tmp,
        Background() as background,
        open_logger(cfg.logger, Path(tmp), {}, [], None, background=background) as logger,
        open_logger(bare.logger, Path(tmp), {}, [], None, background=background) as plain,
    ):
        runs = iter(range(10**6))

        def fresh(name: str) -> Path:
            path = Path(tmp) / f"{name}{next(runs)}"
            path.mkdir()
            return path

        texts = {id(c): OmegaConf.to_yaml(c, resolve=True) for c in (cfg, bare)}  # start-up's

        def runner(c: Any, lg: Any, name: str) -> None:
            runner_loop(c, data, lg, fresh(name), background, texts[id(c)])

        steps = data.n_train // cfg.data.batch_size  # per epoch
        split: dict[str, dict[str, list[float]]] = {}
        variants = {
            name: with_split(fn, split.setdefault(name, {}), steps)
            for name, fn in (
                ("hand", partial(hand_loop, cfg, data, device, cuda)),
                ("runner, bare", partial(runner, bare, plain, "bare")),
                ("runner", partial(runner, cfg, logger, "runner")),
            )
        }
        if warm:  # first calls (allocator, compile, the W&B service) out of the clock
            for fn in variants.values():
                fn()
            for record in split.values():
                record.clear()
        times = interleaved(variants, repeats)
    result: dict[str, Any] = {name: median(ts) for name, ts in times.items()}
    result |= {f"{name} tokens/s": tokens / result[name] for name in variants}
    result["bare ratio"] = result["hand"] / result["runner, bare"]
    result["ratio"] = result["hand"] / result["runner"]
    cpu_s = {name: median(record["cpu s"]) for name, record in split.items()}
    result["cpu bare ratio"] = cpu_s["hand"] / cpu_s["runner, bare"]
    result["cpu ratio"] = cpu_s["hand"] / cpu_s["runner"]
    result["split"] = {
        name: {key: median(values) for key, values in record.items()}
        for name, record in split.items()
    }
    result |= {"tokens": tokens, "all": times, "cpu s": cpu_s, "all split": split}
    return result


def with_split(
    fn: Callable[[], Any], record: dict[str, list[float]], steps: int
) -> Callable[[], None]:
    """`fn`, each call's times appended to `record`: its process CPU time ("cpu s": every
    thread of this process, not W&B's own service process: on a loaded machine the wall
    time also holds the waits for a core, the CPU time only the work) and its split at
    the optimizer steps (`split_at_steps`; `steps` per epoch)."""

    def run() -> None:
        stamps: list[tuple[float, float]] = []
        hook = register_optimizer_step_post_hook(
            lambda *_: stamps.append((time.perf_counter(), time.process_time()))
        )
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            t1, c1 = time.perf_counter(), time.process_time()
        finally:
            hook.remove()
        record.setdefault("cpu s", []).append(c1 - c0)
        for key, value in split_at_steps(stamps, steps, t1 - t0, c1 - c0).items():
            record.setdefault(key, []).append(value)

    return run


def split_at_steps(
    stamps: list[tuple[float, float]], steps: int, wall_s: float, cpu_s: float
) -> dict[str, float]:
    """A run's steady step, the median of the intervals between optimizer steps inside an
    epoch (not those across an epoch's end: a validation is in them), in wall and CPU
    ms, and the rest of the run: its time less its steps at that median."""
    inside = [i for i in range(1, len(stamps)) if i % steps]
    if not inside:  # one step an epoch: no steady step to take
        return {}
    step = [median([stamps[i][k] - stamps[i - 1][k] for i in inside]) for k in (0, 1)]
    n = len(stamps)
    return {
        "step ms": 1000 * step[0],
        "step cpu ms": 1000 * step[1],
        "rest s": wall_s - n * step[0],
        "rest cpu s": cpu_s - n * step[1],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one tiny GPT, 1 repeat (smoke)")
    parser.add_argument("--device", default="auto", help="auto (cuda if there is one) | cpu | cuda")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads for both (default: torch's)"
    )
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's malloc thresholds as they are (the runner before issue #35); "
        "prints only",
    )
    args = parser.parse_args(argv)
    if args.threads:  # the runner keeps them: trainer.num_threads=auto
        torch.set_num_threads(args.threads)
    if args.glibc_default:
        heap.keep_freed_memory = lambda: False  # the engine calls it through the module
    heap.keep_freed_memory()  # as the runner's first run would set it for the whole process
    name = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    logging.getLogger("schedlab").setLevel(logging.WARNING)
    jobs = QUICK if args.quick else GPU_JOBS if device.type == "cuda" else CPU_JOBS
    repeats = 1 if args.quick else args.repeats
    results = {}
    for title, overrides in jobs.items():
        results[title] = r = measure(overrides, device, repeats, warm=not args.quick)
        print(
            f"{title}: hand {r['hand tokens/s']:.0f} tokens/s, runner, bare "
            f"{r['runner, bare tokens/s']:.0f} (ratio {r['bare ratio']:.3f}), runner "
            f"{r['runner tokens/s']:.0f} tokens/s: ratio runner / hand {r['ratio']:.3f} "
            f"(CPU time: bare {r['cpu bare ratio']:.3f}, runner {r['cpu ratio']:.3f})"
        )
    how = "bf16 autocast + torch.compile" if device.type == "cuda" else "fp32, eager"
    lines = [
        f"On {device.type} ({how}, {torch.get_num_threads()} torch threads); median of "
        f"{repeats} interleaved repeats; tokens/s = training tokens / (model build + "
        "training + a validation per epoch); "
        + (
            "glibc's own malloc thresholds (--glibc-default)."
            if args.glibc_default
            else "both under the runner's malloc thresholds (runner/train/heap.py)."
        ),
        "",
        "| job | steps | hand tokens/s | runner, bare tokens/s | runner tokens/s "
        "| **runner, bare / hand** | **runner / hand** | by CPU time: bare / hand "
        "| runner / hand |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for title, r in results.items():
        steps = r["tokens"] // _tokens_per_step(jobs[title])
        lines.append(
            f"| {title} | {steps} | {r['hand tokens/s']:.0f} | {r['runner, bare tokens/s']:.0f} "
            f"| {r['runner tokens/s']:.0f} | **{r['bare ratio']:.3f}** | **{r['ratio']:.3f}** "
            f"| {r['cpu bare ratio']:.3f} | {r['cpu ratio']:.3f} |"
        )
    lines.append(
        "\nRatios are tokens/s over the hand loop's (its time / theirs); target: runner / hand "
        ">= 0.97. By CPU time: this process's CPU seconds instead of wall seconds (W&B's "
        "service process not counted), steadier on a loaded machine."
    )
    lines += split_table(results)
    payload = {"machine": machine(), "device": device.type, "repeats": repeats,
               "overrides": COMMON, "results": results}  # fmt: skip
    name = "lm_gpu" if device.type == "cuda" else "lm"  # a CUDA machine's file beside the CPU's
    write_or_print(name, payload, "\n".join(lines), args.quick or args.glibc_default)
    return payload


def split_table(results: dict[str, Any]) -> list[str]:
    """The split's lines: each variant's steady step and the rest of its run (medians)."""
    lines = [
        "",
        "Split at the optimizer steps: the steady step (median of the steps inside an epoch) "
        "and the rest of a run (its time less its steps at that median: build, first step, "
        "validations, epoch ends, end); medians over the repeats.",
        "",
        "| job | variant | step ms | step CPU ms | step / hand's (CPU) | rest s | rest CPU s "
        "| rest CPU s over hand's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for title, r in results.items():
        hand = r["split"]["hand"]
        if "step ms" not in hand:
            continue
        for name, s in r["split"].items():
            lines.append(
                f"| {title} | {name} | {s['step ms']:.2f} | {s['step cpu ms']:.2f} "
                f"| {s['step cpu ms'] / hand['step cpu ms']:.3f} | {s['rest s']:.3f} "
                f"| {s['rest cpu s']:.3f} | {s['rest cpu s'] - hand['rest cpu s']:+.3f} |"
            )
    return lines


def _tokens_per_step(overrides: list[str]) -> int:
    values = dict(o.split("=", 1) for o in overrides)
    return int(values["data.batch_size"]) * int(values["data.block_size"])


if __name__ == "__main__":
    main()
