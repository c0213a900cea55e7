"""The LR range test of Smith (2017): find the largest lr at which the loss still falls fast.

`python -m runner.lr_find <overrides>` takes the training config (same model, data,
optimizer), raises the lr every batch from `lr_find.start_lr` to `lr_find.end_lr`,
records (lr, loss, smoothed loss), stops when the smoothed loss diverges, restores the
model, optimizer and RNG to their state before the test, and writes `lr_find.csv`,
`lr_find.png` and three suggestions (steepest, valley, min_loss_div_10). A training run
with `optimizer.lr=find` runs it first and trains with the one `lr_find.suggestion` names.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import logging
import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from runner.config.schema import LrFind, RunSpec, check_node
from runner.data.sets import batches
from runner.data.stream import Loaders, is_streamed
from runner.io import files
from runner.train.builders import autocast, build_training_parts
from runner.train.steps import (
    eval_weights,
    evaluate,
    groups,
    progress_bar,
    train_step,
    train_weights,
)
from schedulers import ConfigError

log = logging.getLogger("schedlab")
MIN_POINTS = 3  # the fewest points the suggestions are computed from
EXPLAIN = {
    "steepest": "lr where the smoothed loss falls fastest per decade of lr, before its "
    "minimum (Smith's choice)",
    "valley": "about halfway down the longest stretch of falling loss (fastai's default)",
    "min_loss_div_10": "a tenth of the lr at the lowest smoothed loss (just before divergence)",
}
# why optimizer.lr=find would train with each: what the printed description and the plot say
WHY = {
    "steepest": "the fastest learning, but it can sit close to where the loss turns up",
    "valley": "on the steep part of the longest fall, off its flat start and its turn",
    "min_loss_div_10": "a safe margin: a decade below where the loss turns up",
}


def validate_lr_find(cfg: Mapping[str, Any]) -> None:
    """Each key by its schema, then the range itself (`check_range`)."""
    check_node("lr_find", cfg, LrFind)
    check_range(cfg["start_lr"], cfg["end_lr"])
    check_points(cfg["num_iters"], cfg["val_every"])


def check_points(num_iters: int, val_every: int) -> None:
    """val_every leaves enough points for a curve: with fewer than 3 the test ended as if
    the loss had diverged at once, and blamed lr_find.start_lr."""
    if val_every and num_iters // val_every < MIN_POINTS:
        raise ConfigError(
            "lr_find.val_every",
            val_every,
            f"records a point every {val_every} batches: {num_iters // val_every} of "
            f"lr_find.num_iters={num_iters}, and a curve needs at least {MIN_POINTS}; lower "
            "it or raise lr_find.num_iters",
        )


def check_range(start_lr: float, end_lr: float) -> None:
    """lr_find's range, from its start_lr up to its end_lr."""
    if end_lr <= start_lr:
        raise ConfigError("lr_find.end_lr", end_lr, f"must be > start_lr ({start_lr})")


def lr_at(i: int, cfg: Mapping[str, Any]) -> float:
    """The lr of iteration i: geometric (exp) or arithmetic (linear) from start_lr to end_lr."""
    start, end, n = cfg["start_lr"], cfg["end_lr"], cfg["num_iters"]
    frac = i / (n - 1)
    if cfg["mode"] == "exp":
        return start * (end / start) ** frac
    return start + (end - start) * frac


def smoothed(losses: list[float], beta: float) -> list[float]:
    """Bias-corrected EMA: avg_i = beta avg_{i-1} + (1 - beta) loss_i, divided by 1 - beta^(i+1)."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smooth: list[float] = field(default_factory=list)
    stopped_early: bool = False
    suggestions: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[tuple[float, float, float]]:
        return list(zip(self.lrs, self.losses, self.smooth, strict=True))


def suggest(lrs: list[float], smooth: list[float]) -> dict[str, float]:
    """The three suggestions from the smoothed curve; with 20+ points the noisy first 10 %
    and last 5 % are left out of the steepest and valley searches, as torch-lr-finder and
    fastai do."""
    n = len(lrs)
    lo, hi = (n // 10, n - n // 20) if n >= 20 else (0, n)
    lowest = min(range(n), key=smooth.__getitem__)
    return {
        "steepest": lrs[steepest_index(lrs, smooth, lo, min(hi, lowest))],
        "valley": lrs[lo + valley_index(smooth[lo:hi])],
        "min_loss_div_10": lrs[lowest] / 10,
    }


def steepest_index(lrs: list[float], smooth: list[float], lo: int, hi: int) -> int:
    """The point in [lo, hi) where the loss falls fastest against log10(lr) (central
    differences). `hi` is the smoothed minimum: past it the loss rises into divergence,
    where a late steep fall (a spike coming back down) is noise, not learning. Where the
    minimum lies in the left-out start, the whole stretch before it is searched; where the
    loss never falls (its minimum is the first point), the first point."""
    x = [math.log10(lr) for lr in lrs]
    points = range(max(lo, 1), min(hi, len(lrs) - 1))
    if not points:
        points = range(1, min(hi, len(lrs) - 1))
    if not points:
        return max(0, min(hi, len(lrs) - 1))
    slopes = {i: (smooth[i + 1] - smooth[i - 1]) / (x[i + 1] - x[i - 1]) for i in points}
    return min(slopes, key=slopes.__getitem__)


def valley_index(losses: list[float]) -> int:
    """fastai's `valley` (fastai/callback/schedule.py): the longest run of ever-lower losses
    (a longest strictly decreasing subsequence, the first of the longest), and the point
    int(s) + int(s / 2) past its start, s = a third of its length: about halfway down, on
    the steep part rather than at the flat start or the turn at the bottom. As fastai
    counts it, `start` is the index before the run's first point; never below 0 here
    (fastai's would wrap round to the last point for a run of two)."""
    longest = [1] * len(losses)  # longest[i]: the longest decreasing run ending at i
    start = end = 0
    for i in range(1, len(losses)):
        before = [longest[j] for j in range(i) if losses[j] > losses[i]]
        longest[i] = 1 + max(before, default=0)
        if longest[i] > longest[end]:
            start, end = i - longest[i], i
    third = (end - start) / 3
    return max(0, start + int(third) + int(third / 2))


def range_test(
    cfg: Mapping[str, Any],
    model: Any,
    optimizer: Any,
    data: Any,
    *,
    seed: int,
    batch_size: int,
    amp: bool = False,
    progress: str = "auto",
    clip_norm: float | None = None,
    clip_value: float | None = None,
    label_smoothing: float = 0.0,
    accumulate: int = 1,
) -> RangeTest:
    """Run the test on `model`/`optimizer`; both (and the torch RNG) are restored afterwards.

    The lr tried is the optimizer's own (optimizer.lr, which training's
    `optimizer.lr=<found>` sets): each param group gets it times its multiplier (its initial
    lr / the optimizer's default lr), as training does; relative to the first group's, a
    first part at 0.1x (`{backbone: 0.1, head: 1.0}`) would make the found lr 10x too small.
    A streamed data set (data=dataset not in memory) is streamed through the run's
    DataLoaders, not materialised for the test. Each step is training's (trainer's
    grad_clip_norm / grad_clip_value, label_smoothing, and `accumulate` batches per step):
    clipping and the step's batch size move where the loss diverges, so a test without
    them finds the lr of another update rule.
    """
    device = next(model.parameters()).device
    saved = (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(optimizer.state_dict()),
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    )
    ratios = [g["lr"] / base_lr(optimizer) for g in optimizer.param_groups]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    knobs = {"params": params, "clip_norm": clip_norm, "clip_value": clip_value}
    knobs["label_smoothing"] = label_smoothing
    amp_ctx, scaler = autocast(device, amp)
    shuffle = torch.Generator().manual_seed(seed)
    result = RangeTest()
    bar = progress_bar(progress, cfg["num_iters"], "lr range test")

    # a streamed data set (data=dataset) is streamed here too, epoch after epoch, in the
    # order and with the per-sample seeds training uses (runner/data/stream.py)
    loaders = Loaders(data, batch_size, seed, device) if is_streamed(data) else None

    def stream():
        epoch = 0
        while True:
            if loaders is not None:
                yield from ((x, y) for x, y, _ in loaders.train(epoch, shuffle))
            else:
                yield from batches(data.x_train, data.y_train, batch_size, shuffle)
            epoch += 1

    def forward(x: torch.Tensor) -> torch.Tensor:
        with amp_ctx:
            return model(x)

    def val_loss() -> float:
        model.eval()  # train mode again after it (the loop below)
        with eval_weights(optimizer):  # a schedule-free optimizer's eval weights
            if loaders is not None:
                return evaluate(forward, loaders.val())[0][0]
            return evaluate(forward, batches(data.x_val, data.y_val, 1024, device=device))[0][0]

    try:
        model.train()
        without_warmup(optimizer)
        train_weights(optimizer)  # a schedule-free optimizer steps only in train mode
        best = math.inf
        for i, group in zip(range(cfg["num_iters"]), groups(stream(), accumulate), strict=False):
            lr = lr_at(i, cfg)
            for param_group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                param_group["lr"] = lr * ratio
            loss = accumulated_step(model, optimizer, group, device, amp_ctx, scaler, knobs)
            bar.update()
            if cfg["val_every"]:
                if (i + 1) % cfg["val_every"]:
                    continue
                loss_value = val_loss()
                model.train()
            else:
                loss_value = loss.item()
            result.lrs.append(lr)
            result.losses.append(loss_value)
            if not math.isfinite(loss_value):
                result.stopped_early = True
                break
            result.smooth = smoothed(result.losses, cfg["smooth"])
            best = min(best, result.smooth[-1])
            if result.smooth[-1] > cfg["diverge_threshold"] * best:
                result.stopped_early = True
                break
    finally:
        bar.close()
        model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
        torch.set_rng_state(saved[2])
        if saved[3] is not None:
            torch.cuda.set_rng_state_all(saved[3])
    # a NaN/inf last point carries no information for the suggestions
    finite = [i for i, v in enumerate(result.losses) if math.isfinite(v)]
    result.lrs = [result.lrs[i] for i in finite]
    result.losses = [result.losses[i] for i in finite]
    result.smooth = smoothed(result.losses, cfg["smooth"])
    if len(result.lrs) < MIN_POINTS:  # a config to change, not a crash: one line, exit 2
        raise ConfigError(
            "lr_find.start_lr",
            cfg["start_lr"],
            f"the loss diverged within {len(result.lrs)} points of the test: lower it",
        )
    result.suggestions = suggest(result.lrs, result.smooth)
    return result


def accumulated_step(
    model: Any,
    optimizer: Any,
    group: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    amp_ctx: Any,
    scaler: Any,
    knobs: Mapping[str, Any],
) -> torch.Tensor:
    """One optimizer step on `group`'s micro-batches (trainer.accumulate), each weighted by
    its share of the step's samples as training weighs it; returns the step's mean loss."""
    total = sum(y.shape[0] for _, y in group)
    micro = [(x.to(device), y.to(device), y.shape[0] / total) for x, y in group]
    out, _ = train_step(model, optimizer, micro, amp_ctx, scaler, **knobs)
    if len(out) == 1:  # most runs: the batch's own loss, as before accumulation
        return out[0][0]
    return sum(loss * y.shape[0] for (loss, _), (_, y, _) in zip(out, micro, strict=True)) / total


def base_lr(optimizer: Any) -> float:
    """The lr the optimizer was built with (optimizer.lr: its param groups' lrs are it times
    their multipliers); the first group's where an optimizer keeps no default lr."""
    lr = optimizer.defaults.get("lr")
    return lr if isinstance(lr, (int, float)) and lr > 0 else optimizer.param_groups[0]["lr"]


def without_warmup(optimizer: Any) -> None:
    """A schedule-free optimizer's own warmup (optimizer.warmup_steps) off for the test: it
    would scale the lr the test sets at each point, which then is not the lr tried. Put
    back with the rest of the optimizer's state after the test."""
    for group in optimizer.param_groups:
        if "warmup_steps" in group:
            group["warmup_steps"] = 0


def write_outputs(result: RangeTest, out: Path, chosen: str) -> tuple[Path, Path]:
    import matplotlib  # ~0.5 s: only when a plot is drawn

    matplotlib.use("Agg")  # before pyplot: no display needed
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "lr_find.csv", out / "lr_find.png"
    f = io.StringIO(newline="")
    writer = csv.writer(f)
    writer.writerow(["lr", "loss", "smoothed_loss"])
    writer.writerows(result.rows())
    files.write_text_atomic(csv_path, f.getvalue(), fsync=False)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.smooth, linewidth=1.8, label="smoothed loss")
    labels = legend_labels(result.suggestions, chosen)
    for (name, lr), style, color in zip(
        result.suggestions.items(), ("--", "-.", ":"), ("C2", "C4", "C1"), strict=True
    ):
        used = name == chosen
        ax.axvline(
            lr,
            linestyle=style,
            color="C3" if used else color,
            linewidth=2 if used else 1,
            label=labels[name],
        )
        ax.plot([lr], [_smooth_at(result, lr)], "o", color="C3" if used else color)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    low = min(min(result.losses), min(result.smooth))
    ax.set_ylim(low - 0.05 * abs(low), max(result.smooth[0], low) * 1.5)  # divergence off-chart
    fig.suptitle("LR range test (Smith 2017)")
    # which one a run with optimizer.lr=find uses, and why
    ax.set_title(plot_title(result, chosen), fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.replace_atomic(png_path, lambda tmp: fig.savefig(tmp, format="png"), fsync=False)
    plt.close(fig)
    return csv_path, png_path


def _smooth_at(result: RangeTest, lr: float) -> float:
    """The smoothed loss at the tested lr nearest `lr` (min_loss_div_10 lies between points)."""
    i = min(range(len(result.lrs)), key=lambda i: abs(math.log(result.lrs[i] / lr)))
    return result.smooth[i]


def why_chosen(chosen: str) -> str:
    """Which suggestion optimizer.lr=find trains with, the key that says so, and why."""
    default = LrFind().suggestion
    setting = "the default" if chosen == default else f"the default is {default}"
    return (
        f"optimizer.lr=find uses {chosen} (lr_find.suggestion={chosen}, {setting}): {WHY[chosen]}"
    )


def plot_title(result: RangeTest, chosen: str) -> str:
    """The plot's title: which suggestion optimizer.lr=find uses and why, and the note when
    the curve is lowest at an end of its range (the plot is what gets looked at later)."""
    texts = [why_chosen(chosen), edge_note(result) or ""]
    return "\n".join(line for text in texts for line in textwrap.wrap(text, 100))


def legend_labels(suggestions: Mapping[str, float], chosen: str) -> dict[str, str]:
    """The plot's legend: each suggestion, the chosen one marked as optimizer.lr=find's."""
    return {
        name: f"{name}: {lr:.3g}"
        + ("  <- optimizer.lr=find (lr_find.suggestion)" if name == chosen else "")
        for name, lr in suggestions.items()
    }


def describe(result: RangeTest, chosen: str) -> str:
    lines = [
        f"lr range test: {len(result.lrs)} points from {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}"
        + (" (stopped early: the loss diverged)" if result.stopped_early else ""),
    ]
    for name, lr in result.suggestions.items():
        used = "  <- used" if name == chosen else ""
        lines.append(f"  {name:<16} {lr:.4g}   {EXPLAIN[name]}{used}")
    lines.append(why_chosen(chosen))
    return "\n".join(lines)


def edge_note(result: RangeTest) -> str | None:
    """What to change when the smoothed loss is lowest at an end of the range: there the
    suggestions come from the range the user gave, not from the model (min_loss_div_10 is
    then just end_lr / 10, or start_lr / 10, below anything tested)."""
    lowest = min(range(len(result.smooth)), key=result.smooth.__getitem__)
    if lowest == 0 and result.stopped_early:
        return (
            f"note: the loss never fell below its value at the first lr ({result.lrs[0]:.3g}) "
            "before it diverged: the suggestions lie at or below the start of the test; "
            "lower lr_find.start_lr and run it again"
        )
    if lowest == 0:  # flat: too low to learn in the batches given, or noise only
        return (
            "note: the loss never fell below its value at the first lr: the test saw no "
            "learning, so its suggestions mean nothing; widen the range (lr_find.start_lr, "
            "lr_find.end_lr) or give it more batches (lr_find.num_iters)"
        )
    if lowest == len(result.smooth) - 1 and not result.stopped_early:
        return (
            f"note: the loss was still falling at the last lr tried ({result.lrs[-1]:.3g}): "
            "the test never saw it turn up, so the suggestions depend on where it stopped; "
            "raise lr_find.end_lr (or lr_find.num_iters) and run it again"
        )
    return None


def bounds_from_lr(scheduler: Mapping[str, Any]) -> list[str]:
    """The schedule's own lr bounds that must be null for the found lr to be trained with:
    onecycle's max_lr, cyclic's max_lr and base_lr (null: optimizer.lr and optimizer.lr /
    10, Smith's bounds); those the config sets, for optimizer.lr=find to reset and the
    range test's printed command to give as null. A `_target_` class keeps its arguments."""
    if scheduler.get("name") not in ("onecycle", "cyclic"):
        return []
    return [k for k in ("max_lr", "base_lr") if scheduler.get(k) is not None]


def find_lr(spec: RunSpec, out: Path) -> tuple[float, RangeTest]:
    """Build the run's model/data/optimizer (same seed as training), test, write outputs."""
    # group lrs become the param-group multipliers
    probe = dataclasses.replace(spec, optimizer={**spec.optimizer, "lr": 1.0})
    _, data, model, optimizer = build_training_parts(probe)
    result = range_test(
        dataclasses.asdict(spec.lr_find),
        model,
        optimizer,
        data,
        seed=spec.seed,
        batch_size=spec.data["batch_size"],
        amp=spec.trainer.amp,
        progress=spec.trainer.progress,
        clip_norm=spec.trainer.grad_clip_norm,
        clip_value=spec.trainer.grad_clip_value,
        label_smoothing=spec.trainer.label_smoothing,
        accumulate=spec.trainer.accumulate,
    )
    chosen = spec.lr_find.suggestion
    write_outputs(result, out, chosen)
    print(describe(result, chosen))
    if note := edge_note(result):  # logged: train.log keeps it (a sweep job's printout is gone)
        log.warning(note)
    return result.suggestions[chosen], result
