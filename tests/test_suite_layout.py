"""The test suite's own layout (issue #36): no test file imports another (what they share is
in tests/helpers.py, the user's classes in tests/user_models.py and tests/user_datasets.py),
and conftest.py holds only fixtures and hooks. A test file that borrows from another ties
the two together: moving or marking one breaks or slows the other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.reach import PACKAGES, modules_with_functions, not_reached

TESTS = Path(__file__).resolve().parent
TEST_MODULE = re.compile(r"^tests\.(test_\w+|conftest)\b")
NAMED_IN_TEXT = re.compile(r"\btests\.(?:test_\w+|conftest)\b")


def suite_modules_in(source: str) -> list[str]:
    """The test modules (tests.test_*, tests.conftest) that `source` imports, at any depth,
    or names in a string (a `_target_` path, code for `python -c`); `{__name__}` in an
    f-string counts too: in a test file it is that test file's dotted path."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if TEST_MODULE.match(a.name)]
        elif isinstance(node, ast.ImportFrom):
            package = "tests" if node.level else (node.module or "")
            module = f"tests.{node.module}" if node.level and node.module else node.module
            if module and TEST_MODULE.match(module):
                found.append(module)
            elif package == "tests" or module == "tests":  # from tests import test_x
                found += [
                    f"tests.{a.name}" for a in node.names if TEST_MODULE.match(f"tests.{a.name}")
                ]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += NAMED_IN_TEXT.findall(node.value)
        elif isinstance(node, ast.FormattedValue) and getattr(node.value, "id", "") == "__name__":
            found.append("{__name__}")
    return found


# this file's own examples below name test modules on purpose
SUITE = sorted(p for p in TESTS.glob("*.py") if p.name != Path(__file__).name)


@pytest.mark.parametrize("path", SUITE, ids=lambda p: p.name)
def test_no_file_of_the_suite_imports_a_test_file(path: Path):
    assert suite_modules_in(path.read_text()) == [], f"{path.name}: move it to tests/helpers.py"


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("from tests.test_robustness import start", ["tests.test_robustness"]),
        ("import tests.test_fused as f", ["tests.test_fused"]),
        ("from tests import test_fused, helpers", ["tests.test_fused"]),
        ("from .test_fused import train_members", ["tests.test_fused"]),
        ("from . import conftest", ["tests.conftest"]),
        ("def t():\n    from tests.conftest import make_cfg", ["tests.conftest"]),
        ('M = "model._target_=tests.test_model_on_data.LazyNet"', ["tests.test_model_on_data"]),
        ('C = f"{__name__}.Counted"', ["{__name__}"]),
        ("from tests.helpers import make_cfg\nfrom tests import user_models", []),
        ('M = "tests.user_models.TinyNet"', []),
    ],
)
def test_an_import_of_a_test_file_is_found(source: str, named: list[str]):
    assert suite_modules_in(source) == named


def test_conftest_holds_only_fixtures_and_hooks():
    """A helper there is importable only as `tests.conftest`, a test module pytest loads on
    its own: helpers go to tests/helpers.py."""
    tree = ast.parse((TESTS / "conftest.py").read_text())
    others = [
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        or isinstance(node, ast.FunctionDef)
        and not node.name.startswith("pytest_")
        and not any("fixture" in ast.unparse(d) for d in node.decorator_list)
    ]
    assert others == []


def test_the_reach_check_names_each_module_whose_functions_never_ran():
    """tests/reach.py (`make test-fast` loads it): the modules of all three packages, and
    of those only the ones none of whose functions ran."""
    every = modules_with_functions()
    assert {name.split(".")[0] for name in every.values()} == set(PACKAGES)
    assert not_reached(set()) == sorted(every.values())
    one = next(iter(every))
    assert not_reached(set(every) - {one}) == [every[one]]
    assert not_reached(set(every)) == []
