"""From a scheduler config to a torch LR scheduler: lookup, validation, construction.

torch is imported only when a scheduler is built, so validating a config is cheap.
"""

from schedulers.errors import ConfigError
from schedulers.registry import SCHEDULES, build_scheduler, validate_scheduler
from schedulers.schedule import LRSchedule

__all__ = ["SCHEDULES", "ConfigError", "LRSchedule", "build_scheduler", "validate_scheduler"]
