"""Session 19's QA of the language-model task (docs/lm.md): what a user's own text, the LM
presets and their error messages do at the edges."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.data import text
from schedulers import ConfigError
from tests.helpers import cli_in_process, make_cfg


def _text_cfg(path: Path, cache: Path, *more: str):
    return make_cfg("+experiment=lm_tiny", f"data.path={path}", f"data.cache_dir={cache}", *more)


def test_a_cache_inside_the_text_folder_is_not_read_as_text(tmp_path: Path) -> None:
    """data.path=data with the default cache_dir data/cache: the cache the first load
    writes is not part of the text the next load reads (it was: every run a longer
    stream, the old one appended, its validation tail a copy of training bytes)."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"the quick brown fox jumps over the lazy dog. " * 200)
    cfg = _text_cfg(folder, folder / "cache").data
    text.validate(cfg)
    first = text.load(cfg)
    text.validate(cfg)
    second = text.load(cfg)
    assert second.content == first.content
    cached = list((folder / "cache").glob("*.u8"))
    assert [f.stat().st_size for f in cached] == [(folder / "a.txt").stat().st_size]
    assert second.x_val.equal(first.x_val)
    assert text.source_files(str(folder), str(folder / "cache")) == [folder / "a.txt"]


def test_a_text_too_short_to_train_on_says_to_lower_val_fraction(tmp_path: Path) -> None:
    """Raising data.val_fraction shrinks the training split: the hint for a training split
    shorter than a window says to lower it (or give more text)."""
    short = tmp_path / "short.txt"
    short.write_bytes(b"hello world\n")
    cfg = _text_cfg(short, tmp_path / "cache").data
    with pytest.raises(ConfigError, match="train split") as err:
        text.validate(cfg)
    assert "lower data.val_fraction" in str(err.value)
    assert "raise data.val_fraction" not in str(err.value)


def test_lm_preset_with_a_whole_split_epoch_is_a_config_error_saying_what_to_set(
    tmp_path: Path,
) -> None:
    """data.tokens_per_epoch=null (an epoch of the whole split, as data/text.yaml allows)
    under +experiment=lm: the preset's warmup counted from it is a one-line error naming
    the key and what to set, not OmegaConf's int(None) TypeError; and setting the warmup
    instead is enough."""
    (tmp_path / "t.txt").write_bytes(b"abcdefgh " * 2000)
    args = ("+experiment=lm_tiny", "data.path=t.txt", "data.tokens_per_epoch=null")
    out = cli_in_process(*args, cwd=tmp_path)
    assert out.returncode == 2
    line = out.stderr.strip()
    assert line.startswith("config error: data.tokens_per_epoch=None: this preset warms up")
    assert "scheduler.warmup_steps=N" in line and "TypeError" not in line
    for schedule, warmup in (("cosine", "scheduler"), ("schedulefree", "optimizer")):
        cfg = make_cfg(*args, f"lm_schedule={schedule}", f"{warmup}.warmup_steps=4")
        assert cfg[warmup].warmup_steps == 4


def test_the_epoch_line_gives_the_averaged_models_loss() -> None:
    """An EMA/SWA run's console line shows val_avg/loss beside val_avg/acc, as it shows
    val/loss beside val/acc: a language model's average is judged by its loss, which the
    line left out (only metrics.jsonl had it)."""
    from runner.train.engine import describe_epoch

    row = {
        "epoch": 2,
        "lr/group0": 0.003,
        "train/loss": 3.66,
        "train/acc": 0.27,
        "val/loss": 3.2420,
        "val/acc": 0.291,
        "val_avg/loss": 4.2416,
        "val_avg/acc": 0.261,
        "time/epoch_s": 0.5,
    }
    line = describe_epoch(row, 3)
    assert "val_avg/loss=4.2416 val_avg/acc=0.261" in line
    assert "val_avg" not in describe_epoch({k: v for k, v in row.items() if "avg" not in k}, 3)


def test_a_branch_on_changed_text_says_branch_not_resume(tmp_path: Path) -> None:
    """A branch whose trunk trained on other text than data.path now holds is refused in a
    branch's words (the trunk, without branch=), not a resumed run's (without resume=,
    which the user never gave)."""
    from omegaconf import OmegaConf

    from runner.data.fingerprint import check_same_data, fingerprint, load_data

    path = tmp_path / "t.txt"
    path.write_bytes(b"abcdefgh " * 2000)
    cfg = OmegaConf.to_container(_text_cfg(path, tmp_path / "cache").data, resolve=True)
    trained = {**fingerprint(cfg, load_data(cfg)), "content": "0" * 32}  # other text
    with pytest.raises(ConfigError, match="without branch=") as err:
        check_same_data({"data": trained}, cfg, branch=True)
    assert "resume" not in str(err.value) and "the trunk trained on" in str(err.value)
    with pytest.raises(ConfigError, match="without resume="):
        check_same_data({"data": trained}, cfg)


def test_one_epoch_of_an_lm_preset_says_what_to_change(tmp_path: Path) -> None:
    """`+experiment=lm_tiny epochs=1` (a quick try): the preset's warmup is one epoch's
    steps, the whole run; the error says to raise epochs or lower the warmup, which the
    user never set, instead of only that it must be below the run's steps."""
    (tmp_path / "t.txt").write_bytes(b"abcdefgh " * 2000)
    out = cli_in_process("+experiment=lm_tiny", "data.path=t.txt", "epochs=1", cwd=tmp_path)
    assert out.returncode == 2
    assert "scheduler.warmup_steps=32: must be below the run's 32 optimizer steps" in out.stderr
    assert "raise epochs or lower scheduler.warmup_steps" in out.stderr


def test_the_last_line_names_best_pts_metric_when_it_is_another() -> None:
    """trainer.monitor=val_avg/loss (best.pt by the EMA's loss): the run's last line gave
    only the raw model's best val/loss, which is not what best.pt holds; it now names the
    monitored metric and its best too (and says nothing more for the default monitor)."""
    from runner.train.engine import scores

    status = {"final_val_loss": 3.242, "best_val_loss": 3.242, "best_val_acc": 0.29}
    averaged = {**status, "monitor": "val_avg/loss", "best_monitored": 4.2416}
    assert scores(averaged) == (
        "final val/loss=3.2420 (best 3.2420); best.pt by val_avg/loss: best 4.2416"
    )
    plain = {**status, "monitor": "val/loss", "best_monitored": 3.242}
    assert scores(plain) == "final val/loss=3.2420 (best 3.2420)"
    classifier = {"best_val_acc": 0.9, "monitor": "val_avg/acc", "best_monitored": 0.91}
    assert scores(classifier) == "best val/acc=0.9000; best.pt by val_avg/acc: best 0.9100"
