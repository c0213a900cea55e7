"""schedlab's Hydra search path plugin: a user's `--config-dir` before schedlab's conf/."""
