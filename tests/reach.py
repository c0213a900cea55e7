"""A pytest plugin: `pytest -p tests.reach ...` fails the session unless every module of
runner/, schedulers/ and hydra_plugins/ that defines a function had one of them run (a
function or method body entered, not only the module imported) in the processes of the tests
that ran. `make test-fast` loads it, so the fast tier (`-m "not slow"`) cannot stop
reaching a module unnoticed. The `python -m runner` processes the tests start do not count:
a module only they run must also be run in a test's own process.

Why not sys.settrace: with a trace function set, Python 3.11 runs every frame on its slow
path, which doubled the fast tier (2 min 4 s against 1 min 5 s on 2 cores). Instead the
packages' modules are compiled, when imported, with one added first statement in each
function body, `__reach__("<file>")` (a set's `add`): a C call per function call. The
marked code is never written to __pycache__, so other runs import the plain modules."""

from __future__ import annotations

import ast
import builtins
import importlib.machinery
import sys
from pathlib import Path
from types import CodeType, ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runner", "schedulers", "hydra_plugins")
MARK = "__reach__"
_ran: set[str] = set()  # files with a function that ran


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


class _Marker(ast.NodeTransformer):
    """Puts `__reach__(file)` first in every function body (after its docstring, which must
    stay first to remain the docstring)."""

    def __init__(self, file: str) -> None:
        self.file = file

    def _mark(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        self.generic_visit(node)
        body = node.body
        at = 1 if body and _is_docstring(body[0]) else 0
        call = ast.Expr(
            ast.Call(ast.Name(MARK, ast.Load()), [ast.Constant(self.file)], []),
        )
        ast.copy_location(call, body[min(at, len(body) - 1)])
        ast.fix_missing_locations(call)
        body.insert(at, call)
        return node

    visit_FunctionDef = _mark
    visit_AsyncFunctionDef = _mark


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def marked_code(source: bytes | str, file: str) -> CodeType:
    tree = _Marker(file).visit(ast.parse(source, file))
    return compile(tree, file, "exec", dont_inherit=True)


class _Loader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str) -> CodeType:
        """The packages' modules always from the source, never from or into __pycache__:
        the cached bytecode is the plain module's, and the marked code must not become it."""
        path = self.get_filename(fullname)
        if not _ours(path):
            return super().get_code(fullname)
        return marked_code(self.get_data(path), path)


def _path_hook(entry: str) -> importlib.machinery.FileFinder:
    """The finder of a folder on sys.path or of a package's __path__: this checkout's root and
    the packages' folders load their .py files marked. A path hook rather than a meta-path
    finder because Hydra loads hydra_plugins' modules through pkgutil's finders directly."""
    here = Path(entry or ".").resolve()
    if here != ROOT and not _ours(str(here)):
        raise ImportError  # the next hook's
    machinery = importlib.machinery
    return machinery.FileFinder(
        entry,
        (machinery.ExtensionFileLoader, machinery.EXTENSION_SUFFIXES),
        (_Loader, machinery.SOURCE_SUFFIXES),
        (machinery.SourcelessFileLoader, machinery.BYTECODE_SUFFIXES),
    )


def _ours(file: str) -> bool:
    """A file or folder of the packages of this checkout."""
    return any(Path(file).is_relative_to(ROOT / package) for package in PACKAGES)


def install() -> bool:
    """At the plugin's import, which `-p` does before conftest.py imports the packages; a
    test that imports this file for its functions finds them imported and installs nothing."""
    if any(_imported_plain(module) for module in list(sys.modules.values())):
        return False
    builtins.__reach__ = _ran.add  # type: ignore[attr-defined]
    sys.path_hooks.insert(0, _path_hook)
    for entry in list(sys.path_importer_cache):  # finders made before, e.g. for tests/
        if Path(entry or ".").resolve() == ROOT or _ours(str(Path(entry or ".").resolve())):
            del sys.path_importer_cache[entry]
    return True


def pytest_configure(config: pytest.Config) -> None:
    if not _INSTALLED:  # the packages' functions would run unmarked and look unreached
        raise pytest.UsageError("tests.reach must load before the packages: pytest -p tests.reach")


def _imported_plain(module: ModuleType) -> bool:
    file = getattr(module, "__file__", None)
    return bool(file) and _ours(file) and not isinstance(module.__loader__, _Loader)


def a_subset(config: pytest.Config) -> bool:
    """Files, node ids, -k or --lf name some of the tests: they need not reach everything."""
    opt = config.option
    given = config.args_source == pytest.Config.ArgsSource.ARGS
    return bool(given or opt.keyword or getattr(opt, "lf", False) or opt.deselect)


def pytest_sessionfinish(session: pytest.Session) -> None:
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


_INSTALLED = install()
