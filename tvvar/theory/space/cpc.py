"""The information-theoretically optimal embedding (Bai, arXiv:2511.01202, Section IV, Eqs. 40–43): backward
directed information and the chain of bounds CPC optimises — the exact part (issue 15, item 7).

An embedding S_t = f(x_0, …, x_t) (deterministic, causal) of a token process X^n = (X_0, …, X_{n−1}) is
scored by the backward directed information from the future of the text to the embeddings,

    B(f) = Σ_{t=0}^{n−2} I(S_t ; X_{t+1:n} | S^{t−1})                      (S^{−1} empty).

Since S^t is a function of X^t, I(S_t; X_{t+1:n} | S^{t−1}) ≤ I(S^t; X_{t+1:n}) ≤ I(X^t; X_{t+1:n}), so

    B(f) ≤ Σ_t max_f I(X_{t+1:n}; S_t) = Σ_t I(X^t; X_{t+1:n})              (the max is attained by S_t = X^t),

and for a first-order Markov source I(X^t; X_{t+1:n}) = I(X_t; X_{t+1}) ≤ Σ_{k ≥ 1} I(X^t; X_{t+k}), which is
CPC's sum of per-horizon InfoNCE targets (van den Oord et al. 2018, one critic per k):

    B(f) ≤ Σ_t I(X^t; X_{t+1:n}) ≤ Σ_t Σ_{k=1}^{n−1−t} I(X^t; X_{t+k})      (Eq. 42's chain).

The second inequality needs the Markov property (a process whose X_{t+1} and X_{t+2} are each independent of
the past but whose pair is not breaks it; see the tests). Everything here is exact: the joint law of X^n is
an array of shape (V,)*n and every information is a finite sum (float64); for a stationary first-order
Markov chain the three sums have closed forms (:func:`markov_chain_terms`), tested against the enumeration.
Indices are 0-based, as everywhere in tvvar.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tvvar.core import check_token_ids
from tvvar.typing import Array

__all__ = [
    "markov_joint",
    "backward_directed_information",
    "future_information",
    "horizon_information",
    "eq42_chain",
    "markov_horizon_information",
    "markov_chain_terms",
    "CPC",
    "infonce",
    "infonce_by_size",
    "bayes_scores",
    "train_cpc",
]

Encoder = Callable[[tuple[int, ...]], Hashable]


def _check_joint(joint) -> np.ndarray:
    p = np.asarray(joint, np.float64)
    if p.ndim < 2 or len(set(p.shape)) != 1:
        raise ValueError(f"joint must have shape (V,)*n with n ≥ 2 (one axis per token), got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("joint must be finite and non-negative")
    if abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"joint must sum to 1, got {p.sum():.12g}")
    return p


def _check_markov(P, pi) -> tuple[np.ndarray, np.ndarray]:
    P, pi = np.asarray(P, np.float64), np.asarray(pi, np.float64)
    if P.ndim != 2 or P.shape[0] != P.shape[1] or np.any(P < 0) or not np.allclose(P.sum(1), 1.0, atol=1e-12):
        raise ValueError(f"P must be a square row-stochastic matrix, got shape {P.shape}")
    if pi.shape != (P.shape[0],) or np.any(pi < 0) or abs(pi.sum() - 1.0) > 1e-12:
        raise ValueError(f"pi must be a probability vector of length {P.shape[0]}, got shape {pi.shape}")
    return P, pi


def markov_joint(P, pi, n: int) -> np.ndarray:
    """p(x_0, …, x_{n−1}) = π(x_0) Π_t P(x_{t−1}, x_t): shape (V,)*n."""
    P, pi = _check_markov(P, pi)
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n must be an integer ≥ 2, got {n!r}")
    p = pi
    for _ in range(n - 1):
        p = p[..., None] * P.reshape((1,) * (p.ndim - 1) + P.shape)
    return p


def _labels(values: list) -> np.ndarray:
    """Hashable values → integer labels (equal values, equal labels)."""
    index: dict = {}
    return np.array([index.setdefault(v, len(index)) for v in values], np.int64)


def _label_cmi(weights: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """I(A; B | C) in nats for label arrays a, b, c (one entry per outcome) with probabilities ``weights``
    (:func:`tvvar.theory.estimation.categorical.conditional_mutual_information` takes axes of a joint array instead;
    an encoder's labels are not axes)."""
    a, b, c = (np.unique(v, return_inverse=True)[1] for v in (a, b, c))
    joint = np.zeros((a.max() + 1, b.max() + 1, c.max() + 1))
    np.add.at(joint, (a, b, c), weights)
    pac, pbc, pc = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True), joint.sum((0, 1), keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint * pc)[nz] / (pac * pbc)[nz])))


def _outcomes(p: np.ndarray) -> tuple[list[tuple[int, ...]], np.ndarray]:
    seqs = list(itertools.product(range(p.shape[0]), repeat=p.ndim))
    return seqs, p.reshape(-1)


def _encode(seqs, encoder: Encoder | None, n: int) -> list[np.ndarray]:
    enc = encoder if encoder is not None else (lambda prefix: prefix)
    return [_labels([enc(s[: t + 1]) for s in seqs]) for t in range(n)]


def backward_directed_information(joint, encoder: Encoder | None = None) -> float:
    """B(f) = Σ_{t=0}^{n−2} I(S_t; X_{t+1:n} | S^{t−1}) with S_t = encoder(x_0..x_t) (default: the prefix)."""
    p = _check_joint(joint)
    n = p.ndim
    seqs, w = _outcomes(p)
    S = _encode(seqs, encoder, n)
    total, history = 0.0, np.zeros(len(seqs), np.int64)
    for t in range(n - 1):
        future = _labels([s[t + 1:] for s in seqs])
        total += _label_cmi(w, S[t], future, history)
        history = _labels(list(zip(history.tolist(), S[t].tolist(), strict=True)))
    return total


def future_information(joint) -> np.ndarray:
    """[n−1]: I(X^t; X_{t+1:n}) = max over causal encoders of I(S_t; X_{t+1:n}), t = 0..n−2."""
    p = _check_joint(joint)
    seqs, w = _outcomes(p)
    zero = np.zeros(len(seqs), np.int64)
    return np.array([_label_cmi(w, _labels([s[: t + 1] for s in seqs]),
                                                    _labels([s[t + 1:] for s in seqs]), zero)
                     for t in range(p.ndim - 1)])


def horizon_information(joint, encoder: Encoder | None = None) -> np.ndarray:
    """[n−1, n−1]: entry (t, k−1) = I(S_t; X_{t+k}) for 1 ≤ k ≤ n−1−t (0 elsewhere); with the default encoder
    S_t = X^t these are the maxima CPC's k-step critics aim at."""
    p = _check_joint(joint)
    n = p.ndim
    seqs, w = _outcomes(p)
    S = _encode(seqs, encoder, n)
    zero = np.zeros(len(seqs), np.int64)
    out = np.zeros((n - 1, n - 1))
    for t in range(n - 1):
        for k in range(1, n - t):
            out[t, k - 1] = _label_cmi(w, S[t], np.array([s[t + k] for s in seqs]), zero)
    return out


def eq42_chain(joint, encoder: Encoder | None = None) -> dict[str, float]:
    """The three members of Eq. 42's chain: B(f) ≤ Σ_t I(X^t; X_{t+1:n}) ≤ Σ_t Σ_k I(X^t; X_{t+k})."""
    return {"backward_di": backward_directed_information(joint, encoder),
            "future_sum": float(future_information(joint).sum()),
            "horizon_sum": float(horizon_information(joint).sum())}


def markov_horizon_information(P, pi, k: int) -> float:
    """I(X_t; X_{t+k}) = Σ_ij π_i P^k_ij ln(P^k_ij / (πP^k)_j) for X_t ~ π (stationary π: any t)."""
    P, pi = _check_markov(P, pi)
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be an integer ≥ 1, got {k!r}")
    Pk = np.linalg.matrix_power(P, k)
    joint = pi[:, None] * Pk
    marg = joint.sum(0)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((Pk / np.maximum(marg[None, :], 1e-300))[nz])))


def _conditional_entropy(pi: np.ndarray, M: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(M > 0, M * np.log(M), 0.0).sum(1)
    return float(pi @ h)


def markov_chain_terms(P, pi, n: int) -> dict[str, float]:
    """Eq. 42's chain for a stationary first-order Markov chain (πP = π) and the identity encoder, closed form:

    B = I_1 + (n − 2)(H(X_{t+1} | X_{t−1}) − H(X_{t+1} | X_t)),  Σ_t I(X^t; X_{t+1:n}) = (n − 1) I_1,
    Σ_t Σ_k I(X^t; X_{t+k}) = Σ_{k=1}^{n−1} (n − k) I_k,  with I_k = I(X_t; X_{t+k}).
    """
    P, pi = _check_markov(P, pi)
    if not np.allclose(pi @ P, pi, atol=1e-12):
        raise ValueError("pi must be stationary (πP = π) for the closed forms")
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n must be an integer ≥ 2, got {n!r}")
    info = [markov_horizon_information(P, pi, k) for k in range(1, n)]
    gap = _conditional_entropy(pi, P @ P) - _conditional_entropy(pi, P)
    return {"backward_di": info[0] + (n - 2) * gap, "future_sum": (n - 1) * info[0],
            "horizon_sum": float(sum((n - k) * info[k - 1] for k in range(1, n)))}


# --------------------------------------------------------------------------------------------------
# CPC trained: InfoNCE per horizon with a causal tvvar model as g_AR (Eq. 43's estimator)
# --------------------------------------------------------------------------------------------------


def _check_ids(ids, min_len: int) -> None:
    if ids.ndim != 2 or ids.shape[0] < 2 or ids.shape[1] < min_len:
        raise ValueError(f"ids must have shape [N ≥ 2, T ≥ {min_len}] (N sequences, the batch of negatives), "
                         f"got {tuple(ids.shape)}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"ids must be integer token ids, got dtype {ids.dtype}")


class CPC(nnx.Module):
    """Contrastive predictive coding (van den Oord et al. 2018; Eq. 43's upper bound of Eq. 42's chain) with a
    causal tvvar model as g_AR.

    Context c_t = g_AR(x_0..x_t) = ``model.hidden(ids)[:, t]`` [D], code g_enc(x) = a learned table [V, d]
    (the encoder of the predicted token), and one bilinear critic per horizon,
    f_k(c_t, x) = c_tᵀ W_k g_enc(x), k = 1..K. For a batch of N independent sequences the candidates of
    sequence i's target x_{i,t+k} are the N tokens x_{j,t+k} (in-batch negatives: for j ≠ i independent of
    c_{i,t} and drawn from the same marginal when the source is stationary), and

        Î_k = ln N − E_t CE(softmax_j f_k(c_{i,t}, x_{j,t+k}), i)  ≤ I(X_{t+k}; X^t)  and  ≤ ln N

    in expectation (the InfoNCE bound, :func:`tvvar.theory.estimation.neural.infonce_bound`).
    """

    def __init__(self, model, horizons: int, code_dim: int = 32, *, rngs: nnx.Rngs):
        if not (isinstance(horizons, int) and horizons >= 1):
            raise ValueError(f"horizons must be an integer K ≥ 1, got {horizons!r}")
        if not (isinstance(code_dim, int) and code_dim >= 1):
            raise ValueError(f"code_dim must be an integer ≥ 1, got {code_dim!r}")
        if getattr(model.cfg, "mask", "causal") != "causal":
            raise ValueError(f"g_AR must be causal (c_t may not see x_{{t+k}}), got mask={model.cfg.mask!r}")
        V, D = model.cfg.vocab_size, model.cfg.d_model
        self.ar = model
        self.horizons = horizons
        dt = jnp.dtype(model.cfg.param_dtype)
        self.code = nnx.Param(jax.random.normal(rngs.params(), (V, code_dim), dt) / math.sqrt(code_dim))
        self.critic = nnx.Param(jax.random.normal(rngs.params(), (horizons, D, code_dim), dt) / math.sqrt(D))

    def scores(self, ids: Array) -> list[Array]:
        """Entry k−1 (k = 1..K): S [T−k, N, N] with S[t, i, j] = f_k(c_{i,t}, x_{j,t+k})."""
        _check_ids(ids, self.horizons + 1)  # the embedding checks the id range
        c = self.ar.hidden(ids)
        c = c.astype(jnp.promote_types(c.dtype, jnp.float32))               # [N, T, D]
        z = jnp.take(self.code[...], ids, axis=0)                          # [N, T, d]
        out = []
        for k in range(1, self.horizons + 1):
            cw = jnp.einsum("ntd,de->nte", c[:, :-k], self.critic[...][k - 1])
            out.append(jnp.einsum("ite,jte->tij", cw, z[:, k:]))
        return out

    def __call__(self, ids: Array) -> Array:
        """[K]: the InfoNCE estimates Î_k on this batch (N = ids.shape[0] candidates), mean over positions."""
        return jnp.stack([infonce(S) for S in self.scores(ids)])


def infonce(S: Array) -> Array:
    """ln N − mean_t CE(S[t, i, :], i) for scores S [..., N, N] (rows: contexts, columns: candidates; the
    positive on the diagonal), with ``optax.losses.softmax_cross_entropy_with_integer_labels``."""
    N = S.shape[-1]
    labels = jnp.broadcast_to(jnp.arange(N), S.shape[:-1])
    return jnp.log(N) - jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(S, labels))


def infonce_by_size(S: Array, sizes) -> Array:
    """[len(sizes)]: the InfoNCE estimate with N candidates for each N in ``sizes``, from one score tensor
    S [..., M, M]: the M sequences are cut into M/N groups and each group's diagonal block is a batch of N."""
    M = S.shape[-1]
    out = []
    for n in sizes:
        if not (isinstance(n, int) and n >= 2 and M % n == 0):
            raise ValueError(f"sizes must be integers ≥ 2 dividing the batch M = {M}, got {n!r}")
        G = M // n
        blocks = S.reshape(S.shape[:-2] + (G, n, G, n))
        diag = jnp.diagonal(blocks, axis1=-4, axis2=-2)                     # [..., n, n, G]
        out.append(infonce(jnp.moveaxis(diag, -1, -3)))
    return jnp.stack(out)


def bayes_scores(P, pi, k: int, ids: Array, dtype=jnp.float32) -> Array:
    """The Bayes-optimal horizon-k critic's scores on ids [N, T]: S[t, i, j] = ln P^k(x_{i,t}, x_{j,t+k}) −
    ln π(x_{j,t+k}) (the log density ratio; any function of the context alone may be added), [T−k, N, N]."""
    P, pi = _check_markov(P, pi)
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be an integer ≥ 1, got {k!r}")
    ids = jnp.asarray(ids)
    _check_ids(ids, k + 1)
    check_token_ids(ids, P.shape[0])  # indexing R would clamp an out-of-range id silently
    with np.errstate(divide="ignore"):
        ratio = np.log(np.linalg.matrix_power(P, k)) - np.log(pi)[None, :]
    R = jnp.asarray(np.maximum(ratio, -1e30), dtype)  # an impossible pair: a finite, hugely negative score
    a, b = ids[:, :-k].T, ids[:, k:].T                                     # [T−k, N]
    return R[a[:, :, None], b[:, None, :]]


def train_cpc(cpc: CPC, source, *, steps: int, batch_size: int, seq_len: int, lr: float = 3e-3,
              warmup: int = 20, key: Array) -> np.ndarray:
    """Maximise Σ_k Î_k with Adam(W) on batches ``source.batch(key, batch_size, seq_len − 1)["tokens"]`` (seq_len
    tokens each), drawn inside the jitted step; returns the training curve [steps, K] of Î_k."""
    for name, v, lo in (("steps", steps, 1), ("batch_size", batch_size, 2), ("seq_len", seq_len, cpc.horizons + 1),
                        ("warmup", warmup, 0)):
        if not (isinstance(v, int) and v >= lo):
            raise ValueError(f"{name} must be an integer ≥ {lo}, got {v!r}")
    # as tvvar.train.schedule_length: the schedule spans at least warmup + 1 steps, so a run no longer than its
    # warmup stops while still warming up (optax refuses a cosine decay over 0 steps)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), end_value=0.1 * lr)
    opt = nnx.Optimizer(cpc, optax.adamw(schedule, weight_decay=0.0), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, key):
        ids = source.batch(key, batch_size, seq_len - 1)["tokens"]

        def loss(m):
            est = m(ids)
            return -jnp.sum(est), est

        (_, est), g = nnx.value_and_grad(loss, has_aux=True)(model)
        opt.update(model, g)
        return est

    return np.stack([np.asarray(step(cpc, opt, jax.random.fold_in(key, s))) for s in range(steps)])
