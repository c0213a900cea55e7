"""data=text (issue #35): byte-level text for language models. The bundled source's optimal
loss is the forward algorithm's, equal to brute-force sums over hidden paths; its corpus is
the same bytes everywhere; the user's text is tokenised once into a cache keyed by its
content; training windows come from the run's seeded generator alone; bad paths, empty text
and windows longer than a split are config errors naming the key."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from runner.data import hmm
from runner.data.fingerprint import difference, fingerprint
from runner.data.sets import batches, clear_cache, load_data, steps_per_epoch
from runner.data.text import TextData
from runner.run.check import validate
from schedulers import ConfigError
from schedulers.binder import plain
from tests.helpers import cli_in_process, make_cfg

# the first 65536 bytes of the bundled corpus (seed 0), as sampled on the machine that wrote
# this test: a change means every machine's corpus, and every logged source loss, changed
# (then bump runner/data/text.py's SOURCE_VERSION, which names the cached corpus)
SHA_FIRST_64K = "5818b0907a5d9095e50c7e28eaea543ae6d084fe409a121c8f66cb2edb8e9a73"


def tiny_hmm() -> hmm.Hmm:
    """3 states emitting 3 letters, nothing symmetric: every path has its own weight."""
    emission = np.zeros((3, 256))
    emission[:, [97, 98, 99]] = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]]
    transition = np.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.3, 0.3, 0.4]])
    return hmm.Hmm(np.array([0.5, 0.3, 0.2]), transition, emission)


def path_sum(model: hmm.Hmm, seq: tuple[int, ...], reset_at: int | None = None) -> float:
    """p(seq) summed over every hidden path, by brute force; `reset_at`: a new document
    starts there (the chain restarts from `start`, independent of the path before)."""
    k = len(model.start)
    total = 0.0
    for path in itertools.product(range(k), repeat=len(seq)):
        p = model.start[path[0]] * model.emission[path[0], seq[0]]
        for t in range(1, len(seq)):
            step = model.start[path[t]] if t == reset_at else model.transition[path[t - 1], path[t]]
            p *= step * model.emission[path[t], seq[t]]
        total += p
    return total


def text_cfg(tmp_path: Path, *extra: str):
    return make_cfg("data=text", f"data.cache_dir={tmp_path / 'cache'}", *extra)


def load(tmp_path: Path, *extra: str) -> TextData:
    clear_cache()
    data = load_data(plain(text_cfg(tmp_path, *extra).data))
    assert isinstance(data, TextData)
    return data


def raised(*overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("data=text", *overrides))
    return err.value


# -- the source's exact loss ----------------------------------------------------------------
def test_forward_algorithm_equals_brute_force_sums_over_hidden_paths() -> None:
    """Every sequence of 5 tokens over the tiny HMM's 3 letters: the sum of the forward
    algorithm's per-token losses = -ln of the sum over all 3^5 hidden paths, to 1e-12;
    the probabilities sum to 1; a document start inside a window is honoured."""
    model = tiny_hmm()
    seqs = np.array(list(itertools.product([97, 98, 99], repeat=5)))
    nll = hmm.token_nll(model, seqs)
    brute = np.array([path_sum(model, tuple(s)) for s in seqs])
    assert np.abs(nll.sum(1) + np.log(brute)).max() < 1e-12
    assert abs(brute.sum() - 1) < 1e-12
    resets = np.zeros_like(seqs, dtype=bool)
    resets[:, 3] = True
    with_reset = hmm.token_nll(model, seqs[:40], resets[:40])
    brute_reset = [path_sum(model, tuple(s), reset_at=3) for s in seqs[:40]]
    assert np.abs(with_reset.sum(1) + np.log(brute_reset)).max() < 1e-12
    # optimal_loss: the mean over the positions a model is scored on (1..L-1)
    assert hmm.optimal_loss(model, seqs[:5]) == pytest.approx(nll[:5, 1:].mean(), abs=1e-15)


def test_bundled_source_forward_equals_brute_force_on_short_windows() -> None:
    """The bundled HMM (64 states) on windows of 3 tokens of its corpus: the forward
    algorithm against the sum over all 64^3 hidden paths, materialised; its transition is
    doubly stochastic, so the uniform start is its stationary distribution."""
    model = hmm.bundled()
    assert np.abs(model.start @ model.transition - model.start).max() < 1e-15
    corpus = hmm.sample(model, 4096, seed=3)
    windows = np.stack([corpus[o : o + 3] for o in range(0, 600, 37)])
    nll = hmm.token_nll(model, windows)
    tr, em = model.transition, model.emission
    for w, row in zip(windows, nll, strict=True):
        paths = (
            (model.start * em[:, w[0]])[:, None, None]
            * (tr * em[:, w[1]][None, :])[:, :, None]
            * (tr * em[:, w[2]][None, :])[None, :, :]
        )
        assert row.sum() == pytest.approx(-np.log(paths.sum()), abs=1e-9)


def test_sampler_draws_from_the_distribution_the_forward_algorithm_scores() -> None:
    """The mean optimal loss of sampled windows (documents of 5 tokens) estimates the exact
    conditional entropy H(X_1..X_4 | X_0) / 4, enumerated: a sampler drawing from any
    other distribution would give a higher mean (a cross-entropy)."""
    model = tiny_hmm()
    seqs = np.array(list(itertools.product([97, 98, 99], repeat=5)))
    nll = hmm.token_nll(model, seqs)
    p = np.exp(-nll.sum(1))
    exact = float((p * nll[:, 1:].sum(1)).sum() / 4)
    windows = hmm.sample(model, 5 * 40_000, seed=1, doc_len=5).reshape(-1, 5)
    losses = hmm.token_nll(model, windows)[:, 1:].mean(1)
    error = losses.std() / np.sqrt(len(losses))
    assert abs(losses.mean() - exact) < 4 * error


def test_bundled_entropy_rate_constant_agrees_with_a_fresh_estimate() -> None:
    """hmm.ENTROPY_RATE (estimated once from 2048 documents) within 5 standard errors of an
    estimate from 64 other documents (standard error ~0.0026)."""
    fresh = hmm.entropy_rate(hmm.bundled(), docs=64, seed=11)
    assert abs(fresh - hmm.ENTROPY_RATE) < 5 * 0.0026


def test_bundled_corpus_is_the_same_bytes_on_every_run() -> None:
    model = hmm.bundled()
    first = hmm.sample(model, 65536, seed=0)
    assert np.array_equal(first, hmm.sample(hmm.bundled(), 65536, seed=0))
    assert hashlib.sha256(first.tobytes()).hexdigest() == SHA_FIRST_64K
    assert set(np.unique(first).tobytes()) <= set(hmm.ALPHABET)
    assert not np.array_equal(first, hmm.sample(model, 65536, seed=1))


def test_bundled_text_data_carries_its_source_loss(tmp_path: Path) -> None:
    """Windows are [B, T] long with y = x shifted by one; the validation windows are
    consecutive from the tail's start; source_loss is the optimal loss of exactly those
    windows, between the entropy rate and the unigram entropy; a second load reads it
    from the cache."""
    args = ("data.source_tokens=65536", "data.block_size=32", "data.val_tokens=3201")
    args += ("data.tokens_per_epoch=null",)  # the default is 16384 tokens an epoch
    data = load(tmp_path, *args)
    assert data.image_shape == (32,) and data.num_classes == 256
    assert data.n_train == (65536 - 3276) // 32  # tokens_per_epoch null: the train split
    x, y = next(batches(data.x_train, data.y_train, 8, torch.Generator().manual_seed(0)))
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    corpus = hmm.sample(hmm.bundled(), 65536, seed=0)
    split = 65536 - 3276
    assert data.x_val.shape == (100, 32)  # (3201 - 1) // 32
    assert np.array_equal(data.x_val.flatten().numpy(), corpus[split : split + 3200])
    assert np.array_equal(data.y_val.flatten().numpy(), corpus[split + 1 : split + 3201])
    offsets = split + 32 * np.arange(100)
    windows = np.stack([corpus[o : o + 33] for o in offsets])
    assert data.source_loss == pytest.approx(hmm.optimal_loss(hmm.bundled(), windows, offsets))
    assert data.entropy_rate == hmm.ENTROPY_RATE
    assert data.entropy_rate - 0.05 < data.source_loss < np.log(len(hmm.ALPHABET))
    cached = load(tmp_path, *args)
    assert (cached.source_loss, cached.entropy_rate) == (data.source_loss, data.entropy_rate)


# -- the user's text: tokenised once, keyed by content ----------------------------------------
def test_user_text_is_cached_by_content_reused_and_rebuilt_on_change(tmp_path: Path) -> None:
    """A folder's non-hidden files in sorted order, concatenated into one cache file; the
    second load reads that file (not written again); an edit makes a new one and removes
    the stale one; no source loss for the user's text."""
    corpus = tmp_path / "corpus"
    (corpus / "b").mkdir(parents=True)
    (corpus / ".git").mkdir()
    (corpus / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n" * 50)
    (corpus / "b" / "two.txt").write_bytes(b"second file. " * 300)
    (corpus / "a.txt").write_bytes(b"first file! " * 300)
    args = (f"data.path={corpus}", "data.block_size=16", "data.val_fraction=0.1")
    first = load(tmp_path, *args)
    (cache,) = (tmp_path / "cache").glob("text-*.u8")
    assert cache.read_bytes() == b"first file! " * 300 + b"second file. " * 300
    assert first.source_loss is None and first.entropy_rate is None
    before = cache.stat()
    again = load(tmp_path, *args)
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert again.content == first.content
    (corpus / "a.txt").write_bytes(b"first file? " * 300)  # same size, new content
    changed = load(tmp_path, *args)
    (rebuilt,) = (tmp_path / "cache").glob("text-*.u8")
    assert rebuilt != cache and rebuilt.read_bytes().startswith(b"first file? ")
    assert changed.content != first.content
    refused = difference(
        fingerprint(plain(text_cfg(tmp_path, *args).data), first),
        fingerprint(plain(text_cfg(tmp_path, *args).data), changed),
    )
    assert refused is not None and refused.key == "data.path"


# -- the windows: the run's generator, nothing else -------------------------------------------
def test_windows_are_drawn_from_the_run_generator_alone(tmp_path: Path) -> None:
    """An epoch's windows are a function of the data-order generator's state: a generator
    restored to a checkpointed state (after epoch 0) draws epoch 1's windows again; a batch
    is gathered in the training process (no workers, so data.num_workers is no key of
    data=text); tokens_per_epoch fixes the steps per epoch."""
    args = ("data.source_tokens=65536", "data.block_size=32", "data.tokens_per_epoch=4096")
    data = load(tmp_path, *args)
    assert data.n_train == 128 and steps_per_epoch(data.n_train, 32) == 4

    def epoch(g: torch.Generator) -> list[torch.Tensor]:
        return [torch.cat(b) for b in batches(data.x_train, data.y_train, 32, g)]

    run = torch.Generator().manual_seed(7)
    epoch(run)
    state = run.get_state()  # what a checkpoint saves at epoch 0's end
    second = epoch(run)
    resumed = torch.Generator()
    resumed.set_state(state)
    assert all(torch.equal(a, b) for a, b in zip(second, epoch(resumed), strict=True))
    other = epoch(torch.Generator().manual_seed(8))
    assert not torch.equal(second[0], other[0])
    err = raised("+data.num_workers=2", "data.source_tokens=65536")
    assert err.key == "data.num_workers"


# -- config errors, before anything is built --------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        (["data.path=/no/such/corpus"], "data.path", "no such file"),
        (["data.block_size=0"], "data.block_size", ""),
        (["data.batch_size=0"], "data.batch_size", ""),
        (["data.val_tokens=0"], "data.val_tokens", ""),
        (["data.tokens_per_epoch=0"], "data.tokens_per_epoch", ""),
        (["data.source_tokens=1000", "data.block_size=64"], "data.block_size", "validation"),
        (["data.val_tokens=64", "data.block_size=64"], "data.block_size", "validation"),
        (
            ["data.val_fraction=0.99", "data.source_tokens=4000", "data.block_size=64"],
            "data.block_size",
            "train",
        ),  # fmt: skip
        (["data.tokens_per_epoch=10", "data.block_size=64"], "data.tokens_per_epoch", "window"),
    ],
)
def test_config_errors_name_the_key(extra: list[str], key: str, words: str) -> None:
    err = raised(*extra)
    assert err.key == key and words in err.rule


def test_empty_text_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").touch()
    (tmp_path / "folder" / ".hidden").mkdir(parents=True)
    (tmp_path / "folder" / ".hidden" / "notes.txt").write_text("hidden text")
    (tmp_path / "folder" / "blank.txt").touch()
    for path, words in ((tmp_path / "empty.txt", "is empty"), (tmp_path / "folder", "no text")):
        err = raised(f"data.path={path}")
        assert err.key == "data.path" and words in err.rule


def test_a_bad_text_path_exits_2_with_one_line(tmp_path: Path) -> None:
    result = cli_in_process("data=text", "data.path=missing.txt", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: data.path='missing.txt': no such file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing cached for a run that cannot start
