"""Keys added after runs were saved: a config saved before one existed gets it, with the
value that does what that run did, so that it validates and behaves as it ran. Read by a
resume (runner/run/rundir.py) and by a branch reading its trunk's config
(runner/run/branch.py), which would otherwise fail on the missing key."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

_ABSENT = object()

# each key with the value that does what a run saved without it did: a run's folder was
# named by its dir alone; best.pt was a whole checkpoint; no clipping, accumulation,
# smoothing, kept epochs, no_decay groups, BN recalibration, branch or warmup in optimizer
# steps
LATER_KEYS = {
    "name": None,
    "branch": None,
    "branch_epoch": None,
    "optimizer.no_decay": False,
    "trainer.save_best": "full",
    "trainer.grad_clip_norm": None,
    "trainer.grad_clip_value": None,
    "trainer.accumulate": 1,
    "trainer.label_smoothing": 0.0,
    "trainer.bn_recalibrate_batches": 0,
    "trainer.keep_epochs": None,
    "trainer.average": "none",
    "trainer.ema_decay": 0.999,
    "trainer.swa_start": None,
    "trainer.swa_lr": None,
    "scheduler.warmup_steps": 0,
}


def with_later_keys(saved: DictConfig) -> DictConfig:
    """A config saved before some keys existed gets them (LATER_KEYS), so it validates and
    the resumed run (or a branch's trunk) does what it did; a resume calls it after
    edit_changes, which compares it with the config its checkpoint kept (equally old)."""
    with open_dict(saved):
        for key, value in LATER_KEYS.items():
            if OmegaConf.select(saved, key, default=_ABSENT) is _ABSENT:
                OmegaConf.update(saved, key, value, merge=False)
    return saved
