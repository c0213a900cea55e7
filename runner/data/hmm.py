"""The bundled text source: a hidden Markov model over bytes, whose optimal loss is exact.

`data=text` with no `data.path` trains on text sampled from `bundled()`, a fixed HMM of 64
hidden states: 4 topics of 16 states each. Within a topic a state moves to one of three
successors (a mixture of three permutations: word-like sequences), and each token the
chain jumps to a uniformly drawn state with probability `SWITCH` (a new topic three times
in four), so a topic lasts ~85 tokens: structure a model sees only with a long context.
Each state emits mostly a few of its topic's 10 symbols, out of a 32-symbol alphabet
(lowercase letters, space, punctuation, newline). Its transition matrix is doubly
stochastic, so the stationary distribution is uniform and exact: every document starts
from it, and a window anywhere in a document has it as its prior.

Because the source is known, the Bayes-optimal next-token loss of any window is computed
exactly by the forward algorithm (`token_nll`): `optimal_loss` of the validation windows
is the loss no model or schedule can beat on them, and `val/loss - optimal_loss` the gap.
What there is to learn, in nats per token: ln 256 = 5.55 (an untrained model), 2.74 (the
bytes' frequencies), 2.35, 1.84, 1.59 (knowing the last 1, 2, 3 bytes: plug-in estimates
on 1M tokens), 1.47 (optimal with 128 tokens of context), 1.4585 (the entropy rate).

Same bytes on every machine: the parameters and the samples are made from uniform doubles
of numpy's PCG64 bit generator (`Generator.random`, whose stream numpy keeps stable)
through +, -, *, / and comparisons only (IEEE-exact; no log/exp, whose last bits differ
between CPUs), and permutations as argsorts of uniforms (not `Generator.permutation`,
whose algorithm numpy may change).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

ALPHABET = b"abcdefghijklmnopqrstuvwxyz .,;!\n"  # 32 symbols; every other byte has p = 0
TOPICS, PER_TOPIC = 4, 16  # 64 hidden states
COMMON = 16  # the first COMMON symbols of a shuffled alphabet: what the topics share
SYMBOLS_PER_TOPIC = 12  # the symbols (of the common ones) a topic's states mostly emit
MAIN = 0.8  # per state: the probability of its own main symbol
SUCCESSORS = (0.8, 0.15, 0.05)  # the weights of each state's three within-topic successors
SWITCH = 1 / 64  # per token: jump to a uniformly drawn state (any topic)
FLOOR = 0.002  # per state: this probability spread over the whole alphabet
PARAMETER_SEED = 20261206  # the source's definition: not a config key
DOC_LEN = 4096  # tokens per document: each starts afresh from the stationary distribution
# The bundled source's entropy rate, nats per token: entropy_rate() over 8 x 256 documents
# (seeds 100-107), standard error 0.0005. A window's optimal loss is above it (less context).
ENTROPY_RATE = 1.4585


@dataclass(frozen=True, eq=False)
class Hmm:
    """start [K] (the first state's distribution), transition [K, K] (rows sum to 1),
    emission [K, 256] over byte values (rows sum to 1)."""

    start: np.ndarray
    transition: np.ndarray
    emission: np.ndarray


def _uniforms(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.random(shape)  # float64 in [0, 1): numpy keeps this stream stable


def _permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.argsort(_uniforms(rng, (n,)), kind="stable")


def _normalised(w: np.ndarray) -> np.ndarray:
    """Rows divided by their sum, summed in order (np.cumsum: no SIMD reordering)."""
    return w / np.cumsum(w, axis=-1)[..., -1:]


def bundled() -> Hmm:
    """The bundled source's HMM, made from PARAMETER_SEED (see the module's docstring)."""
    rng = np.random.Generator(np.random.PCG64(PARAMETER_SEED))
    k = TOPICS * PER_TOPIC
    transition = np.zeros((k, k))
    emission = np.zeros((k, 256))
    symbols = np.frombuffer(ALPHABET, dtype=np.uint8)
    common = symbols[_permutation(rng, len(symbols))[:COMMON]]
    for topic in range(TOPICS):
        states = topic * PER_TOPIC + np.arange(PER_TOPIC)
        for weight in SUCCESSORS:  # a mixture of permutations: doubly stochastic
            transition[states, states[_permutation(rng, PER_TOPIC)]] += weight * (1 - SWITCH)
        own = common[_permutation(rng, COMMON)[:SYMBOLS_PER_TOPIC]]
        u = _uniforms(rng, (PER_TOPIC, SYMBOLS_PER_TOPIC))
        spread = _normalised(u * u * u) * (1 - MAIN - FLOOR)  # the rest: a few symbols
        spread[np.arange(PER_TOPIC), np.arange(PER_TOPIC) % SYMBOLS_PER_TOPIC] += MAIN
        emission[np.ix_(states, own)] = spread
    emission[:, symbols] += FLOOR / len(symbols)
    transition += SWITCH / k
    return Hmm(np.full(k, 1 / k), _normalised(transition), _normalised(emission))


def _cumulative(p: np.ndarray) -> np.ndarray:
    """Rows' cumulative sums offset by the row index (row i in [i, i + 1], its last entry
    exactly i + 1): one sorted array, so a draw for each of many rows is one searchsorted."""
    c = np.cumsum(p, axis=1)
    c[:, -1] = 1.0
    return (c + np.arange(p.shape[0])[:, None]).ravel()


def _draw(cumulative: np.ndarray, rows: np.ndarray, u: np.ndarray, width: int) -> np.ndarray:
    """For each row r with uniform u: the column j with C[r, j-1] <= u < C[r, j]."""
    flat = np.searchsorted(cumulative, rows + u, side="right")
    return np.minimum(flat - rows * width, width - 1)


def sample(hmm: Hmm, n_tokens: int, seed: int, doc_len: int = DOC_LEN) -> np.ndarray:
    """`n_tokens` bytes (uint8): documents of `doc_len` tokens (the last one cut short),
    each a run of the chain from `hmm.start`, sampled side by side (vectorised over the
    documents, one step at a time)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    k = hmm.start.shape[0]
    docs = -(-n_tokens // doc_len)
    start = np.cumsum(hmm.start)
    start[-1] = 1.0
    states = np.empty((doc_len, docs), dtype=np.int64)
    states[0] = np.minimum(np.searchsorted(start, _uniforms(rng, (docs,)), side="right"), k - 1)
    steps = _cumulative(hmm.transition)
    u = _uniforms(rng, (doc_len, docs))
    for t in range(1, doc_len):
        states[t] = _draw(steps, states[t - 1], u[t], k)
    flat_states = states.T.ravel()[:n_tokens]  # document by document
    emit = _cumulative(hmm.emission)
    tokens = _draw(emit, flat_states, _uniforms(rng, (n_tokens,)), hmm.emission.shape[1])
    return tokens.astype(np.uint8)


def token_nll(hmm: Hmm, windows: np.ndarray, resets: np.ndarray | None = None) -> np.ndarray:
    """-ln p(x_t | x_0..x_{t-1}) for every position of every window [W, L] (position 0:
    -ln p(x_0) under `hmm.start`): the loss of the Bayes-optimal predictor that sees only
    the window. The forward algorithm, scaled (the belief over states normalised at each
    step), vectorised over the windows. `resets` [W, L] bool: positions where a new
    document starts (its chain restarts from `hmm.start`, independent of what came before)."""
    windows = np.asarray(windows, dtype=np.int64)
    with threadpool_limits(1):  # [W, 64] @ [64, 64]: BLAS threads cost ~20x here
        return _forward(hmm, windows, resets)


def _forward(hmm: Hmm, windows: np.ndarray, resets: np.ndarray | None) -> np.ndarray:
    n, length = windows.shape
    belief = np.broadcast_to(hmm.start, (n, hmm.start.shape[0])).copy()
    emission_t = hmm.emission.T  # [256, K]: the likelihood of each state for a byte
    nll = np.empty((n, length))
    for t in range(length):
        if resets is not None and t > 0 and resets[:, t].any():
            belief[resets[:, t]] = hmm.start
        joint = belief * emission_t[windows[:, t]]
        p = joint.sum(axis=1)
        nll[:, t] = -np.log(p)
        belief = (joint / p[:, None]) @ hmm.transition
    return nll


def document_starts(offsets: np.ndarray, length: int, doc_len: int = DOC_LEN) -> np.ndarray:
    """[W, length] bool: which positions of windows starting at `offsets` (in the sampled
    stream) begin a document."""
    return (np.asarray(offsets)[:, None] + np.arange(length)) % doc_len == 0


def optimal_loss(
    hmm: Hmm, windows: np.ndarray, offsets: np.ndarray | None = None, doc_len: int = DOC_LEN
) -> float:
    """The mean of -ln p(x_t | x_<t within the window) over positions 1..L-1 of windows
    [W, L] = [W, block_size + 1]: the positions a model is scored on (its input is
    x_0..x_{T-1}, its targets x_1..x_T). `offsets`: where each window starts in the sampled
    stream, so that a document boundary inside a window is known to the predictor."""
    resets = None if offsets is None else document_starts(offsets, windows.shape[1], doc_len)
    return float(token_nll(hmm, windows, resets)[:, 1:].mean())


def entropy_rate(hmm: Hmm, docs: int = 256, burn_in: int = 512, seed: int = 0) -> float:
    """An estimate of the source's entropy rate (nats per token): the optimal loss with the
    whole document as context, averaged over the positions after the first `burn_in` of
    `docs` sampled documents (~2 s; for the bundled source its standard error is ~0.0013,
    from the spread over seeds)."""
    tokens = sample(hmm, docs * DOC_LEN, seed).reshape(docs, DOC_LEN)
    return float(token_nll(hmm, tokens)[:, burn_in:].mean())
