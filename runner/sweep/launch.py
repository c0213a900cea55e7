"""The keys of the project's Hydra plugins (hydra_plugins/), checked by `python -m runner`
before Hydra starts, so that a bad value is a config error (exit 2) naming the key. Light on
purpose: Hydra imports the plugins, and they import this, at every start-up.

Each plugin node's own keys are declared as every option's are (schedulers/declare.py: a
dataclass of `key(default, check)` fields, checked by `check_node`); the defaults are the
plugins' own (a test keeps them equal to hydra_plugins/ and the report's signature)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from runner.sweep.budget_sweeps import check_command, check_plan
from runner.sweep.compare import METRICS
from schedulers import ConfigError
from schedulers.checks import choice, integer, number, worded
from schedulers.declare import check_node, defaults, key

# the fused launcher's class, as `hydra/launcher=fused` names it
FUSED_LAUNCHER = "hydra_plugins.schedlab_fused.fused_launcher.FusedLauncher"
# the race sweeper's class, as `hydra/sweeper=race` names it
RACE_SWEEPER = "hydra_plugins.schedlab_race.race_sweeper.RaceSweeper"
# the budget sweeper's class, as `hydra/sweeper=budgets` (+experiment=mnist1d_budgets) names it
BUDGET_SWEEPER = "hydra_plugins.schedlab_budgets.budget_sweeper.BudgetSweeper"


SWEEP_REPORT = "runner.sweep.report.SweepReport"


@dataclass
class FusedLauncherKeys:
    """hydra/launcher=fused (hydra_plugins/schedlab_fused)."""

    max_group: int = key(64, worded(integer(1), "must be >= 1 (jobs per group)"))


@dataclass
class RaceKeys:
    """hydra/sweeper=race (hydra_plugins/schedlab_race), less its `params`."""

    min_seeds: int = key(3, worded(integer(2), "must be >= 2 (a paired t test needs 2 seeds)"))
    max_seeds: int = key(10, integer(2))
    alpha: float = key(0.05, worded(number(0, 1, lo_open=True, hi_open=True), "must be in (0, 1)"))
    metric: str = key("best_val_acc", choice(*METRICS))
    max_runs: int | None = key(
        None, worded(integer(1, optional=True), "must be >= 1, or null (no budget)")
    )

    @staticmethod
    def check_keys(prefix: str, node: Mapping[str, Any]) -> None:
        """max_seeds is at least min_seeds."""
        low, high = node["min_seeds"], node["max_seeds"]
        if high < low:
            raise ConfigError(f"{prefix}.max_seeds", high, f"must be >= {prefix}.min_seeds ({low})")


@dataclass
class SweepReportKeys:
    """The sweep report's Hydra callback (runner/sweep/report.py's SweepReport): checked when
    the sweep starts, not found wrong after every job has trained. Both keys optional."""

    target_acc: float = key(0.95, number(0, 1, lo_open=True))
    # auto: best_val_acc, or final_val_loss for language models (runner/sweep/report.py)
    metric: str = key(
        "auto",
        worded(choice("auto", *METRICS), f"must be one of {', '.join(METRICS)}, or auto"),
    )


def check_launcher(launcher: DictConfig) -> None:
    """The fused launcher's keys; Hydra building the launcher checks them again."""
    if launcher.get("_target_") == FUSED_LAUNCHER:
        check_max_group(launcher.max_group)


def check_max_group(max_group: int) -> None:
    check_node("hydra.launcher", {"max_group": max_group}, FusedLauncherKeys)


def check_callbacks(callbacks: Mapping[str, Any] | None) -> None:
    """hydra.callbacks: the sweep report's keys (Hydra builds the callbacks only when the
    sweep starts, and the report reads them only when it ends)."""
    from hydra._internal.utils import _locate  # what Hydra builds a _target_ with

    for name, callback in (callbacks or {}).items():
        if not isinstance(callback, Mapping) or "_target_" not in callback:
            continue
        where = f"hydra.callbacks.{name}"
        if callback["_target_"] == SWEEP_REPORT:
            node = {**defaults(SweepReportKeys), **callback}
            check_node(where, node, SweepReportKeys, others=["_target_"], owner="the sweep report")
            continue
        try:
            _locate(str(callback["_target_"]))
        except ImportError as err:
            raise ConfigError(
                f"{where}._target_",
                callback["_target_"],
                f"cannot be imported ({' '.join(str(err).split())[:160]})",
            ) from None


def check_sweeper(
    sweeper: DictConfig, overrides: Sequence[str] = (), multirun: bool = True
) -> None:
    """The race sweeper's keys and the command's overrides with it (Hydra building the
    sweeper checks the keys again): the race gives every job its seed, so a `seed=`
    override (or `hydra.sweeper.params.seed=`) on the command line is refused rather than
    silently replaced; and round 1 (every configuration x min_seeds) must fit max_runs."""
    if sweeper.get("_target_") == BUDGET_SWEEPER and multirun:  # a single run sweeps nothing
        check_budget_sweep(sweeper, overrides)
    if sweeper.get("_target_") != RACE_SWEEPER:
        return
    check_race(
        sweeper.min_seeds, sweeper.max_seeds, sweeper.alpha, sweeper.metric, sweeper.max_runs
    )
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in ("seed", "hydra.sweeper.params.seed"):
            raise ConfigError(
                "seed",
                value,
                "hydra/sweeper=race gives each job its seed (0, 1, ... up to "
                "hydra.sweeper.max_seeds); leave seed= out and set hydra.sweeper.min_seeds / "
                "max_seeds instead",
            )
    if sweeper.max_runs is not None:
        task = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
        configs, _ = configurations(task, sweeper.get("params"))
        check_round_one(len(configs), sweeper.min_seeds, sweeper.max_runs)


def check_budget_sweep(sweeper: Mapping[str, Any], overrides: Sequence[str]) -> None:
    """The budget sweeper's keys and the command's overrides (runner/sweep/budget_sweeps.py),
    before Hydra starts: a bad plan is one line and exit 2, not Hydra's error after the
    sweep dir is made."""
    node = OmegaConf.to_container(sweeper) if isinstance(sweeper, DictConfig) else sweeper
    check_plan(node.get("budgets") or [], node)
    check_command([o for o in overrides if not o.lstrip("+~").startswith("hydra")])


def check_race(
    min_seeds: int, max_seeds: int, alpha: float, metric: str, max_runs: int | None
) -> None:
    """The race sweeper's own keys, wherever they come from (the command, RaceSettings)."""
    values = (min_seeds, max_seeds, alpha, metric, max_runs)
    check_node("hydra.sweeper", dict(zip(defaults(RaceKeys), values, strict=True)), RaceKeys)


def check_round_one(n_configs: int, min_seeds: int, max_runs: int | None) -> None:
    """Round 1 runs every configuration with min_seeds seeds: a budget below that cannot
    even start the race."""
    if max_runs is not None and n_configs * min_seeds > max_runs:
        raise ConfigError(
            "hydra.sweeper.max_runs",
            max_runs,
            f"round 1 alone needs {n_configs} configurations x {min_seeds} seeds "
            f"(hydra.sweeper.min_seeds) = {n_configs * min_seeds} runs",
        )


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def configurations(
    arguments: Sequence[str], params: Mapping[str, Any] | None, config_loader: Any = None
) -> tuple[list[list[str]], list[str]]:
    """The race's configurations: every combination of the sweep (hydra.sweeper.params, as
    the basic sweeper reads them, then the command's overrides), each a list of overrides.
    A `seed` in params (a preset's seed list, e.g. +experiment=mnist1d_schedules) is left
    out, since the race gives the seeds; it is returned so the sweeper can say so. (A `seed=`
    on the command line is refused before Hydra starts: runner/sweep/launch.py.)"""
    ignored = [f"{k}={v}" for k, v in (params or {}).items() if _key(str(k)) == "seed"]
    given = [f"{k}={v}" for k, v in (params or {}).items() if _key(str(k)) != "seed"]
    given += [o for o in arguments if _key(o) != "seed"]
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(given)
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(c) for c in batch], ignored


def sweep_combinations(
    arguments: Sequence[str], params: Mapping[str, Any] | None, config_loader: Any = None
) -> list[list[str]]:
    """Every combination of a sweep's axes, as the basic sweeper makes them: its
    hydra.sweeper.params (a preset's seeds), then the command's overrides, which replace a
    param of the same key. Each a list of overrides (the budget sweeper's combinations)."""
    given = {_key(o) for o in arguments}
    over = [f"{k}={v}" for k, v in (params or {}).items() if _key(str(k)) not in given]
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(
        [*over, *arguments]
    )
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(c) for c in batch]
