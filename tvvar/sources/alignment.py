"""A latent-alignment source: tokens generated *through* a latent position, with exact probabilities.

The attention of Theorem 5 reads π_tj as the law of a latent source position J (Theorem 6, Eqs. 54–62;
Deng, Kim, Chiu, Guo, Rush 2018, "Latent Alignment and Variational Attention"). The synthetic TV-VAR
source of :mod:`tvvar.sources.synthetic` is a *soft*-attention model (Eq. 44 with soft π), so it cannot tell soft
attention from a latent-position model. This source draws the data through a hard alignment:

    x_0 ~ ρ                                                              (``initial``, default uniform)
    J_i ~ π[i, ·],   π[i, j] = softmax_{j ∈ S(i)}( ũ_{x_i}ᵀ B ũ_{x_j} / τ )     (the π_tj of Eq. 47)
    x_{i+1} | J_i = j ~ E[x_j, ·]                                        (depends on u_{x_j} alone)

Index convention (DESIGN.md): arrays are 0-based, row i predicts token i + 1, S(i) = {0..i} (causal,
j = i included) and the query is u[i] (the paper's u_{t-1} with t = i + 2). ũ are fixed random token
vectors on the unit sphere S^{D−1} (Def. 11), B a fixed random D × D matrix with N(0, 1) entries (so a
score ũ_aᵀ B ũ_b has unit variance before the temperature τ), E a V × V row-stochastic emission matrix
(rows Dirichlet(α) mixed with ``eps`` of uniform mass, or given).

Everything is exact, per row i, given the prefix x_{≤i} (``ids`` = tokens[:, :-1]) and, where it
appears, the target x_{i+1} (``targets`` = tokens[:, 1:]):

    P(x_{i+1} = v | x_{≤i})      = Σ_{j≤i} π[i, j] E[x_j, v]                  :meth:`conditional`
    log P(x_{i+1} | x_{≤i})      = log Σ_{j≤i} π[i, j] E[x_j, x_{i+1}]        :meth:`log_likelihood`
    H(x_{i+1} | x_{≤i})          = −Σ_v P(v | x_{≤i}) log P(v | x_{≤i})       :meth:`entropy` (``"entropy"``)
    P(J_i = j | x_{≤i}, x_{i+1}) = π[i, j] E[x_j, x_{i+1}] / P(x_{i+1} | x_{≤i})  :meth:`posterior`

A target no position j ≤ i can emit (given ``emissions`` with zeros) has log P = −inf on every row, and its
posterior row is the prior π[i, ·] (Bayes' rule is 0/0 on a null event; see :meth:`posterior`).

Sampling (:meth:`batch`) is a pure JAX function: one ``lax.scan`` over rows, each drawing J_i and then
x_{i+1} from row x_{J_i} of E; the split name is folded into the key as for every source
(:func:`tvvar.sources.base.split_key`). Besides ``"tokens"`` and ``"entropy"`` it returns the drawn
``"alignment"`` J (int32 [B, T]).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.core import check_token_ids, float32_or_better, masked_fill_value
from tvvar.sources.base import DataSource, finite_number, is_int, register_source, split_key
from tvvar.typing import Array, PRNGKey

__all__ = ["LatentAlignmentSource", "KIND"]

KIND = "latent-alignment"
_STOCHASTIC_TOL = 1e-9


def _distribution(name: str, p: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``p`` as float64 probabilities of ``shape``, each last-axis row ≥ 0 and summing to 1."""
    a = np.asarray(p)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) or a.dtype == bool:
        raise TypeError(f"{name} must be a real array of probabilities, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must be finite and ≥ 0 (a probability distribution per row); "
                         f"got negative or non-finite entries")
    sums = a.reshape(-1, shape[-1]).sum(-1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _STOCHASTIC_TOL)
    if bad.size:
        where = f"row {bad[0]} " if a.ndim > 1 else ""
        raise ValueError(f"{name} must sum to 1 along its last axis (tolerance {_STOCHASTIC_TOL:g}); "
                         f"{where}sums to {sums[bad[0]]:.12g}")
    return a


@register_source
class LatentAlignmentSource(DataSource):
    """Sequences generated through a hard latent alignment (see the module docstring).

    ``vocab_size`` V ≥ 2, ``d_model`` D ≥ 1 (dimension of ũ and B), ``temperature`` τ > 0 of the
    alignment softmax, ``alpha`` > 0 the Dirichlet concentration of the emission rows (small → nearly
    deterministic emissions, so the alignment matters), ``eps`` ∈ [0, 1] the uniform mass mixed into
    them, ``seed`` for ũ, B and E; ``emissions`` [V, V] and ``initial`` [V] may be given instead (each
    must be a distribution: ≥ 0, rows summing to 1). :meth:`from_info` rebuilds a source from
    :meth:`info`.
    """

    kind = KIND

    def __init__(self, vocab_size: int = 12, d_model: int = 16, *, temperature: float = 0.5, alpha: float = 0.1,
                 eps: float = 1e-3, seed: int = 1234, emissions: Any = None, initial: Any = None):
        if not (is_int(vocab_size) and vocab_size >= 2):
            raise ValueError(f"vocab_size must be an int ≥ 2, got {vocab_size!r}")
        if not (is_int(d_model) and d_model >= 1):
            raise ValueError(f"d_model must be an int ≥ 1, got {d_model!r}")
        if not (is_int(seed) and seed >= 0):
            raise ValueError(f"seed must be an int ≥ 0, got {seed!r}")
        tau = finite_number("temperature", temperature)
        if not tau > 0:
            raise ValueError(f"temperature must be > 0 (the alignment softmax divides by it), got {temperature!r}")
        alpha = finite_number("alpha", alpha)
        if emissions is None and not alpha > 0:
            raise ValueError(f"alpha (Dirichlet concentration of the emission rows) must be > 0, got {alpha!r}")
        eps = finite_number("eps", eps)
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps (uniform mass mixed into the emissions) must lie in [0, 1], got {eps!r}")
        V, D = int(vocab_size), int(d_model)
        self.vocab_size, self.d_model, self.seed = V, D, int(seed)
        self.temperature, self.alpha, self.eps = tau, alpha, eps
        rng = np.random.default_rng(self.seed)
        # drawn in a fixed order, so a given emissions/initial array never changes ũ or B
        g = rng.normal(size=(V, D))
        self.token_vectors = g / np.linalg.norm(g, axis=-1, keepdims=True)  # ũ on S^{D-1} (Def. 11)
        self.bilinear = rng.normal(size=(D, D))
        drawn = (1.0 - eps) * rng.dirichlet(np.full(V, alpha if alpha > 0 else 1.0), size=V) + eps / V
        self._given = {}
        if emissions is not None:
            drawn = self._given["emissions"] = _distribution("emissions", emissions, (V, V))
        self.emissions = drawn
        self.initial = np.full(V, 1.0 / V)
        if initial is not None:
            self.initial = self._given["initial"] = _distribution("initial", initial, (V,))
        # score between token identities: s(a, b) = ũ_aᵀ B ũ_b / τ, so π needs no D-dimensional work
        self.scores = self.token_vectors @ self.bilinear @ self.token_vectors.T / tau

    # ----------------------------------------------------------------------------------------------
    # the exact quantities
    # ----------------------------------------------------------------------------------------------

    @property
    def has_entropy(self) -> bool:
        return True

    def _check_ids(self, ids: Array, name: str = "ids") -> None:
        check_token_ids(ids, self.vocab_size, name=name)
        if ids.ndim != 2:
            raise ValueError(f"{name} must have shape [B, T], got shape {tuple(ids.shape)}")

    def _check_pair(self, ids: Array, targets: Array) -> None:
        self._check_ids(ids)
        self._check_ids(targets, "targets")
        if targets.shape != ids.shape:
            raise ValueError(f"targets must have the shape of ids {tuple(ids.shape)}, got {tuple(targets.shape)}")

    @staticmethod
    def _dtype(dtype: Any) -> Any:
        return float32_or_better(jnp.float32 if dtype is None else dtype)

    def log_alignment(self, ids: Array, dtype: Any = None) -> Array:
        """log π[b, i, j] for rows i of ``ids`` [B, T] over keys j: [B, T, T], ``finfo.min`` for j > i."""
        self._check_ids(ids)
        return self._log_pi(jnp.asarray(ids), self._dtype(dtype))

    def _log_pi(self, ids: Array, dt: Any) -> Array:
        T = ids.shape[1]
        S = jnp.asarray(self.scores, dt)
        s_BxTxT = S[ids[:, :, None], ids[:, None, :]]
        causal = jnp.tril(jnp.ones((T, T), bool))[None]
        fill = masked_fill_value(dt)
        lp = jax.nn.log_softmax(jnp.where(causal, s_BxTxT, fill), axis=-1)
        return jnp.where(causal, lp, fill)

    def conditional(self, ids: Array, dtype: Any = None) -> Array:
        """P(x_{i+1} = v | x_{≤i}) = Σ_{j≤i} π[i, j] E[x_j, v] for every row: [B, T, V]."""
        self._check_ids(ids)
        ids, dt = jnp.asarray(ids), self._dtype(dtype)
        return self._conditional(self._log_pi(ids, dt), ids, dt)

    def _conditional(self, log_pi: Array, ids: Array, dt: Any) -> Array:
        T = ids.shape[1]
        pi = jnp.where(jnp.tril(jnp.ones((T, T), bool))[None], jnp.exp(log_pi), 0)
        E_BxTxV = jnp.asarray(self.emissions, dt)[ids]
        return jnp.einsum("bij,bjv->biv", pi, E_BxTxV, precision=jax.lax.Precision.HIGHEST)

    def entropy(self, ids: Array, dtype: Any = None) -> Array:
        """H(x_{i+1} | x_{≤i}) in nats for every row: [B, T] (0·log 0 = 0)."""
        p = self.conditional(ids, dtype)
        return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0), axis=-1)

    def _log_joint(self, ids: Array, targets: Array, dt: Any) -> Array:
        """log π[i, j] + log E[x_j, x_{i+1}]: [B, T, T], −inf for j > i (no mass, not a large negative number:
        a row whose every j ≤ i has E[x_j, x_{i+1}] = 0 then sums to exactly −inf)."""
        T = ids.shape[1]
        logE = jnp.log(jnp.asarray(self.emissions, dt))
        causal = jnp.tril(jnp.ones((T, T), bool))[None]
        return jnp.where(causal, self._log_pi(ids, dt) + logE[ids[:, None, :], targets[:, :, None]], -jnp.inf)

    def log_likelihood(self, ids: Array, targets: Array, dtype: Any = None) -> Array:
        """log P(x_{i+1} | x_{≤i}) = log Σ_{j≤i} π[i, j] E[x_j, x_{i+1}] (by log-sum-exp): [B, T].

        A target that no latent position j ≤ i can emit (E[x_j, x_{i+1}] = 0 for every j ≤ i, possible only
        with given ``emissions`` that hold zeros) has probability 0: its row is −inf, on every row alike."""
        self._check_pair(ids, targets)
        return jax.nn.logsumexp(self._log_joint(jnp.asarray(ids), jnp.asarray(targets), self._dtype(dtype)), axis=-1)

    def posterior(self, ids: Array, targets: Array, dtype: Any = None) -> Array:
        """P(J_i = j | x_{≤i}, x_{i+1}) for every row: [B, T, T], exactly 0 for j > i; each row sums to 1.

        On a row whose target has probability 0 (:meth:`log_likelihood` = −inf) the conditioning event is
        null and Bayes' rule is 0/0; there the posterior is defined as the prior π[i, ·] (a version of the
        conditional law: any choice on a null event is one), so every row stays a distribution."""
        self._check_pair(ids, targets)
        ids, dt = jnp.asarray(ids), self._dtype(dtype)
        lj = self._log_joint(ids, jnp.asarray(targets), dt)
        T = lj.shape[1]
        causal = jnp.tril(jnp.ones((T, T), bool))[None]
        lse = jax.nn.logsumexp(lj, axis=-1, keepdims=True)
        possible = jnp.isfinite(lse)
        post = jnp.exp(jnp.where(possible, lj - jnp.where(possible, lse, 0), self._log_pi(ids, dt)))
        return jnp.where(causal, post, 0)

    def bayes_decode(self, ids: Array) -> Array:
        """The Bayes-optimal greedy decoder argmax_v P(x_{i+1} = v | x_{≤i}): int32 [B, T]."""
        return jnp.argmax(self.conditional(ids), axis=-1).astype(jnp.int32)

    # ----------------------------------------------------------------------------------------------
    # sampling
    # ----------------------------------------------------------------------------------------------

    def batch(self, key: PRNGKey, batch_size: int, seq_len: int, split: str = "train") -> dict[str, Array]:
        """``tokens`` int32 [B, T + 1], ``entropy`` float32 [B, T] (exact H(x_{i+1} | x_{≤i})) and the
        drawn ``alignment`` J int32 [B, T] (J_i ≤ i)."""
        if not (is_int(batch_size) and batch_size >= 1):
            raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r}")
        if not (is_int(seq_len) and seq_len >= 1):
            raise ValueError(f"seq_len must be an int ≥ 1, got {seq_len!r}")
        key = split_key(key, split)
        B, T = batch_size, seq_len
        # Gumbel-max noise and the logs in float32 (DESIGN numerics); float64 under x64 for the tests
        dt = jnp.asarray(1.0).dtype
        S, logE = jnp.asarray(self.scores, dt), jnp.log(jnp.asarray(self.emissions, dt))
        E = jnp.asarray(self.emissions, dt)
        k0, kseq = jax.random.split(key)
        x0 = jax.random.categorical(k0, jnp.broadcast_to(jnp.log(jnp.asarray(self.initial, dt)), (B, self.vocab_size)))
        buf = jnp.zeros((B, T + 1), jnp.int32).at[:, 0].set(x0.astype(jnp.int32))
        keys_j = jnp.arange(T + 1)[None, :]
        fill = masked_fill_value(dt)

        def step(buf, i):
            kj, kx = jax.random.split(jax.random.fold_in(kseq, i))
            x_i = jax.lax.dynamic_index_in_dim(buf, i, axis=1, keepdims=False)
            # keys j > i (the unfilled tail) are masked, so the fixed-length buffer never leaks
            logit_BxL = jnp.where(keys_j <= i, S[x_i[:, None], buf], fill)
            J = jax.random.categorical(kj, logit_BxL, axis=-1).astype(jnp.int32)
            x_J = jnp.take_along_axis(buf, J[:, None], axis=1)[:, 0]
            x_next = jax.random.categorical(kx, logE[x_J], axis=-1).astype(jnp.int32)
            pi = jax.nn.softmax(logit_BxL, axis=-1)
            p_BxV = jnp.einsum("bj,bjv->bv", jnp.where(keys_j <= i, pi, 0), E[buf],
                               precision=jax.lax.Precision.HIGHEST)
            H = -jnp.sum(jnp.where(p_BxV > 0, p_BxV * jnp.log(jnp.where(p_BxV > 0, p_BxV, 1)), 0), axis=-1)
            buf = jax.lax.dynamic_update_index_in_dim(buf, x_next[:, None], i + 1, axis=1)
            return buf, (J, H)

        buf, (J_TxB, H_TxB) = jax.lax.scan(step, buf, jnp.arange(T))
        return {"tokens": buf, "entropy": H_TxB.T.astype(jnp.promote_types(dt, jnp.float32)), "alignment": J_TxB.T}

    # ----------------------------------------------------------------------------------------------
    # description
    # ----------------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        d = {"kind": self.kind, "vocab_size": self.vocab_size, "d_model": self.d_model,
             "temperature": self.temperature, "alpha": self.alpha, "eps": self.eps, "seed": self.seed}
        for name, a in self._given.items():
            d[name] = a.tolist()
        return d

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> LatentAlignmentSource:
        """Rebuild the source from :meth:`info` (what a run directory's ``data.json`` holds)."""
        if info.get("kind") != KIND:
            raise ValueError(f"info['kind'] must be {KIND!r}, got {info.get('kind')!r}")
        return cls(info["vocab_size"], info["d_model"], temperature=info["temperature"], alpha=info["alpha"],
                   eps=info["eps"], seed=info["seed"], emissions=info.get("emissions"), initial=info.get("initial"))
