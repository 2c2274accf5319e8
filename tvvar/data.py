"""Data sources: synthetic sources with exact probabilities, and character/byte corpora from a file.

Every source exposes one interface, used by :mod:`tvvar.train` and the experiments:

* ``vocab_size`` — V;
* ``batch(key, batch_size, seq_len, split="train") -> dict`` — a pure JAX function (traceable, so the
  training loop jits it with ``out_shardings`` and the batch is born sharded over the ``data`` mesh
  axis) returning ``"tokens"``: int32 [B, seq_len + 1] (inputs ``tokens[:, :-1]``, targets
  ``tokens[:, 1:]``) and, for synthetic sources, ``"entropy"``: float32 [B, seq_len], the exact
  conditional entropy H(x_{i+1} | x_{≤i}) in nats of each target under the true source — the floor
  that no model's expected cross-entropy can go below (CE − H = KL ≥ 0);
* ``sample_batch(key, batch_size, seq_len, split="train")`` — just the tokens;
* ``info() -> dict`` — JSON-able description (kind, parameters, vocabulary) saved with every run;
  :func:`source_from_info` rebuilds the source (or, for a corpus, its :class:`Vocab`).

Sources
-------
* :class:`TVVARSource` (``"synthetic-tvvar"``) — the TV-VAR of Definition 13 / Eq. 44 itself: token
  vectors ũ on the unit sphere (Def. 11), a ground-truth decomposition of A_tj with fixed random weights
  (attention by default, Theorem 5; any registered name), and x_{i+1} = argsoftmax(ũᵀ Σ_j A[i, j] u_j / Ξ).
* :class:`MarkovSource` (``"markov"``) — an order-k Markov chain, started in its stationary law, with
  closed-form entropy rate H = Σ_s π(s) H(P[s, ·]).
* :class:`HiddenMarkovSource` (``"hmm"``) — a hidden Markov model; the exact conditional entropy of each
  token given its prefix comes from the forward (filtering) recursion.
* :class:`TextCorpus` — a UTF-8 file read as characters (or raw bytes), a deterministic contiguous
  train/validation split, random contiguous windows.

Synthetic sources fold the split name into the key, so train and validation draws never coincide.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.registry import Registry
from tvvar.typing import Array, PRNGKey

__all__ = [
    "DataSource",
    "TVVARSource",
    "MarkovSource",
    "HiddenMarkovSource",
    "TextCorpus",
    "Vocab",
    "entropy_of_logits",
    "make_source",
    "source_from_info",
    "register_source",
    "SPLITS",
]

SPLITS = ("train", "val")
_SPLIT_SALT = {"train": 0x7A1, "val": 0x5EA1}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _check_sizes(batch_size: int, seq_len: int) -> None:
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r}")
    if not (isinstance(seq_len, (int, np.integer)) and seq_len >= 1):
        raise ValueError(f"seq_len must be an int ≥ 1, got {seq_len!r}")


def _check_int(name: str, v: Any, lo: int) -> int:
    if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo):
        raise ValueError(f"{name} must be an int ≥ {lo}, got {v!r}")
    return int(v)


def _check_real(name: str, v: Any, valid: str, ok) -> float:
    if not (isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v) and ok(v)):
        raise ValueError(f"{name} must be a finite number {valid}, got {v!r}")
    return float(v)


def entropy_of_logits(logits: Array) -> Array:
    """H(softmax(logits)) in nats along the last axis, computed in float32 (float64 for float64 input).

    Terms with p = 0 contribute exactly 0 (the limit p log p → 0), never NaN.
    """
    z = logits.astype(jnp.float64 if logits.dtype == jnp.float64 else jnp.float32)
    logp = jax.nn.log_softmax(z, axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def _entropy_np(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


class DataSource:
    """The interface shared by every source (see the module docstring)."""

    vocab_size: int
    kind: str = "abstract"

    def batch(self, key: PRNGKey, batch_size: int, seq_len: int, split: str = "train") -> dict[str, Array]:
        raise NotImplementedError  # pragma: no cover

    def sample_batch(self, key: PRNGKey, batch_size: int, seq_len: int, split: str = "train") -> Array:
        return self.batch(key, batch_size, seq_len, split)["tokens"]

    def info(self) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    @property
    def has_entropy(self) -> bool:
        """True when ``batch`` also returns the exact conditional entropy of every target."""
        return False


def _split_key(key: PRNGKey, split: str) -> PRNGKey:
    return jax.random.fold_in(key, _SPLIT_SALT[_check_split(split)])


# --------------------------------------------------------------------------------------------------
# (a) the random TV-VAR source (Definition 13, Eq. 44)
# --------------------------------------------------------------------------------------------------


class TVVARSource(DataSource):
    """Sequences from a TV-VAR with fixed random weights (Definition 13, Eq. 44):

        x_0 ~ Uniform(V),     x_{i+1} = argsoftmax( ũᵀ Σ_{j≤i} A[i, j] ũ_{x_j} / Ξ ),

    ũ the token vectors on the unit sphere (Def. 11), A the coefficients of the registered decomposition
    ``decomposition`` (attention by default: A[i, j] = Σ_h π^h[i, j] A_h, Theorem 5). This is
    ``TVVARModel(ModelConfig.pure(V, D, decomposition, xi=Ξ))`` with weights drawn from ``seed``.

    ``batch`` returns the tokens and the exact conditional entropy of every target,
    H_i = H(softmax(logits_i)), from the same logits the token was drawn from. Sampling is one
    ``lax.scan`` over time (each step re-runs the causal model on the fixed-length buffer; row i only
    sees tokens ≤ i, so the unfilled tail never matters).
    """

    kind = "synthetic-tvvar"

    def __init__(self, vocab_size: int = 16, d_model: int = 16, *, xi: float = 0.04,
                 decomposition: str = "attention", mixer: dict[str, Any] | None = None, seed: int = 1234):
        from flax import nnx

        from tvvar.model import ModelConfig, TVVARModel

        self.vocab_size, self.d_model = _check_int("vocab_size", vocab_size, 2), _check_int("d_model", d_model, 1)
        self.xi, self.seed = _check_real("xi", xi, "> 0", lambda v: v > 0), _check_int("seed", seed, 0)
        self.decomposition = decomposition
        self.mixer = dict(mixer if mixer is not None else ({"num_heads": 2} if decomposition == "attention" else {}))
        self.config = ModelConfig.pure(self.vocab_size, self.d_model, decomposition, xi=self.xi, mixer=self.mixer)
        model = TVVARModel(self.config, rngs=nnx.Rngs(params=self.seed))
        graphdef, state = nnx.split(model)
        self._graphdef = graphdef
        # numpy leaves: constants of whatever jit traces this, on one device or a multi-process mesh
        self._state = jax.tree.map(np.asarray, state)

    def model(self):
        """The ground-truth model (a fresh ``TVVARModel`` holding the fixed weights)."""
        from flax import nnx

        return nnx.merge(self._graphdef, jax.tree.map(jnp.asarray, self._state))

    @property
    def has_entropy(self) -> bool:
        return True

    def logits(self, tokens: Array) -> Array:
        """The true next-token logits (already divided by Ξ) for every prefix: [B, T, V] float32."""
        return self.model()(tokens)

    def batch(self, key: PRNGKey, batch_size: int, seq_len: int, split: str = "train") -> dict[str, Array]:
        _check_sizes(batch_size, seq_len)
        key = _split_key(key, split)
        k0, kseq = jax.random.split(key)
        model = self.model()
        B, T = batch_size, seq_len
        buf = jnp.zeros((B, T + 1), jnp.int32).at[:, 0].set(jax.random.randint(k0, (B,), 0, self.vocab_size))

        def step(buf, i):
            logits_BxV = jax.lax.dynamic_index_in_dim(model(buf[:, :T]), i, axis=1, keepdims=False)
            x = jax.random.categorical(jax.random.fold_in(kseq, i), logits_BxV.astype(jnp.float32), axis=-1)
            buf = jax.lax.dynamic_update_index_in_dim(buf, x.astype(jnp.int32)[:, None], i + 1, axis=1)
            return buf, entropy_of_logits(logits_BxV)

        buf, H_TxB = jax.lax.scan(step, buf, jnp.arange(T))
        return {"tokens": buf, "entropy": H_TxB.T.astype(jnp.float32)}

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "d_model": self.d_model, "xi": self.xi,
                "decomposition": self.decomposition, "mixer": self.mixer, "seed": self.seed}

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> TVVARSource:
        return cls(info["vocab_size"], info["d_model"], xi=info["xi"], decomposition=info["decomposition"],
                   mixer=info["mixer"], seed=info["seed"])


# --------------------------------------------------------------------------------------------------
# (b) finite-order Markov chain and hidden Markov model
# --------------------------------------------------------------------------------------------------


def _dirichlet_rows(rng: np.random.Generator, rows: int, cols: int, alpha: float, eps: float) -> np.ndarray:
    P = rng.dirichlet(np.full(cols, alpha), size=rows)
    # a little uniform mass keeps the chain irreducible and aperiodic, so π exists and is unique
    return (1.0 - eps) * P + eps / cols


class MarkovSource(DataSource):
    """An order-k Markov chain over V symbols: P(x_i | x_{<i}) = P[x_{i-k..i-1}, x_i].

    Rows of P are Dirichlet(α) (small α → low entropy) mixed with ``eps`` of uniform mass. The first k
    tokens are drawn from the stationary law π of the k-gram chain, so the process is stationary and

        entropy rate  H = Σ_s π(s) H(P[s, ·])          (closed form, ``entropy_rate``)

    equals E[H(x_i | x_{<i})] at every i ≥ k. The exact conditional entropy of each target is returned
    (for i < k it is that of the stationary marginal π(x_i | x_{<i})).

    ``transitions`` (shape [V^k, V], rows summing to 1) may be given instead of drawn.
    """

    kind = "markov"

    def __init__(self, vocab_size: int = 16, order: int = 1, *, alpha: float = 0.1, eps: float = 1e-3,
                 seed: int = 1234, transitions: np.ndarray | None = None):
        if not (isinstance(order, int) and order >= 1):
            raise ValueError(f"order must be an int ≥ 1, got {order!r}")
        if not (isinstance(vocab_size, int) and vocab_size >= 2):
            raise ValueError(f"vocab_size must be an int ≥ 2, got {vocab_size!r}")
        _check_real("eps", eps, "in [0, 1)", lambda v: 0 <= v < 1)
        if vocab_size**order > 2**16:
            raise ValueError(f"vocab_size**order = {vocab_size**order} k-gram states is too many (max 65536)")
        self.vocab_size, self.order, self.alpha, self.eps, self.seed = (vocab_size, order, float(alpha), float(eps),
                                                                        int(seed))
        V, k = vocab_size, order
        if transitions is None:
            _check_real("alpha", alpha, "> 0", lambda v: v > 0)
            P = _dirichlet_rows(np.random.default_rng(seed), V**k, V, alpha, eps)
            self._given = False
        else:
            P = np.asarray(transitions, np.float64)
            if P.shape != (V**k, V) or np.any(P < 0) or not np.allclose(P.sum(-1), 1.0, atol=1e-12):
                raise ValueError(f"transitions must be a [V^k={V**k}, V={V}] row-stochastic matrix, "
                                 f"got shape {P.shape}")
            self._given = True
        self.P = P
        self.pi = self._stationary()
        # cond[i]: [V^i, V] = π(x_i | x_{<i}) for i < k (x_{<i} flattened base V); P for i ≥ k
        m = self.pi.reshape((V,) * k)
        self._cond = []
        for i in range(k):
            marg = m.reshape((V,) * (i + 1) + (-1,)).sum(-1) if i + 1 < k else m  # law of x_0..x_i
            joint = marg.reshape(V**i, V)
            self._cond.append(joint / np.maximum(joint.sum(-1, keepdims=True), 1e-300))
        self._H_P = _entropy_np(P)
        self._H_cond = [_entropy_np(c) for c in self._cond]

    def _stationary(self) -> np.ndarray:
        V, k = self.vocab_size, self.order
        Pk = self.P.reshape((V,) * k + (V,))
        pi = np.full((V,) * k, 1.0 / V**k)
        for _ in range(100_000):
            # π'(x_2..x_k, y) = Σ_{x_1} π(x_1..x_k) P(x_1..x_k, y)
            new = np.sum(pi[..., None] * Pk, axis=0)
            if np.max(np.abs(new - pi)) < 1e-15:
                pi = new
                break
            pi = new
        return (pi / pi.sum()).reshape(-1)

    @property
    def entropy_rate(self) -> float:
        """H = Σ_s π(s) H(P[s, ·]) in nats (exact)."""
        return float(np.dot(self.pi, self._H_P))

    @property
    def has_entropy(self) -> bool:
        return True

    def batch(self, key: PRNGKey, batch_size: int, seq_len: int, split: str = "train") -> dict[str, Array]:
        _check_sizes(batch_size, seq_len)
        V, k, B, L = self.vocab_size, self.order, batch_size, seq_len + 1
        key = _split_key(key, split)
        logP = jnp.asarray(np.log(np.maximum(self.P, 1e-300)), jnp.float32)
        H_P = jnp.asarray(self._H_P, jnp.float32)
        toks, ents = [], []
        s = jnp.zeros((B,), jnp.int32)  # flattened prefix, base V
        for i in range(min(k, L)):  # the stationary start, k small: unrolled
            c = jnp.asarray(np.log(np.maximum(self._cond[i], 1e-300)), jnp.float32)
            x = jax.random.categorical(jax.random.fold_in(key, i), c[s], axis=-1).astype(jnp.int32)
            if i >= 1:
                ents.append(jnp.asarray(self._H_cond[i], jnp.float32)[s])
            toks.append(x)
            s = s * V + x
        if L > k:
            def step(s, i):
                x = jax.random.categorical(jax.random.fold_in(key, i), logP[s], axis=-1).astype(jnp.int32)
                return (s * V + x) % (V**k), (x, H_P[s])

            _, (xs, hs) = jax.lax.scan(step, s, jnp.arange(k, L))
            tokens = jnp.concatenate([jnp.stack(toks, 1), xs.T], axis=1)
            H = jnp.concatenate([jnp.stack(ents, 1).reshape(B, -1), hs.T], axis=1) if ents else hs.T
        else:
            tokens = jnp.stack(toks, 1)
            H = jnp.stack(ents, 1).reshape(B, -1)
        return {"tokens": tokens, "entropy": H}

    def info(self) -> dict[str, Any]:
        d = {"kind": self.kind, "vocab_size": self.vocab_size, "order": self.order, "alpha": self.alpha,
             "eps": self.eps, "seed": self.seed, "entropy_rate": self.entropy_rate}
        if self._given:
            d["transitions"] = self.P.tolist()
        return d

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> MarkovSource:
        return cls(info["vocab_size"], info["order"], alpha=info["alpha"], eps=info["eps"], seed=info["seed"],
                   transitions=np.asarray(info["transitions"]) if "transitions" in info else None)


class HiddenMarkovSource(DataSource):
    """A hidden Markov model: z_{i+1} ~ T[z_i, ·], x_i ~ E[z_i, ·], z_0 ~ π (stationary).

    The exact conditional entropy of each token given its prefix is that of the Bayes predictive law
    p(x_i | x_{<i}) = Σ_z b_i(z) E[z, x_i], with the filter b_0 = π,
    b_{i+1} ∝ (b_i ⊙ E[·, x_i]) T (the forward recursion). The entropy rate is the limit of
    E[H(x_i | x_{<i})] (no closed form; ``estimate_entropy_rate`` averages late positions).
    ``dtype``: the filter's dtype (float32, or float64 under ``jax.enable_x64``).
    """

    kind = "hmm"

    def __init__(self, vocab_size: int = 16, num_states: int = 8, *, alpha_trans: float = 0.1,
                 alpha_emit: float = 0.1, eps: float = 1e-3, seed: int = 1234,
                 transitions: np.ndarray | None = None, emissions: np.ndarray | None = None,
                 dtype: Any = jnp.float32):
        if not (isinstance(vocab_size, int) and vocab_size >= 2):
            raise ValueError(f"vocab_size must be an int ≥ 2, got {vocab_size!r}")
        if not (isinstance(num_states, int) and num_states >= 1):
            raise ValueError(f"num_states must be an int ≥ 1, got {num_states!r}")
        for name, a in (("alpha_trans", alpha_trans), ("alpha_emit", alpha_emit)):
            _check_real(name, a, "> 0", lambda v: v > 0)
        _check_real("eps", eps, "in [0, 1)", lambda v: 0 <= v < 1)
        self.vocab_size, self.num_states, self.seed = vocab_size, num_states, _check_int("seed", seed, 0)
        self.alpha_trans, self.alpha_emit, self.eps = float(alpha_trans), float(alpha_emit), float(eps)
        rng = np.random.default_rng(seed)
        S, V = num_states, vocab_size
        Tm = (_dirichlet_rows(rng, S, S, alpha_trans, eps) if transitions is None
              else np.asarray(transitions, np.float64))
        E = _dirichlet_rows(rng, S, V, alpha_emit, eps) if emissions is None else np.asarray(emissions, np.float64)
        for name, M, shape in (("transitions", Tm, (S, S)), ("emissions", E, (S, V))):
            if M.shape != shape or np.any(M < 0) or not np.allclose(M.sum(-1), 1.0, atol=1e-12):
                raise ValueError(f"{name} must be a row-stochastic matrix of shape {shape}, got shape {M.shape}")
        self._given = transitions is not None or emissions is not None
        self.T, self.E, self.dtype = Tm, E, dtype
        w, vecs = np.linalg.eig(Tm.T)
        pi = np.real(vecs[:, np.argmin(np.abs(w - 1.0))])
        self.pi = np.abs(pi) / np.abs(pi).sum()

    @property
    def has_entropy(self) -> bool:
        return True

    def batch(self, key: PRNGKey, batch_size: int, seq_len: int, split: str = "train") -> dict[str, Array]:
        _check_sizes(batch_size, seq_len)
        dt = self.dtype
        key = _split_key(key, split)
        B = batch_size
        Tm, E, pi = (jnp.asarray(a, dt) for a in (self.T, self.E, self.pi))
        logT, logE = jnp.log(Tm), jnp.log(E)
        k0, key = jax.random.split(key)
        z0 = jax.random.categorical(k0, jnp.broadcast_to(jnp.log(pi), (B, self.num_states)))

        def step(carry, i):
            z, b = carry
            kz, kx = jax.random.split(jax.random.fold_in(key, i))
            q_BxV = b @ E
            x = jax.random.categorical(kx, logE[z], axis=-1)
            post = b * E[:, x].T
            b_next = (post / jnp.sum(post, -1, keepdims=True)) @ Tm
            z_next = jax.random.categorical(kz, logT[z], axis=-1)
            H = -jnp.sum(jnp.where(q_BxV > 0, q_BxV * jnp.log(jnp.where(q_BxV > 0, q_BxV, 1)), 0), -1)
            return (z_next, b_next), (x.astype(jnp.int32), H)

        b0 = jnp.broadcast_to(pi, (B, self.num_states))
        _, (xs, Hs) = jax.lax.scan(step, (z0, b0), jnp.arange(seq_len + 1))
        return {"tokens": xs.T, "entropy": Hs.T[:, 1:].astype(jnp.promote_types(dt, jnp.float32))}

    def estimate_entropy_rate(self, key: PRNGKey, batch_size: int = 256, seq_len: int = 256,
                              burn_in: int = 64) -> tuple[float, float]:
        """(mean, standard error) of H(x_i | x_{<i}) over positions i > burn_in: the entropy rate's estimate."""
        H = np.asarray(jax.jit(lambda k: self.batch(k, batch_size, seq_len)["entropy"])(key))[:, burn_in:]
        per_seq = H.mean(1)
        return float(per_seq.mean()), float(per_seq.std(ddof=1) / math.sqrt(len(per_seq)))

    def info(self) -> dict[str, Any]:
        d = {"kind": self.kind, "vocab_size": self.vocab_size, "num_states": self.num_states,
             "alpha_trans": self.alpha_trans, "alpha_emit": self.alpha_emit, "eps": self.eps, "seed": self.seed}
        if self._given:
            d["transitions"], d["emissions"] = self.T.tolist(), self.E.tolist()
        return d

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> HiddenMarkovSource:
        return cls(info["vocab_size"], info["num_states"], alpha_trans=info["alpha_trans"],
                   alpha_emit=info["alpha_emit"], eps=info["eps"], seed=info["seed"],
                   transitions=np.asarray(info["transitions"]) if "transitions" in info else None,
                   emissions=np.asarray(info["emissions"]) if "emissions" in info else None)


# --------------------------------------------------------------------------------------------------
# (c) character / byte corpora
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocab:
    """Symbols ↔ ids. Character level: ``symbols`` is the sorted list of distinct characters; byte
    level: the 256 byte values (text is UTF-8 encoded, ids are bytes)."""

    symbols: tuple[str, ...] = field(default=())
    byte_level: bool = False

    def __post_init__(self):
        if not self.byte_level and len(self.symbols) < 1:
            raise ValueError("a character vocabulary needs at least one symbol")
        if not self.byte_level and len(set(self.symbols)) != len(self.symbols):
            raise ValueError("vocabulary symbols must be distinct")

    @property
    def size(self) -> int:
        return 256 if self.byte_level else len(self.symbols)

    def encode(self, text: str | bytes) -> np.ndarray:
        """Ids of ``text``; at byte level ``text`` may be raw bytes (any binary data) or a str (UTF-8)."""
        if self.byte_level:
            raw = text if isinstance(text, (bytes, bytearray)) else text.encode("utf-8")
            return np.frombuffer(bytes(raw), np.uint8).astype(np.int32)
        if not isinstance(text, str):
            raise TypeError(f"text must be a str for a character vocabulary, got {type(text).__name__}")
        index = {c: i for i, c in enumerate(self.symbols)}
        missing = sorted({c for c in text if c not in index})
        if missing:
            raise ValueError(f"text contains characters outside the vocabulary: {missing[:10]!r}")
        return np.fromiter((index[c] for c in text), np.int32, len(text))

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        if self.byte_level:
            return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
        return "".join(self.symbols[int(i)] for i in ids)

    def to_json(self) -> dict[str, Any]:
        return {"byte_level": self.byte_level, "symbols": list(self.symbols)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Vocab:
        return cls(tuple(d.get("symbols", ())), bool(d.get("byte_level", False)))


def _read_corpus_bytes(path: Path) -> bytes:
    """The file's bytes; a name ending in ``.gz`` is gunzipped first (the repository ships its corpus so)."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"corpus file {str(path)!r} ends in .gz but is not a complete gzip file ({e})") from None


class TextCorpus(DataSource):
    """A file as one long token stream: UTF-8 characters, or with ``byte_level=True`` its raw bytes (any
    file, binary included: nothing is decoded). A path ending in ``.gz`` is read decompressed, so
    ``data/tinyshakespeare.txt.gz`` and the same file gunzipped give the same corpus.

    The split is deterministic and contiguous: the first ``1 − val_fraction`` of the stream is train,
    the rest validation. ``batch`` draws random contiguous windows of seq_len + 1 tokens from the split.
    Errors: missing file (FileNotFoundError), empty file, undecodable UTF-8 in character mode and a window
    longer than a split (ValueError) — each names the path and what was expected.
    """

    kind = "text"

    def __init__(self, path: str | Path, *, byte_level: bool = False, val_fraction: float = 0.1):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"corpus file {str(self.path)!r} does not exist")
        if not self.path.is_file():
            raise ValueError(f"corpus path {str(self.path)!r} is not a regular file")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        raw = _read_corpus_bytes(self.path)
        if len(raw) == 0:
            raise ValueError(f"corpus file {str(self.path)!r} is empty")
        if not isinstance(byte_level, bool):
            raise TypeError(f"byte_level must be a bool, got {byte_level!r}")
        self.byte_level, self.val_fraction = byte_level, float(val_fraction)
        if byte_level:
            self.vocab = Vocab(byte_level=True)
            ids = self.vocab.encode(raw)
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"corpus file {str(self.path)!r} is not valid UTF-8 (byte {e.start}: {e.reason}); "
                                 "read it with byte_level=True") from None
            self.vocab = Vocab(tuple(sorted(set(text))))
            ids = self.vocab.encode(text)
        self.vocab_size = self.vocab.size
        n_val = max(1, int(round(len(ids) * val_fraction)))
        if len(ids) - n_val < 1:
            raise ValueError(f"corpus file {str(self.path)!r} has {len(ids)} tokens: too short to split")
        dt = np.uint8 if self.vocab_size <= 256 else (np.uint16 if self.vocab_size <= 65536 else np.int32)
        self._splits = {"train": ids[:-n_val].astype(dt), "val": ids[-n_val:].astype(dt)}

    def split_size(self, split: str) -> int:
        return int(self._splits[_check_split(split)].shape[0])

    def batch(self, key: PRNGKey, batch_size: int, seq_len: int, split: str = "train") -> dict[str, Array]:
        _check_sizes(batch_size, seq_len)
        data = self._splits[_check_split(split)]
        n = data.shape[0]
        if seq_len + 1 > n:
            raise ValueError(f"a window of seq_len + 1 = {seq_len + 1} tokens is longer than the {split} split "
                             f"of {str(self.path)!r} ({n} tokens); use a smaller seq_len")
        starts = jax.random.randint(_split_key(key, split), (batch_size,), 0, n - seq_len)
        data = jnp.asarray(data)
        win = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(data, s, seq_len + 1))(starts)
        return {"tokens": win.astype(jnp.int32)}

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path.resolve()), "byte_level": self.byte_level,
                "val_fraction": self.val_fraction, "vocab_size": self.vocab_size, "vocab": self.vocab.to_json(),
                "sizes": {s: self.split_size(s) for s in SPLITS}}

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> TextCorpus | Vocab:
        """The corpus if its file is still there with the same vocabulary, else the saved :class:`Vocab`."""
        vocab = Vocab.from_json(info["vocab"])
        p = Path(info["path"])
        if p.is_file():
            corpus = cls(p, byte_level=info["byte_level"], val_fraction=info["val_fraction"])
            if corpus.vocab == vocab:
                return corpus
        return vocab


# --------------------------------------------------------------------------------------------------
# construction by name / from a saved description
# --------------------------------------------------------------------------------------------------


# kind → class: the source classes rebuild themselves from their info() (``from_info``); a corpus is
# named by its path, not by a kind.
def _rebuildable(kind: str, cls: Any) -> None:
    if not callable(getattr(cls, "from_info", None)):
        raise TypeError(f"{getattr(cls, '__name__', cls)} needs a from_info(info) classmethod to be rebuilt from a "
                        "saved run")


#: the synthetic sources by ``kind`` (:mod:`tvvar.registry`); those defined in their own modules
#: (tvvar.prompted, tvvar.alignment) register themselves when ``import tvvar`` imports them. A corpus is named by
#: its path, not by a kind.
SOURCES: Registry[type[DataSource]] = Registry("data source", "tvvar-sources", validate=_rebuildable,
                                               reserved=("abstract", TextCorpus.kind))


def register_source(cls: type[DataSource]) -> type[DataSource]:
    """Make a source class known to :func:`make_source` and :func:`source_from_info` by its ``kind``
    (it must rebuild itself with ``cls.from_info(info)``). Usable as a class decorator."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or kind in ("abstract", TextCorpus.kind):
        raise ValueError(f"cls.kind must name the source, got {kind!r}")
    return SOURCES.register(kind, cls)


for _cls in (TVVARSource, MarkovSource, HiddenMarkovSource):
    register_source(_cls)


def make_source(spec: str, **options: Any) -> DataSource:
    """A source by name (``"synthetic-tvvar"``, ``"markov"``, ``"hmm"``) or a path to a text file."""
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"spec must be a source name or a file path, got {type(spec).__name__}")
    if isinstance(spec, str) and spec in SOURCES:
        return SOURCES[spec](**options)
    if not Path(spec).exists():
        raise FileNotFoundError(f"data source {str(spec)!r} is neither a source name ({', '.join(SOURCES.names())}) "
                                "nor an existing file: corpus file does not exist")
    return TextCorpus(spec, **options)


def source_from_info(info: dict[str, Any]) -> DataSource | Vocab:
    """Rebuild a synthetic source from its ``info()``; for a corpus, the file if it is still there,
    otherwise its :class:`Vocab` (enough to encode prompts and decode generations)."""
    kind = info.get("kind") if isinstance(info, dict) else None
    if kind == TextCorpus.kind:
        return TextCorpus.from_info(info)
    if not isinstance(kind, str) or kind not in SOURCES:
        raise ValueError(f"unknown data source kind {kind!r} in saved info; "
                         f"expected one of {', '.join(sorted((*SOURCES.names(), TextCorpus.kind)))}")
    return SOURCES[kind].from_info(info)
