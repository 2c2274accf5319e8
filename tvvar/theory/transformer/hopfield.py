"""Section V-E of Bai (arXiv:2511.01202): memory capacity of Hopfield networks, Definition 14.

The generalized Gardner capacity of a network of n neurons that stores N_P patterns is

    C_G = α(N_P) / n                                                         (Definition 14)

with α the identity for binary patterns (the classical load p/n) and a logarithm for patterns on the
sphere (modern Hopfield networks store exponentially many: C_G = log N_P / n).

This module holds the binary networks; the modern continuous network, its attention form and the
Hopfield Ψ layer live in :mod:`tvvar.theory.transformer.hopfield_modern` and are re-exported here.

* Classical network (Hopfield 1982; Amit, Gutfreund, Sompolinsky 1985): Hebbian couplings
  W = (1/n) Σ_μ ξ^μ ξ^μᵀ with W_ii = 0, energy E = −½ sᵀWs, overlap m = ξ·s/n, synchronous and
  asynchronous (random order, to a fixed point) dynamics, one-step flip rate ≈ Φ(−1/√α).
* Optimal couplings (Gardner 1988): per-neuron perceptron with stability margin κ, the maximal
  stability of a random perceptron (dual coordinate ascent with certified bounds), the capacity
  α_c(κ) = [∫_{−κ}^∞ Dt (t+κ)²]⁻¹, and Cover's counting function P(p, n) = 2^{1−p} Σ_{k<n} C(p−1, k).
* Dense associative memory (Krotov & Hopfield 2016; Demircigil et al. 2017): E = −Σ_μ F(ξ^μ·s) with
  F(x) = x^k or F = exp, and the exact-fixed-point check of every stored pattern.

Shapes: patterns are rows, ``patterns[μ, i] = ξ^μ_i`` of shape [P, n]. Every sweep function is
vectorized with ``vmap`` over trials and loads; a load is a number of rows ``p`` of a [P_max, n]
pattern array (rows ≥ p are masked out), so one compiled function serves the whole α grid.

Numerics: the classical couplings are kept as integers J = nW = Σ_μ ξξᵀ − p·I (exact in float32 up
to 2^24), so the fields h = J s and the fixed-point decisions are exact; a zero field keeps the
neuron's state (sign(0) → s_i), so "fixed point" means s_i h_i ≥ 0 for every i.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from tvvar.typing import Array, PRNGKey

__all__ = [
    # classical
    "check_binary_patterns",
    "random_patterns",
    "hebbian_couplings",
    "energy",
    "overlap",
    "local_field",
    "synchronous_step",
    "run_synchronous",
    "run_asynchronous",
    "one_step_flip_rate",
    "flip_rate_reference",
    "classical_sweep",
    "ALPHA_C_AGS",
    # Gardner
    "gardner_alpha_c",
    "gardner_alpha_c_quad",
    "cover_fraction",
    "perceptron_couplings",
    "max_stability",
    "gardner_sweep",
    # dense
    "dense_fields",
    "dense_stable",
    "dense_energy",
    "dense_flip_reference",
    "dense_sweep",
    "double_factorial",
]

#: The AGS (1985) critical load of the Hebbian network at T = 0.
ALPHA_C_AGS = 0.138


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_binary_patterns(patterns: Array, *, name: str = "patterns") -> None:
    """Patterns must be a [P, n] array with n ≥ 2 and every entry ±1 (checked when concrete)."""
    shape = getattr(patterns, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name} must have shape [P, n] (rank 2), got shape {shape}")
    if shape[1] < 2:
        raise ValueError(f"{name} must have n ≥ 2 neurons (its last axis), got n = {shape[1]}")
    if shape[0] < 1:
        raise ValueError(f"{name} must hold at least one pattern, got shape {tuple(shape)}")
    if _is_concrete(patterns):
        a = np.asarray(patterns)
        if not np.all(np.abs(a) == 1):
            bad = a[np.abs(a) != 1].ravel()[:3]
            raise ValueError(f"{name} must contain only ±1 entries for a binary Hopfield network, "
                             f"found e.g. {bad.tolist()}")


def _check_state(s: Array, n: int, *, name: str = "s") -> None:
    shape = getattr(s, "shape", None)
    if shape is None or len(shape) != 1 or shape[0] != n:
        raise ValueError(f"{name} must have shape [n={n}], got shape {shape}")
    if _is_concrete(s) and not np.all(np.abs(np.asarray(s)) == 1):
        raise ValueError(f"{name} must contain only ±1 entries")


def _check_couplings(W: Array) -> int:
    shape = getattr(W, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"W must be a square coupling matrix [n, n], got shape {shape}")
    if shape[0] < 2:
        raise ValueError(f"W must describe n ≥ 2 neurons, got n = {shape[0]}")
    return shape[0]


def _check_n(n, name: str = "n") -> int:
    if not (isinstance(n, (int, np.integer)) and n >= 2):
        raise ValueError(f"{name} must be an integer ≥ 2, got {n!r}")
    return int(n)


def random_patterns(key: PRNGKey, P: int, n: int, dtype=jnp.float32) -> Array:
    """P independent unbiased ±1 patterns of n neurons: [P, n]."""
    _check_n(n)
    return jnp.where(jax.random.bernoulli(key, 0.5, (P, n)), 1.0, -1.0).astype(dtype)


def _sign_keep(h: Array, s: Array) -> Array:
    """sign(h) with a zero field keeping the current state (the update's tie rule)."""
    return jnp.where(h > 0, 1.0, jnp.where(h < 0, -1.0, s)).astype(s.dtype)


# --------------------------------------------------------------------------------------------------
# Classical Hopfield network
# --------------------------------------------------------------------------------------------------


def _integer_couplings(patterns: Array, mask: Array | None = None) -> Array:
    """J = n·W = Σ_μ m_μ ξ^μ ξ^μᵀ with zero diagonal (integers, exact in float32 up to 2^24)."""
    if mask is not None:
        patterns = patterns * mask.astype(patterns.dtype)[:, None]
    J = jnp.einsum("pi,pj->ij", patterns, patterns, precision=jax.lax.Precision.HIGHEST)
    return J * (1.0 - jnp.eye(patterns.shape[1], dtype=patterns.dtype))


def _sign_couplings(W: Array) -> Array:
    """Couplings with the signs of their fields decided exactly.

    A Hebbian W = J/n (J integer) is rounded in float32, so a field J s = 0 comes out as ±tiny and a true
    fixed point is misjudged; n·W rounded back to J gives the same signs (a positive factor) and exact
    integer fields. Couplings that are not multiples of 1/n (e.g. learned ones) are returned unchanged.
    """
    n = W.shape[0]
    J = W * n
    Jr = jnp.round(J)
    # n·fl(J/n) is within a few ulps of J; 1e-3 is far above that and far below the spacing 1
    integer = jnp.all(jnp.abs(J - Jr) <= 1e-3) & jnp.all(jnp.abs(Jr) < 2**24)
    return jnp.where(integer, Jr, W)


def hebbian_couplings(patterns: Array, mask: Array | None = None) -> Array:
    """W = (1/n) Σ_μ ξ^μ ξ^μᵀ with W_ii = 0 (Hebb's rule): [n, n].

    ``mask`` [P] (optional, 0/1) keeps only the first rows of a padded pattern array.
    """
    check_binary_patterns(patterns)
    return _integer_couplings(patterns, mask) / patterns.shape[1]


def energy(W: Array, s: Array) -> Array:
    """E(s) = −½ sᵀ W s (non-increasing under asynchronous updates when W is symmetric, W_ii = 0)."""
    n = _check_couplings(W)
    _check_state(s, n)
    return -0.5 * s @ (W @ s)


def overlap(pattern: Array, s: Array) -> Array:
    """m = (1/n) Σ_i ξ_i s_i (over the last axis)."""
    return jnp.mean(pattern * s, axis=-1)


def local_field(W: Array, s: Array) -> Array:
    """h_i = Σ_j W_ij s_j."""
    return W @ s


def synchronous_step(W: Array, s: Array) -> Array:
    """All neurons at once: s_i ← sign(h_i) (a zero field keeps s_i, decided exactly for Hebbian W)."""
    n = _check_couplings(W)
    _check_state(s, n)
    return _sign_keep(_sign_couplings(W) @ s, s)


def _run_sync(W, s, max_steps):
    def cond(c):
        s, prev, t, moved = c
        return moved & (t < max_steps)

    def body(c):
        s, prev, t, _ = c
        new = _sign_keep(W @ s, s)
        # stop at a fixed point or at a 2-cycle (synchronous dynamics with symmetric W has no longer cycles)
        moved = jnp.any(new != s) & jnp.any(new != prev)
        return new, s, t + 1, moved

    s, _, t, moved = jax.lax.while_loop(cond, body, (s, s, jnp.int32(0), jnp.bool_(True)))
    return s, t, ~moved


def run_synchronous(W: Array, s: Array, max_steps: int = 100) -> tuple[Array, Array, Array]:
    """Iterate the synchronous update to a fixed point or a 2-cycle.

    Returns (s, steps, settled): ``settled`` is False only if ``max_steps`` ran out.
    """
    n = _check_couplings(W)
    _check_state(s, n)
    return _run_sync(_sign_couplings(W), s, max_steps)


def _async_sweeps(J: Array, s: Array, key: PRNGKey, max_sweeps: int):
    """Asynchronous zero-temperature dynamics on integer couplings J, sweeps in random order.

    The field h = J s is kept up to date incrementally: flipping s_i changes h by J[i]·Δs_i (J is
    symmetric), so one sweep costs O(n²) instead of O(n³). Each sweep relabels the neurons by its
    random order (J[order][:, order]) so that step k touches row k: a slice at the loop counter, not
    a gather at a per-trial index, which keeps the vmapped loop cheap.
    """
    n = s.shape[0]

    def sweep(s, h, order):
        Jp, sp, hp = J[order][:, order], s[order], h[order]

        def body(k, c):
            sp, hp, flips = c
            hk, sk = hp[k], sp[k]
            new = jnp.where(hk > 0, 1.0, jnp.where(hk < 0, -1.0, sk)).astype(sp.dtype)
            delta = new - sk
            return sp.at[k].set(new), hp + Jp[k] * delta, flips + (delta != 0)

        sp, hp, flips = jax.lax.fori_loop(0, n, body, (sp, hp, jnp.int32(0)))
        return s.at[order].set(sp), h.at[order].set(hp), flips

    def cond(c):
        _, _, _, t, flips = c
        return (flips > 0) & (t < max_sweeps)

    def body(c):
        s, h, key, t, _ = c
        key, sub = jax.random.split(key)
        s, h, flips = sweep(s, h, jax.random.permutation(sub, n))
        return s, h, key, t + 1, flips

    h = J @ s
    s, _, _, t, flips = jax.lax.while_loop(cond, body, (s, h, key, jnp.int32(0), jnp.int32(1)))
    return s, t, flips == 0


def run_asynchronous(W: Array, s: Array, key: PRNGKey, max_sweeps: int = 100) -> tuple[Array, Array, Array]:
    """Asynchronous updates s_i ← sign(h_i), one neuron at a time in a fresh random order each sweep,
    until a whole sweep flips nothing (a fixed point) or ``max_sweeps`` sweeps ran.

    Returns (s, sweeps, converged). The energy never increases along the way (W symmetric, W_ii = 0).
    """
    n = _check_couplings(W)
    _check_state(s, n)
    return jax.jit(_async_sweeps, static_argnums=3)(_sign_couplings(W), s, key, max_sweeps)


def one_step_flip_rate(W: Array, pattern: Array) -> Array:
    """Fraction of neurons that one update from the stored pattern ξ flips: mean_i [ξ_i h_i < 0] (a zero
    field is no flip, decided exactly for Hebbian W)."""
    n = _check_couplings(W)
    _check_state(pattern, n, name="pattern")
    return jnp.mean((pattern * (_sign_couplings(W) @ pattern)) < 0)


def flip_rate_reference(alpha) -> np.ndarray:
    """Φ(−1/√α): the signal-to-noise estimate of the one-step flip probability at load α = p/n
    (Hertz, Krogh & Palmer 1991, §2.2): ξ_i h_i = 1 + crosstalk with crosstalk ≈ N(0, α)."""
    a = np.asarray(alpha, dtype=np.float64)
    if np.any(a <= 0):
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    return stats.norm.cdf(-1.0 / np.sqrt(a))


def classical_sweep(key: PRNGKey, n: int, loads, trials: int, *, max_sweeps: int = 60, chunk: int = 64) -> dict:
    """Overlap after asynchronous retrieval and the one-step flip rate, for every load p in ``loads``.

    For each (load, trial): draw P_max = max(loads) patterns, keep the first p, start from ξ¹ and run
    the asynchronous dynamics to a fixed point; also count the flips of one synchronous step from ξ¹.
    Vectorized with vmap over (load, trial) pairs, processed in chunks of ``chunk`` pairs by one jitted
    function. Returns arrays of shape [L, trials]: ``overlap``, ``flip_rate``, ``sweeps``, ``converged``.
    """
    n = _check_n(n)
    loads = np.asarray(loads, dtype=np.int64)
    if loads.ndim != 1 or loads.size == 0 or np.any(loads < 1):
        raise ValueError(f"loads must be a non-empty list of pattern counts ≥ 1, got {loads!r}")
    if not (isinstance(trials, int) and trials >= 1):
        raise ValueError(f"trials must be an int ≥ 1, got {trials!r}")
    P = int(loads.max())
    L = loads.size

    def one(key, p):
        k_pat, k_dyn = jax.random.split(key)
        pats = random_patterns(k_pat, P, n)
        mask = jnp.arange(P) < p
        J = _integer_couplings(pats, mask)
        xi = pats[0]
        flip = jnp.mean((xi * (J @ xi)) < 0)
        s, sweeps, conv = _async_sweeps(J, xi, k_dyn, max_sweeps)
        return overlap(xi, s), flip, sweeps, conv

    keys = jax.random.split(key, L * trials)
    ps = jnp.asarray(np.repeat(loads, trials), dtype=jnp.int32)
    m, f, sw, cv = (o.reshape(L, trials) for o in _chunked(jax.jit(jax.vmap(one)), keys, ps, chunk))
    return {"loads": loads, "alpha": loads / n, "overlap": m, "flip_rate": f, "sweeps": sw, "converged": cv}


# --------------------------------------------------------------------------------------------------
# Optimal couplings: Gardner's capacity, Cover's counting, perceptron learning
# --------------------------------------------------------------------------------------------------


def gardner_alpha_c(kappa) -> np.ndarray:
    """Gardner (1988): α_c(κ) = [∫_{−κ}^∞ Dt (t+κ)²]⁻¹, in closed form

        ∫_{−κ}^∞ Dt (t+κ)² = (1+κ²) Φ(κ) + κ φ(κ)          (Dt the standard normal measure).

    α_c(0) = 2 (Cover), α_c(1) ≈ 0.520, α_c(2) ≈ 0.200.
    """
    k = np.asarray(kappa, dtype=np.float64)
    return 1.0 / ((1.0 + k * k) * stats.norm.cdf(k) + k * stats.norm.pdf(k))


def gardner_alpha_c_quad(kappa: float) -> float:
    """α_c(κ) by numerical quadrature of the defining integral (the reference for the closed form)."""
    from scipy import integrate

    val, _ = integrate.quad(lambda t: stats.norm.pdf(t) * (t + kappa) ** 2, -kappa, np.inf, epsabs=1e-13, epsrel=1e-13)
    return 1.0 / val


def cover_fraction(p: int, n: int, *, exact: bool = False):
    """Cover (1965): the fraction of the 2^p dichotomies of p points in general position in R^n that a
    linear threshold unit through the origin realizes,

        P(p, n) = 2^{1−p} Σ_{k=0}^{n−1} C(p−1, k)        (= 1 for p ≤ n; P(2n, n) = ½ exactly).

    A Hopfield neuron with J_ii = 0 has n − 1 inputs: use ``cover_fraction(p, n − 1)``.
    ``exact=True`` returns a :class:`fractions.Fraction` (integer arithmetic); otherwise a float
    computed as the Binomial(p−1, ½) CDF at n−1.
    """
    if not (isinstance(p, (int, np.integer)) and p >= 1):
        raise ValueError(f"p (number of patterns) must be an integer ≥ 1, got {p!r}")
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"n (number of inputs) must be an integer ≥ 1, got {n!r}")
    p, n = int(p), int(n)
    if exact:
        return Fraction(sum(math.comb(p - 1, k) for k in range(min(n, p))), 2 ** (p - 1))
    return float(stats.binom.cdf(n - 1, p - 1, 0.5))


def _stabilities(J: Array, patterns: Array) -> Array:
    """Gardner stabilities γ_i^μ = ξ^μ_i Σ_{j≠i} J_ij ξ^μ_j / |J_i|: [P, n] (0 where J_i = 0)."""
    h = jnp.einsum("ij,pj->pi", J, patterns, precision=jax.lax.Precision.HIGHEST)
    norm = jnp.sqrt(jnp.sum(J * J, axis=1))
    return patterns * h / jnp.maximum(norm, jnp.finfo(J.dtype).tiny)[None, :]


def perceptron_couplings(patterns: Array, kappa: float = 0.0, *, method: str = "adatron",
                         max_epochs: int = 2000) -> tuple[Array, Array, Array]:
    """Gardner's optimal couplings: every neuron i is a perceptron on the n − 1 inputs ξ_j (j ≠ i) with
    label ξ_i, to be trained until every stability γ_i^μ = ξ^μ_i (J_i·ξ^μ)/|J_i| exceeds κ.
    All neurons learn in parallel (vmap). Two learning rules:

    * ``"perceptron"`` — Gardner's rule (1988): whenever γ_i^μ ≤ κ, J_i ← J_i + ξ^μ_i ξ^μ/√n
      (J_ii stays 0); patterns in order, epoch after epoch, until all are stable. Converges for κ = 0
      whenever couplings exist (the perceptron convergence theorem), but slowly near capacity.
    * ``"adatron"`` — the AdaTron (Anlauf & Biehl 1989) in its accelerated form (:func:`max_stability`):
      it climbs to the maximal-stability couplings, one pass over the patterns per epoch.

    Beyond α_c(κ) no couplings exist and neither rule can succeed. Returns (J [n, n], success, epochs).
    """
    check_binary_patterns(patterns)
    if not (np.isfinite(kappa) and kappa >= 0):
        raise ValueError(f"kappa (the stability margin κ) must be a finite number ≥ 0, got {kappa!r}")
    if not (isinstance(max_epochs, int) and max_epochs >= 1):
        raise ValueError(f"max_epochs must be an int ≥ 1, got {max_epochs!r}")
    if method == "perceptron":
        return _perceptron(patterns, jnp.asarray(kappa, patterns.dtype), max_epochs)
    if method == "adatron":
        return _adatron(patterns, jnp.asarray(kappa, patterns.dtype), max_epochs)
    raise ValueError(f"method must be 'adatron' or 'perceptron', got {method!r}")


@jax.jit(static_argnums=2)
def _adatron(patterns, kappa, epochs):
    J, _, _ = _adatron_network(patterns, jnp.ones(patterns.shape[:1], patterns.dtype), epochs)
    return J, jnp.all(_stabilities(J, patterns) > kappa), jnp.int32(epochs)


def _adatron_network(patterns, mask, iters):
    """The accelerated AdaTron of :func:`max_stability` for all n neurons of one network at once.

    Neuron i's dual Gram matrix is G_i = D_i (C − c_i c_iᵀ) D_i / m with C = ΞΞᵀ (pattern overlaps),
    c_i the column ξ_i, D_i = diag(ξ_i) and m = n − 1: so one step for every neuron is a single
    [n, P] × [P, P] matrix product instead of n matrix–vector products. All G_i ⪯ C/m, so
    1/λ_max(C/m) is a common safe step. Rows with mask 0 are padding and keep a zero multiplier.
    Returns (J [n, n] with zero diagonal, κ_lower [n], κ_upper [n]).
    """
    P, n = patterns.shape
    m = n - 1
    Xi = patterns * mask[:, None]
    C_PxP = Xi @ Xi.T
    Y_NxP = Xi.T  # Y[i, μ] = ξ^μ_i (0 on padded rows)
    eta = m / jnp.linalg.eigvalsh(Xi.T @ Xi if P > n else C_PxP)[-1]

    def gram(V_NxP):
        U = Y_NxP * V_NxP
        GU = U @ C_PxP - Y_NxP * jnp.sum(Y_NxP * U, axis=1, keepdims=True)  # (C − c_i c_iᵀ) u_i
        return Y_NxP * GU / m

    def dual(A):
        return jnp.sum(A, axis=1) - 0.5 * jnp.sum(A * gram(A), axis=1)

    def body(c, _):
        A, V, t, best = c
        g = (1.0 - gram(V)) * mask[None, :]
        A_new = jnp.maximum(V + eta * g, 0.0)
        restart = jnp.sum(g * (A_new - A), axis=1, keepdims=True) < 0
        t_new = jnp.where(restart, 1.0, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)))
        mom = jnp.where(restart, 0.0, (t - 1.0) / t_new)
        V_new = A_new + mom * (A_new - A)
        return (A_new, V_new, t_new, jnp.maximum(best, dual(A_new))), None

    A0 = jnp.zeros((n, P), patterns.dtype)
    t0 = jnp.ones((n, 1), patterns.dtype)
    (A, _, _, best), _ = jax.lax.scan(body, (A0, A0, t0, jnp.zeros((n,), patterns.dtype)), None, length=iters)
    offdiag = 1.0 - jnp.eye(n, dtype=patterns.dtype)
    J = ((Y_NxP * A) @ Xi) * offdiag / math.sqrt(m)  # J_i = Σ_μ a_iμ ξ^μ_i ξ^μ_{−i} / √m
    h_NxP = jnp.einsum("ij,pj->ip", J, Xi)
    norm = jnp.sqrt(jnp.sum(J * J, axis=1))
    gam = jnp.where(mask[None, :] > 0, Y_NxP * h_NxP, jnp.inf) / jnp.maximum(norm, jnp.finfo(J.dtype).tiny)[:, None]
    lower = jnp.where(norm > 0, jnp.min(gam, axis=1), -jnp.inf)
    upper = jnp.where(best > 0, math.sqrt(m) / jnp.sqrt(2.0 * jnp.maximum(best, jnp.finfo(J.dtype).tiny)), jnp.inf)
    return J, lower, upper


@jax.jit(static_argnums=2)
def _perceptron(patterns, kappa, max_epochs):
    P, n = patterns.shape
    offdiag = 1.0 - jnp.eye(n, dtype=patterns.dtype)
    step = 1.0 / math.sqrt(n)

    def learn(J, xi):
        h = J @ xi
        norm = jnp.sqrt(jnp.sum(J * J, axis=1))
        unstable = xi * h <= kappa * norm  # at J_i = 0 this is 0 ≤ 0: learn
        dJ = (unstable * xi)[:, None] * xi[None, :] * offdiag
        return J + step * dJ, None

    def cond(c):
        _, t, ok = c
        return (~ok) & (t < max_epochs)

    def body(c):
        J, t, _ = c
        J, _ = jax.lax.scan(learn, J, patterns)
        ok = jnp.all(_stabilities(J, patterns) > kappa)
        return J, t + 1, ok

    J0 = jnp.zeros((n, n), patterns.dtype)
    J, t, ok = jax.lax.while_loop(cond, body, (J0, jnp.int32(0), jnp.bool_(False)))
    return J, ok, t


def max_stability(x: Array, y: Array, *, iters: int = 2000) -> tuple[Array, Array, Array]:
    """The largest Gardner stability κ_max = max_{w} min_μ y_μ (w·x_μ)/|w| of one perceptron, with
    certified bounds (κ_lower ≤ κ_max ≤ κ_upper).

    x: [p, m] ±1 inputs (m = n − 1 for a Hopfield neuron), y: [p] ±1 labels. The hard-margin problem
    min ½|w|² s.t. z_μ·w ≥ 1, z_μ = y_μ x_μ/√m, has the dual max_{a ≥ 0} D(a) = Σa − ½|Zᵀa|²
    (the Adatron of Anlauf & Biehl 1989), solved here by accelerated projected gradient (FISTA with
    restarts). Weak duality gives κ_max ≤ √m / √(2 D(a)) for any a ≥ 0 with D(a) > 0, and the iterate
    w = Zᵀa achieves κ_lower = min_μ y_μ (w·x_μ)/|w|. A non-separable problem has κ_max < 0: the dual
    is unbounded, κ_upper → 0 and κ_lower stays ≤ 0.
    Returns (κ_lower, κ_upper, w). Vectorize with ``jax.vmap``.
    """
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must be [p, m] and y [p]; got {x.shape} and {y.shape}")
    return _max_stability(x, y, iters)


@jax.jit(static_argnums=2)
def _max_stability(x, y, iters):
    lower, upper, w = _max_stability_masked(x, y, jnp.ones(x.shape[:1], x.dtype), iters)
    return lower, upper, w


def gardner_sweep(key: PRNGKey, n: int, loads, nets: int, *, iters: int = 1000, chunk: int = 8) -> dict:
    """Maximal Gardner stabilities of the n neurons of ``nets`` random networks (n − 1 inputs each,
    J_ii = 0) for every load p in ``loads``: κ_max bounds from the accelerated AdaTron run for
    ``iters`` epochs. Vmapped over (load, network) pairs and jitted (every network draws max(loads)
    patterns and masks out those beyond its p). Returns arrays [L, nets·n]: ``lower``, ``upper``
    (see :func:`max_stability`), and ``alpha`` = p/(n−1), the load per input."""
    n = _check_n(n)
    loads = np.asarray(loads, dtype=np.int64)
    if loads.ndim != 1 or loads.size == 0 or np.any(loads < 1):
        raise ValueError(f"loads must be a non-empty list of pattern counts ≥ 1, got {loads!r}")
    P, L = int(loads.max()), loads.size

    def one(key, p):
        pats = random_patterns(key, P, n)
        _, lower, upper = _adatron_network(pats, (jnp.arange(P) < p).astype(pats.dtype), iters)
        return lower, upper

    keys = jax.random.split(key, L * nets)
    ps = jnp.asarray(np.repeat(loads, nets), dtype=jnp.int32)
    lo, up = _chunked(jax.jit(jax.vmap(one)), keys, ps, chunk)
    return {"loads": loads, "alpha": loads / (n - 1), "lower": lo.reshape(L, nets * n),
            "upper": up.reshape(L, nets * n)}


def _max_stability_masked(x, y, mask, iters, m=None):
    # Padded rows (mask 0) must not enter the dual: a zero row of Z would see the constant gradient 1
    # and its multiplier would grow without bound, so the mask pins it to 0.
    p = x.shape[0]
    m = x.shape[1] if m is None else m  # the number of live inputs (a zeroed column is no input)
    Z = (y * mask)[:, None] * x / math.sqrt(m)
    L = jnp.linalg.eigvalsh(Z.T @ Z)[-1] if p > x.shape[1] else jnp.linalg.eigvalsh(Z @ Z.T)[-1]
    eta = 1.0 / L

    def dual(a):
        w = Z.T @ a
        return jnp.sum(a) - 0.5 * jnp.dot(w, w)

    def body(c, _):
        a, v, t, best = c
        g = (1.0 - Z @ (Z.T @ v)) * mask
        a_new = jnp.maximum(v + eta * g, 0.0)
        restart = jnp.dot(g, a_new - a) < 0
        t_new = jnp.where(restart, 1.0, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)))
        mom = jnp.where(restart, 0.0, (t - 1.0) / t_new)
        v_new = a_new + mom * (a_new - a)
        return (a_new, v_new, t_new, jnp.maximum(best, dual(a_new))), None

    a0 = jnp.zeros((p,), x.dtype)
    (a, _, _, best), _ = jax.lax.scan(body, (a0, a0, jnp.asarray(1.0, x.dtype), jnp.asarray(0.0, x.dtype)), None,
                                      length=iters)
    w = Z.T @ a
    wn = jnp.sqrt(jnp.dot(w, w))
    margins = jnp.where(mask > 0, Z @ w, jnp.inf)
    lower = jnp.where(wn > 0, jnp.min(margins) / jnp.maximum(wn, jnp.finfo(x.dtype).tiny), -jnp.inf) * math.sqrt(m)
    upper = jnp.where(best > 0, math.sqrt(m) / jnp.sqrt(2.0 * jnp.maximum(best, jnp.finfo(x.dtype).tiny)), jnp.inf)
    return lower, upper, w


# --------------------------------------------------------------------------------------------------
# Dense associative memory (Krotov & Hopfield 2016; Demircigil et al. 2017)
# --------------------------------------------------------------------------------------------------

def _check_dense(kind: str, k: int) -> None:
    if kind not in _DENSE:
        raise ValueError(f"kind must be one of {DENSE_KINDS} (F(x) = x^k or F = exp), got {kind!r}")
    if kind == "poly" and not (isinstance(k, int) and k >= 2):
        raise ValueError(f"k (the power of F(x) = x^k) must be an int ≥ 2, got {k!r}")


def double_factorial(m: int) -> int:
    """m!! for odd m ≥ −1 ((−1)!! = 1)."""
    return math.prod(range(m, 0, -2)) if m > 0 else 1


def dense_energy(patterns: Array, s: Array, kind: str = "poly", k: int = 3) -> Array:
    """E(s) = −Σ_μ F(ξ^μ·s), F(x) = x^k (``kind="poly"``) or exp(x) (``kind="exp"``)."""
    check_binary_patterns(patterns)
    _check_dense(kind, k)
    _check_state(s, patterns.shape[1])
    return -jnp.sum(_DENSE[kind][0](patterns @ s, k))


def _b_plus_minus(patterns, s):
    """b_μi ± ξ^μ_i with b_μi = Σ_{j≠i} ξ^μ_j s_j: the overlaps with s_i set to +ξ^μ_i and −ξ^μ_i."""
    b_PxN = (patterns @ s)[:, None] - patterns * s[None, :]
    return b_PxN + patterns, b_PxN - patterns


def _poly_fields(patterns, s, k, mask):
    n = patterns.shape[1]
    plus, minus = _b_plus_minus(patterns, s)
    return jnp.sum(jnp.where(mask[:, None] > 0, (plus / n) ** k - (minus / n) ** k, 0.0), axis=0)


def _exp_fields(patterns, s, k, mask):
    plus, minus = _b_plus_minus(patterns, s)
    neg = jnp.finfo(patterns.dtype).min
    lse = lambda z: jax.nn.logsumexp(jnp.where(mask[:, None] > 0, z, neg), axis=0)  # noqa: E731
    return lse(plus) - lse(minus)


_INT32_MAX = 2**31 - 1


def _exact_column_sign(t_PxN: Array, bound: int) -> Array:
    """sign(Σ_μ t[μ, i]) exactly for int32 terms |t| ≤ ``bound``, whatever the total's size.

    Chunks of c terms with c·bound < 2^31 sum exactly in int32; each chunk sum is split as hi·2^16 + lo
    (lo ∈ [0, 2^16)) so that the sums over chunks cannot overflow either; a final carry normalizes lo.
    """
    P, n = t_PxN.shape
    if P * bound <= _INT32_MAX:
        return jnp.sign(jnp.sum(t_PxN, axis=0))
    c = max(1, _INT32_MAX // bound)
    chunks = -(-P // c)
    if chunks >= 2**15:
        raise ValueError(f"too many patterns (P={P}) for exact integer fields at this n and k")
    t = jnp.pad(t_PxN, ((0, chunks * c - P), (0, 0))).reshape(chunks, c, n)
    part = jnp.sum(t, axis=1)  # |part| ≤ c·bound < 2^31: exact
    hi = jnp.sum(part >> 16, axis=0)
    lo = jnp.sum(part & 0xFFFF, axis=0)
    hi, lo = hi + (lo >> 16), lo & 0xFFFF
    return jnp.where(hi != 0, jnp.sign(hi), jnp.sign(lo))


def _poly_keeps(patterns, s, k, mask):
    """s_i Δ_i ≥ 0, exactly: Δ_i·n^k = Σ_μ (b+ξ)^k − (b−ξ)^k = Σ_μ ξ^μ_i g(b_μi), g(b) = (b+1)^k − (b−1)^k,
    an integer sum. Float32 division by n^k would turn a zero Δ_i into ±tiny and call a fixed point
    unstable. Falls back to the float fields when n^k does not fit int32."""
    n = patterns.shape[1]
    if n**k > _INT32_MAX:
        return s * _poly_fields(patterns, s, k, mask) >= 0
    X, si = patterns.astype(jnp.int32), s.astype(jnp.int32)
    b = (X @ si)[:, None] - X * si[None, :]  # |b| ≤ n − 1
    t = X * ((b + 1) ** k - (b - 1) ** k) * (mask[:, None] > 0).astype(jnp.int32)
    return si * _exact_column_sign(t, n**k - (n - 2) ** k) >= 0


def _exp_keeps(patterns, s, k, mask):
    # Σ_μ ξ_μ e^{b_μ} with integer b is 0 only when, for every b, the signed count of its ξ_μ is 0 (e is
    # transcendental); such a tie is measured only as lse(plus) == lse(minus) in floating point.
    return s * _exp_fields(patterns, s, k, mask) >= 0


# kind → (F, sign-equivalent fields, exact "keeps its state" test): the one place a kind is dispatched
_DENSE = {
    "poly": (lambda o, k: o**k, _poly_fields, _poly_keeps),
    "exp": (lambda o, k: jnp.exp(o), _exp_fields, _exp_keeps),
}
DENSE_KINDS = tuple(_DENSE)


def _dense_fields(patterns, s, kind, k, mask):
    """Field whose sign is the update of every neuron i (all i at once, each from state s):

        Δ_i = Σ_μ F(ξ^μ_i + b_μi) − F(−ξ^μ_i + b_μi),   b_μi = Σ_{j≠i} ξ^μ_j s_j.

    poly: returned divided by n^k (a positive factor, so the sign is unchanged and float32 is safe);
    exp: returned as lse_μ(b_μi + ξ^μ_i) − lse_μ(b_μi − ξ^μ_i), the log of the ratio of the two sums.
    Decisions about ties use :func:`_dense_keeps`, which is exact for poly.
    """
    return _DENSE[kind][1](patterns, s, k, mask)


def _dense_keeps(patterns, s, kind, k, mask):
    """bool [n]: s_i Δ_i ≥ 0 (neuron i keeps its state; a zero field keeps it)."""
    return _DENSE[kind][2](patterns, s, k, mask)


def dense_fields(patterns: Array, s: Array, kind: str = "poly", k: int = 3, mask: Array | None = None) -> Array:
    """Sign-equivalent fields of the dense associative memory (see the update rule of Krotov & Hopfield
    2016, Eq. 3): the update is s_i ← sign(Δ_i), a zero field keeping s_i. Shape [n]."""
    check_binary_patterns(patterns)
    _check_dense(kind, k)
    _check_state(s, patterns.shape[1])
    mask = jnp.ones(patterns.shape[:1], patterns.dtype) if mask is None else mask
    return _dense_fields(patterns, s, kind, k, mask)


def dense_stable(patterns: Array, kind: str = "poly", k: int = 3, mask: Array | None = None,
                 queries: Array | None = None) -> Array:
    """Exact fixed-point check: for each stored pattern ν (``queries``, default all), whether every
    neuron keeps its state under one update from s = ξ^ν, i.e. ξ^ν_i Δ_i ≥ 0. Returns bool [Q, n]."""
    check_binary_patterns(patterns)
    _check_dense(kind, k)
    mask = jnp.ones(patterns.shape[:1], patterns.dtype) if mask is None else mask
    idx = jnp.arange(patterns.shape[0]) if queries is None else jnp.asarray(queries)
    return _dense_stable(patterns, kind, k, mask, idx)


@jax.jit(static_argnums=(1, 2))
def _dense_stable(patterns, kind, k, mask, idx):
    return jax.vmap(lambda nu: _dense_keeps(patterns, patterns[nu], kind, k, mask))(idx)


def dense_flip_reference(n: int, p, kind: str = "poly", k: int = 3) -> np.ndarray:
    """Gaussian signal-to-noise estimate of the one-step flip probability of one neuron of a stored
    pattern, Φ(−S/σ), with the signal S = F(n) − F(n−2) and the crosstalk variance
    σ² = (p−1)·E_b[(F(b+1) − F(b−1))²], b a sum of n−1 independent ±1 — the moments computed exactly
    over the Binomial law of b. For F = x^k and large n this is Φ(−√(n^{k−1}/(p (2k−3)!!)))
    (Krotov & Hopfield 2016); k = 2 gives the classical Φ(−1/√α). For F = exp the crosstalk is
    heavy-tailed and this is only a rough guide."""
    n = _check_n(n)
    _check_dense(kind, k)
    p = np.asarray(p, dtype=np.float64)
    if np.any(p < 1):
        raise ValueError(f"p must be ≥ 1, got {p!r}")
    j = np.arange(n)  # b = 2j − (n−1)
    b = 2.0 * j - (n - 1)
    logw = stats.binom.logpmf(j, n - 1, 0.5)
    if kind == "poly":
        x = b / n  # scale by n^k: the ratio S/σ does not change
        log_m2 = np.log(np.sum(np.exp(logw) * ((x + 1 / n) ** k - (x - 1 / n) ** k) ** 2))
        log_s = np.log(1.0 - ((n - 2) / n) ** k)
    else:
        log_m2 = 2 * np.log(np.e - 1 / np.e) + (n - 1) * np.log(np.cosh(2.0))
        log_s = n + np.log(1.0 - np.exp(-2.0))
    with np.errstate(divide="ignore"):
        snr = np.exp(log_s - 0.5 * (np.log(np.maximum(p - 1, 0)) + log_m2))
    return stats.norm.cdf(-snr)


def _chunked(fn, keys, ps, chunk):
    """Apply a jitted, vmapped ``fn(keys, ps)`` in fixed-size chunks (one compiled shape)."""
    total = keys.shape[0]
    outs = []
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        k, p = keys[start:stop], ps[start:stop]
        pad = chunk - (stop - start)
        if pad:
            k = jnp.concatenate([k, jnp.repeat(k[:1], pad, axis=0)])
            p = jnp.concatenate([p, jnp.repeat(p[:1], pad)])
        outs.append([np.asarray(o)[: stop - start] for o in fn(k, p)])
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


def dense_sweep(key: PRNGKey, n: int, loads, trials: int, kind: str = "poly", k: int = 3, *,
                queries: int = 16, chunk: int = 16) -> dict:
    """Stable fraction of stored patterns (all n neurons fixed) and per-neuron flip rate vs load.

    Each (load, trial) draws max(loads) patterns, keeps the first p and checks the first
    min(p, ``queries``) of them; vmapped over (load, trial) pairs, jitted, in chunks.
    Returns [L, trials] arrays ``stable`` (fraction of checked patterns that are fixed points) and
    ``flip_rate`` (fraction of checked neurons that would flip)."""
    n = _check_n(n)
    _check_dense(kind, k)
    loads = np.asarray(loads, dtype=np.int64)
    if loads.ndim != 1 or loads.size == 0 or np.any(loads < 1):
        raise ValueError(f"loads must be a non-empty list of pattern counts ≥ 1, got {loads!r}")
    P, L = int(loads.max()), loads.size
    Q = min(queries, P)

    def one(key, p):
        pats = random_patterns(key, P, n)
        mask = (jnp.arange(P) < p).astype(pats.dtype)
        ok_QxN = jax.vmap(lambda nu: _dense_keeps(pats, pats[nu], kind, k, mask))(jnp.arange(Q))
        valid = jnp.arange(Q) < p
        nq = jnp.sum(valid)
        stable = jnp.sum(jnp.all(ok_QxN, axis=1) & valid) / nq
        flips = jnp.sum(jnp.where(valid[:, None], ~ok_QxN, False)) / (nq * n)
        return stable, flips

    keys = jax.random.split(key, L * trials)
    ps = jnp.asarray(np.repeat(loads, trials), dtype=jnp.int32)
    st, fl = _chunked(jax.jit(jax.vmap(one)), keys, ps, chunk)
    return {"loads": loads, "stable": st.reshape(L, trials), "flip_rate": fl.reshape(L, trials)}


# The modern continuous network, its attention form and the Hopfield Ψ layer (registered as "hopfield").
from tvvar.theory.transformer.hopfield_modern import *  # noqa: E402,F401,F403
from tvvar.theory.transformer.hopfield_modern import __all__ as _modern_all  # noqa: E402

__all__ += list(_modern_all)
