"""`name: sequence`: schedules that run one after another, like torch's SequentialLR.

    name: sequence
    phases:
      - {name: linear, length: 2, start_factor: 0.1, end_factor: 1.0}
      - {name: cosine, length: null}      # the last phase may take the rest of the run

Each phase is a built-in (its missing keys take that schedule's defaults) or a `_target_`
node, plus `length` in units of `scheduler.interval`. A length that a schedule would take
from the run (cosine's T_max, linear/poly's total_iters, onecycle, wsd) is its phase's.
SequenceLR mirrors torch's SequentialLR step for step: each phase restarts from the base
lrs at its milestone, as SequentialLR's `_update_lr(0)` does. Unlike SequentialLR, a phase
may be ReduceLROnPlateau: it gets the monitored metric, and it restarts from the base lrs
too.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau

from schedulers.errors import ConfigError
from schedulers.node import Context, Node
from schedulers.target import dry_run


def _set_lr(group: dict[str, Any], value: Any) -> None:
    """torch's _update_param_group_val: a tensor lr is filled in place."""
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(float(value))
    else:
        group["lr"] = value


def _undo(sched: Any) -> None:
    """SequentialLR.recursive_undo: take back the step each constructor made."""
    if hasattr(sched, "_schedulers"):
        for s in sched._schedulers:
            _undo(s)
    elif hasattr(sched, "last_epoch") and not isinstance(sched, ReduceLROnPlateau):
        sched.last_epoch -= 1


class SequenceLR:
    """torch's SequentialLR, with ReduceLROnPlateau allowed as a phase (it gets `metric`)."""

    def __init__(
        self,
        optimizer: Any,
        schedulers: Sequence[Any],
        milestones: Sequence[int],
        base_lrs: Sequence[float] | None = None,
    ):
        """`base_lrs`: the lrs every phase restarts from; default the param groups'
        `initial_lr`, as SequentialLR (which OneCycleLR rewrites: resolve_sequence passes the
        optimizer's lrs from before any phase was built)."""
        if len(milestones) != len(schedulers) - 1:
            raise ValueError("one milestone between each two schedulers")
        self.optimizer = optimizer
        self._schedulers = list(schedulers)
        self._milestones = list(milestones)
        self.last_epoch = 0  # SequentialLR: last_epoch (-1) + 1
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])  # only plateau phases: nothing set it
        if base_lrs is None:
            base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.base_lrs = [float(lr) for lr in base_lrs]
        self._restart()  # back to the base lrs
        _undo(self)
        first = self.active
        if hasattr(first, "_initial_step") and not isinstance(first, ReduceLROnPlateau):
            first._initial_step()
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def _restart(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            _set_lr(group, lr)

    @property
    def index(self) -> int:
        """The phase in charge now (whose lr is in use)."""
        return bisect_right(self._milestones, self.last_epoch)

    @property
    def active(self) -> Any:
        return self._schedulers[self.index]

    def step(self, metric: float | None = None) -> None:
        self.last_epoch += 1
        idx = self.index
        sched = self._schedulers[idx]
        plateau = isinstance(sched, ReduceLROnPlateau)
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            if plateau:  # a restart like the others: the base lrs, counters untouched
                self._restart()
                sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]
            elif hasattr(sched, "_update_lr"):
                sched._update_lr(0)
            else:  # an LRScheduler of an older shape: what SequentialLR used to call
                sched.step(0)
        elif plateau:
            if metric is None:
                raise ValueError(f"phase {idx} (ReduceLROnPlateau) needs the monitored metric")
            sched.step(metric)
        else:
            sched.step()
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return self._last_lr

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers and lists (torch.load(weights_only=True) reads it back)."""
        return {
            "last_epoch": self.last_epoch,
            "base_lrs": list(self.base_lrs),
            "_milestones": list(self._milestones),
            "_last_lr": [float(lr) for lr in self._last_lr],
            "_schedulers": [s.state_dict() for s in self._schedulers],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_epoch = state["last_epoch"]
        self.base_lrs = list(state["base_lrs"])
        self._milestones = list(state["_milestones"])
        self._last_lr = list(state["_last_lr"])
        for sched, s_state in zip(self._schedulers, state["_schedulers"], strict=True):
            sched.load_state_dict(s_state)


def _need_length(key: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(key, v, "must be an integer >= 1 (in units of scheduler.interval)")


def resolve_sequence(
    node: Mapping[str, Any],
    ctx: Context,
    *,
    ours: Sequence[str],
    metrics: Collection[str] | None = None,
    resolve: Callable[..., Node],
) -> Node:
    """Check a `name: sequence` node: its phases one by one through the same path as a
    top-level schedule (`resolve`: the registry's resolve_node, passed in rather than
    imported, as the registry imports this), their lengths against the run, then the whole
    sequence on a throwaway optimizer."""
    for key in node:
        if key not in ("name", "phases", *ours):
            raise ConfigError(
                f"scheduler.{key}",
                node[key],
                f"unknown key for scheduler 'sequence'; allowed keys: {[*ours, 'phases']}",
            )
    phases = node.get("phases")
    if isinstance(phases, (str, bytes)) or not isinstance(phases, Sequence) or not phases:
        raise ConfigError("scheduler.phases", phases, "must be a non-empty list of phases")
    total, used = ctx.run_length, 0
    nodes, lengths = [], []
    for i, phase in enumerate(phases):
        where = f"scheduler.phases.{i}"
        last = i == len(phases) - 1
        if not isinstance(phase, Mapping):
            raise ConfigError(where, phase, "must be a schedule: {name: ..., length: ...}")
        length = phase.get("length")
        if not last or length is not None:
            _need_length(f"{where}.length", length)
        span = total - used if length is None else length
        if length is None and span < 1:
            raise ConfigError(
                f"{where}.length",
                length,
                f"the phases before it take the whole run ({total} {ctx.interval}s once warmup "
                "is done): none is left for this last phase",
            )
        if used + span > total:
            raise ConfigError(
                f"{where}.length",
                length,
                f"the phases up to here run {used + span} {ctx.interval}s, more than the run's "
                f"{total} (epochs x {ctx.per_epoch}, minus warmup)",
            )
        phase_ctx = replace(ctx, span=span)
        nodes.append(resolve(phase, phase_ctx, where, ours=["length"], metrics=metrics))
        if nodes[-1].last_only and not last:
            key = f"{where}.{'name' if 'name' in phase else '_target_'}"
            raise ConfigError(
                key,
                phase.get("name", phase.get("_target_")),
                "OneCycleLR keeps its lrs in the param groups (initial_lr), which the phases "
                "after it would start from: it can only be the last phase",
            )
        lengths.append(span)
        used += span
    monitors = {n.monitor for n in nodes} - {None}
    if len(monitors) > 1:
        i = max(i for i, n in enumerate(nodes) if n.monitor)
        raise ConfigError(
            f"scheduler.phases.{i}.monitor",
            nodes[i].monitor,
            f"every plateau phase must monitor the same metric, here {sorted(monitors)}",
        )
    milestones = [sum(lengths[: i + 1]) for i in range(len(lengths) - 1)]

    def build(optimizer: Any) -> SequenceLR:
        base = [group["lr"] for group in optimizer.param_groups]
        scheds = []
        for n in nodes:
            # each phase is built at the base lrs (a null max_lr means optimizer.lr); what
            # torch's classes keep from construction does not depend on the current lr
            for group, lr in zip(optimizer.param_groups, base, strict=True):
                _set_lr(group, lr)
            scheds.append(n.build(optimizer))
        return SequenceLR(optimizer, scheds, milestones, base_lrs=base)

    monitor = next(iter(monitors), None)
    failed = dry_run(build, ctx.base_lrs, total, metric=monitor is not None)
    if failed is not None:
        step, problem, sched = failed
        if sched is None:
            raise ConfigError("scheduler.phases", None, f"cannot be built: {problem}")
        idx = sched.index
        raise ConfigError(
            f"scheduler.phases.{idx}",
            nodes[idx].label,
            f"fails at {ctx.interval} {step} of the sequence: {problem}",
        )
    return Node(label="sequence", build=build, monitor=monitor)
