"""OmegaConf resolvers the configs use: lecture scaling (200 epochs -> the run's) and the
run dir of a resumed run.

Registered when `runner` is imported, so they exist wherever a config is resolved
(the CLI, the compose API in tests, joblib workers).
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf

LECTURE_EPOCHS = 200  # the lecture's demos ran for 200 epochs


def lecture_epochs(n: int, epochs: int) -> int:
    """n epochs of the lecture's 200, as the same share of a run of `epochs` (at least 1)."""
    return max(1, round(n * epochs / LECTURE_EPOCHS))


def lecture_gamma(gamma: float, epochs: int) -> float:
    """A per-epoch decay giving the same total decay over `epochs` as gamma over 200."""
    return float(gamma) ** (LECTURE_EPOCHS / epochs)


def run_dir(resume: object, default: str) -> str:
    """hydra.run.dir: the dir named by resume=<dir>, else the default (also for resume=true).
    Under torchrun every rank resolves it, at slightly different times: they share a dir
    named by torchrun's run id instead of the clock (hydra#2070)."""
    if isinstance(resume, str) and resume.lower() != "true":
        return resume
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"outputs/runs/torchrun-{run_id}"
    return default


def hydra_subdir(resume: object) -> str:
    """Where Hydra writes its .hydra/ files: nested when resuming, so the original stays."""
    return ".hydra/resumed" if resume else ".hydra"


def register() -> None:
    OmegaConf.register_new_resolver("run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir, replace=True)
    OmegaConf.register_new_resolver("lecture_epochs", lecture_epochs, replace=True)
    OmegaConf.register_new_resolver("lecture_gamma", lecture_gamma, replace=True)
