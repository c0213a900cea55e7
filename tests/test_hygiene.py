"""Code hygiene the review of #36 asked for, held by reading the source (no run): the fused
launcher uses the single run's start-up and run-dir pieces instead of copies of them, every
import inside a function says why it is there, `# fmt: skip` only keeps tables, and no
docstring, comment or doc names a module path that is gone."""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize
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
        found += [
            f"{path} calls {name} (use {twins[name]})" for name in sorted(called & twins.keys())
        ]
    assert not found, "\n".join(found)


def _comment_lines(source: str) -> set[int]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT}


def _function_imports(tree: ast.AST) -> list[list[ast.stmt]]:
    """The imports inside functions, as blocks of consecutive import statements."""
    blocks: list[list[ast.stmt]] = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stmts = getattr(node, field, None)
                if not isinstance(stmts, list):
                    continue
                previous = None
                for stmt in stmts:
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        if previous is None:
                            blocks.append([])
                        blocks[-1].append(stmt)
                        previous = stmt
                    else:
                        previous = None
    unique = {(b[0].lineno, b[-1].end_lineno): b for b in blocks}  # nested walks repeat them
    return list(unique.values())


def function_level_imports() -> tuple[int, list[str]]:
    """How many imports sit inside functions, and the blocks of them that say nowhere why:
    no comment on their lines or on the line above."""
    count, bare = 0, []
    for path in _sources(*PACKAGES):
        source = path.read_text()
        comments = _comment_lines(source)
        for block in _function_imports(ast.parse(source)):
            count += len(block)
            first, last = block[0].lineno, block[-1].end_lineno or block[-1].lineno
            if not comments & set(range(first - 1, last + 1)):
                bare.append(f"{path.relative_to(ROOT)}:{first}: {ast.unparse(block[0])}")
    return count, bare


def test_every_import_inside_a_function_says_why():
    """An import belongs at the top of its module unless it keeps `python -m runner --help`
    and Hydra's plugin scan light (torch, matplotlib, ... load only when needed:
    tests/test_layers.py), keeps an optional heavy dependency out of runs that do not use
    it, or breaks an import cycle; then a comment on its line (or the line above) says so."""
    count, bare = function_level_imports()
    assert not bare, f"{len(bare)} of {count} function-level imports lack a why:\n" + "\n".join(
        bare
    )


TABLES = (ast.Dict, ast.List, ast.Tuple, ast.Set)


def _line_ends(tree: ast.AST) -> dict[int, tuple[list, list, list]]:
    """line -> the statements, decorators and elements of collection literals ending there."""
    ends: dict[int, tuple[list, list, list]] = {}

    def at(line: int | None) -> tuple[list, list, list]:
        return ends.setdefault(line or 0, ([], [], []))

    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            at(node.end_lineno)[0].append(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for decorator in node.decorator_list:
                at(decorator.end_lineno)[1].append(decorator)
        if isinstance(node, TABLES):
            elements = node.values if isinstance(node, ast.Dict) else node.elts
            for element in elements:
                if element is not None:
                    at(element.end_lineno)[2].append(element)
    return ends


def _keeps_a_table(ending: tuple[list, list, list], code: str) -> bool:
    """Whether a `# fmt: skip` after `code` keeps a table, given what ends on its line: the
    statement ending there assigns a collection literal laid out by hand (`NAME = {...}`),
    the decorator ending there is given one (a parametrize list of cases), or the line is
    a row of one (an element and its comma)."""
    statements, decorators, rows = ending
    if statements:  # the one the comment is on: the smallest
        last = min(statements, key=lambda n: (n.end_lineno or 0) - n.lineno)
        return isinstance(last, (ast.Assign, ast.AnnAssign)) and isinstance(last.value, TABLES)
    if decorators:
        call = decorators[0]
        args = [*call.args, *(k.value for k in call.keywords)] if isinstance(call, ast.Call) else []
        return any(isinstance(a, TABLES) for a in args)
    return bool(rows) and code.rstrip().endswith(",")


def fmt_skips(*folders: str) -> tuple[int, list[str]]:
    """How many `# fmt: skip` there are, and those that keep something other than a table."""
    count, others = 0, []
    for path in _sources(*folders):
        source = path.read_text()
        if "fmt:" not in source:
            continue
        ends = _line_ends(ast.parse(source))
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        for tok in tokens:
            if tok.type != tokenize.COMMENT or tok.string.replace(" ", "") != "#fmt:skip":
                continue
            count += 1
            code = tok.line[: tok.start[1]]
            if not _keeps_a_table(ends.get(tok.start[0], ([], [], [])), code):
                others.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: {tok.line.strip()}")
    return count, others


def test_fmt_skip_only_keeps_tables():
    """ruff formats the code; `# fmt: skip` keeps only tables laid out by hand (rows of a
    dict or list, a parametrize table), where columns read better than one item a line. A
    call, signature, raise or return kept as typed is formatted instead."""
    count, others = fmt_skips(*PACKAGES, "tests", "benchmarks")
    assert not others, f"{len(others)} of {count} `# fmt: skip` keep no table:\n" + "\n".join(
        others
    )


PATH_NAMED = re.compile(
    r"\b((?:runner|schedulers|hydra_plugins)/(?:[a-z_0-9]+/)*[a-z_0-9]+\.py)"
    r"(?:'s)?,?\s+(?:#\s+)?(?:`([A-Za-z_]\w*)(?:\(\))?`)?"
)
FOLDER_NAMED = re.compile(r"\b((?:runner|schedulers|hydra_plugins)/[a-z_0-9]+)/")


def _prose(path: Path) -> list[tuple[int, str]]:
    """What a file says rather than does: a .py file's comments and docstrings, all of a .md."""
    source = path.read_text()
    if path.suffix != ".py":
        return [(1, source)]
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    said = [(tok.start[0], tok.string) for tok in tokens if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                said.append((getattr(node, "lineno", 1), doc))
    return said


@functools.cache
def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def stale_names(root: Path, texts: list[tuple[str, int, str]]) -> list[str]:
    """Paths below root named in `texts` ((where, line, text)) that are gone: a module
    (runner/<path>.py), a folder below a package, or a name given right after its module
    (`runner/run/train.py` `fit`) that the module no longer defines."""
    stale = []
    for where, line, text in texts:
        for match in PATH_NAMED.finditer(text):
            module, name = root / match.group(1), match.group(2)
            at = f"{where}:{line + text[: match.start()].count(chr(10))}"
            if not module.is_file():
                stale.append(f"{at}: {match.group(1)} does not exist")
            elif name is not None and name not in _defined(module):
                stale.append(f"{at}: {match.group(1)} defines no {name}")
        for match in FOLDER_NAMED.finditer(text):
            if not (root / match.group(1)).is_dir():
                at = f"{where}:{line + text[: match.start()].count(chr(10))}"
                stale.append(f"{at}: {match.group(1)}/ does not exist")
    return stale


def _tree_texts() -> list[tuple[str, int, str]]:
    files = [*_sources(*PACKAGES, "tests", "benchmarks"), ROOT / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    return [(str(p.relative_to(ROOT)), line, text) for p in files for line, text in _prose(p)]


def test_no_docstring_comment_or_doc_names_a_module_that_is_gone():
    """A file moved or a function renamed leaves the prose that pointed to it (as the
    split of runner's old core folder by concern did): every runner/, schedulers/ and
    hydra_plugins/ module or folder named in a docstring, comment, README.md or docs/*.md
    exists, and a name given right after its module is defined there."""
    stale = stale_names(ROOT, _tree_texts())
    assert not stale, "\n".join(stale)


def test_a_stale_path_or_name_is_caught():
    """The check above catches what it is for (the tree is clean, so plant some)."""
    planted = [
        ("a.py", 1, "builds as runner/core/builders.py does"),
        ("b.md", 3, "the loop (runner/run/train.py `_epochs`)\nsee runner/core/ for more"),
        ("c.py", 9, "one factory (runner/io/checkpoint.py `checkpointer`)"),
    ]
    assert stale_names(ROOT, planted) == [
        "a.py:1: runner/core/builders.py does not exist",
        "a.py:1: runner/core/ does not exist",
        "b.md:3: runner/run/train.py defines no _epochs",
        "b.md:4: runner/core/ does not exist",
    ]
