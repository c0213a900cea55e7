"""The data: the bundled sets as tensors (sets.py, digits.py, mnist1d.py), any torch Dataset
streamed through a seeded DataLoader (stream.py), label checks (labels.py) and the
fingerprint that ties a run to its data (fingerprint.py)."""
