"""The building blocks of a run: config schema and validation, data, models, optimizers,
the training step and the epoch engine, checkpoints, loggers, files. Imports nothing from
runner.run, runner.sweep or the tools (the layer contracts in pyproject.toml say so)."""
