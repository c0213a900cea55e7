"""The commands the runner prints for what to run next, whole and shell-quoted, so that
copying one runs what it says: the range test's lr in the user's own training command
(their --config-dir and overrides, not the default MLP on digits), the resume of an
interrupted run, the same sweep continued in its own sweep dir."""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

# Hydra's options that take a value in the next argument (that value is no override)
VALUED_OPTIONS = frozenset(
    {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--experimental-rerun"}
)


def python() -> str:
    """`python` where that name runs this interpreter, else this interpreter's path (a
    venv's python that is not on PATH): the printed command must start the same Python."""
    found = shutil.which("python")
    if found and Path(found).resolve() == Path(sys.executable).resolve():
        return "python"
    return sys.executable


def command(module: str, args: Sequence[str]) -> str:
    """`python -m <module> <args>`, each argument quoted for a POSIX shell."""
    return shlex.join([python(), "-m", module, *args])


def override_key(arg: str) -> str:
    """The key an override sets (`+key=`, `++key=`, `~key` alike)."""
    return arg.split("=", 1)[0].lstrip("+~")


def overrides_at(args: Sequence[str]) -> list[int]:
    """The positions of the key=value overrides (not options, nor an option's value)."""
    found, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg in VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-") and ("=" in arg or arg.startswith("~")):
            found.append(i)
    return found


def without(args: Sequence[str], *keys: str) -> list[str]:
    """args less every override of `keys`."""
    at = {i for i in overrides_at(args) if override_key(args[i]) in keys}
    return [a for i, a in enumerate(args) if i not in at]


def with_value(args: Sequence[str], key: str, value: str) -> list[str]:
    """args with `key=value` in place of the first override of `key` (its `+`/`++` kept:
    the key may be one the config lacks; the others dropped), or at the end."""
    at = [i for i in overrides_at(args) if override_key(args[i]) == key]
    if not at:
        return [*args, f"{key}={value}"]
    out = list(args)
    plus = out[at[0]][: len(out[at[0]]) - len(out[at[0]].lstrip("+"))]
    out[at[0]] = f"{plus}{key}={value}"
    return [a for i, a in enumerate(out) if i not in at[1:]]


def train_with_lr(argv: Sequence[str], lr: str) -> str:
    """The range test's command as a training command at `lr`: the same --config-dir,
    --config-name and overrides, less its own run dir (the training run gets a new one)."""
    return command("runner", with_value(without(argv, "hydra.run.dir"), "optimizer.lr", lr))


def resume_run(run_dir: Path, torchrun: bool = False) -> str:
    """The command that continues an interrupted run: resume= reads its saved config, so
    no override nor --config-dir is needed (a `_target_` class of the user's is imported
    from the current dir, as when it started). A run under torchrun continues under
    torchrun with the options it had (which this process cannot see)."""
    resume = f"resume={Path(run_dir).resolve()}"
    if torchrun:
        return f"torchrun <its options> -m runner {shlex.quote(resume)}"
    return command("runner", [resume])


def continue_sweep(argv: Sequence[str], sweep_dir: Path) -> str:
    """The sweep's own command into its own dir: its finished jobs are kept (read back,
    not trained again), an interrupted one resumes from its last.pt."""
    return command("runner", with_value(argv, "hydra.sweep.dir", str(Path(sweep_dir).resolve())))
