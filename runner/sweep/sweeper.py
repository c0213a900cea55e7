"""What the project's two sweepers (hydra/sweeper=race, hydra/sweeper=budgets) share: each
plans its batches itself and hands them to the configured launcher (basic, joblib, fused,
Slurm), after holding the sweep dir. Written once here, so that a change to how a sweep
starts or launches (the lock, multirun.yaml, the composition check) reaches both.

Light on purpose, as the plugins that import it: Hydra imports every plugin at each start-up.
Abstract (no `sweep`), so Hydra's plugin scan, which finds this class in both plugin
modules, does not list it as a sweeper of its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class LaunchingSweeper(Sweeper):
    """A sweeper that launches its own batches; `params`: the sweep's axes, as the basic
    sweeper takes them (hydra.sweeper.params)."""

    def __init__(self, params: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.params = dict(params or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def open_sweep_dir(self) -> Path:
        """Hold the sweep dir (one sweep at a time: held until this process ends; a refusal
        is one line and exit 2) and write multirun.yaml into it; -> the dir."""
        # here, not at module level: Hydra imports every plugin (and so this module) at each
        # start-up, and the sweep dir's code (its jobs' reader) is needed once a sweep starts
        from runner.sweep.sweepdir import take_or_exit

        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        take_or_exit(sweep_dir)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return sweep_dir

    def launch_batch(self, batch: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        """One batch to the launcher, its composition errors found before any job trains."""
        self.validate_batch_is_legal(batch)
        return self.launcher.launch(batch, initial_job_idx=initial_job_idx)
