"""Semantic information capacity, directed rate–reward and the one-step directed rate–distortion curve.

A channel here is a row-stochastic matrix ``W[k, y]`` = P(Y = y | S = s_k) over a finite output alphabet —
one-step outputs, or whole continuations enumerated (``exp`` of the sequence log-likelihoods of a model or of
:class:`tvvar.prompted.PromptedSource`). All in nats, float64 NumPy (these are small convex programs).

* :func:`blahut_arimoto` — the semantic information capacity (Def. 9, Eq. 32) max_{P(S)} I(S; Y) subject to
  E[w(S, Y)] ≥ W_min, by Blahut–Arimoto on I + μ E[w] (Blahut 1972, the cost-constrained form) and bisection
  on the multiplier μ ≥ 0; stops when the standard upper and lower bounds on the Lagrangian agree to ``tol``.
* :func:`rate_reward` — R_post(W) (Def. 7, Eqs. 20–21): min_{Q(y|s)} I(S; Y) subject to E[w(S, Y)] ≥ W for a
  fixed prompt law: Q(y|s) ∝ r(y) e^{β w(s, y)}, r = Σ_s p(s) Q(·|s), β ≥ 0 by bisection.
* :func:`rate_distortion_one_step` — R_pre(D) (Def. 6, Eq. 11) for one-step outputs, min_Q I(S; U) subject to
  Σ_s p(s) KL(P(·|s) ‖ Q(·|s)) ≤ D: convex in Q; solved exactly by alternating minimisation of
  Σ_s p(s) [KL(Q_s ‖ r) + β KL(P_s ‖ Q_s)] over r (closed form: r = Σ p Q) and Q_s (stationarity
  Q(u) = β P(u) / W₀(β P(u) e^c / r(u)), with W₀ the Lambert function and c fixing Σ_u Q(u) = 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import lambertw

__all__ = ["binary_entropy", "check_channel", "check_reward", "mutual_information", "blahut_arimoto",
           "rate_reward", "rate_distortion_one_step", "rate_distortion_curve", "r_pre_at"]


def binary_entropy(p: float) -> float:
    """h(p) in bits."""
    return 0.0 if p in (0.0, 1.0) else float(-p * math.log2(p) - (1 - p) * math.log2(1 - p))


def check_channel(W: Any, name: str = "W") -> np.ndarray:
    a = np.asarray(W, np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty [K, Y] row-stochastic matrix (a channel P(y | s)), "
                         f"got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(np.abs(a.sum(1) - 1) > 1e-6):
        raise ValueError(f"{name} must be finite, ≥ 0, with rows summing to 1 (a channel P(y | s))")
    return a


def check_reward(w: Any, shape: tuple[int, int]) -> np.ndarray:
    """A reward w(s, y) as an array of ``shape``, or a callable ``w(k, y) -> float`` evaluated on the grid;
    NaN or ±inf raises (a reward must be a number for every prompt and output)."""
    if callable(w):
        a = np.array([[float(w(k, y)) for y in range(shape[1])] for k in range(shape[0])])
    else:
        a = np.asarray(w, np.float64)
    if a.shape != shape:
        raise ValueError(f"reward must have shape {shape} (prompts × outputs), got {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"reward must be finite; it returned {a[tuple(bad)]} at prompt {bad[0]}, output {bad[1]}")
    return a


def _check_prior(p: Any, K: int) -> np.ndarray:
    a = np.asarray(p, np.float64)
    if a.shape != (K,):
        raise ValueError(f"prompt law must have shape [K={K}], got {a.shape} (an empty prompt set has no law)")
    if not np.all(np.isfinite(a)) or np.any(a < 0) or a.sum() <= 0:
        raise ValueError("prompt law must be finite and ≥ 0 with positive mass (not a zero-probability prompt set)")
    if abs(a.sum() - 1) > 1e-6:
        raise ValueError(f"prompt law must sum to 1, sums to {a.sum():.8g}")
    return a


def _kl_rows(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(np.where(P > 0, P * (np.log(np.where(P > 0, P, 1)) - np.log(np.where(P > 0, Q, 1))), 0), -1)


def mutual_information(p: Any, W: Any) -> float:
    """I(S; Y) in nats for prompt law p [K] and channel W [K, Y]."""
    W = check_channel(W)
    p = _check_prior(p, W.shape[0])
    return float(np.sum(p * _kl_rows(W, p @ W)))


def _ba_lagrangian(W, wbar, mu, tol, max_iter, p0):
    K = W.shape[0]
    p = np.full(K, 1.0 / K) if p0 is None else p0.copy()
    it = 0
    for it in range(max_iter):  # noqa: B007 (the count is returned)
        q = p @ W
        logc = _kl_rows(W, q) + mu * wbar
        m = logc.max()
        lower = m + math.log(np.sum(p * np.exp(logc - m)))
        if m - lower < tol:
            break
        p = p * np.exp(logc - m)
        p /= p.sum()
    return p, it + 1, m - lower


def blahut_arimoto(W: Any, reward: Any = None, min_reward: float | None = None, *, tol: float = 1e-10,
                   max_iter: int = 100_000, bisect_iter: int = 40) -> dict[str, Any]:
    """max_{P(S)} I(S; Y) [subject to E w(S, Y) ≥ ``min_reward``] (Def. 9, Eq. 32), in nats.

    Returns ``capacity`` (nats), ``capacity_bits``, ``prior`` (the optimal prompt law), ``reward`` (its E w),
    ``mu`` (the multiplier), ``iterations`` and ``gap`` (upper − lower bound at the end)."""
    W = check_channel(W)
    K, Y = W.shape
    if (reward is None) != (min_reward is None):
        raise ValueError("reward and min_reward go together: give both (a constrained capacity) or neither")
    wbar = np.zeros(K)
    if reward is not None:
        if isinstance(min_reward, bool) or not isinstance(min_reward, (int, float)) or not math.isfinite(min_reward):
            raise ValueError(f"min_reward must be a finite number, got {min_reward!r}")
        wbar = np.sum(W * check_reward(reward, (K, Y)), axis=1)
        if min_reward > wbar.max() + 1e-12:
            raise ValueError(f"min_reward={min_reward} is infeasible: the largest expected reward of any prompt is "
                             f"{wbar.max():.6g}")
    p, it, gap = _ba_lagrangian(W, wbar, 0.0, tol, max_iter, None)
    mu = 0.0
    if reward is not None and p @ wbar < min_reward:
        lo, hi = 0.0, 1.0
        p_hi = _ba_lagrangian(W, wbar, hi, tol, max_iter, p)[0]
        while p_hi @ wbar < min_reward and hi < 1e8:
            hi *= 2
            p_hi = _ba_lagrangian(W, wbar, hi, tol, max_iter, p_hi)[0]
        for _ in range(bisect_iter):
            mid = 0.5 * (lo + hi)
            pm = _ba_lagrangian(W, wbar, mid, tol, max_iter, p_hi)[0]   # warm start from the feasible side
            if pm @ wbar < min_reward:
                lo = mid
            else:
                hi, p_hi = mid, pm
        mu = hi
        p, it, gap = _ba_lagrangian(W, wbar, mu, tol, max_iter, p_hi)
    C = float(np.sum(p * _kl_rows(W, p @ W)))
    return {"capacity": C, "capacity_bits": C / math.log(2), "prior": p, "reward": float(p @ wbar), "mu": mu,
            "iterations": it, "gap": float(gap)}


def _rate_reward_beta(p, w, beta, tol, max_iter):
    K, Y = w.shape
    r = np.full(Y, 1.0 / Y)
    for _ in range(max_iter):
        with np.errstate(divide="ignore"):
            logQ = np.log(r)[None, :] + beta * w
        logQ -= logQ.max(1, keepdims=True)
        Q = np.exp(logQ)
        Q /= Q.sum(1, keepdims=True)
        r_new = p @ Q
        if np.max(np.abs(r_new - r)) < tol:
            r = r_new
            break
        r = r_new
    return Q


def rate_reward(prior: Any, reward: Any, min_reward: float, *, num_outputs: int | None = None, tol: float = 1e-11,
                max_iter: int = 20_000) -> dict[str, Any]:
    """R_post(W) = min_{Q(y|s)} I(S; Y) subject to E[w(S, Y)] ≥ ``min_reward`` (Def. 7), in nats.

    Returns ``rate``, ``reward`` (achieved), ``beta`` and ``channel`` Q [K, Y]."""
    p = np.asarray(prior, np.float64)
    K = p.shape[0] if p.ndim == 1 else 0
    p = _check_prior(p, K) if K else _check_prior(p, -1)
    Y = num_outputs if num_outputs is not None else np.asarray(reward).shape[-1] if not callable(reward) else None
    if Y is None:
        raise ValueError("num_outputs is needed when reward is a callable")
    w = check_reward(reward, (K, Y))
    best = float(p @ w.max(1))
    if not isinstance(min_reward, (int, float)) or not math.isfinite(min_reward):
        raise ValueError(f"min_reward must be a finite number, got {min_reward!r}")
    if min_reward > best + 1e-12:
        raise ValueError(f"min_reward={min_reward} is infeasible: the best achievable expected reward is {best:.6g}")
    # zero rate: an output law that ignores S reaches at most max_y Σ_s p(s) w(s, y) (a point mass there)
    y0 = int(np.argmax(p @ w))
    if float(p @ w[:, y0]) >= min_reward:
        Q0 = np.zeros((K, Y))
        Q0[:, y0] = 1.0
        return {"rate": 0.0, "reward": float(p @ w[:, y0]), "beta": 0.0, "channel": Q0}
    lo, hi = 0.0, 1.0
    while np.sum(p[:, None] * _rate_reward_beta(p, w, hi, tol, max_iter) * w) < min_reward and hi < 1e6:
        hi *= 2
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        Q = _rate_reward_beta(p, w, mid, tol, max_iter)
        lo, hi = (mid, hi) if np.sum(p[:, None] * Q * w) < min_reward else (lo, mid)
    Q = _rate_reward_beta(p, w, hi, tol, max_iter)
    return {"rate": float(np.sum(p * _kl_rows(Q, p @ Q))), "reward": float(np.sum(p[:, None] * Q * w)),
            "beta": hi, "channel": Q}


def _q_given_r(P: np.ndarray, r: np.ndarray, beta: float) -> np.ndarray:
    """argmin_Q KL(Q ‖ r) + β KL(P ‖ Q) for each row of P [K, V] (Lambert-W stationarity, bisection on c)."""
    K, V = P.shape
    lo, hi = np.full(K, -60.0), np.full(K, 60.0)

    def q_of(c):
        with np.errstate(over="ignore", divide="ignore"):
            arg = np.where(P > 0, beta * P / r[None, :] * np.exp(c[:, None]), 0.0)
            z = np.real(lambertw(arg))
            return np.where(P > 0, beta * P / np.where(z > 0, z, 1.0), r[None, :] * np.exp(-c[:, None]))

    for _ in range(80):
        mid = 0.5 * (lo + hi)
        s = q_of(mid).sum(1)
        lo, hi = np.where(s > 1, mid, lo), np.where(s > 1, hi, mid)
    Q = q_of(0.5 * (lo + hi))
    return Q / Q.sum(1, keepdims=True)


def rate_distortion_one_step(prior: Any, P: Any, beta: float, *, tol: float = 1e-11,
                             max_iter: int = 2000) -> dict[str, Any]:
    """One point of R_pre(D) for one-step outputs: the minimiser of Σ_s p(s)[KL(Q_s ‖ r) + β KL(P_s ‖ Q_s)]
    (slope −1/β of the curve). Returns ``D`` = Σ p KL(P_s ‖ Q_s), ``R`` = I(S; U) under Q, and ``Q``."""
    P = check_channel(P, "P")
    p = _check_prior(prior, P.shape[0])
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    Q = P.copy()
    r = p @ Q
    for _ in range(max_iter):
        Q = _q_given_r(P, r, float(beta))
        r_new = p @ Q
        done = np.max(np.abs(r_new - r)) < tol
        r = r_new
        if done:
            break
    return {"D": float(np.sum(p * _kl_rows(P, Q))), "R": float(np.sum(p * _kl_rows(Q, r))), "Q": Q}


def rate_distortion_curve(prior: Any, P: Any, betas: Any = None) -> dict[str, np.ndarray]:
    """The exact one-step R_pre(D) curve over a grid of slopes: ``D`` and ``R`` arrays (D increasing), with the
    end points D = 0 → R = I_P(S; U) and R = 0 → D = I_P(S; U) appended."""
    P = check_channel(P, "P")
    p = _check_prior(prior, P.shape[0])
    betas = np.geomspace(1e-2, 1e3, 40) if betas is None else np.asarray(betas, np.float64)
    pts = [rate_distortion_one_step(p, P, float(b)) for b in betas]
    I_P = float(np.sum(p * _kl_rows(P, p @ P)))
    D = np.array([0.0] + [q["D"] for q in pts] + [I_P])
    R = np.array([I_P] + [q["R"] for q in pts] + [0.0])
    order = np.argsort(D, kind="stable")
    return {"D": D[order], "R": R[order], "I_P": I_P}


def r_pre_at(curve: dict[str, np.ndarray], D: float) -> float:
    """R_pre(D) by linear interpolation of a curve from :func:`rate_distortion_curve` (convex, so the chord lies
    above the curve: an upper estimate of R_pre, which makes "a point lies on or above R_pre" a stricter test)."""
    return float(np.interp(D, curve["D"], curve["R"]))

