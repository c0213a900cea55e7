"""What the docs promise, held to the code (QA of README.md and docs/*.md, session 19): a
typo'd key is told the key it meant, the docs' lists of options and of what a resume may
change stay complete, and no paragraph is left cut in half by a move between pages."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config.compose import compose_config
from runner.run.rundir import nothing_to_do
from schedulers import ConfigError
from tests.helpers import cli_in_process, make_cfg, release_kept_locks, run_python

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


# -- a typo'd key ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "meant"),
    [
        ("optimizer.lrr=0.1", "optimizer.lrr", "optimizer.lr"),
        ("trainer.gradclip=1", "trainer.gradclip", "trainer.grad_clip_norm"),
        ("data.batchsize=32", "data.batchsize", "data.batch_size"),
        ("logger.wandb.projct=x", "logger.wandb.projct", "logger.wandb.project"),
        ("epoch=3", "epoch", "epochs"),
    ],
)
def test_a_typod_key_is_a_config_error_naming_the_key_it_meant(override, key, meant):
    """Hydra's own message said "To append to your config use +optimizer.lrr=0.1", which
    only failed again at start-up (unknown key): now it is that check's message at once,
    with the node's keys and the closest one."""
    with pytest.raises(ConfigError) as err:
        compose_config([override])
    assert err.value.key == key
    assert f"did you mean {meant}?" in err.value.rule
    assert "unknown key" in err.value.rule


def test_the_command_line_says_it_in_one_line_without_the_append_hint(tmp_path):
    proc = cli_in_process("optimizer.lrr=0.1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "config error: optimizer.lrr=0.1: unknown key; optimizer has ['name', 'lr', "
        "'momentum', 'weight_decay', 'nesterov', 'param_groups', 'no_decay']: did you mean "
        "optimizer.lr?"
    ]
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_target_nodes_unknown_key_is_told_by_the_class(tmp_path):
    """A `_target_` node's keys are its class's arguments: one the class has no argument for
    is told as start-up's bind check tells its `+` form (`model.widht=8: SmallCNN has no
    argument 'widht'`, docs/project.md); one it takes, that the file does not list, needs
    the `+` (docs/project.md's `+model.width=32`)."""
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "lin.yaml").write_text("_target_: torch.nn.Linear\nin_features: 64\n")
    typo = ["--config-dir", str(tmp_path / "conf"), "model=lin", "model.in_featurs=8"]
    proc = cli_in_process(*typo, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "config error: model.in_featurs=8: Linear has no argument 'in_featurs'; it takes "
        "['in_features', 'out_features', 'bias', 'device', 'dtype']"
    ]
    overrides = ["model=target", "model._target_=torch.nn.Linear", "model.out_features=3"]
    with pytest.raises(ConfigError) as err:
        compose_config(overrides)
    assert err.value.rule == (
        "model does not list it; Linear takes it: give it as +model.out_features=3"
    )
    with pytest.raises(ConfigError) as err:  # no class named yet: as start-up says it
        compose_config(["model=target", "model.width=3"])
    assert str(err.value) == "model._target_='???': must be set (it has no default)"


# -- the docs' lists stay complete -----------------------------------------------------------


@pytest.mark.parametrize("group", ["model", "optimizer", "data", "logger"])
def test_the_usage_pages_group_table_lists_every_option(group):
    """docs/usage.md's table of groups and options (it lacked gpt, text, dataset and the
    schedule-free optimizers, which `python -m runner --help` lists)."""
    text = (DOCS / "usage.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith(f"| `{group}` |"))
    options = row.split("|")[2]
    names = [p.stem for p in sorted((ROOT / "conf" / group).glob("*.yaml"))]
    missing = [name for name in names if f"`{name}`" not in options]
    assert not missing, f"docs/usage.md's {group} row lacks {missing}"


def test_nothing_lost_names_every_key_a_resume_applies():
    """docs/nothing-lost.md's "Applied:" list of what `resume=` takes (it lacked name and
    trainer.keep_epochs, which runner/run/rundir.py applies)."""
    from runner.run.rundir import SAFE_ON_RESUME

    text = " ".join((DOCS / "nothing-lost.md").read_text(encoding="utf-8").split())
    applied = text.split("none is dropped. Applied:", 1)[1].split("Refused:", 1)[0]
    missing = [k for k in SAFE_ON_RESUME if f"`{k}`" not in applied]
    assert not missing, f"docs/nothing-lost.md does not say a resume applies {missing}"


# -- no paragraph cut in half ------------------------------------------------------------------


def prose_blocks(text: str) -> list[str]:
    """The page's blocks (split at blank lines), fenced code removed."""
    text = re.sub(r"```.*?```", "\n\n", text, flags=re.S)
    return [b.strip("\n") for b in re.split(r"\n[ \t]*\n", text) if b.strip()]


def broken_paragraphs(text: str) -> list[str]:
    """Prose paragraphs whose parentheses do not balance (code spans aside), or that stop
    without a sentence's end and lead into no list: what cutting a page in two left behind
    (docs/project.md ended a paragraph with "Checkpoints", docs/nothing-lost.md opened
    "(tested," and never closed it)."""
    blocks = prose_blocks(text)
    found = []
    for i, block in enumerate(blocks):
        if block[0] in "#|!<" or re.match(r"([-*]|\d+\.) ", block) or block.startswith("    "):
            continue  # heading, table, image, html, list, indented code
        plain = re.sub(r"`[^`]*`", "", block)
        balanced = plain.count("(") == plain.count(")")
        ends = re.search(r"[.:!?)]\**$", block.rstrip()) is not None
        leads_into_list = i + 1 < len(blocks) and blocks[i + 1].lstrip().startswith("- ")
        if not balanced or not (ends or leads_into_list):
            found.append(block[:80] + " ... " + block[-60:])
    return found


def test_the_paragraph_check_finds_what_the_docs_split_left():
    cut = "**Bold.** A (tested,\nload with it.\n\nIt ends with Checkpoints\n\n## Next\n"
    assert len(broken_paragraphs(cut)) == 2
    whole = "Text (with `a(` code) ends.\n\nA lead into:\n\nAnd, with\n\n- a list\n"
    assert broken_paragraphs(whole) == []


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))])
def test_no_docs_paragraph_is_cut_in_half(page):
    path = ROOT / page if page == "README.md" else DOCS / page
    assert broken_paragraphs(path.read_text(encoding="utf-8")) == []


def test_the_usage_pages_example_errors_are_what_the_runner_prints(tmp_path):
    """docs/usage.md quotes two config errors; each is the line the command prints (the first
    said `must be > 0`, which the check stopped saying when it learned `find`)."""
    text = " ".join((DOCS / "usage.md").read_text(encoding="utf-8").split())
    quoted = re.search(r"`(config error: optimizer\.lr=-1: [^`]*)`", text).group(1)
    assert cli_in_process("optimizer.lr=-1", cwd=tmp_path).stderr.strip() == quoted
    typo = re.search(r"`optimizer\.lrr=0\.1`: `unknown key; optimizer has \[\.\.\.\]([^`]*)`", text)
    assert typo.group(1) in cli_in_process("optimizer.lrr=0.1", cwd=tmp_path).stderr


# -- every command the docs show starts -------------------------------------------------------

# what a reader fills in or supplies (a run dir, a package, a file, a data set to download),
# what the README tour's own test runs (tests/test_docs.py, from examples/custom_project),
# and performance.md's timed config error
_SUPPLIED = re.compile(
    r"<|\.\.\.|mypkg|my_conf|myconf|my\.txt|input\.txt|--config-dir conf|data=mnist|data=cifar10"
    r"|cifar10_fast|optimizer\.lr=-1"
)
_COMMAND = re.compile(r"(?:python|\$PY) -m (runner(?:\.preview)?)\s+(.+)")


def docs_commands() -> list[tuple[str, str, list[str]]]:
    """(page, module, arguments) of each `python -m runner ...` and `... runner.preview ...`
    the README and docs/ show, in code blocks (continuation lines joined) and in running text,
    except those naming what the reader supplies (_SUPPLIED); each command once."""
    found: dict[tuple[str, ...], tuple[str, str, list[str]]] = {}
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        lines = []
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            lines += block.replace("\\\n", " ").splitlines()
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        inline = re.findall(r"`([^`]*(?:python|\$PY) -m runner[^`]*)`", prose)
        lines += [" ".join(s.split()) for s in inline]
        lines += re.findall(r"^    (python -m runner.*)$", text, flags=re.M)  # indented code
        for line in lines:
            match = _COMMAND.search(line)
            if match and not _SUPPLIED.search(line):
                module, args = match.group(1), shlex.split(match.group(2), comments=True)
                found.setdefault((module, *args), (path.name, module, args))
    return list(found.values())


class _Started(BaseException):
    """The command got past every check made before Hydra starts."""


def starts(module: str, args: list[str], cwd: Path, monkeypatch) -> str | None:
    """None when the command would start (`python -m runner`: every check before Hydra
    passed; the preview: it drew its curves), else what it printed."""
    monkeypatch.chdir(cwd)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        if module == "runner.preview":
            from runner import preview

            return (
                None
                if preview.main([*args, "--out", str(cwd / "preview")]) == 0
                else (err.getvalue())
            )
        import runner.__main__ as entry

        monkeypatch.setenv("HYDRA_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR", ""))
        monkeypatch.setattr(entry, "main", lambda: (_ for _ in ()).throw(_Started()))
        monkeypatch.setattr(entry, "_CLI_STOP", None)
        monkeypatch.setattr(sys, "argv", ["runner", *args])
        try:
            entry.cli()
        except _Started:
            return None
        except SystemExit as exit_:
            return f"exit {exit_.code}: {err.getvalue()}"
        finally:
            release_kept_locks()
    return f"never started: {err.getvalue()}"


@pytest.mark.slow  # ~40 commands, each composed and checked (a single run's data loaded): ~20 s
def test_every_command_the_docs_show_passes_start_up(tmp_path, monkeypatch):
    """Each `python -m runner ...` of README.md and docs/*.md, copied as shown, gets past
    every check made before training starts (keys, options, presets, plugins' keys, a single
    run's whole config); each preview draws. A renamed key or preset fails here."""
    commands = docs_commands()
    assert len(commands) >= 40, commands
    failed = []
    for page, module, args in commands:
        problem = starts(module, args, tmp_path, monkeypatch)
        if problem is not None:
            failed.append(f"{page}: python -m {module} {shlex.join(args)}: {problem.strip()}")
    assert not failed, "\n".join(failed)


# -- a complete run's hint to train longer ------------------------------------------------------


def test_a_complete_runs_hint_to_train_longer_is_one_that_works(tmp_path):
    """ "to train longer: resume=<dir> epochs=<more>" was printed for every complete run, and
    for the default schedule (cosine, T_max null) that command is refused ("cannot extend"):
    such a run now says why it cannot be extended and to start a new run instead."""
    status = {"status": "completed", "epochs_done": 1, "best_val_acc": 0.5}
    cosine = nothing_to_do(tmp_path, status, make_cfg())
    assert f"resume={tmp_path} epochs=" not in cosine
    assert cosine.endswith(
        "nothing to do; it cannot be extended (scheduler.T_max is null: cosine spans the whole "
        "run): to train longer, start a new run with epochs=<more>"
    )
    step = nothing_to_do(tmp_path, status, make_cfg("scheduler=step"))  # explicit lengths
    assert step.endswith(f"nothing to do; to train longer: resume={tmp_path} epochs=<more>")


@pytest.mark.slow  # a run trained in-process, then resumed: ~4 s
def test_resuming_a_complete_cosine_run_prints_that_hint(tmp_path):
    from runner.run.train import train

    run_dir = tmp_path / "run"
    tiny = ["epochs=1", "logger=none", "data=fake", "data.train_size=32", "data.val_size=16"]
    assert train(make_cfg(*tiny, "model.hidden=[8]"), run_dir).status == "completed"
    again = cli_in_process(f"resume={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stdout and "start a new run with epochs" in again.stdout


# -- pointers into the docs ------------------------------------------------------------------------


def doc_pointers() -> list[tuple[str, str, str | None]]:
    """(where, page, section) for each `docs/<page>.md` or `README` a config file's comment or
    the runner's code points a reader to, with the section it names (`, "Datasets"`)."""
    found = []
    sources = [*(ROOT / "conf").rglob("*.yaml")]
    for package in ("runner", "schedulers", "hydra_plugins"):
        sources += (ROOT / package).rglob("*.py")
    pattern = re.compile(r"(README(?:\.md)?|docs/[\w-]+\.md)(?:,? \"([^\"]+)\")?")
    for path in sources:
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            page = "README.md" if match.group(1).startswith("README") else match.group(1)
            found.append((str(path.relative_to(ROOT)), page, match.group(2)))
    return found


def test_every_pointer_into_the_docs_names_a_page_and_section_that_exist():
    """conf/data/*.yaml said `see README, "Datasets"` after that section had moved to
    docs/project.md."""
    pointers = doc_pointers()
    assert len(pointers) >= 10, pointers
    broken = []
    for where, page, section in pointers:
        path = ROOT / page
        text = path.read_text(encoding="utf-8") if path.is_file() else None
        headings = re.findall(r"^#+ (.*)$", text or "", flags=re.M)
        if text is None or (section and not any(section in h for h in headings)):
            broken.append(f"{where}: {page}" + (f', "{section}"' if section else ""))
    assert not broken, broken


# -- the range test's --help -------------------------------------------------------------------


@pytest.mark.slow  # a new interpreter (the range test's Hydra app needs `python -m`): ~4 s
def test_the_range_tests_help_says_what_it_does_not_what_training_does(tmp_path):
    """`python -m runner.lr_find --help` printed training's help word for word ("schedlab:
    train a PyTorch model ...", examples of `python -m runner`)."""
    proc = run_python("-m", "runner.lr_find", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("python -m runner.lr_find <overrides>: the LR range test")
    assert "schedlab: train a PyTorch model" not in proc.stdout
    assert "lr_find:\n  start_lr: 1.0e-06" in proc.stdout  # Hydra's list of keys follows
    assert "the lr_find.* keys set the test itself" in proc.stdout
    assert not list(tmp_path.iterdir())  # nothing written


def test_make_clean_removes_every_run_output_but_the_readme(tmp_path):
    """`make clean` says it removes all run outputs: every folder the commands write under
    outputs/ (runs, multirun, lr_find, budgets, lecture, preview, ...), not only three."""
    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "README.md").write_text("kept\n")
    for made in ("runs/a/b", "multirun/x", "budgets/y", "lecture/z", "preview/p", "lecture_curves"):
        (tmp_path / "outputs" / made).mkdir(parents=True)
        (tmp_path / "outputs" / made / "f").write_text("x")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    makefile = str(repo / "Makefile")
    out = subprocess.run(
        ["make", "-s", "-f", makefile, "clean"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["README.md"]
    assert not (tmp_path / ".venv").exists()
