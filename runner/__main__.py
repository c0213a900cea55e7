"""`python -m runner [overrides]`: the Hydra entry point. Heavy imports wait until a run starts,
so `--help` and config errors come back quickly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from schedulers import ConfigError


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the best val accuracy, the objective a Hydra sweeper (e.g. Optuna) maximises."""
    from runner.train import train

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        result = train(
            cfg,
            hc.runtime.output_dir,
            overrides=list(hc.overrides.task),
            sweep_name=hc.sweep.dir.rstrip("/").replace("/", "_") if multirun else None,
        )
    except ConfigError as err:
        # Hydra has already made the run dir; mark it so it is not mistaken for a run.
        status = {"status": "failed", "error": f"config error: {err}"}
        (Path(hc.runtime.output_dir) / "status.json").write_text(json.dumps(status) + "\n")
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    return result.best_val_acc


if __name__ == "__main__":
    main()
