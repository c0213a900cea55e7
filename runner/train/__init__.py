"""Training parts: models and optimizers (name -> spec tables), the model-on-data check,
builders (config -> model, optimizer, schedule), the training step and evaluation (steps.py),
the epoch engine for one or K members (engine.py), the LR range test (range_test.py) and
stopping on signals (stopping.py)."""
