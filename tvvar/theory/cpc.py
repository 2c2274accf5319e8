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
from collections.abc import Callable, Hashable

import numpy as np

__all__ = [
    "markov_joint",
    "backward_directed_information",
    "future_information",
    "horizon_information",
    "eq42_chain",
    "markov_horizon_information",
    "markov_chain_terms",
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
    (:func:`tvvar.theory.categorical_di.conditional_mutual_information` takes axes of a joint array instead;
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
