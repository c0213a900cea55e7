"""schedlab's Hydra sweeper plugin: `hydra/sweeper=race` (see race_sweeper.py)."""
