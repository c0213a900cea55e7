"""`hydra/launcher=fused`: a multirun's fusable jobs train together as one stacked model.

    python -m runner -m hydra/launcher=fused scheduler=step,cosine,plateau seed=0,1,2

The launcher groups the sweep's jobs by what shapes a batch (model, data, batch size,
epochs, ...; see runner/sweep/fused.py), trains each group of two or more in this process
as one stacked model, then passes every job through Hydra's `run_job` like the basic
launcher does: the same run dir, `.hydra/`, `train.log`, callbacks, return value, and
its rows and summary sent to W&B/TensorBoard as its own run. Jobs that cannot fuse
(another model, dropout, resume, ...) run one after another as the basic launcher runs
them, with a one-line notice saying why.
"""

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from runner.sweep.launch import FUSED_LAUNCHER, check_max_group

log = logging.getLogger(__name__)


@dataclass
class FusedLauncherConf:
    _target_: str = FUSED_LAUNCHER
    # most jobs trained as one stacked model; a larger group is split into chunks of this size
    max_group: int = 64


ConfigStore.instance().store(
    group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="schedlab"
)


class FusedLauncher(Launcher):
    def __init__(self, max_group: int = 64) -> None:
        super().__init__()
        check_max_group(max_group)
        self.max_group = max_group
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        # torch-heavy: imported when a fused sweep launches, not when Hydra scans its plugins
        from runner.run.rundir import same_run_on_disk
        from runner.sweep.fused import Member, group_key, replay, train_group, why_not_fusable

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

        jobs = [self._job_config(initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
        groups: dict[str, list[int]] = {}
        members: dict[int, Member] = {}
        for i, config in enumerate(jobs):
            task_cfg, run_dir = _task_config(config)
            reason = why_not_fusable(task_cfg)
            if reason is None and same_run_on_disk(task_cfg, run_dir):
                reason = "its run dir holds a checkpoint of this config, which it resumes"
            if reason is None:
                reason = _run_dir_conflict(task_cfg, run_dir)
            if reason is not None:
                log.info(f"\t#{initial_job_idx + i} runs on its own: {reason}")
                continue
            sweep = Path(str(config.hydra.sweep.dir))
            members[i] = Member(
                task_cfg,
                run_dir,
                list(config.hydra.overrides.task),
                "_".join(sweep.parts[-2:]),
                sweep_dir=sweep,
            )
            groups.setdefault(group_key(task_cfg), []).append(i)
        chunks = [
            idx[s : s + self.max_group]
            for idx in groups.values()
            for s in range(0, len(idx), self.max_group)
        ]
        for chunk in chunks:
            if len(chunk) == 1:  # nothing to fuse with: an ordinary job
                members.pop(chunk[0])
                log.info(f"\t#{initial_job_idx + chunk[0]} runs on its own: no job to fuse with")
        # each group's jobs pass through run_job (W&B, .hydra/) as soon as it has trained: a
        # later group stopped by a signal then leaves the earlier ones complete everywhere (a
        # rerun finds them complete and sends nothing)
        runs: dict[int, JobReturn] = {}
        for chunk in (c for c in chunks if len(c) > 1):
            numbers = ", ".join(f"#{initial_job_idx + i}" for i in chunk)
            log.info(f"Training {len(chunk)} jobs as one fused model: {numbers}")
            train_group([members[i] for i in chunk])
            for i in chunk:
                member = members[i]
                runs[i] = self._run_job(
                    jobs[i],
                    job_overrides[i],
                    initial_job_idx + i,
                    lambda _task_cfg, member=member: replay(member),
                )
        for i, config in enumerate(jobs):
            if i not in runs:
                runs[i] = self._run_job(config, job_overrides[i], initial_job_idx + i, None)
        return [runs[i] for i in range(len(jobs))]

    def _run_job(
        self, config: DictConfig, overrides: Sequence[str], number: int, task: TaskFunction | None
    ) -> JobReturn:
        """As the basic launcher runs a job; `task` replays a fused member (None: the job
        trains on its own)."""
        assert self.config is not None and self.hydra_context is not None
        lst = " ".join(filter_overrides(overrides))
        log.info(f"\t#{number} : {lst}" + (" (fused)" if task is not None else ""))
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=task or self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def _job_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        return config


def _run_dir_conflict(task_cfg: DictConfig, run_dir: Path) -> str | None:
    """Why a job's run dir cannot take a fused member: another process holds it, or it holds
    another run's results. The job then runs on its own, where the single run's checks
    refuse it with their full message and leave the dir as it was."""
    from runner.io import files  # as in launch(): not at Hydra's plugin scan
    from runner.run.rundir import other_run_in

    if files.run_dir_holder(run_dir) is not None:
        return "its run dir is in use by another run"
    why = other_run_in(run_dir, task_cfg)
    return None if why is None else f"its run dir holds another run: {why}"


def _task_config(config: DictConfig) -> tuple[DictConfig, Path]:
    """The job's config without `hydra`, resolved as its job would see it, and its run dir
    (computed as hydra.core.utils.run_job computes it)."""
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        out = str(OmegaConf.select(config, "hydra.sweep.dir"))
        run_dir = Path(os.path.abspath(os.path.join(out, str(config.hydra.sweep.subdir))))
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        OmegaConf.resolve(task_cfg)
        from runner.data.fingerprint import absolute_roots  # as a single run's (train.py)

        with read_write(task_cfg):
            absolute_roots(task_cfg)
    finally:
        HydraConfig.instance().cfg = previous
    return task_cfg, run_dir
