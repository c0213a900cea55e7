"""One schema, one pass (#36): every schedule's keys declared as every other option's are
(a dataclass of `key(default, check)` fields, checked by `check_node`), equal to its YAML,
and the Hydra plugins' keys declared the same way."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import shutil
from pathlib import Path

import pytest
import yaml

from hydra_plugins.schedlab_fused.fused_launcher import FusedLauncherConf
from hydra_plugins.schedlab_race.race_sweeper import RaceSweeperConf
from runner.sweep import launch
from runner.sweep.race import RaceSettings
from runner.sweep.report import SweepReport
from schedulers import SCHEDULES, ConfigError, registry, validate_scheduler
from schedulers.declare import defaults
from tests.helpers import CONF, cli_in_process

COMMON = {
    "interval": "epoch",
    "warmup_epochs": 0,
    "warmup_steps": 0,
    "warmup_start_factor": 0.1,
}
RUN = dict(epochs=10, steps_per_epoch=4, base_lrs=[0.1])
BAD = {"not": "a value any check accepts"}  # not a number, string, bool or list


def yaml_mismatches(conf: Path) -> list[str]:
    """Where conf/scheduler/<name>.yaml (and config.yaml's scheduler node) and the
    declarations disagree: 'file: key' for a key missing, extra or with another default."""
    found = []
    files = [(conf / "config.yaml", registry.Common, lambda v: v["scheduler"])]
    files += [
        (conf / "scheduler" / f"{name}.yaml", spec.schema, lambda v: v)
        for name, spec in SCHEDULES.items()
    ]
    for path, schema, node in files:
        values = dict(node(yaml.safe_load(path.read_text())))
        own = {
            k: v for k, v in values.items() if k not in registry.COMMON or schema is registry.Common
        }
        declared = defaults(schema)
        for k in sorted({*own, *declared}):
            if own.get(k, ...) != declared.get(k, ...):
                found.append(f"{path.name}: {k}")
    return found


def test_no_hand_written_check_function_is_left_in_the_registry():
    tree = ast.parse(Path(registry.__file__).read_text())
    names = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert not [n for n in names if n.startswith(("_check_", "need_"))], names


def test_every_schedule_declaration_equals_its_yaml():
    assert yaml_mismatches(CONF) == []
    assert {p.stem for p in (CONF / "scheduler").glob("*.yaml")} == {
        *SCHEDULES,
        "sequence",
        "target",
    }


def test_a_planted_wrong_default_extra_or_missing_key_in_a_copy_is_found(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    step = conf / "scheduler" / "step.yaml"
    step.write_text(step.read_text().replace("gamma: 0.1", "gamma: 0.5"))
    with (conf / "scheduler" / "cosine.yaml").open("a") as f:
        f.write("T_min: 3\n")
    poly = conf / "scheduler" / "poly.yaml"
    poly.write_text(
        "".join(x for x in poly.read_text().splitlines(True) if not x.startswith("power"))
    )
    config = conf / "config.yaml"
    config.write_text(config.read_text().replace("warmup_epochs: 0 ", "warmup_epochs: 1 "))
    found = ["config.yaml: warmup_epochs", "step.yaml: gamma", "cosine.yaml: T_min"]
    assert yaml_mismatches(conf) == [*found, "poly.yaml: power"]


CASES = [
    (name, f.name) for name, spec in SCHEDULES.items() for f in dataclasses.fields(spec.schema)
]


@pytest.mark.parametrize(("name", "key"), CASES, ids=[f"{n}.{k}" for n, k in CASES])
def test_every_declared_key_rejects_a_bad_value_naming_it_at_top_and_in_a_phase(name, key):
    top = {**COMMON, "name": name, **defaults(SCHEDULES[name].schema), key: BAD}
    with pytest.raises(ConfigError) as err:
        validate_scheduler(top, **RUN)
    assert err.value.key == f"scheduler.{key}"
    phase = {"name": name, "length": None, key: BAD}
    with pytest.raises(ConfigError) as err:
        validate_scheduler({**COMMON, "name": "sequence", "phases": [phase]}, **RUN)
    assert err.value.key == f"scheduler.phases.0.{key}"


def test_a_missing_or_unknown_schedule_key_is_told_as_for_every_other_node():
    cfg = {**COMMON, "name": "step", "step_size": 3}
    with pytest.raises(ConfigError, match=r"scheduler.gamma=None: missing; its default is 0.1"):
        validate_scheduler(cfg, **RUN)
    with pytest.raises(ConfigError) as err:
        validate_scheduler({**cfg, "gamma": 0.5, "gama": 0.5}, **RUN)
    assert err.value.key == "scheduler.gama"
    assert err.value.rule == (
        "unknown key; scheduler 'step' has "
        "['interval', 'warmup_epochs', 'warmup_steps', 'warmup_start_factor', 'step_size', 'gamma']"
    )


def test_an_lr_lambda_that_is_no_expression_is_a_config_error_not_a_crash():
    """Found before: list(5) raised TypeError out of validation."""
    with pytest.raises(ConfigError) as err:
        validate_scheduler({**COMMON, "name": "lambda", "lr_lambda": 5}, **RUN)
    assert err.value.key == "scheduler.lr_lambda" and "string" in err.value.rule


def test_the_plugin_declarations_hold_the_plugins_own_defaults():
    def plugin(conf: type) -> dict:
        skip = ("_target_", "params")
        return {f.name: f.default for f in dataclasses.fields(conf) if f.name not in skip}

    assert plugin(FusedLauncherConf) == defaults(launch.FusedLauncherKeys)
    assert plugin(RaceSweeperConf) == defaults(launch.RaceKeys)
    report = inspect.signature(SweepReport).parameters
    assert {k: p.default for k, p in report.items()} == defaults(launch.SweepReportKeys)


def test_a_launcher_key_error_still_names_its_key(tmp_path):
    args = ["-m", "hydra/launcher=fused", "hydra.launcher.max_group=0", "seed=0,1"]
    proc = cli_in_process(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "config error: hydra.launcher.max_group=0: must be >= 1 (jobs per group)" in proc.stderr
    with pytest.raises(ConfigError, match=r"max_seeds=2: must be >= hydra.sweeper.min_seeds \(3\)"):
        RaceSettings(min_seeds=3, max_seeds=2)
    # a wrong type is named too (found before: a TypeError comparing it)
    with pytest.raises(ConfigError, match=r"hydra.sweeper.alpha='x': must be in \(0, 1\)"):
        RaceSettings(alpha="x")
