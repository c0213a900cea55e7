"""Processes: torchrun / Slurm data-parallel ranks (ddp.py) and launcher workers
(workers.py: joblib's loky processes and the thread count the user's process had)."""
