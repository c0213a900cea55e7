"""`python -m runner [overrides]`: the Hydra entry point. Heavy imports wait until a run starts,
so `--help` and config errors come back quickly.

Exit codes of a single run: 0 completed, 1 crashed, 2 bad config, 3 diverged, 130/143
interrupted (SIGINT/SIGTERM). In a multirun every job catches its own failure, records
it in `status.json` and returns, so one bad job never stops the sweep (and the sweep
report still gets written); an interrupt stops the sweep.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from schedulers import ConfigError

EXIT_CONFIG = 2
EXIT_DIVERGED = 3
log = logging.getLogger("schedlab")


def _mark_failed(run_dir: Path, error: str) -> None:
    status = {"status": "failed", "error": error}
    (run_dir / "status.json").write_text(json.dumps(status, indent=2) + "\n")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the best val accuracy, the objective a Hydra sweeper (e.g. Optuna) maximises."""
    from runner.train import train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        result = train(
            cfg,
            run_dir,
            overrides=list(hc.overrides.task),
            sweep_name="_".join(Path(hc.sweep.dir).parts[-2:]) if multirun else None,
        )
    except ConfigError as err:
        # Hydra has already made the run dir; mark it so it is not mistaken for a run.
        _mark_failed(run_dir, f"config error: {err}")
        print(f"config error: {err}", file=sys.stderr)
        if multirun:
            return float("nan")
        sys.exit(EXIT_CONFIG)
    except Exception as err:
        if not multirun:
            _mark_failed(run_dir, repr(err))
            raise
        log.exception(f"job {hc.job.num} failed; the sweep goes on")
        _mark_failed(run_dir, repr(err))
        return float("nan")
    if result.status == "interrupted":
        if result.chain:  # e.g. submitit's SIGUSR2 handler: it requeues the job, which resumes
            signal.raise_signal(result.signum)
        sys.exit(128 + (result.signum or 0))
    if result.status == "diverged" and not multirun:
        sys.exit(EXIT_DIVERGED)
    return result.best_val_acc


_NO_COMPOSE = {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc"}


def check_composition(argv: list[str]) -> None:
    """Compose the config for these overrides before Hydra starts, so a typo'd key, an
    unknown group option or a bad override is a config error (exit 2, no run dir) like
    every other bad value, rather than Hydra's generic exit 1. Sweeps are expanded and
    every combination is checked, and the launcher's own keys (hydra/launcher=fused)."""
    if _NO_COMPOSE & set(argv):
        return
    overrides = [a for a in argv if not a.startswith("-") and "=" in a]
    from hydra.errors import HydraException

    from hydra_plugins.schedlab_fused.fused_launcher import check_launcher
    from runner.compose import compose_config, expand

    try:
        first, *others = expand(overrides)
        check_launcher(compose_config(first, with_hydra=True).hydra.launcher)
        for combo in others:
            compose_config(combo)
    except (HydraException, ConfigError) as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def cli() -> None:
    check_composition(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
