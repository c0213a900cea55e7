"""`hydra/sweeper=budgets`: a sweep of training budgets, trunks before their branches.

    python -m runner -m +experiment=mnist1d_budgets
    python -m runner -m +experiment=mnist1d_budgets hydra.sweeper.budgets=[10,20] \\
        seed=0,1

A branch needs its trunk on disk, which one Hydra batch cannot order, so this sweeper
launches two with the configured launcher (fused, joblib, Slurm): the reruns, the anytime
runs and the trunks (keeping the epochs their branches start from), then the branches of
the trunks that completed. All go into one sweep dir, whose report's budget view compares
them. The plan is in runner/sweep/budget_sweeps.py; this module only plugs it into Hydra,
and stays light because Hydra imports every plugin at each start-up.
"""

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from runner.sweep.launch import BUDGET_SWEEPER
from runner.sweep.sweeper import LaunchingSweeper


@dataclass
class BudgetSweeperConf:
    _target_: str = BUDGET_SWEEPER
    budgets: List[int] = field(default_factory=lambda: [15, 30, 60])  # noqa: UP006
    # name -> overrides; OmegaConf 2.3 reads Optional[...], not `X | None`
    reruns: Optional[Dict[str, List[str]]] = None  # noqa: UP006, UP045  a run per budget
    trunks: Optional[Dict[str, List[str]]] = None  # noqa: UP006, UP045  longest + branches
    anytime: Optional[Dict[str, List[str]]] = None  # noqa: UP006, UP045  longest, read at all
    # the sweep's other axes, as the basic sweeper takes them (e.g. seed: 0,1,2)
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045


ConfigStore.instance().store(
    group="hydra/sweeper", name="budgets", node=BudgetSweeperConf, provider="schedlab"
)


class BudgetSweeper(LaunchingSweeper):
    def __init__(
        self,
        budgets: Any = (15, 30, 60),
        reruns: Any = None,
        trunks: Any = None,
        anytime: Any = None,
        params: Any = None,
    ) -> None:
        super().__init__(params)
        given = {"reruns": reruns, "trunks": trunks, "anytime": anytime}
        self.strategies = {
            kind: OmegaConf.to_container(v) if isinstance(v, DictConfig) else v
            for kind, v in given.items()
        }
        self.budgets = list(budgets)

    def sweep(self, arguments: List[str]) -> Any:  # noqa: UP006
        import logging
        import sys

        from runner.run.branch_points import branch_point
        from runner.sweep import budget_sweeps as plan
        from runner.sweep.launch import sweep_combinations
        from schedulers import ConfigError

        log = logging.getLogger("schedlab")
        self.open_sweep_dir()
        assert self.hydra_context is not None
        try:  # checked before Hydra starts too (runner/sweep/launch.py), but for the points
            budgets = plan.check_plan(self.budgets, self.strategies)
            plan.check_command(arguments)
            combos = sweep_combinations(arguments, self.params, self.hydra_context.config_loader)
            keep = {
                name: plan.keep_epochs(self._compose, branch_point, combos[0], o, budgets)
                for name, o in (self.strategies["trunks"] or {}).items()
            }
        except ConfigError as err:  # one line and exit 2, as before Hydra starts
            print(f"config error: {err}", file=sys.stderr)
            sys.exit(2)
        jobs, trunk_jobs = plan.first_batch(combos, budgets, self.strategies, keep)
        log.info(
            f"Budgets {budgets}: {len(jobs)} runs first (reruns, anytime runs, "
            f"{len(trunk_jobs)} trunks keeping {keep}), then the trunks' branches"
        )
        results = [self.launch_batch(jobs, initial_job_idx=0)]
        done = [
            (overrides, Path(str(results[0][i].hydra_cfg.hydra.runtime.output_dir)))
            for i, (_, overrides) in trunk_jobs.items()
        ]
        branches = plan.branch_batch(done, budgets)
        log.info(f"Branches: {len(branches)} runs from {len(done)} trunks")
        if branches:
            results.append(self.launch_batch(branches, initial_job_idx=len(jobs)))
        return results

    def _compose(self, overrides: List[str]) -> DictConfig:  # noqa: UP006
        """A job's config as its run sees it: composed, without `hydra`, resolved."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)
        try:
            task = copy.deepcopy(config)
            with read_write(task), open_dict(task):
                del task["hydra"]
            OmegaConf.resolve(task)
        finally:
            HydraConfig.instance().cfg = previous
        return task
