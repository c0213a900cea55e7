"""The package's layers hold: import-linter's contracts (pyproject.toml) pass on the code, and
fail on a copy of it with an import that breaks a layer or closes a cycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import imported_by

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint_imports(where: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(where)}  # the packages under `where`, not ROOT's
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=where, env=env, capture_output=True, text=True, timeout=120
    )


def copy_of_the_code(tmp_path: Path) -> Path:
    for name in ("runner", "schedulers", "hydra_plugins"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_code_keeps_every_layer_contract():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        # a building block reaching up into the sweep side
        ("runner/io/files.py", "from runner.sweep import fused", "layers"),
        # a concern reaching up into another: checkpoints (io) importing the epoch engine
        ("runner/io/checkpoint.py", "import runner.train.engine", "concerns"),
        # config's declarations importing the data they describe
        ("runner/config/schema.py", "import runner.data.sets", "concerns"),
        # schedulers/ is a library: it never imports the runner
        ("schedulers/checks.py", "import runner.data.sets", "layers"),
        # two modules of one package importing each other (sets already imports stream)
        ("runner/data/stream.py", "import runner.data.sets", "no import cycles"),
    ],
)
def test_an_import_against_the_layers_fails_the_check(tmp_path, module, planted, broken):
    code = copy_of_the_code(tmp_path)
    path = code / module
    path.write_text(path.read_text() + f"\n\ndef _planted() -> None:\n    {planted}  # noqa\n")
    proc = lint_imports(code)
    assert proc.returncode == 1, proc.stdout
    assert any(line.startswith(broken) and "BROKEN" in line for line in proc.stdout.splitlines())


def test_the_cli_and_the_plugins_start_without_torch():
    """`python -m runner --help` and Hydra's scan of the project's plugins stay light: torch
    (a second or more to import) waits until a run starts. A module-level import of torch
    anywhere below them (a scheduler module, say) fails this."""
    code = (
        "import runner.__main__, schedulers\n"
        "import hydra_plugins.schedlab_fused.fused_launcher\n"
        "import hydra_plugins.schedlab_race.race_sweeper\n"
        "import hydra_plugins.schedlab_budgets.budget_sweeper\n"
    )
    imported = imported_by(code, ("torch", "numpy", "matplotlib"))
    assert "torch" not in imported, imported
