"""Racing: spend seeds where the answer is still open (`hydra/sweeper=race`).

A race judges only finished runs (unlike ASHA or median pruning, which judge a run by its
loss part-way through and so penalise schedules that decay late). Round 1 trains every
configuration with seeds 0 .. min_seeds-1; each later round adds the next seed to every
configuration still in the race. After each round the configuration with the best mean
metric is the current best, every other survivor is compared with it on their shared
seeds (paired t, two-sided, Holm's correction across the round's comparisons: see
runner/sweep/compare.py), and those significantly worse are dropped. The race ends when
one configuration is left, when the survivors have max_seeds seeds, or when the next round
would exceed max_runs (Maron & Moore's Hoeffding races; Birattari et al.'s F-Race).

Decisions are made from the run dirs alone (metrics.jsonl, status.json, read as the sweep
report reads them), never from the launcher's return values, so every launcher works and a
race run again into the same sweep dir reads its finished jobs back instead of training
them again, and takes the same decisions. Each job's dir is named by its configuration and
seed (`c<config>_seed<seed>`), not by the order it was launched in. After every round the
state and the decisions go to `<sweep dir>/race.json` (atomically), which the report reads.

This module is the race's logic; hydra_plugins/schedlab_race/race_sweeper.py plugs it into
Hydra. It imports no torch: the jobs train in whatever process the launcher gives them.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runner.io.files import write_json_atomic
from runner.sweep.compare import METRICS, Comparison, corrected, raw_comparison
from runner.sweep.jobs import load_job
from runner.sweep.launch import check_race, check_round_one
from runner.sweep.sweepdir import refused
from schedulers import ConfigError

log = logging.getLogger("schedlab")

RACE_FILE = "race.json"
# statuses a job never leaves: read back on a re-run, never launched again. `failed` is
# one of them (a config error fails again; delete the job's dir to retry it); an
# `interrupted` or missing job is launched again and resumes from its last.pt. A job refused
# because another process writes its dir is pending: no value, not a loss; its round decides
# nothing and the race stops there (race.json `pending`), to go on when run again. A round
# whose every job failed its config check ends the race: every later round would too.
FINAL = ("completed", "diverged", "failed")
LOSS_ACC = 0.0  # what a failed/diverged job scores on an accuracy metric: the worst there is


@dataclass(frozen=True)
class RaceSettings:
    min_seeds: int = 3
    max_seeds: int = 10
    alpha: float = 0.05
    metric: str = "best_val_acc"
    max_runs: int | None = None

    def __post_init__(self) -> None:
        check_race(self.min_seeds, self.max_seeds, self.alpha, self.metric, self.max_runs)


def job_subdir(config: int, seed: int) -> str:
    """A job's run dir under the sweep dir: by what it is, so a re-run finds it again."""
    return f"c{config}_seed{seed}"


def labels(configs: list[list[str]]) -> list[str]:
    """Each configuration by the overrides that set it apart, as the sweep report labels
    its rows (the overrides every job shares are left out)."""
    shared = set(configs[0]).intersection(*configs[1:]) if configs else set()
    return [" ".join(o for o in c if o not in shared) or "(defaults)" for c in configs]


def loss_value(metric: str, completed: Sequence[Any]) -> float:
    """What a failed, diverged or never-finished job scores: a loss for its configuration.
    Accuracy metrics: 0.0, the worst accuracy there is. Loss metrics: the highest val/loss
    any completed job of the race recorded at any epoch (finite, so the paired t test still
    works; at least as bad as every completed job's best or final loss); 0.0 when no job
    completed (every configuration then scores the same)."""
    key, _, higher_is_better = METRICS[metric]
    if higher_is_better:
        return LOSS_ACC
    seen = [v for j in completed for v in j.series(key) if math.isfinite(v)]  # val(_avg)/loss
    return max(seen, default=0.0)


def _json_safe(value: Any) -> Any:
    """NaN/inf as null (race.json is read by other tools too; JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class Race:
    """One race over `configs` in `sweep_dir`. `launch(batch, initial_job_idx)` trains a
    batch of jobs (lists of overrides) to completion with the configured launcher."""

    def __init__(
        self,
        settings: RaceSettings,
        configs: list[list[str]],
        sweep_dir: Path,
        launch: Callable[[list[list[str]], int], Any],
    ) -> None:
        if not configs:
            raise ConfigError("hydra/sweeper", "race", "the sweep has no configuration")
        check_round_one(len(configs), settings.min_seeds, settings.max_runs)
        self.settings, self.configs, self.sweep_dir = settings, configs, Path(sweep_dir)
        self.launch = launch
        self.labels = labels(configs)
        self.rounds: list[dict[str, Any]] = []
        self.dropped: dict[int, dict[str, Any]] = {}  # config -> round and evidence
        self.values: dict[int, dict[int, float]] = {c: {} for c in range(len(configs))}
        self.jobs: dict[int, dict[int, dict[str, Any]]] = {c: {} for c in range(len(configs))}
        self.finished: dict[tuple[int, int], Any] = {}  # (config, seed) -> report.Job

    def overrides(self, config: int, seed: int) -> list[str]:
        return [
            *self.configs[config],
            f"seed={seed}",
            f"hydra.sweep.subdir={job_subdir(config, seed)}",
        ]

    def run(self) -> list[Any]:
        """Round after round until one is left, max_seeds or max_runs; returns each
        round's launcher results (Hydra's sweeper protocol)."""
        s = self.settings
        alive = list(range(len(self.configs)))
        seeds, runs_used, job_idx, results = s.min_seeds, 0, 0, []
        while True:
            n_round = len(self.rounds) + 1
            needed = [(c, seed) for c in alive for seed in range(seeds) if seed not in self.jobs[c]]
            on_disk = self._read(needed)
            todo = [job for job in needed if job not in on_disk]
            log.info(
                f"Race round {n_round}: {len(alive)} configurations x {seeds} seeds; "
                f"{len(todo)} jobs to run, {len(on_disk)} read back from the sweep dir"
            )
            if todo:  # the whole round as one batch: fused, joblib or Slurm as configured
                batch = [self.overrides(c, seed) for c, seed in todo]
                results.append(self.launch(batch, job_idx))
            job_idx += len(needed)
            runs_used += len(needed)
            self.finished.update(on_disk)
            self.finished.update(self._read(todo))
            pending = self._pending(todo)
            self._score(needed, pending)
            if pending:  # no decision on part of a round: run again once they end
                best, comparisons = self._leader(alive), []
            else:
                best, comparisons = self._decide(alive, n_round)
            racing, alive = alive, [c for c in alive if c not in self.dropped]
            reason = None
            if pending:
                pass  # the race stops unfinished (below): no reason to end it
            elif self._config_errors(needed):
                reason = "every configuration failed its config check"
            elif len(alive) == 1:
                reason = "sole survivor"
            elif seeds >= s.max_seeds:
                reason = "max_seeds reached"
            elif s.max_runs is not None and runs_used + len(alive) > s.max_runs:
                reason = "max_runs reached"
            self.rounds.append(
                {
                    "round": n_round,
                    "seeds": list(range(seeds)),
                    "racing": racing,
                    "jobs": len(needed),
                    "launched": len(todo),
                    "read_back": len(on_disk),
                    "best": best,
                    "comparisons": comparisons,
                    "dropped": [c for c in racing if c not in alive],
                    "pending": [job_subdir(c, seed) for c, seed in pending],
                }
            )
            self._write(alive, runs_used, reason)
            if pending:
                names = ", ".join(job_subdir(c, seed) for c, seed in pending)
                log.warning(
                    f"Race stopped after round {n_round}: {len(pending)} job(s) "
                    f"pending ({names}), another process was writing into their "
                    "dirs; run the same command again once it ends"
                )
                return results
            if reason is not None:
                names = ", ".join(f"`{self.labels[c]}`" for c in alive)
                log.info(f"Race over after round {n_round} ({reason}); in the race: {names}")
                return results
            seeds += 1

    def _read(self, jobs: list[tuple[int, int]]) -> dict[tuple[int, int], Any]:
        """The jobs among these whose run dirs hold a final status, read as the sweep report
        reads them. A dir whose overrides are not this job's belongs to another race."""
        out = {}
        for c, seed in jobs:
            path = self.sweep_dir / job_subdir(c, seed)
            job = load_job(path)
            if job is None or job.status not in FINAL:
                continue
            expected = self.overrides(c, seed)[:-1]  # Hydra keeps hydra.* out of the task's
            if job.overrides != expected:
                raise ConfigError(
                    "hydra.sweep.dir",
                    str(self.sweep_dir),
                    f"holds another race: {path} ran {job.overrides}, this race's job is "
                    f"{expected}; race into a new sweep dir",
                )
            out[(c, seed)] = job
        return out

    def _pending(self, launched: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The launched jobs that were refused because another process writes their dir
        (the sweep dir's refused.jsonl names them, or that process still holds it): they
        have no result yet, which is not a loss."""
        named = {r["dir"] for r in refused(self.sweep_dir)}
        out = []
        for c, seed in launched:
            if (c, seed) in self.finished:
                continue
            job = load_job(self.sweep_dir / job_subdir(c, seed))
            if job_subdir(c, seed) in named or (job is not None and job.status == "running"):
                out.append((c, seed))
        return out

    def _config_errors(self, needed: list[tuple[int, int]]) -> bool:
        """Every job of the round failed its config check: every later round would too."""
        jobs = [self.finished.get(j) for j in needed]
        return bool(jobs) and all(j is not None and j.config_error for j in jobs)

    def _leader(self, alive: list[int]) -> int | None:
        """The best mean among the configurations with a value so far (no comparison)."""
        _, _, higher = METRICS[self.settings.metric]
        means = {c: statistics.fmean(self.values[c].values()) for c in alive if self.values[c]}
        if not means:
            return None
        return max(means, key=lambda c: (means[c] if higher else -means[c], -c))

    def _score(self, needed: list[tuple[int, int]], pending: list[tuple[int, int]]) -> None:
        """Each job's metric; a job that failed, diverged or did not finish scores
        `loss_value`, recomputed over every job so far. A pending job (its dir another
        process's) has no value: it is not a loss, and its round decides nothing."""
        key, reduce, _ = METRICS[self.settings.metric]
        scores: dict[tuple[int, int], float] = {}
        for job_id, job in self.finished.items():
            series = job.series(key) if job.status == "completed" and job.readable else []
            value = reduce(series) if series else math.nan
            if math.isfinite(value):
                scores[job_id] = value
        completed = [self.finished[j] for j in scores]
        worst = loss_value(self.settings.metric, completed)
        known = [(c, seed) for c, seeds in self.jobs.items() for seed in seeds]
        for c, seed in [*known, *needed]:
            job = self.finished.get((c, seed))
            if (c, seed) in pending:
                self.values[c].pop(seed, None)
                self.jobs[c][seed] = {"dir": job_subdir(c, seed), "status": "pending",
                                      "value": None, "counted_as_loss": False}  # fmt: skip
                continue
            self.values[c][seed] = scores.get((c, seed), worst)
            self.jobs[c][seed] = {
                "dir": job_subdir(c, seed),
                "status": "missing" if job is None else job.status,
                "value": self.values[c][seed],
                "counted_as_loss": (c, seed) not in scores,
            }

    def _decide(self, alive: list[int], n_round: int) -> tuple[int, list[dict[str, Any]]]:
        """The current best (best mean; the first configuration on a tie) and every other
        survivor compared with it; the significantly worse ones are dropped."""
        _, _, higher = METRICS[self.settings.metric]
        means = {c: statistics.fmean(self.values[c].values()) for c in alive}
        best = max(alive, key=lambda c: (means[c] if higher else -means[c], -c))
        others = [c for c in alive if c != best]
        raw = [
            raw_comparison(
                self.labels[c], self.values[c], self.labels[best], self.values[best], higher
            )
            for c in others
        ]
        family = corrected([r for r in raw if r is not None], higher, self.settings.alpha)
        out = []
        for c, comp in zip(others, family, strict=True):
            worse = comp.verdict == f"{comp.b} better"
            entry = {"config": c, "vs": best, **_evidence(comp), "dropped": worse}
            out.append(entry)
            if worse:
                self.dropped[c] = {"round": n_round, "vs": best, **_evidence(comp)}
        return best, out

    def state(self, alive: list[int], runs_used: int, reason: str | None) -> dict[str, Any]:
        s = self.settings
        configs = []
        for c, overrides in enumerate(self.configs):
            entry: dict[str, Any] = {"index": c, "label": self.labels[c], "overrides": overrides}
            if c in self.dropped:
                entry["fate"] = "dropped"
                entry.update(
                    {f"dropped_{k}" if k == "round" else k: v for k, v in self.dropped[c].items()}
                )
            else:
                entry["fate"] = "survivor" if reason is not None else "racing"
            entry["seeds"] = len(self.values[c])
            entry["mean"] = statistics.fmean(self.values[c].values()) if self.values[c] else None
            entry["jobs"] = {str(seed): j for seed, j in sorted(self.jobs[c].items())}
            configs.append(entry)
        return _json_safe(
            {
                "settings": asdict(s),
                "metric_higher_is_better": METRICS[s.metric][2],
                "configurations": configs,
                "rounds": self.rounds,
                "survivors": alive,
                "runs_used": runs_used,
                "full_grid": len(self.configs) * s.max_seeds,
                "done": reason is not None,
                "reason": reason,
                "pending": self.rounds[-1].get("pending", []) if self.rounds else [],
            }
        )

    def _write(self, alive: list[int], runs_used: int, reason: str | None) -> None:
        write_json_atomic(self.sweep_dir / RACE_FILE, self.state(alive, runs_used, reason))


def _evidence(c: Comparison) -> dict[str, Any]:
    """A comparison with the current best as race.json keeps it (difference = config - best)."""
    return {
        "n": c.n,
        "mean_diff": c.mean_diff,
        "p_value": c.p_value,
        "p_holm": c.p_holm,
        "ci_holm_low": c.ci_holm_low,
        "ci_holm_high": c.ci_holm_high,
    }
