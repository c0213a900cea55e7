"""What does the streamed data path (data=dataset) cost over a hand-written DataLoader loop,
and over the in-memory path?

Same model (the runner's MLP), SGD + cosine, batch size, epochs and seed; measured in one
process, interleaved, several repeats, median. Timed: the training itself (every epoch with
its validation), not start-up (imports, building the datasets, W&B init).
  (1) crop + flip: an in-process dataset of 3x32x32 uint8 images (`Images` below) with a
      torchvision.transforms.v2 pipeline (random crop, padding 4, horizontal flip, to
      float), given to the runner by `_target_` with data.in_memory=false, and
      num_workers 0, then 2:
        hand:   DataLoader(dataset, batch_size, shuffle=True, generator=...) over the very
                same dataset objects, SGD + cosine, an eval pass per epoch, as a user writes it
        runner: schedlab's fit() as bench_overhead.py runs it: W&B offline + metrics.jsonl,
                per-epoch checkpoints, its writer thread flushed before the clock stops
  (2) digits: the bundled set through its usual in-memory path (runner), the same tensors
      streamed (`Digits` below, data=dataset, in_memory=false: runner), and the hand
      DataLoader loop over those `Digits`; no transform, so what is left is the per-sample
      path itself
A run's fixed costs (last.pt written before the first epoch, the last checkpoints and W&B
rows waited for at the end: ~40 ms with a 3 MB model, fsync included) weigh on a job of
under a second; each job of (1) is therefore also run at twice its epochs, and the extra
epochs alone give the per-epoch ratio and the runner's fixed cost per run.

    python benchmarks/bench_stream.py [--repeats 5] [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_overhead import hand_parts, hand_step, runner_loop  # noqa: E402
from common import interleaved, machine, median, per_epoch_split, write_or_print  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from runner.config.compose import compose_config  # noqa: E402
from runner.config.schema import run_spec  # noqa: E402
from runner.data.sets import load_data  # noqa: E402
from runner.data.stream import val_batch_size  # noqa: E402
from runner.io.background import Background  # noqa: E402
from runner.io.loggers import open_logger  # noqa: E402
from runner.run.check import validate  # noqa: E402
from runner.train.builders import build_run  # noqa: E402

MODULE = "bench_stream"  # the `_target_`s below: benchmarks/ is on sys.path (script dir, tests)
TARGET = 1.03  # runner / hand on the same streamed dataset


# -- the datasets, given to the runner by `_target_` ---------------------------------------------
class Images(Dataset):
    """`size` random 3x32x32 uint8 images of 10 classes (from a generator of their own seeded by
    `offset`, so train and val differ), each passed through `transform` when fetched."""

    classes = tuple(range(10))

    def __init__(self, size: int, offset: int = 0, transform: Any = None) -> None:
        g = torch.Generator().manual_seed(offset)
        self.x = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.y = torch.randint(0, 10, (size,), generator=g)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.x[i]
        return (self.transform(x) if self.transform else x), int(self.y[i])


class Digits(Dataset):
    """The bundled digits split (`train` or `val`) as data=digits loads it into memory (the
    same standardised tensors), one sample per index: a TensorDataset a user would write."""

    classes = tuple(range(10))

    def __init__(self, split: str) -> None:
        data = load_data(DIGITS)
        if split == "train":
            self.x, self.y = data.x_train, data.y_train
        else:
            self.x, self.y = data.x_val, data.y_val

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


DIGITS = dict(name="digits", num_classes=10, batch_size=64, val_fraction=0.2, split_seed=0)
_FLOAT = {
    "_target_": "torchvision.transforms.v2.ToDtype",
    "dtype": {"_target_": "hydra.utils.get_object", "path": "torch.float32"},
    "scale": True,
}
CROP_FLIP = {
    "_target_": "torchvision.transforms.v2.Compose",
    "transforms": [
        {"_target_": "torchvision.transforms.v2.RandomCrop", "size": 32, "padding": 4},
        {"_target_": "torchvision.transforms.v2.RandomHorizontalFlip"},
        _FLOAT,
    ],
}


def images(train: int, val: int) -> dict[str, Any]:
    return {
        "train": {"_target_": f"{MODULE}.Images", "size": train, "transform": CROP_FLIP},
        "val": {"_target_": f"{MODULE}.Images", "size": val, "offset": 1, "transform": _FLOAT},
    }


DIGITS_STREAMED = {
    "train": {"_target_": f"{MODULE}.Digits", "split": "train"},
    "val": {"_target_": f"{MODULE}.Digits", "split": "val"},
}
COMMON = ["trainer.progress=line", "trainer.device=cpu"]
STREAMED = ["data=dataset", "data.in_memory=false", "data.batch_size=64", "data.num_classes=10"]
# (1) the hand DataLoader loop vs the runner, on the same streamed dataset
VS_HAND = {
    "crop + flip 3×32×32, 0 workers": (["epochs=3"], images(1024, 256), 0),
    "crop + flip 3×32×32, 2 workers": (["epochs=3"], images(1024, 256), 2),
}
VS_HAND_QUICK = {"crop + flip 3×32×32, 0 workers": (["epochs=1"], images(128, 64), 0)}
LONGER = 2  # (1) again at this many times its epochs: what the extra epochs cost
# (2) digits: in memory vs streamed (and the hand DataLoader loop on the streamed set)
DIGITS_EPOCHS = {False: 5, True: 1}  # by --quick


def config(overrides: list[str], datasets: dict[str, Any] | None, workers: int = 0) -> Any:
    """A validated config; `datasets` (data.train/data.val nodes) makes it data=dataset."""
    streamed = [*STREAMED, f"data.num_workers={workers}"] if datasets is not None else []
    cfg = compose_config([*overrides, *streamed, *COMMON])
    for split, node in (datasets or {}).items():
        cfg.data[split] = node
    validate(cfg)
    return cfg


def hand_loop(cfg: Any, data: Any, guarded: tuple[Any, Path] | None = None) -> int:
    """What a user writes around a Dataset: seed, model, SGD + cosine, a shuffling DataLoader,
    an eval pass each epoch (sums on the host's tensors, read once per epoch). Returns the
    optimizer steps taken. `guarded` (a W&B run, a checkpoint dir): with the runner's
    checkpoint and W&B guarantees added (bench_overhead.py's Guarantees)."""
    model, opt, sched, gen, guard = hand_parts(cfg, data, guarded)
    bs, workers = cfg.data.batch_size, cfg.data.num_workers
    train_dl = DataLoader(data.train, bs, shuffle=True, generator=gen, num_workers=workers)
    val_dl = DataLoader(data.val, val_batch_size(bs), num_workers=workers)  # as the runner's
    n, n_val, steps = len(data.train), len(data.val), 0
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum, correct = torch.zeros(()), torch.zeros(())
        for x, y in train_dl:
            batch_loss, batch_correct = hand_step(model, opt, x, y)
            loss_sum += batch_loss
            correct += batch_correct
            steps += 1
        model.eval()
        val_loss, val_correct = torch.zeros(()), torch.zeros(())
        with torch.no_grad():
            for x, y in val_dl:
                logits = model(x)
                val_loss += F.cross_entropy(logits, y, reduction="sum")
                val_correct += (logits.argmax(1) == y).sum()
        lr = opt.param_groups[0]["lr"]
        sched.step()
        row = {"epoch": epoch, "lr/group0": lr, "train/loss": loss_sum.item() / n,
               "train/acc": correct.item() / n, "val/loss": val_loss.item() / n_val,
               "val/acc": val_correct.item() / n_val}  # fmt: skip
        if guard is not None:
            guard.epoch_end(row)
    if guard is not None:
        guard.finish()
    return steps


def counted_runner_loop(
    cfg: Any, data: Any, logger: Any, ckpt_dir: Path, background: Background, config_text: str
) -> int:
    """bench_overhead.py's runner_loop (fit with logging and checkpoints on, the writer
    thread flushed before the clock stops); returns the optimizer steps it took."""
    steps = [0]
    hook = register_optimizer_step_post_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    try:
        runner_loop(cfg, data, logger, ckpt_dir, background, config_text)
    finally:
        hook.remove()
    return steps[0]


def measure(
    variants: dict[str, Callable[[], int]], repeats: int, warm_up: bool = True
) -> tuple[dict[str, float], dict[str, list[float]], dict[str, int]]:
    """Each variant once to warm up (first-call costs out), then interleaved repeats; with
    the optimizer steps each took (the same in every run of it)."""
    steps: dict[str, int] = {}

    def counted(name: str, fn: Callable[[], int]) -> Callable[[], None]:
        return lambda: steps.__setitem__(name, fn())

    timed = {name: counted(name, fn) for name, fn in variants.items()}
    if warm_up:
        for fn in timed.values():
            fn()
    times = interleaved(timed, repeats)
    return {name: median(ts) for name, ts in times.items()}, times, steps


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="one tiny job each, no warm-up (a smoke test)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    logger_cfg = config([], None).logger
    results: dict[str, Any] = {"vs hand": {}, "digits": {}}
    with (
        tempfile.TemporaryDirectory() as tmp,
        Background() as background,
        # W&B offline (the default logger), started once
        open_logger(logger_cfg, Path(tmp), {}, [], None, background=background) as logger,
    ):
        ckpt = itertools.count()

        def runner(cfg: Any, data: Any) -> Callable[[], int]:
            where = Path(tmp) / f"ckpt{next(ckpt)}"
            where.mkdir()
            text = OmegaConf.to_yaml(cfg, resolve=True)  # start-up makes it: not timed
            return partial(counted_runner_loop, cfg, data, logger, where, background, text)

        jobs = VS_HAND_QUICK if args.quick else VS_HAND
        for job, (overrides, datasets, workers) in jobs.items():
            cfg = config(overrides, datasets, workers)
            longer = config([*overrides, f"epochs={cfg.epochs * LONGER}"], datasets, workers)
            data = build_run(
                run_spec(cfg)
            ).data  # built once: every loop gets the same dataset objects
            guarded_dir = Path(tmp) / f"guarded{next(ckpt)}"
            guarded_dir.mkdir()
            median_s, times, steps = measure(
                {
                    "hand": lambda: hand_loop(cfg, data),  # noqa: B023
                    "hand + guarantees": partial(
                        hand_loop, cfg, data, (logger.wandb_run, guarded_dir)
                    ),
                    "runner": runner(cfg, data),
                    "hand, longer": lambda: hand_loop(longer, data),  # noqa: B023
                    "runner, longer": runner(longer, data),
                },
                repeats,
                warm_up=not args.quick,
            )
            r = median_s | per_epoch_split(median_s, cfg.epochs, LONGER)
            r |= {
                "ratio": median_s["runner"] / median_s["hand"],
                "steps": steps,
                "vs guarded": median_s["runner"] / median_s["hand + guarantees"],
            }
            results["vs hand"][job] = r | {"all": times}
            print(
                f"{job}: hand {r['hand']:.3f}s, runner {r['runner']:.3f}s, "
                f"runner/hand {r['ratio']:.3f}; per extra epoch {r['per-epoch ratio']:.3f}, "
                f"runner's fixed cost {1000 * r['runner fixed s']:.0f} ms; "
                f"runner / (hand + guarantees) {r['vs guarded']:.3f}; "
                f"steps {steps}"
            )

        epochs = f"epochs={DIGITS_EPOCHS[args.quick]}"
        held_cfg = config([epochs], None)
        held = build_run(run_spec(held_cfg)).data
        streamed_cfg = config([epochs], DIGITS_STREAMED)
        streamed = build_run(run_spec(streamed_cfg)).data
        median_s, times, steps = measure(
            {
                "in memory": runner(held_cfg, held),
                "streamed": runner(streamed_cfg, streamed),
                "hand": lambda: hand_loop(streamed_cfg, streamed),
            },
            repeats,
            warm_up=not args.quick,
        )
        r = median_s | {
            "streamed / in memory": median_s["streamed"] / median_s["in memory"],
            "streamed / hand": median_s["streamed"] / median_s["hand"],
            "steps": steps,
            "epochs": DIGITS_EPOCHS[args.quick],
        }
        results["digits"] = r | {"all": times}
        print(
            f"digits: in memory {r['in memory']:.3f}s, streamed {r['streamed']:.3f}s, "
            f"hand DataLoader {r['hand']:.3f}s, steps {steps}"
        )

    lines = [
        "| job (CPU, MLP, batch 64) | hand DataLoader loop s | runner, streamed s "
        f"| runner / hand | runner / hand per extra epoch (at {LONGER}× the epochs) "
        "| runner's fixed cost per run ms | hand + guarantees s "
        "| runner / (hand + guarantees) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for job, r in results["vs hand"].items():
        fixed_ms = 1000 * r["runner fixed s"]
        lines.append(
            f"| {job} | {r['hand']:.3f} | {r['runner']:.3f} | {r['ratio']:.3f} "
            f"| {r['per-epoch ratio']:.3f} | {fixed_ms:.0f} "
            f"| {r['hand + guarantees']:.3f} | {r['vs guarded']:.3f} |"
        )
    d = results["digits"]
    lines += [
        "",
        f"| digits MLP, {d['epochs']} epochs | runner, in memory s | runner, streamed s "
        "| hand DataLoader loop s | streamed / in memory | streamed / hand |",
        "|---|---|---|---|---|---|",
        f"| 0 workers | {d['in memory']:.3f} | {d['streamed']:.3f} | {d['hand']:.3f} "
        f"| {d['streamed / in memory']:.2f} | {d['streamed / hand']:.2f} |",
    ]
    note = (
        f"\nMedian of {repeats} interleaved repeats; the runner with data=dataset, "
        f"data.in_memory=false; target: runner / hand ≤ {TARGET} on the same streamed dataset. "
        '"Hand + guarantees": the hand loop with the runner\'s checkpoints and W&B rows '
        "(bench_overhead.py's Guarantees), not its seeded per-sample data path."
    )
    payload = {"machine": machine(), "target": TARGET, "results": results}
    write_or_print("stream", payload, "\n".join(lines) + note, args.quick)
    return payload


if __name__ == "__main__":
    main()
