"""schedlab's Hydra sweeper plugin: `hydra/sweeper=budgets` (see budget_sweeper.py)."""
