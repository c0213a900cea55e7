"""OmegaConf resolvers the configs use to scale the lecture's 200-epoch settings to a run.

Registered when `runner` is imported, so they exist wherever a config is resolved
(the CLI, the compose API in tests, joblib workers).
"""

from __future__ import annotations

from omegaconf import OmegaConf

LECTURE_EPOCHS = 200  # the lecture's demos ran for 200 epochs


def lecture_epochs(n: int, epochs: int) -> int:
    """n epochs of the lecture's 200, as the same share of a run of `epochs` (at least 1)."""
    return max(1, round(n * epochs / LECTURE_EPOCHS))


def lecture_gamma(gamma: float, epochs: int) -> float:
    """A per-epoch decay giving the same total decay over `epochs` as gamma over 200."""
    return float(gamma) ** (LECTURE_EPOCHS / epochs)


def register() -> None:
    OmegaConf.register_new_resolver("lecture_epochs", lecture_epochs, replace=True)
    OmegaConf.register_new_resolver("lecture_gamma", lecture_gamma, replace=True)
