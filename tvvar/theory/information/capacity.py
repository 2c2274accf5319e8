"""Semantic information capacity, directed rate–reward and the one-step directed rate–distortion curve.

A channel here is a row-stochastic matrix ``W[k, y]`` = P(Y = y | S = s_k) over a finite output alphabet —
one-step outputs, or whole continuations enumerated (``exp`` of the sequence log-likelihoods of a model or of
:class:`tvvar.sources.PromptedSource`). All in nats, float64 NumPy (these are small convex programs).

* :func:`blahut_arimoto` — the semantic information capacity (Def. 9, Eq. 32) max_{P(S)} I(S; Y) subject to
  E[w(S, Y)] ≥ W_min, by Blahut–Arimoto on I + μ E[w] (Blahut 1972, the cost-constrained form) and bisection
  on the multiplier μ ≥ 0; stops when the standard upper and lower bounds on the Lagrangian agree to ``tol``.
* :func:`rate_reward` — R_post(W) (Def. 7, Eqs. 20–21): min_{Q(y|s)} I(S; Y) subject to E[w(S, Y)] ≥ W for a
  fixed prompt law: Q(y|s) ∝ r(y) e^{β w(s, y)}, r = Σ_s p(s) Q(·|s), β ≥ 0 by bisection.
* :func:`rate_distortion_one_step` — R_pre(D) (Def. 6, Eq. 11) for one-step outputs, min_Q I(S; U) subject to
  Σ_s p(s) KL(P(·|s) ‖ Q(·|s)) ≤ D: convex in Q; the point of slope −β solved by alternating minimisation
  of Σ_s p(s) [KL(Q_s ‖ r) + β KL(P_s ‖ Q_s)] over r (closed form: r = Σ p Q) and Q_s (stationarity
  Q(u) = β P(u) / W₀(β P(u) e^c / r(u)), with W₀ the Lambert function, evaluated in log space, and c fixing
  Σ_u Q(u) = 1, bracketed without a fixed range: c grows like β).
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


def _w_exp(y: np.ndarray) -> np.ndarray:
    """W₀(e^y), the principal Lambert function at e^y, for any real y without overflow: the root w > 0 of
    w + log w = y, by Newton's method from a start within a factor 2 (lambertw(e^y) where e^y is small)."""
    y = np.asarray(y, np.float64)
    small = y < 20.0
    yb = np.where(small | ~np.isfinite(y), 20.0, y)                     # the Newton branch, kept finite
    w = np.real(lambertw(np.exp(np.minimum(y, 20.0))))
    wb = yb - np.log(yb)
    for _ in range(8):  # quadratic convergence from |w − w*| < 1 (y ≥ 20 only; lambertw is exact below)
        wb = wb - (wb + np.log(wb) - yb) / (1.0 + 1.0 / wb)
    return np.where(np.isposinf(y), np.inf, np.where(small, w, wb))


def _q_of_c(P: np.ndarray, log_r: np.ndarray, beta: float, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stationary Q(u) = β P(u) / W₀(β P(u) e^c / r(u)) (and r(u) e^{−c} where P(u) = 0), row by row, and
    dΣ_u Q(u)/dc = −Σ_u Q(u)/(1 + z(u)) (z = W₀(…); z := 0 where P(u) = 0)."""
    with np.errstate(divide="ignore"):
        y = np.log(beta * np.where(P > 0, P, 1.0)) - log_r[None, :] + c[:, None]
    z = np.where(P > 0, _w_exp(y), 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        Q = np.where(P > 0, beta * P / np.where(P > 0, z, 1.0), np.exp(log_r[None, :] - c[:, None]))
        dQ = np.where(Q > 0, -Q / (1.0 + z), 0.0)
    return Q, dQ.sum(1)


def _q_given_r(P: np.ndarray, r: np.ndarray, beta: float) -> tuple[np.ndarray, float]:
    """argmin_Q KL(Q ‖ r) + β KL(P ‖ Q) for each row of P [K, V]: (Q, largest |Σ_u Q(u) − 1| before the final
    rescale). Stationarity gives Q(u) = β P(u) / W₀(β P(u) e^c / r(u)) with one multiplier c per row fixing
    Σ_u Q(u) = 1; Σ_u Q is strictly decreasing in c, so c is bracketed by doubling steps from [−1, 1] (no
    fixed range: c grows like β for large β) and then found by Newton's method kept inside the bracket
    (bisection when a step leaves it), to the resolution of a float64."""
    K, _ = P.shape
    with np.errstate(divide="ignore"):
        log_r = np.log(r)

    def total(c):
        Q, d = _q_of_c(P, log_r, beta, c)
        return Q.sum(1), d

    lo, hi = np.full(K, -1.0), np.full(K, 1.0)
    for _ in range(64):                 # Σ Q(lo) ≥ 1 ≥ Σ Q(hi): widen each side until it holds
        s_lo, s_hi = total(lo)[0], total(hi)[0]
        if np.all(s_lo >= 1) and np.all(s_hi <= 1):
            break
        width = hi - lo
        lo, hi = np.where(s_lo < 1, lo - width, lo), np.where(s_hi > 1, hi + width, hi)
    else:
        raise RuntimeError("rate_distortion_one_step: could not bracket the multiplier c")
    c = 0.5 * (lo + hi)
    for _ in range(200):
        s_c, d_c = total(c)
        lo, hi = np.where(s_c > 1, c, lo), np.where(s_c > 1, hi, c)
        if np.all(np.abs(s_c - 1) <= 2 * np.finfo(np.float64).eps) or \
                np.all(hi - lo <= 4 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(c))):
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            step = c - (s_c - 1) / d_c
        c = np.where(np.isfinite(step) & (step > lo) & (step < hi), step, 0.5 * (lo + hi))
    Q = _q_of_c(P, log_r, beta, c)[0]
    s = Q.sum(1, keepdims=True)
    return Q / s, float(np.max(np.abs(s - 1)))


def rate_distortion_one_step(prior: Any, P: Any, beta: float, *, tol: float = 1e-11,
                             max_iter: int = 2000) -> dict[str, Any]:
    """One point of R_pre(D) for one-step outputs: the minimiser Q of the Lagrangian
    Σ_s p(s)[KL(Q_s ‖ r) + β KL(P_s ‖ Q_s)] (r = Σ_s p(s) Q_s at the optimum), i.e. the point where the curve
    R_pre(D) has slope dR/dD = −β (the tangent of slope −β touches it there).

    Solved by alternating minimisation: r ← Σ p Q (closed form), then each row Q_s from its stationarity
    condition with the normalising multiplier found without a fixed range (:func:`_q_given_r`), until r moves
    by less than ``tol``. Each row sums to 1 to float64 rounding before the final rescale (reported as
    ``normalisation_error``); against an independent minimiser (BFGS over a softmax parametrisation) the
    Lagrangian R + βD agrees to ≈ 1e-9 nats for β from 0.5 to 1000 (``tests/test_capacity.py``), and it is
    never above Q = P's value I_P(S; U).

    Returns ``D`` = Σ p KL(P_s ‖ Q_s), ``R`` = I(S; U) under Q, ``Q``, ``beta``, ``iterations`` and
    ``normalisation_error``."""
    P = check_channel(P, "P")
    p = _check_prior(prior, P.shape[0])
    if isinstance(beta, bool) or not (isinstance(beta, (int, float, np.floating)) and math.isfinite(beta)
                                      and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    Q = P.copy()
    r = p @ Q
    err = 0.0
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        Q, e = _q_given_r(P, r, float(beta))
        err = max(err, e) if it == 1 else e
        r_new = p @ Q
        done = np.max(np.abs(r_new - r)) < tol
        r = r_new
        if done:
            break
    return {"D": float(np.sum(p * _kl_rows(P, Q))), "R": float(np.sum(p * _kl_rows(Q, r))), "Q": Q,
            "beta": float(beta), "iterations": it, "normalisation_error": err}


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

