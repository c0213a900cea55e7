"""What a run writes and reads back: atomic files and run-dir locks (files.py), checkpoints
(checkpoint.py) with every RNG state (rngs.py), the metrics/W&B/TensorBoard loggers
(loggers.py) and the writer thread that keeps them off the training loop (background.py)."""
