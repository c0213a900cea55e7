"""From a scheduler config to a torch LR scheduler: lookup, validation, construction.

A config names a built-in (`name: cosine`), any scheduler class (`_target_: ...`), or a
`name: sequence` of phases. torch is imported only when a scheduler is built or a
`_target_`/sequence is tried out, so validating a built-in config is cheap. `simulate`
gives the lr of every step of a run under a config, without training.
"""

from schedulers.errors import ConfigError
from schedulers.registry import SCHEDULES, build_scheduler, schedule_label, validate_scheduler
from schedulers.schedule import LRSchedule
from schedulers.simulator import Simulation, simulate

__all__ = [
    "SCHEDULES",
    "ConfigError",
    "LRSchedule",
    "Simulation",
    "build_scheduler",
    "schedule_label",
    "simulate",
    "validate_scheduler",
]
