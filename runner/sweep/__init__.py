"""Sweeps: fused groups (many runs as one stacked model), the sweep report and its paired
comparisons. Built on runner.run and the concerns below it; the Hydra plugins import this, never
the reverse."""
