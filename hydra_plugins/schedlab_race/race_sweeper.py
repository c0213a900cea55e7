"""`hydra/sweeper=race`: spend seeds where the answer is still open.

    python -m runner -m hydra/sweeper=race scheduler=step,multistep,exponential,cosine
    python -m runner -m hydra/sweeper=race hydra/launcher=fused optimizer.lr=0.1,0.05,0.01 \\
        hydra.sweeper.min_seeds=3 hydra.sweeper.max_seeds=10

Round 1 trains every configuration of the sweep with seeds 0 .. min_seeds-1; each later
round adds one seed to the configurations still in the race, and those significantly worse
than the current best (paired t, Holm-corrected) are dropped. Each round is one
`launcher.launch(...)` call to the configured launcher (basic, joblib, fused, submitit), and
every job's run dir is an ordinary one, so the sweep report and W&B grouping work unchanged.
The racing itself is in runner/sweep/race.py; this module only plugs it into Hydra, and
stays light because Hydra imports every plugin at each start-up.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional  # noqa: UP035

from hydra.core.config_store import ConfigStore

from runner.sweep.launch import RACE_SWEEPER, check_race
from runner.sweep.sweeper import LaunchingSweeper


@dataclass
class RaceSweeperConf:
    _target_: str = RACE_SWEEPER
    min_seeds: int = 3  # round 1: every configuration with seeds 0 .. min_seeds-1
    max_seeds: int = 10  # the race ends when the survivors have this many seeds
    alpha: float = 0.05  # family-wise error of each round's Holm-corrected comparisons
    # best_val_acc | final_val_acc | best_val_loss | final_val_loss (| best_val_avg_acc ...)
    metric: str = "best_val_acc"
    # OmegaConf 2.3 reads Optional[...], not `X | None`
    max_runs: Optional[int] = None  # noqa: UP045  null: no budget; else no round that exceeds it
    # the sweep's axes, as the basic sweeper takes them (presets set them); a `seed` here is
    # ignored with a notice: the race gives the seeds
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045


ConfigStore.instance().store(
    group="hydra/sweeper", name="race", node=RaceSweeperConf, provider="schedlab"
)


class RaceSweeper(LaunchingSweeper):
    def __init__(
        self,
        min_seeds: int = 3,
        max_seeds: int = 10,
        alpha: float = 0.05,
        metric: str = "best_val_acc",
        max_runs: int | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        super().__init__(params)
        check_race(min_seeds, max_seeds, alpha, metric, max_runs)
        self.settings = dict(
            min_seeds=min_seeds, max_seeds=max_seeds, alpha=alpha, metric=metric, max_runs=max_runs
        )

    def sweep(self, arguments: list[str]) -> Any:
        # the race's logic, imported here rather than at module level: Hydra imports every
        # plugin at each start-up, and this one only needs it once a race starts
        import logging

        from runner.sweep.launch import configurations
        from runner.sweep.race import Race, RaceSettings

        log = logging.getLogger("schedlab")
        sweep_dir = self.open_sweep_dir()
        assert self.hydra_context is not None
        configs, ignored = configurations(arguments, self.params, self.hydra_context.config_loader)
        if ignored:
            log.info(
                f"Race: {', '.join(ignored)} (hydra.sweeper.params) ignored; the race "
                "gives the seeds: 0, 1, ... up to hydra.sweeper.max_seeds"
            )
        return Race(RaceSettings(**self.settings), configs, sweep_dir, self.launch_batch).run()
