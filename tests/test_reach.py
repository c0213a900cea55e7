"""The fast tier's reach check (tests/reach.py): a module counts as reached only when one of
its function bodies ran, and marking the functions changes nothing else about them."""

from __future__ import annotations

import traceback

from tests.reach import marked_code, modules_with_functions, not_reached

SOURCE = '''from __future__ import annotations


def double(x: int) -> int:
    """Twice x."""
    return 2 * x


def fails() -> None:
    raise ValueError("on line 10")
'''


def _load(seen: set[str]) -> dict:
    space: dict = {"__reach__": seen.add}
    exec(marked_code(SOURCE, "/somewhere/mod.py"), space)
    return space


def test_a_module_is_reached_when_a_function_runs_not_when_imported():
    seen: set[str] = set()
    space = _load(seen)
    assert seen == set()
    assert space["double"](3) == 6
    assert seen == {"/somewhere/mod.py"}


def test_marking_keeps_docstrings_annotations_and_line_numbers():
    space = _load(set())
    assert space["double"].__doc__ == "Twice x."
    assert space["double"].__annotations__ == {"x": "int", "return": "int"}  # the __future__
    try:
        space["fails"]()
    except ValueError as error:
        assert traceback.extract_tb(error.__traceback__)[-1].lineno == 10


def test_the_modules_no_function_ran_in_are_named():
    every = modules_with_functions()
    assert "runner.train.engine" in every.values() and "schedulers.registry" in every.values()
    engine = next(path for path, name in every.items() if name == "runner.train.engine")
    assert not_reached(set(every) - {engine}) == ["runner.train.engine"]
    assert not_reached(set(every)) == []
