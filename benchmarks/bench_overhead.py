"""What does the runner cost over the loop you would write by hand, and over Lightning?

Same model, data tensors, optimizer, scheduler, epochs and seed; measured in one
process, interleaved, several repeats, median. Timed: the training itself (every
epoch with its validation), not start-up (imports, data loading, W&B init:
see bench_startup.py).
  (a) hand: a minimal hand-written PyTorch loop (metrics accumulated on device)
  (b) runner: schedlab's fit() with logging on (W&B offline + metrics.jsonl) and
      its per-epoch checkpoints, W&B calls and checkpoint writes on its writer
      thread and that thread flushed at the end, as a real run does
  (c) lightning: PyTorch Lightning's Trainer on the same job (optional: pip install lightning)
  (d) hand + guarantees: (a) plus what the runner guarantees (last.pt before the first
      batch and at the end, each epoch's state copied, best.pt, the rows sent to W&B),
      written plainly: what those cost any loop, so runner / (d) is the runner's own share
  (e) runner, bare: (b) with checkpoints and W&B off (trainer.checkpoint=false,
      logger=none; metrics.jsonl is still written): runner, bare / hand is the engine's
      share with no guarantee to pay for

    python benchmarks/bench_overhead.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    interleaved,
    machine,
    median,
    paired,
    per_epoch_split,
    write_or_print,
)
from omegaconf import OmegaConf  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from runner.config.compose import compose_config  # noqa: E402
from runner.config.schema import RunSpec, run_spec  # noqa: E402
from runner.io.background import Background  # noqa: E402
from runner.io.loggers import open_logger  # noqa: E402
from runner.run.check import validate  # noqa: E402
from runner.run.train import fit  # noqa: E402
from runner.train.builders import build_run  # noqa: E402
from runner.train.models import build_model  # noqa: E402

JOBS = {
    "digits MLP": ["epochs=10"],
    "digits LeNet": ["model=lenet", "epochs=5"],
    "FakeData 32x32 ResNet-18": [
        "model=resnet18", "data=fake", "data.train_size=256", "data.val_size=64",
        "data.batch_size=32", "epochs=1",
    ],
}  # fmt: skip
QUICK = {"digits MLP": ["epochs=2"]}
BARE = ["trainer.checkpoint=false", "logger=none"]  # (e): no guarantee to pay for
# A run's fixed costs (last.pt before the first epoch, the W&B rows and last checkpoints
# waited for at the end: ~1 ms a W&B row) weigh on a 0.2 s job; these jobs also run at
# LONGER times their epochs, and the extra epochs alone give the per-epoch ratio and the
# runner's fixed cost per run (not ResNet-18: an epoch there is seconds)
MARGINAL = ("digits MLP", "digits LeNet")
# the two ratios #36 sets targets for, also taken round by round (common.paired)
PAIRED = (("runner, bare", "hand"), ("runner", "hand + guarantees"))
LONGER = 2


class Guarantees:
    """What the runner guarantees, added to a hand loop as plainly as a user would write it:
    last.pt (model, optimizer, schedule, every RNG) on disk, fsynced and replaced
    atomically, before the first batch and at the end; each epoch's state copied at its end
    (so a signal could still save the newest epoch) and the best one kept as best.pt (a
    link when it is the last); the epoch rows sent to W&B (offline) at the end and waited
    for, as a run of under a second sends them. What those cost any loop."""

    def __init__(
        self, ckpt_dir: Path, wandb_run: Any, model: Any, opt: Any, sched: Any, gen: Any
    ) -> None:
        self.ckpt_dir, self.wandb_run = ckpt_dir, wandb_run
        self.model, self.opt, self.sched, self.gen = model, opt, sched, gen
        self.rows: list[dict[str, Any]] = []
        self.best_acc, self.best, self.latest = -1.0, None, self.state(0)
        self.save(self.latest, "last.pt")

    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.opt.state_dict()),
            "scheduler": self.sched.state_dict(),
            "rng": [
                random.getstate(),
                np.random.get_state(),
                torch.get_rng_state(),
                self.gen.get_state(),
            ],
            "epoch": epoch,
        }

    def save(self, obj: dict[str, Any], name: str) -> None:
        tmp = self.ckpt_dir / f".{name}.tmp"
        torch.save(obj, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, self.ckpt_dir / name)

    def epoch_end(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.latest = self.state(row["epoch"] + 1)
        if row["val/acc"] > self.best_acc:
            self.best_acc, self.best = row["val/acc"], self.latest

    def finish(self) -> None:
        self.save(self.latest, "last.pt")
        if self.best is self.latest:
            (self.ckpt_dir / "best.pt").unlink(missing_ok=True)
            os.link(self.ckpt_dir / "last.pt", self.ckpt_dir / "best.pt")
        elif self.best is not None:
            self.save(self.best, "best.pt")
        if self.wandb_run is not None:
            for row in self.rows:
                self.wandb_run.log(row)


def hand_parts(
    cfg: Any, data: Any, guarded: tuple[Any, Path] | None
) -> tuple[Any, Any, Any, torch.Generator, Guarantees | None]:
    """A hand loop's start, as a user writes it (this file's loop and bench_stream.py's):
    seed, model, SGD + cosine, the shuffling generator; with `guarded` (a W&B run, a
    checkpoint dir) the runner's Guarantees. -> model, optimizer, schedule, generator, guard."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.image_shape, data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    guard = None
    if guarded is not None:
        guard = Guarantees(guarded[1], guarded[0], model, opt, sched, gen)
    return model, opt, sched, gen, guard


def hand_step(model: Any, opt: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any]:
    """A hand loop's training step (both loops'): -> the batch's summed loss and its correct
    predictions, on device (the loop adds them up and reads them once per epoch)."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach() * len(y), (logits.argmax(1) == y).sum()


def hand_loop(cfg: Any, data: Any, guarded: tuple[Any, Path] | None = None) -> None:
    """What a user writes: seed, model, SGD + cosine, shuffle by index, eval each epoch.
    `guarded` (a W&B run, a checkpoint dir): with the runner's Guarantees added."""
    model, opt, sched, gen, guard = hand_parts(cfg, data, guarded)
    bs, n = cfg.data.batch_size, len(data.y_train)
    for epoch in range(cfg.epochs):
        model.train()
        lr = opt.param_groups[0]["lr"]
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = torch.zeros(()), torch.zeros(())
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            batch_loss, batch_correct = hand_step(model, opt, data.x_train[idx], data.y_train[idx])
            loss_sum += batch_loss
            correct += batch_correct
        model.eval()
        with torch.no_grad():
            logits = model(data.x_val)
            val_loss = F.cross_entropy(logits, data.y_val).item()
            val_acc = (logits.argmax(1) == data.y_val).float().mean().item()
        sched.step()
        row = {"epoch": epoch, "lr/group0": lr, "train/loss": loss_sum.item() / n,
               "train/acc": correct.item() / n, "val/loss": val_loss,
               "val/acc": val_acc}  # fmt: skip
        if guard is not None:
            guard.epoch_end(row)
    if guard is not None:
        guard.finish()


def runner_loop(
    cfg: Any,
    data: Any,
    logger: Any,
    tmp: Path,
    background: Background,
    config_text: str,
    spec: RunSpec | None = None,
) -> None:
    """As runner/run/train.py runs it: W&B calls (batched, see runner/io/loggers.py) and
    checkpoint writes on the writer thread; at the end every waiting row is sent and the
    thread is flushed before the clock stops (a run writes status.json only after that).
    `config_text` and `spec`: the config.yaml text and the typed config start-up made
    (made here when not given; a run types its config once, at start-up, before building)."""
    spec = spec if spec is not None else run_spec(cfg)
    run = build_run(spec, data)  # seeded model + optimizer + schedule, like the hand loop builds
    fit(spec, run, logger, ckpt_dir=tmp, background=background, config_text=config_text)
    logger.flush()  # sends the rows still waiting, then waits for the writer thread


def engine_ms_per_epoch(run_once: Any, epochs: int, runs: int = 3) -> float:
    """The runner's own work per epoch: wall time inside the epoch engine (epoch rows, their
    metrics.jsonl line and W&B hand-off, the lr read-outs, per-step bookkeeping, divergence,
    the schedule's step, the checkpoint snapshot), from instrumented runs (median of `runs`,
    each after a gc.collect(), so the garbage of the other loops is not charged to it)."""
    import gc

    from runner.train.engine import Engine

    spent = [0.0]
    originals = {name: getattr(Engine, name) for name in ("begin_epoch", "after_step", "end_epoch")}

    def timed_method(method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0

        return wrapper

    per_run = []
    try:
        for name, method in originals.items():
            setattr(Engine, name, timed_method(method))
        for _ in range(runs):
            gc.collect()
            spent[0] = 0.0
            run_once()
            per_run.append(1000 * spent[0] / epochs)
    finally:
        for name, method in originals.items():
            setattr(Engine, name, method)
    return median(per_run)


def lightning_loop(cfg: Any, data: Any, tmp: Path) -> None:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_model(cfg.model, data.image_shape, data.num_classes)

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.log("train/loss", loss, on_step=False, on_epoch=True)
            self.log("train/acc", (logits.argmax(1) == y).float().mean(), on_epoch=True)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            logits = self.model(x)
            self.log("val/loss", F.cross_entropy(logits, y))
            self.log("val/acc", (logits.argmax(1) == y).float().mean())

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=cfg.optimizer.lr, momentum=0.9)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
            return [opt], [sched]

    L.seed_everything(cfg.seed, verbose=False)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(
        TensorDataset(data.x_train, data.y_train),
        batch_size=cfg.data.batch_size,
        shuffle=True,
        generator=gen,
    )
    val_dl = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=1024)
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp),
        default_root_dir=tmp,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Module(), train_dl, val_dl)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one tiny job (a smoke test)")
    parser.add_argument("--no-lightning", action="store_true")
    args = parser.parse_args(argv)
    try:
        import lightning  # noqa: F401

        with_lightning = not args.no_lightning
    except ImportError:
        with_lightning = False
        print("lightning is not installed: skipping (c); pip install lightning")

    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    results = {}
    for job, overrides in (QUICK if args.quick else JOBS).items():
        cfg = compose_config([*overrides, "trainer.progress=line", "trainer.device=cpu"])
        validate(cfg)
        data = build_run(run_spec(cfg)).data
        # start-up makes these, as a run does before it builds: not timed
        config_text, spec = OmegaConf.to_yaml(cfg, resolve=True), run_spec(cfg)
        bare = compose_config([*overrides, *BARE, "trainer.progress=line", "trainer.device=cpu"])
        bare_text, bare_spec = OmegaConf.to_yaml(bare, resolve=True), run_spec(bare)
        with (
            tempfile.TemporaryDirectory() as tmp,
            Background() as background,
            # W&B offline, started once
            open_logger(cfg.logger, Path(tmp), {}, [], None, background=background) as logger,
            open_logger(bare.logger, Path(tmp), {}, [], None, background=background) as plain,
        ):
            variants = {
                "hand": lambda: hand_loop(cfg, data),  # noqa: B023
                "hand + guarantees": partial(
                    hand_loop, cfg, data, (logger.wandb_run, Path(tmp) / "hand + guarantees")
                ),
                "runner": partial(
                    runner_loop,
                    cfg,
                    data,
                    logger,
                    Path(tmp) / "runner",
                    background,
                    config_text,
                    spec,
                ),
                "runner, bare": partial(
                    runner_loop,
                    bare,
                    data,
                    plain,
                    Path(tmp) / "runner, bare",
                    background,
                    bare_text,
                    bare_spec,
                ),
            }
            if job in MARGINAL and not args.quick:
                longer = compose_config(
                    [
                        *overrides,
                        f"epochs={cfg.epochs * LONGER}",
                        "trainer.progress=line",
                        "trainer.device=cpu",
                    ]
                )
                variants["hand, longer"] = lambda: hand_loop(longer, data)  # noqa: B023
                variants["runner, longer"] = partial(
                    runner_loop,
                    longer,
                    data,
                    logger,
                    Path(tmp) / "runner, longer",
                    background,
                    OmegaConf.to_yaml(longer, resolve=True),
                    run_spec(longer),
                )
            if with_lightning:
                variants["lightning"] = lambda: lightning_loop(cfg, data, Path(tmp) / "pl")  # noqa: B023, E501
            for name in variants:  # warm-up: first-call costs (allocator, W&B service) out
                (Path(tmp) / name).mkdir()
            for fn in variants.values():
                fn()
            times = interleaved(variants, 1 if args.quick else args.repeats)
            engine_ms = engine_ms_per_epoch(variants["runner"], cfg.epochs)
        results[job] = {name: median(ts) for name, ts in times.items()} | {"all": times}
        results[job]["engine_ms_per_epoch"] = engine_ms
        if "runner, longer" in results[job]:
            results[job] |= per_epoch_split(results[job], cfg.epochs, LONGER)
        print(
            f"{job}: "
            + ", ".join(f"{k} {results[job][k]:.3f}s" for k in variants)
            + f", engine {engine_ms:.3f} ms/epoch"
        )
        for a, b in PAIRED:
            mid, low = results[job][f"{a} / {b}, paired"] = paired(times, a, b)
            print(f"{job}: {a} / {b}, round by round: median {mid:.3f}, min {low:.3f}")

    lines = [
        "| job | hand loop s | runner s | Lightning s | runner / hand | runner / Lightning "
        f"| engine ms/epoch | runner / hand per extra epoch (at {LONGER}× the epochs) "
        "| runner's fixed cost per run ms | hand + guarantees s "
        "| runner / (hand + guarantees) | runner, bare / hand |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for job, r in results.items():
        pl = r.get("lightning", math.nan)
        fixed_ms = 1000 * r.get("runner fixed s", math.nan)
        guarded = r["hand + guarantees"]
        lines.append(
            f"| {job} | {r['hand']:.3f} | {r['runner']:.3f} | {pl:.3f} "
            f"| {r['runner'] / r['hand']:.3f} | {r['runner'] / pl:.3f} "
            f"| {r['engine_ms_per_epoch']:.3f} | {r.get('per-epoch ratio', math.nan):.3f} "
            f"| {fixed_ms:.0f} | {guarded:.3f} | {r['runner'] / guarded:.3f} "
            f"| {r['runner, bare'] / r['hand']:.3f} |"
        )
    note = (
        f"\nMedian of {1 if args.quick else args.repeats} interleaved repeats; "
        "targets: runner/hand ≤ 1.05 (MLP) and ≤ 1.0 (LeNet), runner/Lightning ≤ 0.7, "
        "runner, bare / hand ≤ 1.05 and runner / (hand + guarantees) ≤ 1.05 (MLP); the "
        "engine's own work (median of 3 instrumented runs) ≤ 0.5 ms per epoch. \"Hand + "
        'guarantees": the hand loop with last.pt before the first batch and at the end, '
        "each epoch's state copied, best.pt, and the epoch rows sent to W&B (offline) at the "
        "end, written plainly (Guarantees): what those cost any loop."
    )
    payload = {"machine": machine(), "results": results}
    write_or_print("overhead", payload, "\n".join(lines) + note, args.quick)
    return payload


if __name__ == "__main__":
    main()
