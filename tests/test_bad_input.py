"""Bad input from the user's side of the command line (issue #32): a `--config-dir` whose
files shadow the built-ins (the user's file wins), broken YAML in it, names the file system
cannot take, numbers past float32, launcher and helper-command arguments that mean nothing.
Each is used as meant or refused in one line with exit 2, naming the real cause, with
nothing left on disk. Most run in-process (cli_in_process: the checks before Hydra)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.config.compose import compose_config
from runner.run.check import validate
from schedulers import ConfigError
from tests.helpers import CONF, cli_in_process, make_cfg, run_cli


def user_dir(root: Path, files: dict[str, str | bytes]) -> Path:
    """A user's config dir holding these files (relative path -> text or raw bytes)."""
    conf = root / "my_conf"
    for name, content in files.items():
        path = conf / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return conf


def refused(proc, *says: str) -> str:
    """The command was refused as bad input: exit 2, one line, no traceback; its text."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    for text in says:
        assert text in proc.stderr
    return proc.stderr


# -- your config dir wins ------------------------------------------------------------------------
def test_a_config_dirs_group_option_of_a_builtins_name_is_the_one_used(tmp_path):
    """my_conf/model/mlp.yaml: before, Hydra searched --config-dir after schedlab's conf/
    (first match wins), and the built-in mlp was used with no word."""
    conf = user_dir(tmp_path, {"model/mlp.yaml": "name: mlp\nhidden: [7]\ndropout: 0.0\n"})
    assert list(compose_config(["model=mlp"], config_dirs=[str(conf)]).model.hidden) == [7]
    assert list(make_cfg("model=mlp").model.hidden) == [256]  # without it: the built-in


def test_the_search_path_hydra_main_builds_puts_the_users_dirs_before_conf(tmp_path):
    """The search path `python -m runner` gets (Hydra's own builder, with the plugin), while
    the command's --config-dirs are set: theirs first (in the order given), then conf/;
    Hydra's own configs stay ahead of both."""
    from hydra._internal.utils import create_config_search_path

    from runner.config.compose import searched_first

    a, b = tmp_path / "a", tmp_path / "b"
    with searched_first([str(a), str(b)]):
        paths = [e.path for e in create_config_search_path(str(CONF)).get_path()]
    assert paths[:4] == ["pkg://hydra.conf", f"file://{a}", f"file://{b}", str(CONF)]
    plain = [e.path for e in create_config_search_path(str(CONF)).get_path()]
    assert f"file://{a}" not in plain  # only while composing that command


@pytest.mark.slow
def test_a_config_dirs_config_yaml_and_group_option_win_in_a_real_command(tmp_path):
    """Through `python -m runner` itself (Hydra's main): the user's config.yaml is the
    primary config and their model/mlp.yaml the mlp."""
    text = (CONF / "config.yaml").read_text().replace("epochs: 20 ", "epochs: 3  ")
    assert "epochs: 3 " in text
    user_dir(
        tmp_path, {"config.yaml": text, "model/mlp.yaml": "name: mlp\nhidden: [7]\ndropout: 0.0\n"}
    )
    proc = run_cli("--config-dir", "my_conf", "--cfg", "job", "logger=none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\nepochs: 3\n" in proc.stdout and "hidden:\n  - 7\n" in proc.stdout


def test_a_partial_config_yaml_is_refused_saying_it_replaces_schedlabs(tmp_path):
    user_dir(tmp_path, {"config.yaml": "epochs: 3\n"})
    proc = cli_in_process("--config-dir", "my_conf", cwd=tmp_path)
    refused(proc, "my_conf/config.yaml is used in place of schedlab's conf/config.yaml")
    assert not (tmp_path / "outputs").exists()


# -- broken YAML in a config dir -----------------------------------------------------------------
BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
)  # billion laughs: 10**9 values once OmegaConf expands the aliases

BROKEN = {
    "syntax": ("name: [mlp\nhidden: 3\n", "line 2, column 7: expected ',' or ']'"),
    "duplicate key": ("name: mlp\nname: lenet\n", "line 2, column 1: found duplicate key name"),
    "not utf-8": (b"name: mlp\n# caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 15)"),
    "python tag": (
        'name: !!python/object/apply:os.system ["touch pwned"]\n',
        "a !!python/object/apply:os.system tag; a config file holds data, not code",
    ),
    "a list": ("- mlp\n- 3\n", "holds a list, where a config is a mapping"),
    "alias bomb": (BOMB, "expands to more than 100000 values through its aliases"),
    "alias cycle": ("a: &x [1, *x]\n", "a cycle"),
    "too deep": ("a: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than 64 levels"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_yaml_file_in_a_config_dir_is_one_line_naming_it(tmp_path, case):
    """Before: PyYAML's or the codec's traceback (exit 1), or, for the alias bomb, OmegaConf
    expanding it until memory ran out."""
    content, says = BROKEN[case]
    user_dir(tmp_path, {"model/x.yaml": content})
    proc = cli_in_process("--config-dir", "my_conf", "model=x", cwd=tmp_path)
    refused(proc, "config error: --config-dir='my_conf/model/x.yaml': ", says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_conf"]


def test_a_list_of_non_names_for_a_group_is_a_config_error_naming_it(tmp_path):
    """optimizer=[1,2]: before, a TypeError from deep inside Hydra's defaults list."""
    proc = cli_in_process("optimizer=[1,2]", cwd=tmp_path)
    refused(proc, "config error: optimizer=[1, 2]: a config group takes option names")


# -- paths the file system cannot take -----------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["hydra.run.dir=out/" + "a" * 300],
        ["hydra.run.dir=out/${seed}" + "a" * 300],
        ["-m", "seed=0,1", "hydra.sweep.dir=out/" + "a" * 300],
    ],
)
def test_a_dir_name_longer_than_the_file_system_takes_is_refused_before_any_is_made(tmp_path, args):
    """Before: a config error that left out/ behind (run), or Hydra's errno 36 with exit 1
    (sweep, or a run dir with an interpolation)."""
    proc = cli_in_process(*args, cwd=tmp_path)
    refused(proc, "a name of 300 bytes in it; the file system takes at most 255")
    assert not list(tmp_path.iterdir())


def test_a_run_into_a_sweep_dir_is_refused_leaving_it_as_it_was(tmp_path):
    """Before: the run wrote its config.yaml, checkpoints and status.json among the sweep's
    jobs and report, exit 0."""
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    proc = cli_in_process("hydra.run.dir=sweep", cwd=tmp_path)
    refused(proc, "hydra.run.dir='sweep': is a sweep dir (it holds multirun.yaml)")
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "multirun.yaml"]


# -- numbers and launcher keys -------------------------------------------------------------------
@pytest.mark.parametrize(
    "override", ["optimizer.lr=1e39", "optimizer.weight_decay=1e39", "lr_find.end_lr=1e39"]
)
def test_a_number_past_float32_is_a_config_error_naming_its_key(override):
    """Before: lr=1e39 trained until torch said "value cannot be converted to type float
    without overflow" (exit 1, run dir left)."""
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(override))
    assert err.value.key == override.split("=")[0]


def test_a_float32_lr_through_the_cli_is_one_line_and_no_run_dir(tmp_path):
    refused(
        cli_in_process("optimizer.lr=1e39", cwd=tmp_path), "optimizer.lr=1e+39: must fit in float32"
    )
    assert not list(tmp_path.iterdir())


def test_joblib_n_jobs_0_is_refused_before_the_sweep_dir_is_made(tmp_path):
    """Before: joblib's "n_jobs == 0 in Parallel has no meaning" with exit 1, after
    multirun.yaml was written."""
    proc = cli_in_process(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "seed=0,1", cwd=tmp_path
    )
    refused(proc, "hydra.launcher.n_jobs=0: must be the number of jobs at once")
    assert not list(tmp_path.iterdir())


def test_logger_empty_list_is_no_logger():
    """logger=[] (no backend chosen): before, "Key 'logger' is not in struct"."""
    cfg = make_cfg("logger=[]")
    validate(cfg)
    assert dict(cfg.logger) == {}


# -- the helper commands -------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["missing", "file"])
def test_the_report_command_on_a_missing_path_or_a_file_is_exit_2(tmp_path, capsys, what):
    from runner.sweep.report import main

    target = tmp_path / what
    if what == "file":
        target.write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main([str(target)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    says = "is not a directory" if what == "file" else "no such directory"
    assert (
        err == f"error: {target}: {says} (give a sweep dir, e.g. outputs/multirun/<date>/<time>)\n"
    )


def test_the_lectures_bad_arguments_are_one_line_and_exit_2(capsys):
    from runner.lecture import main

    with pytest.raises(SystemExit) as exit_:
        main(["--bogus"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: '--bogus': expected key=value")
