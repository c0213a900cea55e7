"""Scheduler names -> torch schedulers, with the checks each one needs.

One table, so an unknown name can list every valid one, and so validation runs
from the config alone (no optimizer, data or model yet) at start-up. Every
schedule counts in units of `scheduler.interval` (epochs, or batches when
`interval: step`), like torch's own schedulers count their `step()` calls.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from schedulers import checks
from schedulers.binder import TARGET, label, plain
from schedulers.errors import ConfigError
from schedulers.expr import ExpressionError, LrExpression, first_bad, parse
from schedulers.node import Context, Node
from schedulers.phases import check_phases
from schedulers.schedule import LRSchedule
from schedulers.target import resolve_target

COMMON = ("name", "interval", "warmup_epochs", "warmup_start_factor")
INTERVALS = ("epoch", "step")
SEQUENCE = "sequence"  # phases run one after another (schedulers/sequence.py)


@dataclass(frozen=True)
class Spec:
    # keys this schedule accepts besides the COMMON ones -> their defaults, which
    # conf/scheduler/<name>.yaml repeats (a test keeps the two equal); a sequence
    # phase that leaves a key out gets its default
    params: Mapping[str, Any]
    check: Callable[[Mapping[str, Any], Context], None]
    # (optimizer, params, ctx) -> a torch LRScheduler
    build: Callable[[Any, Mapping[str, Any], Context], Any]
    torch_name: str
    warmup: bool = True  # False where the schedule has its own warm-up or cycle


# -- checks shared by several schedules --------------------------------------------------------
# the shared helpers (schedulers/checks.py), with keys relative to `scheduler.`
def need_int(key: str, v: Any, low: int, optional: bool = False) -> None:
    checks.need_int(f"scheduler.{key}", v, low, optional)


def need_range(key: str, v: Any, low: float, high: float, *, lo_open: bool, hi_open: bool) -> None:
    checks.need_number(f"scheduler.{key}", v, low, high, lo_open=lo_open, hi_open=hi_open)


def need_positive(key: str, v: Any, optional: bool = False) -> None:
    checks.need_positive(f"scheduler.{key}", v, optional)


def need_choice(key: str, v: Any, choices: Sequence[str]) -> None:
    checks.need_choice(f"scheduler.{key}", v, choices)


def need_bool(key: str, v: Any) -> None:
    checks.need_bool(f"scheduler.{key}", v)


def need_gamma(p: Mapping[str, Any], ctx: Context) -> None:
    need_range("gamma", p["gamma"], 0, 1, lo_open=True, hi_open=False)


def need_eta_min(p: Mapping[str, Any], ctx: Context) -> None:
    need_range("eta_min", p["eta_min"], 0, math.inf, lo_open=False, hi_open=True)
    if p["eta_min"] >= min(ctx.base_lrs):
        raise ConfigError(
            "scheduler.eta_min", p["eta_min"], f"must be below the lr ({min(ctx.base_lrs)})"
        )


def _or_length(v: int | None, ctx: Context) -> int:
    return ctx.length if v is None else v


# -- the ordered schedules of the lecture ------------------------------------------------------
def _check_step(p: Mapping[str, Any], ctx: Context) -> None:
    need_int("step_size", p["step_size"], 1)
    need_gamma(p, ctx)


def _build_step(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import StepLR  # torch: not at start-up

    return StepLR(opt, step_size=p["step_size"], gamma=p["gamma"])


def _check_multistep(p: Mapping[str, Any], ctx: Context) -> None:
    ms = p["milestones"]
    ints = isinstance(ms, Sequence) and all(
        isinstance(m, int) and not isinstance(m, bool) for m in ms
    )
    if not ints or not ms or ms[0] < 1 or any(b <= a for a, b in zip(ms, ms[1:], strict=False)):
        raise ConfigError(
            "scheduler.milestones", ms, "must be a non-empty list of strictly increasing ints >= 1"
        )
    need_gamma(p, ctx)


def _build_multistep(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import MultiStepLR  # torch: not at start-up

    return MultiStepLR(opt, milestones=list(p["milestones"]), gamma=p["gamma"])


def _build_exponential(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import ExponentialLR  # torch: not at start-up

    return ExponentialLR(opt, gamma=p["gamma"])


def _check_cosine(p: Mapping[str, Any], ctx: Context) -> None:
    need_int("T_max", p["T_max"], 1, optional=True)
    need_eta_min(p, ctx)


def _build_cosine(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import CosineAnnealingLR  # torch: not at start-up

    return CosineAnnealingLR(opt, T_max=_or_length(p["T_max"], ctx), eta_min=p["eta_min"])


# -- adaptive ----------------------------------------------------------------------------------
def _check_plateau(p: Mapping[str, Any], ctx: Context) -> None:
    # auto: min for a loss, max for an accuracy; an explicit contradiction is an error
    checks.need_mode("scheduler.mode", p["mode"], p["monitor"], "monitor")
    need_range("factor", p["factor"], 0, 1, lo_open=True, hi_open=True)
    need_int("patience", p["patience"], 0)
    need_range("threshold", p["threshold"], 0, math.inf, lo_open=False, hi_open=True)
    need_choice("threshold_mode", p["threshold_mode"], ("rel", "abs"))
    need_int("cooldown", p["cooldown"], 0)
    need_range("min_lr", p["min_lr"], 0, math.inf, lo_open=False, hi_open=True)
    need_range("eps", p["eps"], 0, math.inf, lo_open=False, hi_open=True)
    if ctx.interval != "epoch":
        raise ConfigError(
            "scheduler.interval", ctx.interval, "plateau needs 'epoch': it steps on a val metric"
        )


def _build_plateau(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import ReduceLROnPlateau  # torch: not at start-up

    keys = ("factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr")
    mode = checks.mode_for(p["monitor"], p["mode"])
    return ReduceLROnPlateau(opt, mode=mode, eps=p["eps"], **{k: p[k] for k in keys})


# -- custom ------------------------------------------------------------------------------------
def _lambda_texts(p: Mapping[str, Any], n_groups: int) -> list[str]:
    """One expression for every group, or exactly one per group."""
    value = p["lr_lambda"]
    texts = [value] if isinstance(value, str) else list(value)
    if len(texts) == 1:
        return texts * n_groups
    if len(texts) != n_groups:
        raise ConfigError(
            "scheduler.lr_lambda",
            texts,
            f"give one expression, or one per param group ({n_groups} groups)",
        )
    return texts


def _check_lambda(p: Mapping[str, Any], ctx: Context) -> None:
    """Each expression evaluated at every value LambdaLR will give it: 0 at the start, then
    one more per step() (per epoch, or per batch with `interval: step`) once warmup is done,
    the step after the last epoch included, so it cannot fail in the middle of a run."""
    unit = "epoch" if ctx.interval == "epoch" else "step"
    for text in _lambda_texts(p, len(ctx.base_lrs)):
        try:
            problem = first_bad(parse(text), ctx.length + 1, unit)
        except ExpressionError as err:
            problem = str(err)
        if problem is not None:
            raise ConfigError("scheduler.lr_lambda", text, problem)


def _build_lambda(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import LambdaLR  # torch: not at start-up

    texts = _lambda_texts(p, len(opt.param_groups))
    return LambdaLR(opt, lr_lambda=[LrExpression(t) for t in texts])


def _constant(epoch: int) -> float:
    """Module-level (not a lambda) so the scheduler's state stays picklable."""
    return 1.0


def _build_none(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import LambdaLR  # torch: not at start-up

    return LambdaLR(opt, lr_lambda=_constant)


# -- modern practice ---------------------------------------------------------------------------
def _check_cosine_restarts(p: Mapping[str, Any], ctx: Context) -> None:
    need_int("T_0", p["T_0"], 1)
    need_int("T_mult", p["T_mult"], 1)
    need_eta_min(p, ctx)


def _build_cosine_restarts(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts  # torch: not at start-up

    return CosineAnnealingWarmRestarts(opt, T_0=p["T_0"], T_mult=p["T_mult"], eta_min=p["eta_min"])


def _check_linear(p: Mapping[str, Any], ctx: Context) -> None:
    need_range("start_factor", p["start_factor"], 0, 1, lo_open=True, hi_open=False)
    need_range("end_factor", p["end_factor"], 0, 1, lo_open=False, hi_open=False)
    need_int("total_iters", p["total_iters"], 1, optional=True)


def _build_linear(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import LinearLR  # torch: not at start-up

    return LinearLR(
        opt,
        start_factor=p["start_factor"],
        end_factor=p["end_factor"],
        total_iters=_or_length(p["total_iters"], ctx),
    )


def _check_poly(p: Mapping[str, Any], ctx: Context) -> None:
    need_positive("power", p["power"])
    need_int("total_iters", p["total_iters"], 1, optional=True)


def _build_poly(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import PolynomialLR  # torch: not at start-up

    return PolynomialLR(opt, total_iters=_or_length(p["total_iters"], ctx), power=p["power"])


def _check_onecycle(p: Mapping[str, Any], ctx: Context) -> None:
    need_positive("max_lr", p["max_lr"], optional=True)
    need_range("pct_start", p["pct_start"], 0, 1, lo_open=True, hi_open=True)
    need_choice("anneal_strategy", p["anneal_strategy"], ("cos", "linear"))
    need_range("div_factor", p["div_factor"], 1, math.inf, lo_open=False, hi_open=True)
    need_range("final_div_factor", p["final_div_factor"], 1, math.inf, lo_open=False, hi_open=True)
    need_bool("three_phase", p["three_phase"])
    need_bool("cycle_momentum", p["cycle_momentum"])


def _build_onecycle(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import OneCycleLR  # torch: not at start-up

    max_lr = [g["lr"] for g in opt.param_groups] if p["max_lr"] is None else p["max_lr"]
    keys = ("pct_start", "anneal_strategy", "div_factor", "final_div_factor", "three_phase")
    return OneCycleLR(
        opt,
        max_lr=max_lr,
        total_steps=ctx.length,
        cycle_momentum=p["cycle_momentum"],
        **{k: p[k] for k in keys},
    )


def _cyclic_bounds(p: Mapping[str, Any], lrs: Sequence[float]) -> tuple[list[float], list[float]]:
    """max_lr defaults to each group's lr, base_lr to max_lr / 10 (Smith's rule of thumb)."""
    top = list(lrs) if p["max_lr"] is None else [p["max_lr"]] * len(lrs)
    low = [m / 10 for m in top] if p["base_lr"] is None else [p["base_lr"]] * len(lrs)
    return low, top


def _cyclic_up(p: Mapping[str, Any], ctx: Context) -> int:
    return 2 * ctx.per_epoch if p["step_size_up"] is None else p["step_size_up"]


def _check_cyclic(p: Mapping[str, Any], ctx: Context) -> None:
    need_positive("base_lr", p["base_lr"], optional=True)
    need_positive("max_lr", p["max_lr"], optional=True)
    low, top = _cyclic_bounds(p, ctx.base_lrs)
    if any(lo >= hi for lo, hi in zip(low, top, strict=True)):
        raise ConfigError("scheduler.base_lr", p["base_lr"], f"must be below max_lr ({min(top)})")
    need_int("step_size_up", p["step_size_up"], 1, optional=True)
    need_int("step_size_down", p["step_size_down"], 1, optional=True)
    need_choice("mode", p["mode"], ("triangular", "triangular2", "exp_range"))
    need_gamma(p, ctx)
    need_bool("cycle_momentum", p["cycle_momentum"])


def _build_cyclic(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import CyclicLR  # torch: not at start-up

    low, top = _cyclic_bounds(p, [g["lr"] for g in opt.param_groups])
    return CyclicLR(
        opt,
        base_lr=low,
        max_lr=top,
        step_size_up=_cyclic_up(p, ctx),
        step_size_down=p["step_size_down"],
        mode=p["mode"],
        gamma=p["gamma"],
        cycle_momentum=p["cycle_momentum"],
    )


def _check_wsd(p: Mapping[str, Any], ctx: Context) -> None:
    from schedulers.wsd import DECAY_SHAPES  # imports torch: not at start-up (`--help`)

    need_range("decay_fraction", p["decay_fraction"], 0, 1, lo_open=True, hi_open=False)
    need_choice("decay_shape", p["decay_shape"], DECAY_SHAPES)
    need_range("final_lr_scale", p["final_lr_scale"], 0, 1, lo_open=False, hi_open=True)


def _build_wsd(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from schedulers.wsd import WarmupStableDecayLR  # imports torch: not at start-up

    keys = ("decay_fraction", "decay_shape", "final_lr_scale")
    return WarmupStableDecayLR(opt, total=ctx.length, **{k: p[k] for k in keys})


def _no_check(p: Mapping[str, Any], ctx: Context) -> None:
    return None


def _defaults(**params: Any) -> Mapping[str, Any]:
    return MappingProxyType(params)


SCHEDULES: dict[str, Spec] = {
    "step": Spec(_defaults(step_size=10, gamma=0.1), _check_step, _build_step, "StepLR"),
    "multistep": Spec(
        _defaults(milestones=[8, 14, 17], gamma=0.1),
        _check_multistep,
        _build_multistep,
        "MultiStepLR",
    ),
    "exponential": Spec(_defaults(gamma=0.9), need_gamma, _build_exponential, "ExponentialLR"),
    "cosine": Spec(
        _defaults(T_max=None, eta_min=0.0), _check_cosine, _build_cosine, "CosineAnnealingLR"
    ),
    "plateau": Spec(
        _defaults(
            monitor="val/loss",
            mode="auto",
            factor=0.1,
            patience=3,
            threshold=0.0001,
            threshold_mode="rel",
            cooldown=0,
            min_lr=0.0,
            eps=1.0e-08,
        ),
        _check_plateau,
        _build_plateau,
        "ReduceLROnPlateau",
    ),
    "lambda": Spec(_defaults(lr_lambda="0.95 ** epoch"), _check_lambda, _build_lambda, "LambdaLR"),
    "cosine_restarts": Spec(
        _defaults(T_0=5, T_mult=2, eta_min=0.0),
        _check_cosine_restarts,
        _build_cosine_restarts,
        "CosineAnnealingWarmRestarts",
    ),
    "linear": Spec(
        _defaults(start_factor=1.0, end_factor=0.0, total_iters=None),
        _check_linear,
        _build_linear,
        "LinearLR",
    ),
    "poly": Spec(_defaults(total_iters=None, power=2.0), _check_poly, _build_poly, "PolynomialLR"),
    "onecycle": Spec(
        _defaults(
            max_lr=None,
            pct_start=0.3,
            anneal_strategy="cos",
            div_factor=25.0,
            final_div_factor=10000.0,
            three_phase=False,
            cycle_momentum=True,
        ),
        _check_onecycle,
        _build_onecycle,
        "OneCycleLR",
        warmup=False,
    ),
    "cyclic": Spec(
        _defaults(
            base_lr=None,
            max_lr=None,
            step_size_up=None,
            step_size_down=None,
            mode="triangular",
            gamma=1.0,
            cycle_momentum=False,
        ),
        _check_cyclic,
        _build_cyclic,
        "CyclicLR",
        warmup=False,
    ),
    "wsd": Spec(
        _defaults(decay_fraction=0.2, decay_shape="linear", final_lr_scale=0.0),
        _check_wsd,
        _build_wsd,
        "WarmupStableDecayLR (schedlab)",
    ),
    "none": Spec(_defaults(), _no_check, _build_none, "constant (LambdaLR of 1)"),
}


# -- one path for every schedule node: a top-level `scheduler` or a sequence phase -----------
def schedule_label(cfg: Mapping[str, Any]) -> str:
    """How a schedule is named in logs, labels and file names: its `name`, or the class name
    of its `_target_` (as models and optimizers are named)."""
    return label(cfg)


def _kind(node: Mapping[str, Any], where: str) -> str:
    """'target', 'sequence' or a built-in name; ConfigError for anything else."""
    name, target = node.get("name"), node.get(TARGET)
    if name is not None and target is not None:
        raise ConfigError(
            f"{where}.{TARGET}",
            target,
            f"give either name (a built-in schedule, here '{name}') or _target_ (a class), "
            "not both; on the command line use scheduler=target scheduler._target_=...",
        )
    if target is not None:
        return "target"
    if name != SEQUENCE and name not in SCHEDULES:
        raise ConfigError(
            f"{where}.name",
            name,
            f"must be one of {sorted([*SCHEDULES, SEQUENCE])}, "
            "or give a scheduler class as _target_",
        )
    return name


def rekey(err: ConfigError, where: str, keys: Collection[str]) -> ConfigError:
    """A check's `scheduler.<key>` error, renamed to `<where>.<key>` for a phase's own keys."""
    key = err.key.removeprefix("scheduler.")
    if where == "scheduler" or key == err.key or key not in keys:
        return err
    return ConfigError(f"{where}.{key}", err.value, err.rule)


def resolve_node(
    node: Mapping[str, Any],
    ctx: Context,
    where: str,
    *,
    ours: Sequence[str],
    metrics: Collection[str] | None = None,
) -> Node:
    """Check one schedule node against `ctx`: the top-level `scheduler` (where="scheduler",
    ours = the common keys, every key required) or a sequence phase (where=
    "scheduler.phases.<i>", ours = ("length",), missing keys take the schedule's defaults)."""
    top = where == "scheduler"
    kind = _kind(node, where)
    if kind == "target":
        return resolve_target(node, ctx, where, ours=ours, metrics=metrics)
    if kind == SEQUENCE:
        if not top:
            raise ConfigError(
                f"{where}.name",
                SEQUENCE,
                "a phase cannot be a sequence itself; list its phases in this sequence instead",
            )
        from schedulers.sequence import resolve_sequence  # imports torch: not at start-up

        return resolve_sequence(node, ctx, ours=ours, metrics=metrics, resolve=resolve_node)

    spec = SCHEDULES[kind]
    allowed = (*ours, *spec.params)
    params = {k: v for k, v in node.items() if k != "name"}
    for key in params:
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}",
                params[key],
                f"unknown key for scheduler '{kind}'; allowed keys: {list(allowed)}",
            )
    if top:
        for key in allowed:
            if key not in params:
                raise ConfigError(f"{where}.{key}", None, f"required by scheduler '{kind}'")
        if params["warmup_epochs"] and not spec.warmup:
            raise ConfigError(
                "scheduler.warmup_epochs",
                params["warmup_epochs"],
                f"must be 0 for '{kind}', which shapes its own start",
            )
    else:
        for key, default in spec.params.items():
            params.setdefault(key, copy.deepcopy(default))
    if "monitor" in spec.params and metrics is not None and params["monitor"] not in metrics:
        raise ConfigError(
            f"{where}.monitor", params["monitor"], f"must be one of {sorted(metrics)}"
        )
    try:
        spec.check(params, ctx)
    except ConfigError as err:
        raise rekey(err, where, params) from None
    return Node(
        label=kind,
        build=lambda opt: spec.build(opt, params, ctx),
        monitor=params.get("monitor"),
        last_only=spec.torch_name == "OneCycleLR",
    )


def _context(
    cfg: Mapping[str, Any], *, epochs: int, steps_per_epoch: int, base_lrs: Sequence[float]
) -> Context:
    """The common keys (interval, warmup), checked."""
    for key in COMMON[1:]:
        if key not in cfg:
            raise ConfigError(f"scheduler.{key}", None, "required (conf/config.yaml sets it)")
    need_choice("interval", cfg["interval"], INTERVALS)
    need_int("warmup_epochs", cfg["warmup_epochs"], 0)
    need_range("warmup_start_factor", cfg["warmup_start_factor"], 0, 1, lo_open=True, hi_open=False)
    if cfg["warmup_epochs"] >= epochs:
        raise ConfigError(
            "scheduler.warmup_epochs", cfg["warmup_epochs"], f"must be below epochs ({epochs})"
        )
    per_epoch = 1 if cfg["interval"] == "epoch" else steps_per_epoch
    return Context(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        interval=cfg["interval"],
        base_lrs=tuple(base_lrs),
        warmup=cfg["warmup_epochs"] * per_epoch,
    )


def _resolve(
    cfg: Mapping[str, Any],
    *,
    epochs: int,
    steps_per_epoch: int,
    base_lrs: Sequence[float],
    metrics: Collection[str] | None = None,
) -> tuple[Node, Context]:
    """Look the schedule up and check every key: the single validation path."""
    # plain values, interpolations resolved: what is checked (and what an error shows) is
    # the value, never `${...}` or an OmegaConf node
    cfg = dict(plain(cfg))
    _kind(cfg, "scheduler")  # an unknown name before anything else
    ctx = _context(cfg, epochs=epochs, steps_per_epoch=steps_per_epoch, base_lrs=base_lrs)
    node = resolve_node(cfg, ctx, "scheduler", ours=COMMON[1:], metrics=metrics)
    return node, ctx


def validate_scheduler(
    cfg: Mapping[str, Any],
    *,
    epochs: int,
    steps_per_epoch: int,
    base_lrs: Sequence[float],
    metrics: Collection[str] | None = None,
) -> None:
    """Raise ConfigError for any scheduler setting that cannot work. Builds nothing on the
    run's optimizer (a `_target_` or a sequence is tried on a throwaway one).

    `metrics`, when given, are the names a Plateau `monitor` may choose from.
    """
    _, ctx = _resolve(
        cfg, epochs=epochs, steps_per_epoch=steps_per_epoch, base_lrs=base_lrs, metrics=metrics
    )
    check_phases(cfg, ctx)  # a phase the run's length rounds away: an error or a warning


def build_scheduler(
    cfg: Mapping[str, Any], optimizer: Any, *, epochs: int, steps_per_epoch: int
) -> LRSchedule:
    """The schedule for `optimizer`; the loop calls step_batch() and step_epoch() on it."""
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    node, ctx = _resolve(cfg, epochs=epochs, steps_per_epoch=steps_per_epoch, base_lrs=base_lrs)
    main = node.build(optimizer)
    warmup = None
    if ctx.warmup:
        from torch.optim.lr_scheduler import LinearLR  # torch: not at start-up

        # Built after the main schedule, so its first (small) lr is the one in effect.
        warmup = LinearLR(
            optimizer, start_factor=cfg["warmup_start_factor"], total_iters=ctx.warmup
        )
    return LRSchedule(
        main,
        interval=ctx.interval,
        warmup=warmup,
        warmup_steps=ctx.warmup,
        monitor=node.monitor,
    )
