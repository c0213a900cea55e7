"""The docs a newcomer reads: a short README whose tour works, a site that builds with no
broken link, and a Reference page that lists every key the code declares."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import release_kept_locks

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "custom_project"


def test_the_readme_stays_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 260, f"README.md has {len(lines)} lines: move detail into docs/"


@pytest.mark.slow  # mkdocs build --strict, ~3 s
def test_the_site_builds_strict_with_the_readme_as_home_and_the_generated_reference(tmp_path):
    """`mkdocs build --strict`: a link to a page or anchor that does not exist, or a page in
    the nav that is missing, fails the build (mkdocs.yml's `validation` makes each a
    warning, --strict makes a warning fatal)."""
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "A five-minute tour" in home
    assert 'href="usage/"' in home  # README's docs/usage.md, relative to the site
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    assert "trainer.checkpoint_interval_s" in reference
    assert "scheduler.pct_start" in reference


def declared_keys() -> list[str]:
    """Every key the code declares: runner/config/schema.py's options (through the models',
    optimizers' and SCHEMAS tables), the top-level keys and each schedule's registry keys."""
    from runner.config import schema
    from runner.train import models, optimizers
    from schedulers import registry

    tables = [("", schema.Run)]
    tables += [("model", spec.schema) for spec in models.MODELS.values()]
    tables += [("optimizer", spec.schema) for spec in optimizers.OPTIMIZERS.values()]
    for group, options in schema.SCHEMAS.items():
        prefix = (lambda name, g=group: f"logger.{name}") if group == "logger" else None
        tables += [(prefix(name) if prefix else group, cls) for name, cls in options.items()]
    keys = [f"{p}.{f.name}" if p else f.name for p, cls in tables for f in dataclasses.fields(cls)]
    keys += [f"scheduler.{k}" for k in registry.COMMON if k != "name"]
    for spec in registry.SCHEDULES.values():
        keys += [f"scheduler.{k}" for k in spec.params]
    return keys


def test_the_reference_page_lists_every_declared_key_with_its_default_and_rule():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_reference
    finally:
        sys.path.remove(str(ROOT / "docs"))
    page = gen_reference.render()
    missing = [k for k in declared_keys() if f"`{k}`" not in page]
    assert not missing, f"keys the Reference page does not list: {missing}"
    # a row: key, default as YAML writes it, the check's own rule, the YAML file's comment
    assert "| `trainer.amp` | `false` | must be true or false | mixed precision" in page, page[
        :2000
    ]
    assert "| `optimizer.lr` | `0.05` |" in page  # sgd's
    assert "| `scheduler.step_size` | `10` | must be an integer >= 1 | epochs between" in page


def tour_commands() -> list[list[str]]:
    """The README tour's `$PY -m runner ...` commands (continuation lines joined), except
    those naming a run dir the reader fills in (`<date>/<time>`)."""
    text = README.read_text(encoding="utf-8")
    tour = text.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", tour, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:3] == ["$PY", "-m", "runner"] and "<" not in line:
                commands.append(words[3:])
    return commands


def test_the_readme_tour_commands_pass_every_start_up_check(tmp_path, monkeypatch):
    """Each command of the tour, run from a copy of examples/custom_project as the README
    says, gets past everything checked before training starts (its overrides composed, the
    project's classes imported and bound, the sweeper's keys): none is a config error.
    Training them all is tests/test_custom_project.py's part (the same commands, smaller)."""
    commands = tour_commands()
    assert len(commands) >= 5, commands  # model, data, sweep, race, resume's first run
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    shutil.rmtree(project / "data", ignore_errors=True)  # PNGs written in the example itself
    monkeypatch.syspath_prepend(str(project))
    for name in [m for m in sys.modules if m == "mynets" or m.startswith("mynets.")]:
        monkeypatch.delitem(sys.modules, name)
    import runner.__main__ as entry

    class Started(BaseException):
        """cli() handed the command to Hydra: every check before it passed."""

    def started() -> None:
        raise Started

    monkeypatch.chdir(project)
    monkeypatch.setenv("HYDRA_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR", ""))
    monkeypatch.setattr(entry, "main", started)
    monkeypatch.setattr(entry, "_CLI_STOP", None)
    for args in commands:
        monkeypatch.setattr(sys, "argv", ["runner", *args])
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                entry.cli()
        except Started:
            continue
        except SystemExit as exit_:
            pytest.fail(f"tour command {shlex.join(args)} exited {exit_.code}: {err.getvalue()}")
        finally:
            release_kept_locks()
        pytest.fail(f"tour command {shlex.join(args)} never started: {err.getvalue()}")
