"""Schedulers a user might bring, reached by `scheduler._target_=tests.user_schedulers.<Class>`."""

from __future__ import annotations

from torch.optim import lr_scheduler as tls


class BreaksAt(tls.LambdaLR):
    """A user's scheduler (`_target_`) that raises from its `epoch`-th step on."""

    def __init__(self, optimizer, epoch: int):
        def factor(e: int) -> float:
            if e >= epoch:
                raise RuntimeError(f"broken at {e}")
            return 1.0

        super().__init__(optimizer, factor)
