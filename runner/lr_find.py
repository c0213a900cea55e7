"""`python -m runner.lr_find <overrides>`: the LR range test on its own
(runner/train/range_test.py), with the training config's overrides; writes lr_find.csv and
lr_find.png into the run dir, and prints the user's own command (config dir, overrides) as
the training run at the found lr (runner/hints.py)."""

import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runner import hints
from runner.cli import (
    EXIT_CONFIG,
    check_composition,
    config_dirs,
    config_error,
    given,
    make_run_dir,
)
from runner.config.compose import options_first, searched_first
from runner.config.schema import run_spec
from runner.run.check import validate
from runner.train.range_test import bounds_from_lr, find_lr
from schedulers import ConfigError

# a range test's dir: outputs/lr_find/<name>/<date>_<time>, named as a run's (conf/config.yaml)
RUN_DIR = "outputs/lr_find/${run_name:}/${now:%Y-%m-%d}_${now:%H-%M-%S-%f}"

# --help: what the range test does, then Hydra's list of groups and keys under its own words
# (conf/config.yaml's header and footer are training's: "schedlab: train a PyTorch model")
HELP = """python -m runner.lr_find <overrides>: the LR range test (Smith 2017) on the model,
optimizer and data these overrides give a training run. It raises the lr every batch from
lr_find.start_lr to lr_find.end_lr, stops once the loss diverges, prints three suggested lrs
and the training command with the one lr_find.suggestion picks, and writes lr_find.png and
lr_find.csv under outputs/lr_find/ (docs/lr-find.md).

Examples:
  python -m runner.lr_find model=lenet logger=none
  python -m runner optimizer.lr=find               # the same test first, then training
"""
HELP_OVERRIDES = [
    "hydra.help.header='Its groups and keys, as for python -m runner:'",
    "hydra.help.footer='Override any key as key=value; the lr_find.* keys set the test itself.'",
]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        lr, _ = find_lr(run_spec(cfg), out)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # disk full, read-only, no such dir: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {out / 'lr_find.png'} and {out / 'lr_find.csv'}")
    print(next_step(sys.argv[1:], lr, bounds_from_lr(cfg.scheduler)))
    return lr


def next_step(argv: list[str], lr: float, bounds: Sequence[str] = ()) -> str:
    """The user's own command (--config-dir, overrides) as the training run at `lr`, and
    optimizer.lr=find, which runs this test first and takes its suggestion. `bounds`: the
    schedule's lr bounds given as null, as optimizer.lr=find resets them (a onecycle's own
    max_lr would otherwise set its peak, whatever optimizer.lr says)."""
    for key in bounds:
        argv = hints.with_value(argv, f"scheduler.{key}", "null")
    return (
        f"train with it:\n  {hints.train_with_lr(argv, f'{lr:.4g}')}\n"
        "or give optimizer.lr=find in place of the value: the run tests first and trains "
        "with lr_find.suggestion's lr"
    )


def cli() -> None:
    """Config errors (typo'd keys, unknown options, bad values) are one line and exit 2
    before Hydra makes the run dir, as for `python -m runner`. The range test is one run
    into a new dir: a sweep (-m) or resume= (whose dir would be a training run's) is
    refused the same way."""
    sys.argv[1:] = argv = options_first(sys.argv[1:])
    if {"--help", "-h"} & set(argv):
        print(HELP)
        sys.argv += HELP_OVERRIDES
    if "-m" in argv or "--multirun" in argv:
        print(
            "config error: -m: the LR range test is one run; run it once per config",
            file=sys.stderr,
        )
        sys.exit(EXIT_CONFIG)
    overrides = given(argv)
    resume = overrides.get("resume", "")
    if resume.lower() not in ("", "null", "false"):
        why = "the LR range test starts no training run to continue: leave resume= out"
        config_error(ConfigError("resume", resume, why))
    if "hydra.run.dir" not in overrides:  # apart from the training runs
        sys.argv.append(f"hydra.run.dir={RUN_DIR}")
    check_composition(argv)
    run_dir = overrides.get("hydra.run.dir", "")
    if run_dir and "${" not in run_dir:
        make_run_dir(run_dir)
    with searched_first(config_dirs(argv)):  # the user's files win over conf/'s
        main()


if __name__ == "__main__":
    cli()
