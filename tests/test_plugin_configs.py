"""The Hydra plugins are built from their config groups (`hydra/launcher=fused`,
`hydra/sweeper=race`) as Hydra builds them: the keys their nodes offer reach the
constructors, and a bad value is refused there, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from hydra_plugins.schedlab_fused.fused_launcher import FusedLauncher
from hydra_plugins.schedlab_race.race_sweeper import RaceSweeper
from schedulers import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def hydra_node(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra


def test_the_fused_launcher_takes_max_group_from_its_config():
    launcher = instantiate(
        hydra_node("hydra/launcher=fused", "hydra.launcher.max_group=5").launcher
    )
    # Hydra's plugin scan runs the module again: the class is another object of that name
    assert type(launcher).__qualname__ == FusedLauncher.__qualname__
    assert launcher.max_group == 5
    assert instantiate(hydra_node("hydra/launcher=fused").launcher).max_group == 64


def test_the_race_sweeper_takes_its_settings_and_axes_from_its_config():
    node = hydra_node(
        "hydra/sweeper=race",
        "hydra.sweeper.max_seeds=4",
        "hydra.sweeper.metric=final_val_loss",
    ).sweeper
    sweeper = instantiate(node, params={"scheduler": "step,cosine"})  # as a preset sets them
    assert type(sweeper).__qualname__ == RaceSweeper.__qualname__
    assert sweeper.settings["max_seeds"] == 4 and sweeper.settings["min_seeds"] == 3
    assert sweeper.settings["metric"] == "final_val_loss"
    assert sweeper.params == {"scheduler": "step,cosine"}


def test_a_bad_plugin_value_is_refused_naming_its_key():
    with pytest.raises(ConfigError, match="max_group"):
        FusedLauncher(max_group=0)
    with pytest.raises(ConfigError, match="min_seeds|max_seeds"):
        RaceSweeper(min_seeds=5, max_seeds=2)
