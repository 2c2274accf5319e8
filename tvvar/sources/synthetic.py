"""Synthetic sources with exact probabilities: every batch carries the exact conditional entropy of each target.

* :class:`TVVARSource` (``"synthetic-tvvar"``) — the TV-VAR of Definition 13 / Eq. 44 itself: token
  vectors ũ on the unit sphere (Def. 11), a ground-truth decomposition of A_tj with fixed random weights
  (attention by default, Theorem 5; any registered name), and x_{i+1} = argsoftmax(ũᵀ Σ_j A[i, j] u_j / Ξ).
* :class:`MarkovSource` (``"markov"``) — an order-k Markov chain, started in its stationary law, with
  closed-form entropy rate H = Σ_s π(s) H(P[s, ·]).
* :class:`HiddenMarkovSource` (``"hmm"``) — a hidden Markov model; the exact conditional entropy of each
  token given its prefix comes from the forward (filtering) recursion.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.sources.base import (
    DataSource,
    check_int,
    check_real,
    check_sizes,
    entropy_np,
    entropy_of_logits,
    register_source,
    split_key,
)
from tvvar.typing import Array, PRNGKey

__all__ = ["TVVARSource", "MarkovSource", "HiddenMarkovSource"]


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

        self.vocab_size, self.d_model = check_int("vocab_size", vocab_size, 2), check_int("d_model", d_model, 1)
        self.xi, self.seed = check_real("xi", xi, "> 0", lambda v: v > 0), check_int("seed", seed, 0)
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
        check_sizes(batch_size, seq_len)
        key = split_key(key, split)
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
        check_real("eps", eps, "in [0, 1)", lambda v: 0 <= v < 1)
        if vocab_size**order > 2**16:
            raise ValueError(f"vocab_size**order = {vocab_size**order} k-gram states is too many (max 65536)")
        self.vocab_size, self.order, self.alpha, self.eps, self.seed = (vocab_size, order, float(alpha), float(eps),
                                                                        int(seed))
        V, k = vocab_size, order
        if transitions is None:
            check_real("alpha", alpha, "> 0", lambda v: v > 0)
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
        self._H_P = entropy_np(P)
        self._H_cond = [entropy_np(c) for c in self._cond]

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
        check_sizes(batch_size, seq_len)
        V, k, B, L = self.vocab_size, self.order, batch_size, seq_len + 1
        key = split_key(key, split)
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
            check_real(name, a, "> 0", lambda v: v > 0)
        check_real("eps", eps, "in [0, 1)", lambda v: 0 <= v < 1)
        self.vocab_size, self.num_states, self.seed = vocab_size, num_states, check_int("seed", seed, 0)
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
        check_sizes(batch_size, seq_len)
        dt = self.dtype
        key = split_key(key, split)
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


for _cls in (TVVARSource, MarkovSource, HiddenMarkovSource):
    register_source(_cls)
