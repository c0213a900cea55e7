"""One training run: its run dir (resume, one run per dir), start-up and the single-model
loop, built on runner.core."""
