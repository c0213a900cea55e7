"""`python -m runner.lr_find <overrides>`: the LR range test on its own (runner/core/lr_find.py),
with the training config's overrides; writes lr_find.csv and lr_find.png into the run dir."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runner.cli import check_composition
from runner.core import files
from runner.core.compose import options_first
from runner.core.config import validate
from runner.core.lr_find import find_lr
from schedulers import ConfigError


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        lr, _ = find_lr(cfg, out)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except files.WriteFailed as err:  # disk full, read-only: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {out / 'lr_find.png'} and {out / 'lr_find.csv'}")
    print(f"train with it: python -m runner optimizer.lr={lr:.4g}  (or optimizer.lr=find)")
    return lr


def cli() -> None:
    """Config errors (typo'd keys, unknown options, bad values) are one line and exit 2
    before Hydra makes the run dir, as for `python -m runner`."""
    sys.argv[1:] = options_first(sys.argv[1:])
    check_composition(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
