"""Code hygiene the review of #36 asked for, held by reading the source (no run): the fused
launcher uses the single run's start-up and run-dir pieces instead of copies of them, every
import inside a function says why it is there, `# fmt: skip` only keeps tables, and no
docstring, comment or doc names a module path that is gone."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runner", "schedulers", "hydra_plugins")
FUSED = ("runner/sweep/fused.py", "hydra_plugins/schedlab_fused/fused_launcher.py")


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _called_names(tree: ast.AST) -> set[str]:
    """Every function a module calls, by its last name (`files.hold_run_dir` -> hold_run_dir)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                names.add(func.attr)
            elif isinstance(func, ast.Name):
                names.add(func.id)
    return names


def test_the_fused_path_leaves_run_dirs_to_the_single_runs_code():
    """Locking a run dir, writing status.json or config.yaml, and starting a run's
    checkpointer and Track are done by runner/run/ (rundir.hold, train.write_status,
    config_yaml, start_track) for single runs and fused members alike: a fused module
    calling the lower-level pieces itself is a twin of the single run's start-up again."""
    twins = {
        "hold_run_dir": "rundir.hold",
        "write_json_atomic": "train.write_status",
        "write_text_atomic": "train.config_yaml",
        "to_yaml": "train.config_yaml",
        "checkpointer": "train.start_track",
        "track_for": "train.start_track",
    }
    found = []
    for path in FUSED:
        called = _called_names(ast.parse((ROOT / path).read_text()))
        found += [f"{path} calls {name} (use {twins[name]})" for name in sorted(called & twins.keys())]
    assert not found, "\n".join(found)
