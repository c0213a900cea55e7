"""The Reference page: every config key, its default and what it accepts, made from the code.

Read from the declarations the runner checks configs against, so the page cannot drift from
them: runner/config/schema.py (one dataclass per option; a field's default and its check,
described here by the message the check gives a value it rejects, and the comments above
or beside the field), the models' and optimizers' name -> spec tables, and the scheduler
registry (schedulers/registry.py: each schedule's dataclass of keys, declared the same way,
with the comments of its conf/scheduler/<name>.yaml). docs/hooks.py adds the page to the
site at build time; `python docs/gen_reference.py` prints it. Never edit its output by hand.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIELD = re.compile(r"^\s+(\w+):[^=]*=\s*key\(")
YAML_KEY = re.compile(r"^(\w+):\s*(.*?)(?:\s+#\s*(.*))?$")


class _Probe:
    """A value no check accepts (not a number, string, bool or list), so a check's
    ConfigError states its rule."""

    def __repr__(self) -> str:
        return "?"


def rule_of(check: Callable[[str, Any], None], key: str) -> str:
    """What the check accepts, in its own words ('must be a number > 0')."""
    from schedulers import ConfigError

    try:
        check(key, _Probe())
    except ConfigError as err:
        return err.rule
    return "any value; checked where it is used (see the note)"


def comments(cls: type) -> dict[str, str]:
    """Each field's comment: the lines above it and the one beside it, for the class and its
    bases (a subclass's own comment wins)."""
    found: dict[str, str] = {}
    for klass in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        above: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("#").strip())
                continue
            match = FIELD.match(line)
            if match:
                beside = line.split("  # ", 1)[1].strip() if "  # " in line else ""
                found[match.group(1)] = " ".join([*above, beside]).strip()
            above = []
    return found


def show(value: Any) -> str:
    """A default as YAML writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def schema_table(
    prefix: str, cls: type, conf: Path | None = None, yaml: dict[str, tuple[str, str]] | None = None
) -> Iterator[str]:
    """One row per key: full name, default, what it accepts, and the schema's comment, else
    the one beside the key in its YAML file `conf` (or in `yaml`, that file's notes)."""
    yaml = yaml_notes(conf) if conf else (yaml or {})
    notes = {
        **{k: note for k, (_, note) in yaml.items()},
        **{k: v for k, v in comments(cls).items() if v},
    }
    yield "| key | default | accepts | note |"
    yield "|---|---|---|---|"
    for f in dataclasses.fields(cls):
        full = f"{prefix}.{f.name}" if prefix else f.name
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        rule = rule_of(f.metadata["check"], full)
        yield (
            f"| `{full}` | `{cell(show(default))}` | {cell(rule)} | {cell(notes.get(f.name, ''))} |"
        )
    for method, what in (
        ("check_keys", "Also checked"),
        ("check_context", "Checked against the run"),
    ):
        doc = inspect.getdoc(getattr(cls, method, None) or (lambda: None))
        if doc:
            yield ""
            yield f"{what}: {cell(doc)}"


def option_sections(
    group: str, table: dict[str, type], what: Callable[[str], str]
) -> Iterator[str]:
    for name, cls in table.items():
        yield f"### `{group}={name}`"
        yield ""
        extra = what(name)
        if extra:
            yield extra
            yield ""
        yield from schema_table(group, cls, ROOT / "conf" / group / f"{name}.yaml")
        yield ""


def yaml_notes(path: Path) -> dict[str, tuple[str, str]]:
    """key -> (value, comment) of a flat conf/<group>/<name>.yaml."""
    notes: dict[str, tuple[str, str]] = {}
    last = None
    for line in path.read_text().splitlines() if path.exists() else []:
        match = YAML_KEY.match(line)
        if match:
            last = match.group(1)
            notes[last] = (match.group(2), match.group(3) or "")
        elif last and line.startswith(" ") and line.strip().startswith("#"):
            value, note = notes[last]  # a comment continued on the next line
            notes[last] = (value, f"{note} {line.strip().lstrip('#').strip()}".strip())
        else:
            last = None
    return notes


def scheduler_sections() -> Iterator[str]:
    from schedulers import registry

    config = yaml_notes_nested(ROOT / "conf" / "config.yaml", "scheduler")
    yield "Keys every schedule has (defaults from `conf/config.yaml`; an option's file may set"
    yield "its own):"
    yield ""
    yield from schema_table("scheduler", registry.Common, yaml=config)
    yield ""
    for name, spec in registry.SCHEDULES.items():
        notes = yaml_notes(ROOT / "conf" / "scheduler" / f"{name}.yaml")
        yield f"### `scheduler={name}`"
        yield ""
        own_start = "; shapes its own start (no `warmup_epochs`, `warmup_steps`)"
        warmup = "" if spec.warmup else own_start
        yield f"{spec.torch_name}{warmup}."
        common = [k for k in registry.COMMON if k != "name"]
        own = [f"`scheduler.{k}: {notes[k][0]}`" for k in common if k in notes]
        if own:
            yield f"Its file sets {', '.join(own)}."
        yield ""
        if dataclasses.fields(spec.schema):
            yield from schema_table(
                "scheduler", spec.schema, ROOT / "conf" / "scheduler" / f"{name}.yaml"
            )
        else:
            yield "No keys of its own."
        yield ""
    yield f"### `scheduler={registry.SEQUENCE}` and `scheduler=target`"
    yield ""
    yield (
        f"`scheduler={registry.SEQUENCE}` takes `phases`, a list of the schedules above (or "
        f"`{registry.TARGET}` nodes), each with its `length`; `scheduler=target` takes any "
        "scheduler class by `_target_`, its other keys bound to the class's signature. See "
        "[Schedules](schedules.md#your-own-schedule)."
    )
    yield ""


def yaml_notes_nested(path: Path, node: str) -> dict[str, tuple[str, str]]:
    """key -> (value, comment) of the keys indented under `node:` in a YAML file."""
    notes: dict[str, tuple[str, str]] = {}
    inside = False
    for line in path.read_text().splitlines():
        if re.match(rf"^{node}:", line):
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            break
        match = YAML_KEY.match(line.strip()) if inside and line.startswith("  ") else None
        if match and not line.startswith("   "):
            notes[match.group(1)] = (match.group(2), match.group(3) or "")
    return notes


def render() -> str:
    """The whole page."""
    from runner.config import schema
    from runner.train import models, optimizers

    lines = [
        "# Reference: every config key",
        "",
        "Generated by `docs/gen_reference.py` from `runner/config/schema.py` (the keys, defaults",
        "and checks start-up validates every config against), the models' and optimizers'",
        "tables and the scheduler registry (`schedulers/registry.py`), each time the site is",
        "built: never edited by hand. *accepts* is the rule a rejected value is told (exit 2,",
        "the key named); *note* is the comment beside the key in the code or its YAML file.",
        "Override any key as `key=value`; `python -m runner --help` lists them too.",
        "",
        "## Top-level keys",
        "",
        *schema_table("", schema.Run, ROOT / "conf" / "config.yaml"),
        "",
        "## `model`",
        "",
        "`model=target` takes any `nn.Module` by `_target_`, its keys bound to its signature "
        "(see [Your project](project.md)).",
        "",
    ]
    lines += option_sections(
        "model",
        {name: spec.schema for name, spec in models.MODELS.items()},
        lambda name: (
            "Fuses under `hydra/launcher=fused`."
            if models.MODELS[name].fusable
            else "Trains on its own under `hydra/launcher=fused`."
        ),
    )
    lines += [
        "## `optimizer`",
        "",
        "`optimizer=target` takes any optimizer class by `_target_`, its keys bound to its "
        "signature (`param_groups` and `no_decay` are the runner's).",
        "",
    ]
    lines += option_sections(
        "optimizer",
        {name: spec.schema for name, spec in optimizers.OPTIMIZERS.items()},
        lambda name: f"`{optimizers.OPTIMIZERS[name].path}`.",
    )
    lines += ["## `scheduler`", "", *scheduler_sections()]
    for group in ("data", "logger", "trainer", "lr_find"):
        lines += [f"## `{group}`", ""]
        table = schema.SCHEMAS[group]
        if group == "logger":
            lines += [
                "A run's `logger` node holds one node per backend (`logger=[wandb,tensorboard]`);",
                "`logger=none` (or `[]`) is none.",
                "",
            ]
            for name, cls in table.items():
                lines += [f"### `logger={name}`", "", *schema_table(f"logger.{name}", cls), ""]
        elif len(table) == 1:
            name, cls = next(iter(table.items()))
            lines += [*schema_table(group, cls, ROOT / "conf" / group / f"{name}.yaml"), ""]
        else:
            lines += option_sections(group, table, lambda name: "")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    sys.path.insert(0, str(ROOT))
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
