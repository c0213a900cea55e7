"""A pytest plugin: `pytest -p tests.reach ...` fails the session unless every module of
runner/, schedulers/ and hydra_plugins/ that defines a function had one of them run (a
function or method called, not only the module imported) in the processes of the tests
that ran. `make test-fast` loads it, so the fast tier (`-m "not slow"`) cannot stop
reaching a module unnoticed. The `python -m runner` processes the tests start do not count:
a module only they run must also be run in a test's own process."""

from __future__ import annotations

import ast
import sys
import threading
from pathlib import Path
from types import FrameType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runner", "schedulers", "hydra_plugins")
_ran: set[str] = set()  # files, as code objects name them, with a function that ran


def _record(frame: FrameType, event: str, arg: object) -> None:
    """sys.settrace's hook, on each call only (returning None traces no lines in it)."""
    code = frame.f_code
    if code.co_name != "<module>":
        _ran.add(code.co_filename)


def modules_with_functions() -> dict[str, str]:
    """Each module of the packages that defines a function: its file -> its dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            if any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(tree)):
                found[str(path)] = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return found


def not_reached(ran: set[str]) -> list[str]:
    return sorted(name for path, name in modules_with_functions().items() if path not in ran)


def pytest_configure(config: pytest.Config) -> None:
    sys.settrace(_record)
    threading.settrace(_record)


def a_subset(config: pytest.Config) -> bool:
    """Files, node ids, -k or --lf name some of the tests: they need not reach everything."""
    opt = config.option
    given = config.args_source == pytest.Config.ArgsSource.ARGS
    return bool(given or opt.keyword or getattr(opt, "lf", False) or opt.deselect)


def pytest_sessionfinish(session: pytest.Session) -> None:
    sys.settrace(None)
    threading.settrace(None)
    if hasattr(session.config, "workeroutput"):  # an xdist worker: its controller checks
        session.config.workeroutput["reach"] = sorted(_ran)
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if a_subset(session.config):
        if reporter is not None:
            reporter.write_sep("-", "reach: not checked, a subset of the tests ran")
        return
    missing, every = not_reached(_ran), len(modules_with_functions())
    if reporter is not None:
        reporter.write_sep(
            "-",
            f"reach: {every - len(missing)} of {every} modules had a function run"
            + (f"; not reached: {', '.join(missing)}" if missing else ""),
            red=bool(missing),
        )
    if missing and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist: a worker is done; take the files its tests ran."""
    _ran.update(getattr(node, "workeroutput", {}).get("reach", ()))
