"""Scheduler names -> torch schedulers, with the keys each one declares.

One table, so an unknown name can list every valid one, and so validation runs
from the config alone (no optimizer, data or model yet) at start-up. Each schedule's
keys are a dataclass of `key(default, check)` fields checked by `check_node`, the same
declaration every other option has (schedulers/declare.py). Every
schedule counts in units of `scheduler.interval` (epochs, or batches when
`interval: step`), like torch's own schedulers count their `step()` calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from schedulers import checks
from schedulers.binder import TARGET, label, plain
from schedulers.checks import (
    boolean,
    choice,
    increasing_ints,
    integer,
    number,
    str_or_str_list,
    text,
)
from schedulers.declare import check_node, defaults, key
from schedulers.errors import ConfigError
from schedulers.expr import ExpressionError, LrExpression, first_bad, parse
from schedulers.node import Context, Node
from schedulers.phases import check_phases
from schedulers.schedule import LRSchedule
from schedulers.target import resolve_target

INTERVALS = ("epoch", "step")
SEQUENCE = "sequence"  # phases run one after another (schedulers/sequence.py)
DECAY_SHAPES = ("linear", "cosine", "sqrt")  # WarmupStableDecayLR's (schedulers/wsd.py)


# -- what each schedule's keys are: one dataclass each, declared as every other option's are --
# (schedulers/declare.py). A field's default is what conf/scheduler/<name>.yaml gives it (a
# test keeps the two equal; a sequence phase that leaves a key out gets it); `check_keys`
# holds what ties keys together, `check_context(prefix, p, ctx)` what needs the run (its
# length, the optimizer's lrs), run after every key has passed.
_GAMMA = number(0, 1, lo_open=True)  # a decay factor in (0, 1]
_POSITIVE_OR_NULL = number(0, lo_open=True, optional=True)


@dataclass
class Common:
    """The keys every schedule has; conf/config.yaml gives their defaults."""

    interval: str = key("epoch", choice(*INTERVALS))
    warmup_epochs: int = key(0, integer(0))
    # the warmup in optimizer steps (nanoGPT's warmup_iters), for `interval: step` only
    warmup_steps: int = key(0, integer(0))
    warmup_start_factor: float = key(0.1, number(0, 1, lo_open=True))


COMMON = ("name", *(f.name for f in dataclasses.fields(Common)))


def below_the_lr(prefix: str, p: Mapping[str, Any], ctx: Context) -> None:
    """eta_min, a floor the schedule decays to, below the lr of every param group."""
    if p["eta_min"] >= min(ctx.base_lrs):
        raise ConfigError(
            f"{prefix}.eta_min", p["eta_min"], f"must be below the lr ({min(ctx.base_lrs)})"
        )


def _or_length(v: int | None, ctx: Context) -> int:
    return ctx.length if v is None else v


# -- the ordered schedules of the lecture ------------------------------------------------------
@dataclass
class Step:
    step_size: int = key(10, integer(1))
    gamma: float = key(0.1, _GAMMA)


def _build_step(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import StepLR  # torch: not at start-up

    return StepLR(opt, step_size=p["step_size"], gamma=p["gamma"])


@dataclass
class MultiStep:
    milestones: list[int] = key([8, 14, 17], increasing_ints(1))
    gamma: float = key(0.1, _GAMMA)


def _build_multistep(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import MultiStepLR  # torch: not at start-up

    return MultiStepLR(opt, milestones=list(p["milestones"]), gamma=p["gamma"])


@dataclass
class Exponential:
    gamma: float = key(0.9, _GAMMA)


def _build_exponential(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import ExponentialLR  # torch: not at start-up

    return ExponentialLR(opt, gamma=p["gamma"])


@dataclass
class Cosine:
    T_max: int | None = key(None, integer(1, optional=True))
    eta_min: float = key(0.0, number(0))
    check_context = staticmethod(below_the_lr)


def _build_cosine(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import CosineAnnealingLR  # torch: not at start-up

    return CosineAnnealingLR(opt, T_max=_or_length(p["T_max"], ctx), eta_min=p["eta_min"])


# -- adaptive ----------------------------------------------------------------------------------
@dataclass
class Plateau:
    monitor: str = key("val/loss", text())
    mode: str = key("auto", choice(*checks.MODES))
    factor: float = key(0.1, number(0, 1, lo_open=True, hi_open=True))
    patience: int = key(3, integer(0))
    threshold: float = key(0.0001, number(0))
    threshold_mode: str = key("rel", choice("rel", "abs"))
    cooldown: int = key(0, integer(0))
    min_lr: float = key(0.0, number(0))
    eps: float = key(1.0e-08, number(0))

    @staticmethod
    def check_keys(prefix: str, p: Mapping[str, Any]) -> None:
        """mode agrees with monitor: min (or auto) for a loss, max (or auto) for an accuracy."""
        checks.need_mode(f"{prefix}.mode", p["mode"], p["monitor"], "monitor")

    @staticmethod
    def check_context(prefix: str, p: Mapping[str, Any], ctx: Context) -> None:
        """interval is epoch: plateau steps once per epoch, on a validation metric."""
        if ctx.interval != "epoch":
            raise ConfigError(
                "scheduler.interval",
                ctx.interval,
                "plateau needs 'epoch': it steps on a val metric",
            )


def _build_plateau(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import ReduceLROnPlateau  # torch: not at start-up

    keys = ("factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr")
    mode = checks.mode_for(p["monitor"], p["mode"])
    return ReduceLROnPlateau(opt, mode=mode, eps=p["eps"], **{k: p[k] for k in keys})


# -- custom ------------------------------------------------------------------------------------
def _lambda_texts(
    p: Mapping[str, Any], n_groups: int, key: str = "scheduler.lr_lambda"
) -> list[str]:
    """One expression for every group, or exactly one per group."""
    value = p["lr_lambda"]
    texts = [value] if isinstance(value, str) else list(value)
    if len(texts) == 1:
        return texts * n_groups
    if len(texts) != n_groups:
        raise ConfigError(
            key, texts, f"give one expression, or one per param group ({n_groups} groups)"
        )
    return texts


@dataclass
class Lambda:
    lr_lambda: Any = key("0.95 ** epoch", str_or_str_list())

    @staticmethod
    def check_context(prefix: str, p: Mapping[str, Any], ctx: Context) -> None:
        """Each expression evaluated at every value LambdaLR will give it: 0 at the start,
        then one more per step() (per epoch, or per batch with `interval: step`) once warmup
        is done, the step after the last epoch included, so it cannot fail in the middle of
        a run."""
        unit = "epoch" if ctx.interval == "epoch" else "step"
        for expr in _lambda_texts(p, len(ctx.base_lrs), f"{prefix}.lr_lambda"):
            try:
                problem = first_bad(parse(expr), ctx.length + 1, unit)
            except ExpressionError as err:
                problem = str(err)
            if problem is not None:
                raise ConfigError(f"{prefix}.lr_lambda", expr, problem)


def _build_lambda(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import LambdaLR  # torch: not at start-up

    texts = _lambda_texts(p, len(opt.param_groups))
    return LambdaLR(opt, lr_lambda=[LrExpression(t) for t in texts])


def _constant(epoch: int) -> float:
    """Module-level (not a lambda) so the scheduler's state stays picklable."""
    return 1.0


@dataclass
class Constant:
    """scheduler=none: no keys of its own."""


def _build_none(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import LambdaLR  # torch: not at start-up

    return LambdaLR(opt, lr_lambda=_constant)


# -- modern practice ---------------------------------------------------------------------------
@dataclass
class CosineRestarts:
    T_0: int = key(5, integer(1))
    T_mult: int = key(2, integer(1))
    eta_min: float = key(0.0, number(0))
    check_context = staticmethod(below_the_lr)


def _build_cosine_restarts(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts  # torch: not at start-up

    return CosineAnnealingWarmRestarts(opt, T_0=p["T_0"], T_mult=p["T_mult"], eta_min=p["eta_min"])


@dataclass
class Linear:
    start_factor: float = key(1.0, number(0, 1, lo_open=True))
    end_factor: float = key(0.0, number(0, 1))
    total_iters: int | None = key(None, integer(1, optional=True))


def _build_linear(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import LinearLR  # torch: not at start-up

    return LinearLR(
        opt,
        start_factor=p["start_factor"],
        end_factor=p["end_factor"],
        total_iters=_or_length(p["total_iters"], ctx),
    )


@dataclass
class Poly:
    total_iters: int | None = key(None, integer(1, optional=True))
    power: float = key(2.0, number(0, lo_open=True))


def _build_poly(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from torch.optim.lr_scheduler import PolynomialLR  # torch: not at start-up

    return PolynomialLR(opt, total_iters=_or_length(p["total_iters"], ctx), power=p["power"])


@dataclass
class OneCycle:
    max_lr: float | None = key(None, _POSITIVE_OR_NULL)
    pct_start: float = key(0.3, number(0, 1, lo_open=True, hi_open=True))
    anneal_strategy: str = key("cos", choice("cos", "linear"))
    div_factor: float = key(25.0, number(1))
    final_div_factor: float = key(10000.0, number(1))
    three_phase: bool = key(False, boolean())
    cycle_momentum: bool = key(True, boolean())


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


@dataclass
class Cyclic:
    base_lr: float | None = key(None, _POSITIVE_OR_NULL)
    max_lr: float | None = key(None, _POSITIVE_OR_NULL)
    step_size_up: int | None = key(None, integer(1, optional=True))
    step_size_down: int | None = key(None, integer(1, optional=True))
    mode: str = key("triangular", choice("triangular", "triangular2", "exp_range"))
    gamma: float = key(1.0, _GAMMA)
    cycle_momentum: bool = key(False, boolean())

    @staticmethod
    def check_context(prefix: str, p: Mapping[str, Any], ctx: Context) -> None:
        """base_lr below max_lr, either taken from the optimizer's lrs when null."""
        low, top = _cyclic_bounds(p, ctx.base_lrs)
        if any(lo >= hi for lo, hi in zip(low, top, strict=True)):
            raise ConfigError(
                f"{prefix}.base_lr", p["base_lr"], f"must be below max_lr ({min(top)})"
            )


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


@dataclass
class Wsd:
    decay_fraction: float = key(0.2, number(0, 1, lo_open=True))
    decay_shape: str = key("linear", choice(*DECAY_SHAPES))
    final_lr_scale: float = key(0.0, number(0, 1, hi_open=True))


def _build_wsd(opt: Any, p: Mapping[str, Any], ctx: Context) -> Any:
    from schedulers.wsd import WarmupStableDecayLR  # imports torch: not at start-up

    keys = ("decay_fraction", "decay_shape", "final_lr_scale")
    return WarmupStableDecayLR(opt, total=ctx.length, **{k: p[k] for k in keys})


@dataclass(frozen=True)
class Spec:
    schema: type  # the schedule's own keys, besides the Common ones: a dataclass above
    # (optimizer, params, ctx) -> a torch LRScheduler
    build: Callable[[Any, Mapping[str, Any], Context], Any]
    torch_name: str
    warmup: bool = True  # False where the schedule has its own warm-up or cycle

    @property
    def params(self) -> Mapping[str, Any]:
        """The schedule's own keys -> their defaults."""
        return MappingProxyType(defaults(self.schema))


SCHEDULES: dict[str, Spec] = {
    "step": Spec(Step, _build_step, "StepLR"),
    "multistep": Spec(MultiStep, _build_multistep, "MultiStepLR"),
    "exponential": Spec(Exponential, _build_exponential, "ExponentialLR"),
    "cosine": Spec(Cosine, _build_cosine, "CosineAnnealingLR"),
    "plateau": Spec(Plateau, _build_plateau, "ReduceLROnPlateau"),
    "lambda": Spec(Lambda, _build_lambda, "LambdaLR"),
    "cosine_restarts": Spec(CosineRestarts, _build_cosine_restarts, "CosineAnnealingWarmRestarts"),
    "linear": Spec(Linear, _build_linear, "LinearLR"),
    "poly": Spec(Poly, _build_poly, "PolynomialLR"),
    "onecycle": Spec(OneCycle, _build_onecycle, "OneCycleLR", warmup=False),
    "cyclic": Spec(Cyclic, _build_cyclic, "CyclicLR", warmup=False),
    "wsd": Spec(Wsd, _build_wsd, "WarmupStableDecayLR (schedlab)"),
    "none": Spec(Constant, _build_none, "constant (LambdaLR of 1)"),
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
    params = {k: v for k, v in node.items() if k != "name"}
    if not top:  # a phase: a key it leaves out takes the schedule's default
        params = {**spec.params, **params}
    if "monitor" in spec.params and metrics is not None and params.get("monitor") not in metrics:
        raise ConfigError(
            f"{where}.monitor", params.get("monitor"), f"must be one of {sorted(metrics)}"
        )
    check_node(where, params, spec.schema, others=ours, owner=f"scheduler '{kind}'")
    if top and not spec.warmup:
        for name in ("warmup_epochs", "warmup_steps"):
            if params[name]:
                raise ConfigError(
                    f"scheduler.{name}",
                    params[name],
                    f"must be 0 for '{kind}', which shapes its own start",
                )
    check_context = getattr(spec.schema, "check_context", None)
    if check_context is not None:
        check_context(where, params, ctx)
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
    check_node("scheduler", {k: cfg[k] for k in COMMON[1:] if k in cfg}, Common)
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
        warmup=_warmup_steps(cfg, epochs * steps_per_epoch) or cfg["warmup_epochs"] * per_epoch,
    )


def _warmup_steps(cfg: Mapping[str, Any], total: int) -> int:
    """`warmup_steps`, checked against the other keys: a warmup counted in optimizer steps
    (as nanoGPT's warmup_iters), so a per-step schedule's warmup need not be whole epochs.
    Per-epoch schedules step once an epoch, so they cannot warm up over a share of one."""
    steps = cfg["warmup_steps"]
    if not steps:
        return 0
    if cfg["interval"] != "step":
        raise ConfigError(
            "scheduler.warmup_steps",
            steps,
            "counts optimizer steps: needs scheduler.interval=step (a per-epoch schedule "
            "warms up over scheduler.warmup_epochs)",
        )
    if cfg["warmup_epochs"]:
        raise ConfigError(
            "scheduler.warmup_epochs",
            cfg["warmup_epochs"],
            f"must be 0 with scheduler.warmup_steps={steps}: one warmup, in epochs or in "
            "optimizer steps",
        )
    if steps >= total:
        raise ConfigError(
            "scheduler.warmup_steps",
            steps,
            f"must be below the run's {total} optimizer steps (epochs x steps per epoch): "
            "raise epochs or lower scheduler.warmup_steps",
        )
    return steps


def _resolve(
    cfg: Mapping[str, Any],
    *,
    epochs: int,
    steps_per_epoch: int,
    base_lrs: Sequence[float],
    metrics: Collection[str] | None = None,
) -> tuple[Node, Context]:
    """Look the schedule up and check every key: the single validation path. `cfg`: plain
    values (`plain`, made once by each entry: validate_scheduler, build_scheduler)."""
    _kind(cfg, "scheduler")  # an unknown name before anything else
    ctx = _context(cfg, epochs=epochs, steps_per_epoch=steps_per_epoch, base_lrs=base_lrs)
    node = resolve_node(cfg, ctx, "scheduler", ours=COMMON[1:], metrics=metrics)
    return node, ctx


def _values(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A scheduler node as a plain dict of its own: a run hands the plain values it
    resolved once (runner/run/check.py), converted by nobody again; a DictConfig (tests,
    tools, fused members) is resolved here."""
    return dict(cfg) if isinstance(cfg, dict) else dict(plain(cfg))


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
    # plain values, interpolations resolved: what is checked (and what an error shows) is
    # the value, never `${...}` or an OmegaConf node
    cfg = _values(cfg)
    _, ctx = _resolve(
        cfg, epochs=epochs, steps_per_epoch=steps_per_epoch, base_lrs=base_lrs, metrics=metrics
    )
    check_phases(cfg, ctx)  # a phase the run's length rounds away: an error or a warning


def build_scheduler(
    cfg: Mapping[str, Any], optimizer: Any, *, epochs: int, steps_per_epoch: int
) -> LRSchedule:
    """The schedule for `optimizer`; the loop calls step_batch() and step_epoch() on it."""
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    cfg = _values(cfg)  # plain values, `${...}` resolved (see validate_scheduler)
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
