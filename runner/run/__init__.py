"""One training run: its start-up check (check.py: the whole config, once), its run dir
(resume, one run per dir) and the single-model loop (train.py), built on the concerns below
it: runner.train, runner.data, runner.config, runner.io, runner.dist."""
