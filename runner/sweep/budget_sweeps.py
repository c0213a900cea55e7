"""How long should I train, and does my schedule need to know? The plan of a budget sweep
(`hydra/sweeper=budgets`, hydra_plugins/schedlab_budgets; `+experiment=mnist1d_budgets`
and `make budgets` run it):

    python -m runner -m +experiment=mnist1d_budgets

Three kinds of strategy, each over the sweep's other axes (`hydra.sweeper.params`, e.g.
its seeds), and one sweep dir, whose report's budget view (runner/sweep/budgets.py) then
compares them:
  reruns:  a run from scratch per budget (cosine: the schedule knows the budget)
  trunks:  one run of the longest budget (e.g. WSD), keeping the epochs where each shorter
           budget leaves it (runner/run/branch_points.py), then each shorter budget as a
           branch of it, its cooldown (Hägele et al. 2024: the sweep for about the cost of
           its longest run)
  anytime: one run of the longest budget, read at every budget (schedule-free, a constant
           lr with EMA: their evaluated weights do not depend on the budget)

A branch needs its trunk on disk, which one Hydra batch cannot order: the sweeper launches
the reruns, the anytime runs and the trunks as one batch (fused where they can be), then
the branches of the trunks that completed as a second (fused too: one budget's branches
of the seeds' trunks start at the same epoch, runner/sweep/fused.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.io.files import read_json
from schedulers import ConfigError

KINDS = ("reruns", "trunks", "anytime")
# keys the sweeper sets on each job: a strategy or the command setting them would clash
PLANNED = ("epochs", "branch", "branch_epoch", "trainer.keep_epochs")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def check_plan(budgets: Sequence[Any], strategies: Mapping[str, Any]) -> list[int]:
    """The sweeper's keys: two budgets or more (epochs, >= 1), strategies given as lists of
    overrides that leave the planned keys to the sweeper. Returns the budgets, sorted."""
    if (
        not isinstance(budgets, Sequence)
        or isinstance(budgets, str)
        or len(budgets) < 2
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in budgets)
    ):
        raise ConfigError(
            "hydra.sweeper.budgets", budgets, "give two budgets or more, in epochs: [15,30,60]"
        )
    if not any(strategies.get(kind) for kind in KINDS):
        raise ConfigError(
            "hydra.sweeper", "budgets", f"give at least one strategy in {', '.join(KINDS)}"
        )
    for kind in KINDS:
        for name, overrides in (strategies.get(kind) or {}).items():
            where = f"hydra.sweeper.{kind}.{name}"
            if isinstance(overrides, str) or not isinstance(overrides, Sequence):
                raise ConfigError(where, overrides, "a list of overrides: [scheduler=cosine]")
            for o in overrides:
                if _key(str(o)) in PLANNED:
                    raise ConfigError(where, o, f"the sweeper sets {', '.join(PLANNED)}")
    return sorted(set(budgets))


def check_command(arguments: Sequence[str]) -> None:
    """The command's own overrides go to every job; the keys the sweeper plans are refused."""
    for o in arguments:
        if _key(o) in PLANNED:
            raise ConfigError(
                _key(o),
                o.split("=", 1)[-1],
                "the budget sweeper sets it per job: give the budgets as "
                "hydra.sweeper.budgets=[15,30,60]",
            )


def first_batch(
    combos: list[list[str]],
    budgets: list[int],
    strategies: Mapping[str, Mapping[str, Sequence[str]]],
    keep: Mapping[str, list[int]],
) -> tuple[list[list[str]], dict[int, tuple[str, list[str]]]]:
    """The jobs that need no other run: per combination of the sweep's other axes, each
    rerun strategy at every budget, each anytime and trunk strategy at the longest (a
    trunk keeping its branch points, `keep[name]`). Returns the jobs and, by job index,
    each trunk's strategy name and the overrides its branches share with it."""
    longest = budgets[-1]
    jobs: list[list[str]] = []
    trunks: dict[int, tuple[str, list[str]]] = {}
    for combo in combos:
        for overrides in (strategies.get("reruns") or {}).values():
            jobs += [[*combo, *overrides, f"epochs={b}"] for b in budgets]
        for overrides in (strategies.get("anytime") or {}).values():
            jobs.append([*combo, *overrides, f"epochs={longest}"])
        for name, overrides in (strategies.get("trunks") or {}).items():
            kept = ",".join(map(str, keep[name]))
            trunks[len(jobs)] = (name, [*combo, *overrides])
            jobs.append([*combo, *overrides, f"epochs={longest}", f"trainer.keep_epochs=[{kept}]"])
    return jobs, trunks


def branch_batch(trunks: list[tuple[list[str], Path]], budgets: list[int]) -> list[list[str]]:
    """Per trunk that completed (its overrides without the planned keys, its run dir), each
    shorter budget as its branch (branch_epoch null: where its schedule leaves the trunk's,
    one of the epochs the trunk kept); the trunk's dir quoted for Hydra's parser (a sweep
    job's dir name holds `=` and `,`)."""
    jobs = []
    for overrides, run_dir in trunks:
        if (read_json(run_dir / "status.json") or {}).get("status") != "completed":
            continue  # its branches would only fail naming it; the report shows it failed
        jobs += [[*overrides, f"branch='{run_dir}'", f"epochs={b}"] for b in budgets[:-1]]
    return jobs


def keep_epochs(
    compose: Callable[[list[str]], Any],
    branch_point: Callable[[Any, Any], int],
    combo: list[str],
    overrides: Sequence[str],
    budgets: list[int],
) -> list[int]:
    """The epochs a trunk strategy's run of the longest budget keeps: where each shorter
    budget's run of the same strategy leaves it (`branch_point`, on the configs `compose`
    makes). A budget whose schedule leaves the trunk's at once (branch point 0) is refused:
    it would be a rerun, not a branch."""
    trunk = compose([*combo, *overrides, f"epochs={budgets[-1]}", "trainer.keep_epochs=null"])
    points = []
    for b in budgets[:-1]:
        k = branch_point(compose([*combo, *overrides, f"epochs={b}"]), trunk)
        if k == 0:
            raise ConfigError(
                "hydra.sweeper.trunks",
                " ".join(overrides),
                f"a run of {b} epochs shares no epoch of its lr with the {budgets[-1]}-epoch "
                "trunk: give a schedule whose change starts late (scheduler=wsd)",
            )
        points.append(k)
    return sorted(set(points))
