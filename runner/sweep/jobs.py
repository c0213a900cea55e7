"""A sweep's jobs as their run dirs describe them (metrics.jsonl, status.json, config.yaml,
.hydra/overrides.yaml), grouped into configurations: what the sweep report and the race
both read, so they judge the same numbers."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from runner.io.files import read_json, read_jsonl, run_dir_holder

log = logging.getLogger("schedlab")

# what every epoch row holds and the report and the race read from it
REPORTED = ("val/acc", "val/loss")


@dataclass
class Job:
    path: Path
    overrides: list[str]
    status: str  # completed | diverged | failed | incomplete | running
    rows: list[dict[str, Any]]
    wall_time_s: float | None
    seed: int | None = None
    error: str | None = None  # status.json's, for a failed job
    config: dict[str, Any] = field(default_factory=dict)  # its config.yaml ({} if unreadable)
    launched_epochs: Any = None  # `epochs` of its first launch (.hydra/config.yaml), if read
    fused_jobs: int | None = None  # trained in a fused group of this many (its wall time's)

    @property
    def trained(self) -> list[str]:
        """Its overrides as what it trained: a job extended by `resume=<its dir>
        epochs=<more>` keeps its first launch's .hydra/overrides.yaml (`epochs=3`), while
        its config.yaml and rows are the longer run's; read as launched, its 6 epochs were
        averaged with its configuration's 3-epoch seeds without a word."""
        now, then = self.config.get("epochs"), self.launched_epochs
        if not (_whole(now) and _whole(then)) or now == then:
            return self.overrides
        told = [o for o in self.overrides if override_key(o) == "epochs"]
        kept = [f"epochs={now}" if override_key(o) == "epochs" else o for o in self.overrides]
        return kept if told else [*kept, f"epochs={now}"]

    @property
    def config_error(self) -> bool:
        """Failed its config check (the runner's status.json says `config error: ...`)."""
        return self.status == "failed" and (self.error or "").startswith("config error")

    @property
    def readable(self) -> bool:
        """Its rows describe the whole run: at least one, each with a number for every key
        the report reads. A completed job whose row lacks one (a metrics.jsonl edited or
        written by another tool) is unreadable, counted with the failed jobs: a final val
        acc taken from an earlier epoch, or a mean over some epochs, would be a wrong number."""
        return bool(self.rows) and all(
            isinstance(r.get(k), int | float) and not isinstance(r.get(k), bool)
            for r in self.rows
            for k in REPORTED
        )

    def series(self, key: str) -> list[float]:
        return [r[key] for r in self.rows if key in r]

    @property
    def lr_key(self) -> str | None:
        """The first param group's lr column (lr/group0, or lr/<part> with param groups)."""
        return next((k for k in (self.rows[0] if self.rows else {}) if k.startswith("lr/")), None)


@dataclass
class Group:
    label: str
    jobs: list[Job] = field(default_factory=list)
    # jobs of a (configuration, seed) pair already in `jobs` (e.g. `seed=0,0`): counted
    # once, or n would grow and the std shrink with copies of one run
    repeats: list[Job] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(j.status == status for j in self.jobs)

    @property
    def finished(self) -> list[Job]:
        """Jobs whose metrics describe a whole run: the ones the statistics are over."""
        return [j for j in self.jobs if j.status == "completed" and j.readable]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def without_seed(overrides: list[str]) -> list[str]:
    return [o for o in overrides if override_key(o) != "seed"]


# keys that change how a run is shown, named or saved, never what it computes (those a
# resume= applies: runner/run/rundir.py SAFE_ON_RESUME), `logger.*` included
# (trainer.keep_epochs too, but a trunk's label names it: the branches it can give)
SHOWN_ONLY = (
    "name",
    "logger",
    "trainer.progress",
    "trainer.checkpoint_interval_s",
    "trainer.log_every_n_steps",
)


def computes(override: str) -> bool:
    """Whether the override can change what a run computes (`SHOWN_ONLY`'s cannot): seeds
    added later with W&B on (`logger=wandb`) beside seeds run with `logger=none` are the
    same configuration, not two of a few seeds each."""
    key = override_key(override)
    return not any(key == k or key.startswith(k + ".") for k in SHOWN_ONLY)


def trunk_of(job: Job) -> Path | None:
    """The trunk dir a branch's config.yaml names (a relative one read from the current
    dir, as the runner read it); None for a job that is no branch."""
    trunk = job.config.get("branch")
    return None if trunk in (None, "") else Path(str(trunk)).resolve()


def configuration(job: Job, common: set[str], short: bool = True) -> list[str]:
    """The overrides that make the job's configuration: not its seed nor those every job
    shares, and a branch's `branch=<run dir>` read as its trunk's configuration
    (`branch=<trunk: ...>`). Each seed's branches start from their own seed's trunk, so
    the dir differs by seed while the strategy does not: read literally, a sweep of
    branches over 3 seeds would show 3 configurations of one run each, with no statistics.
    `short`: the trunk part leaves out the trunk's overrides that the branch sets the same
    itself (a WSD branch of a WSD trunk said `scheduler=wsd` twice in one label);
    `group_jobs` keeps the whole part where leaving them out would merge two trunks."""
    own = [o for o in without_seed(job.trained) if o not in common and computes(o)]
    out = []
    for o in own:
        trunk = trunk_of(job) if override_key(o) == "branch" else None
        told = _read_yaml(trunk / ".hydra" / "overrides.yaml") if trunk is not None else None
        if isinstance(told, list):
            kept = [
                t for t in without_seed([str(t) for t in told]) if t not in common and computes(t)
            ]
            if short:
                kept = [t for t in kept if t not in own]
            o = f"branch=<trunk: {' '.join(kept) or '(defaults)'}>"
        out.append(o)
    return out


def _read_yaml(path: Path) -> Any:
    """A YAML file's content; None when it is missing or damaged (with a warning)."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        log.warning(f"{path} is damaged; read as missing ({type(err).__name__})")
        return None


def load_job(path: Path) -> Job | None:
    """One job as its files describe it; None when its dir holds no `.hydra/overrides.yaml`
    (not a job of a sweep, or one that has not started). Damaged files never stop the
    report: a torn metrics line is skipped, an empty or undecodable status.json reads as
    no status (the job counts as incomplete). A job whose dir another process holds (its
    run-dir lock: runner/io/files.py) is `running`, whatever its files say so far: a run
    in progress, or one resumed to train longer, is no result yet."""
    path = Path(path)
    overrides_file = path / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        return None
    rows = [r for r in read_jsonl(path / "metrics.jsonl") if r.get("kind") != "step"]
    config = _read_yaml(path / "config.yaml")
    launched = _read_yaml(path / ".hydra" / "config.yaml")
    status = read_json(path / "status.json") or {}
    overrides = _read_yaml(overrides_file)
    running = run_dir_holder(path) is not None
    return Job(
        path=path,
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
        status="running" if running else str(status.get("status", "incomplete")),
        rows=rows,
        wall_time_s=status.get("wall_time_s"),
        fused_jobs=status["fused_jobs"] if _whole(status.get("fused_jobs")) else None,
        seed=config.get("seed") if isinstance(config, dict) else None,
        error=str(status["error"]) if status.get("error") is not None else None,
        config=config if isinstance(config, dict) else {},
        launched_epochs=launched.get("epochs") if isinstance(launched, dict) else None,
    )


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job of the sweep (`load_job` of each `<job>/.hydra/overrides.yaml`)."""
    jobs = []
    for overrides_file in sorted(Path(sweep_dir).glob("*/.hydra/overrides.yaml")):
        job = load_job(overrides_file.parent.parent)
        if job is not None:
            jobs.append(job)
    return jobs


def common_overrides(jobs: list[Job]) -> list[str]:
    """Overrides every job shares: said once in the header, left out of the row labels."""
    if not jobs:
        return []
    shared = set(jobs[0].trained).intersection(*(j.trained for j in jobs[1:]))
    return [o for o in jobs[0].trained if o in shared]


def in_key_order(overrides: list[str]) -> list[str]:
    """The overrides sorted by key (stable: one key's own order kept), as Hydra names a
    job's dir: `seed=3 optimizer.lr=0.2 scheduler=step`, a seed added later to a sweep of
    `scheduler=step optimizer.lr=0.2 seed=0,1,2`, is the same configuration in the same
    sweep dir; grouped by the order typed, each configuration was two rows."""
    return sorted(overrides, key=override_key)


def group_jobs(jobs: list[Job]) -> list[Group]:
    """One group per configuration (`configuration`): jobs with the same overrides apart
    from `seed` and their order, branches of trunks that differ only by seed together.
    Grouped by the whole configuration, labelled by its short form as first met unless
    another group's is the same (trunks that differ only in an override their branches set
    themselves)."""
    common = set(common_overrides(jobs))
    groups: dict[str, Group] = {}
    short: dict[str, str] = {}
    for job in jobs:
        told = configuration(job, common, short=False)
        whole = " ".join(in_key_order(told)) or "(defaults)"
        short.setdefault(whole, " ".join(configuration(job, common)) or "(defaults)")
        groups.setdefault(whole, Group(" ".join(told) or "(defaults)")).jobs.append(job)
    shared = Counter(short.values())
    for whole, group in groups.items():
        if shared[short[whole]] == 1:
            group.label = short[whole]  # else the whole configuration, as first met
        one_per_seed(group)
    return list(groups.values())


def one_per_seed(group: Group) -> None:
    """Keep one job per seed in `group.jobs` (its first completed one, else its first); the
    others go to `group.repeats`."""
    whole = {id(j) for j in group.jobs if j.status == "completed" and j.readable}
    first: dict[int, Job] = {}
    for job in sorted(group.jobs, key=lambda j: id(j) not in whole):  # stable
        if job.seed is not None:
            first.setdefault(job.seed, job)
    group.repeats = [j for j in group.jobs if j.seed is not None and first[j.seed] is not j]
    group.jobs = [j for j in group.jobs if j.seed is None or first[j.seed] is j]


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def grid(sweep_dir: Path) -> list[list[str]] | None:
    """Every job's overrides of the last sweep into the dir, as Hydra's basic sweeper
    expanded them from its `multirun.yaml` (hydra.sweeper.params, then the command line's);
    None when another sweeper ran it (a race, Optuna: their jobs are theirs to choose) or
    the file cannot be read or expanded (a glob sweep needs the config loader)."""
    saved = _read_yaml(sweep_dir / "multirun.yaml")
    try:
        hydra = saved["hydra"]
        if hydra["sweeper"]["_target_"] != BASIC_SWEEPER:
            return None
        params = [f"{k}={v}" for k, v in (hydra["sweeper"].get("params") or {}).items()]
        told = params + [str(o) for o in hydra["overrides"]["task"]]
        parsed = OverridesParser.create().parse_overrides(told)
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except (TypeError, KeyError, AttributeError, HydraException):
        return None


def unstarted(sweep_dir: Path, jobs: list[Job]) -> list[str]:
    """The jobs of the last sweep into the dir (`grid`) that have no run dir, each named by
    the overrides that vary in the grid: a sweep stopped part-way (Ctrl-C, a kill, a time
    limit) or still running. A configuration none of whose jobs started was simply absent
    from the report, whose headline then named a winner among the others."""
    wanted = grid(sweep_dir)
    if not wanted:
        return []
    have = {tuple(in_key_order(j.overrides)) for j in jobs}
    keys = Counter(override_key(o) for o in {o for job in wanted for o in job})
    varying = {k for k, n in keys.items() if n > 1}
    return [
        " ".join(o for o in job if override_key(o) in varying) or " ".join(job)
        for job in wanted
        if tuple(in_key_order(job)) not in have
    ]
