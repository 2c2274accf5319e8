"""Time-varying VAR estimation by kernel-weighted least squares (Bai, arXiv:2511.01202, Section V-G; the
estimator of Casas & Fernández-Casal's tvReg and of Haslbeck, Bringmann & Waldorp's tutorial).

Model, for a k-dimensional series y_0..y_{n−1} and lag order p:

    y_t = c(τ_t) + Σ_{l=1..p} A_l(τ_t) y_{t−l} + ε_t,      Cov ε_t = Σ_u,      t = p..n−1

Rows of the design follow statsmodels' VAR layout: z_t = [1, y_{t−1}ᵀ, …, y_{t−p}ᵀ] (d = 1 + kp) and the
coefficients are θ = [c, A_1, …, A_p]ᵀ of shape ``[d, k]``, so y_t ≈ θᵀ z_t.  The m = n − p effective rows
are placed on rescaled time τ_i = (i + 1)/m ∈ (0, 1] (tvReg's convention), and a bandwidth h ∈ (0, 1] is a
fraction of that unit interval.  With weights w_ts = K((τ_s − τ_t)/h):

* local-constant:  θ̂(τ_t) = argmin_θ Σ_s w_ts ‖y_s − θᵀ z_s‖²
* local-linear:    (θ̂, θ̂′)(τ_t) = argmin Σ_s w_ts ‖y_s − θᵀ z_s − (τ_s − τ_t) θ′ᵀ z_s‖², keep θ̂

Kernels on [−1, 1]: Epanechnikov ¾(1 − u²), triweight (35/32)(1 − u²)³, and uniform ½ (with h = 1 every
weight is equal, so the local-constant fit is OLS, which the tests check against statsmodels).  The
bandwidth is chosen by leave-one-out cross-validation, CV(h) = (1/m) Σ_t ‖y_t − θ̂_{−t}(τ_t)ᵀ z_t‖², with
θ̂_{−t} the fit at τ_t without row t (w_tt = 0), vectorised over bandwidths and time.

Confidence bands are pointwise: Var θ̂(τ_t)[:, e] ≈ G_t⁻¹ (Σ_s w_ts² z_s z_sᵀ) G_t⁻¹ Σ_u[e, e] with
G_t = Σ_s w_ts z_s z_sᵀ (the weighted-least-squares sandwich; local-linear uses the augmented design and
keeps its θ block), Σ̂_u = ε̂ᵀε̂/(m − d) from the in-sample residuals.  They ignore the smoothing bias, as
usual for undersmoothed bands.  With equal weights they are statsmodels' OLS standard errors exactly.

Cost: for each bandwidth, one [m, m] matmul per δ-power against the stacked upper-triangle products
z_s z_sᵀ and z_s y_sᵀ, then one batched Cholesky solve; the leave-one-out prediction needs only
G_t⁻¹ [z_t, 0], not θ̂ (``python -m experiments.benchmark --only tvvar_estimation``: n = 1808, k = 10,
20 bandwidths in float64 on 2 CPU cores, about 1.2 s local-constant and 3 s local-linear once compiled).

:func:`haslbeck_design` and :func:`mae_table` rebuild Haslbeck, Bringmann & Waldorp's Simulation A (10
variables, VAR(1), seven parameter paths) and tabulate the kernel estimator's mean absolute error against
stationary OLS.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from tvvar.theory.estimation.classical import SingularDesignError, check_history, check_stream
from tvvar.typing import Array, PRNGKey

__all__ = [
    "KERNELS",
    "METHODS",
    "VARFit",
    "TVVARFit",
    "CVResult",
    "check_var_input",
    "check_bandwidth",
    "var_design",
    "fit_var",
    "kernel",
    "rescaled_time",
    "tvvar_fit",
    "tvvar_cv",
    "simulate_var",
    "smooth_tv_coefficients",
    "coefficient_mae",
    "HASLBECK_TYPES",
    "HASLBECK_NOISE_SD",
    "HASLBECK_BANDWIDTHS",
    "haslbeck_design",
    "mae_table",
]

KERNELS: tuple[str, ...] = ("epanechnikov", "triweight", "uniform")
METHODS: tuple[str, ...] = ("local_constant", "local_linear")


class VARFit(NamedTuple):
    """OLS VAR(p) with intercept, statsmodels' conventions: params ``[d, k]``, sigma_u = SSR/(m − d)."""

    params: Array
    resid: Array
    sigma_u: Array
    cov_params: Array  # kron((ZᵀZ)⁻¹, Σ_u): covariance of vec(paramsᵀ), row-major over (regressor, equation)
    stderr: Array
    zz_inv: Array
    df_resid: int


class TVVARFit(NamedTuple):
    """Kernel TV-VAR fit: coefficients ``[m, d, k]`` at τ ``[m]``, pointwise standard errors and bands."""

    tau: Array
    coefficients: Array
    stderr: Array
    lower: Array
    upper: Array
    fitted: Array
    resid: Array
    sigma_u: Array
    bandwidth: float
    kernel: str
    method: str


class CVResult(NamedTuple):
    bandwidths: Array  # [H]
    scores: Array  # [H] mean squared leave-one-out error, summed over equations
    scores_per_equation: Array  # [H, k]
    bandwidth: float  # the minimiser of scores


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def check_var_input(y, p, *, params_per_equation: int | None = None) -> tuple[np.ndarray, int]:
    """y as ``[n, k]`` (finite, at least two samples) and the lag order p (1 ≤ p < n), with enough rows left."""
    y = check_stream(y, "y")
    n, k = y.shape
    p = check_history(p, "p (lag order)", n)
    d = 1 + k * p if params_per_equation is None else params_per_equation
    if n - p <= d:
        raise ValueError(f"fewer samples than parameters: y has n = {n} samples, n − p = {n - p} usable rows, "
                         f"but each equation has {d} parameters (1 + k p with k = {k}, p = {p})")
    sd = y.std(axis=0)
    flat = np.flatnonzero(sd <= 1e-12 * max(1.0, float(np.abs(y).max())))
    if flat.size:
        raise SingularDesignError(f"y: channel(s) {flat.tolist()} are constant, so the VAR design (which carries "
                                  "an intercept) is singular")
    return y, p


def check_bandwidth(h, name: str = "bandwidth") -> float:
    if isinstance(h, bool) or not isinstance(h, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in (0, 1], got {type(h).__name__}")
    if not (0 < float(h) <= 1):
        raise ValueError(f"{name} must lie in (0, 1] (a fraction of the rescaled time axis), got {h}")
    return float(h)


def _check_choice(v, name: str, options: tuple[str, ...]) -> str:
    if v not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {v!r}")
    return v


def _check_full_rank(y: np.ndarray, p: int, name: str) -> None:
    """Refuse a design that is singular in the dtype the fit runs in (checked on the float64 host design).

    The normal equations square the condition number, so in float32 a condition number past ~m·ε⁻¹ᐟ² is
    already meaningless; in float64 only (near-)exact collinearity is refused.
    """
    n = y.shape[0]
    Z = np.concatenate([np.ones((n - p, 1))] + [y[p - j : n - j] for j in range(1, p + 1)], axis=1)
    s = np.linalg.svd(Z / np.maximum(np.linalg.norm(Z, axis=0), 1e-300), compute_uv=False)
    tol = max(1e-10, Z.shape[0] * float(jnp.finfo(jnp.result_type(float)).eps))
    if s[-1] <= tol * s[0]:
        raise SingularDesignError(f"{name}: the VAR design matrix is singular (collinear or constant series); "
                                  f"condition number {s[0] / max(s[-1], 1e-300):.3g}")


# --------------------------------------------------------------------------------------------------
# Stationary OLS VAR (the reference the kernel estimator reduces to)
# --------------------------------------------------------------------------------------------------


def var_design(y: Array, p: int) -> tuple[Array, Array]:
    """Targets ``[m, k]`` = y_p..y_{n−1} and design ``[m, 1 + kp]`` = [1, y_{t−1}, …, y_{t−p}] (m = n − p)."""
    n = y.shape[0]
    lags = jnp.concatenate([y[p - j : n - j] for j in range(1, p + 1)], axis=1)
    return y[p:], jnp.concatenate([jnp.ones((n - p, 1), y.dtype), lags], axis=1)


@partial(jax.jit, static_argnames=("p",))
def _fit_var(y: Array, p: int):
    Y, Z = var_design(y, p)
    m, d = Z.shape
    L = jnp.linalg.cholesky(Z.T @ Z)
    zz_inv = jax.scipy.linalg.cho_solve((L, True), jnp.eye(d, dtype=Z.dtype))
    params = zz_inv @ (Z.T @ Y)
    resid = Y - Z @ params
    sigma_u = resid.T @ resid / (m - d)
    cov = jnp.kron(zz_inv, sigma_u)
    stderr = jnp.sqrt(jnp.outer(jnp.diagonal(zz_inv), jnp.diagonal(sigma_u)))
    return params, resid, sigma_u, cov, stderr, zz_inv


def fit_var(y, p: int) -> VARFit:
    """OLS VAR(p) with an intercept (statsmodels ``VAR(y).fit(p)``, trend "c")."""
    y, p = check_var_input(y, p)
    _check_full_rank(y, p, "y")
    out = _fit_var(jnp.asarray(y, jnp.result_type(float)), p)
    return VARFit(*out, df_resid=int(y.shape[0] - p - (1 + y.shape[1] * p)))


# --------------------------------------------------------------------------------------------------
# Kernel-weighted least squares
# --------------------------------------------------------------------------------------------------


def kernel(u: Array, name: str) -> Array:
    """K(u) on [−1, 1], zero outside; each integrates to 1."""
    inside = jnp.abs(u) < 1.0 if name != "uniform" else jnp.abs(u) <= 1.0
    if name == "epanechnikov":
        k = 0.75 * (1.0 - u * u)
    elif name == "triweight":
        k = (35.0 / 32.0) * (1.0 - u * u) ** 3
    else:
        k = jnp.full_like(u, 0.5)
    return jnp.where(inside, k, 0.0)


def rescaled_time(m: int, dtype=None) -> Array:
    return jnp.arange(1, m + 1, dtype=dtype or jnp.result_type(float)) / m


def _weights(tau: Array, h: Array, name: str, loo: bool) -> Array:
    """w[t, s] = K((τ_s − τ_t)/h); the diagonal is zeroed for leave-one-out."""
    W = kernel((tau[None, :] - tau[:, None]) / h, name)
    return W * (1.0 - jnp.eye(tau.shape[0], dtype=W.dtype)) if loo else W


def _sym_index(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Upper-triangle pairs (a ≤ b) of a d × d matrix and, for every (a, b), the position of its pair."""
    iu = np.triu_indices(d)
    pos = np.zeros((d, d), dtype=np.int32)
    pos[iu] = np.arange(iu[0].size)
    return np.stack(iu), np.maximum(pos, pos.T)


def _moments(W: Array, Z: Array, Y: Array | None, tau: Array, method: str) -> tuple[Array, Array | None]:
    """Gram Σ_s w_ts x_ts x_tsᵀ ``[m, D, D]`` and right side Σ_s w_ts x_ts y_sᵀ ``[m, D, k]`` of every local fit.

    x_ts = z_s (local-constant) or [z_s, δ_ts z_s] with δ_ts = τ_s − τ_t (local-linear).  Only the upper
    triangle of z_s z_sᵀ is summed (half the flops), and it travels with z_s y_sᵀ as the columns of one
    ``[m, q + dk]`` matrix, so each δ-power costs one [m, m] matmul: W for (G₀, b₀), W∘δ for (G₁, b₁) and
    W∘δ² for G₂ alone.  δ multiplies the weights directly (never τ_s-moments minus τ_t times others, which
    would cancel O(1) terms to get O(h²) ones and lose ~2 log₁₀(1/h) digits, fatal in float32).
    """
    m, d = Z.shape
    iu, pos = _sym_index(d)
    q = iu.shape[1]
    ZZ_tri = Z[:, iu[0]] * Z[:, iu[1]]
    X = ZZ_tri if Y is None else jnp.concatenate([ZZ_tri, (Z[:, :, None] * Y[:, None, :]).reshape(m, -1)], axis=1)

    def split(M):
        return M[:, :q][:, pos], (None if Y is None else M[:, q:].reshape(m, d, Y.shape[1]))

    G0, b0 = split(W @ X)
    if method == "local_constant":
        return G0, b0
    Wd = W * (tau[None, :] - tau[:, None])
    G1, b1 = split(Wd @ X)
    G2 = ((Wd * (tau[None, :] - tau[:, None])) @ ZZ_tri)[:, pos]
    G = jnp.concatenate([jnp.concatenate([G0, G1], axis=2), jnp.concatenate([G1, G2], axis=2)], axis=1)
    return G, (None if Y is None else jnp.concatenate([b0, b1], axis=1))


def _gram(W: Array, Z: Array, tau: Array, method: str) -> Array:
    """Σ_s w_ts x_ts x_tsᵀ ``[m, D, D]`` alone (the sandwich's middle under squared weights)."""
    return _moments(W, Z, None, tau, method)[0]


def _cho_solve(G: Array, b: Array) -> Array:
    """G⁻¹ b for a batch of symmetric positive-definite G (NaN where G is singular, caught by the callers).

    Cholesky, not LU: G is a weighted Gram, and the triangular factor costs half an LU and needs no pivoting.
    """
    L = jnp.linalg.cholesky(G)
    return jax.scipy.linalg.cho_solve((L, True), b)


def _local_solve(W: Array, Z: Array, Y: Array, tau: Array, method: str):
    """θ̂(τ_t) ``[m, d, k]`` for every t at once (one batched solve, no loop over time) and the Gram."""
    G, b = _moments(W, Z, Y, tau, method)
    theta = _cho_solve(G, b)
    return theta[:, : Z.shape[1]], G


def _loo_errors(W: Array, Z: Array, Y: Array, tau: Array, method: str) -> Array:
    """y_t − ŷ_{−t}(τ_t) ``[m, k]`` with w_tt already zero in W.

    The prediction is x_ttᵀ G_t⁻¹ b_t with x_tt = [z_t, 0] (δ_tt = 0), so one solve against the single
    vector x_tt replaces the solve against the k columns of b_t.
    """
    G, b = _moments(W, Z, Y, tau, method)
    x = Z if method == "local_constant" else jnp.concatenate([Z, jnp.zeros_like(Z)], axis=1)
    v = _cho_solve(G, x[:, :, None])[:, :, 0]
    return Y - jnp.einsum("ta,tae->te", v, b)


@partial(jax.jit, static_argnames=("kern", "method"))
def _cv_scores(Y: Array, Z: Array, tau: Array, hs: Array, kern: str, method: str) -> Array:
    def one(h):
        err = _loo_errors(_weights(tau, h, kern, True), Z, Y, tau, method)
        return jnp.mean(err * err, axis=0)

    # lax.map, not vmap, over bandwidths: one [m, m] weight matrix and one [m, D, D] Gram live at a time
    # (lax.map's batch_size = 2 or 4 measured 10–80 % slower on 2 cores at n = 1808).
    return jax.lax.map(one, hs)


@partial(jax.jit, static_argnames=("kern", "method"))
def _fit(Y: Array, Z: Array, tau: Array, h: Array, kern: str, method: str):
    W = _weights(tau, h, kern, False)
    theta, G = _local_solve(W, Z, Y, tau, method)
    fitted = jnp.einsum("ta,tae->te", Z, theta)
    resid = Y - fitted
    m, d = Z.shape
    sigma_u = resid.T @ resid / (m - d)
    # Sandwich G⁻¹ M G⁻¹ with M the Gram under squared weights; only the θ block of the diagonal is kept.
    Gi = _cho_solve(G, jnp.broadcast_to(jnp.eye(G.shape[1], dtype=G.dtype), G.shape))
    V = Gi @ _gram(W * W, Z, tau, method) @ Gi
    var_a = jnp.diagonal(V, axis1=1, axis2=2)[:, :d]
    stderr = jnp.sqrt(var_a[:, :, None] * jnp.diagonal(sigma_u)[None, None, :])
    return theta, stderr, fitted, resid, sigma_u


def _min_window(m: int, h: float, kern: str, loo: bool) -> int:
    """Fewest rows with non-zero weight at any τ_t (the boundary one), leave-one-out removing one."""
    tau = np.arange(1, m + 1) / m
    u = (tau - tau[0]) / h
    inside = np.abs(u) <= 1 if kern == "uniform" else np.abs(u) < 1
    return int(inside.sum()) - int(loo)


def _prepare(y, p, kern, method, bandwidths: list[float], loo: bool):
    kern = _check_choice(kern, "kernel", KERNELS)
    method = _check_choice(method, "method", METHODS)
    y, p = check_var_input(y, p)
    yj = jnp.asarray(y, jnp.result_type(float))
    _check_full_rank(y, p, "y")
    Y, Z = var_design(yj, p)
    m, d = Z.shape
    D = d if method == "local_constant" else 2 * d
    for h in bandwidths:
        if _min_window(m, h, kern, loo) <= D:
            raise ValueError(f"bandwidth {h:g} is too small: near the ends of the series only "
                             f"{_min_window(m, h, kern, loo)} rows get non-zero {kern} weight, but a "
                             f"{method} fit has {D} parameters per equation; use a bandwidth ≥ "
                             f"{(D + 2) / m:.3g}")
    return Y, Z, rescaled_time(m, yj.dtype), kern, method


def tvvar_fit(y, p: int, bandwidth: float, *, kernel: str = "epanechnikov", method: str = "local_constant",
              level: float = 0.95) -> TVVARFit:
    """Kernel-weighted least-squares TV-VAR(p) at every τ_t, with pointwise ``level`` confidence bands."""
    h = check_bandwidth(bandwidth)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    Y, Z, tau, kern, method = _prepare(y, p, kernel, method, [h], loo=False)
    theta, se, fitted, resid, sigma_u = _fit(Y, Z, tau, jnp.asarray(h, Y.dtype), kern, method)
    if not bool(jnp.all(jnp.isfinite(theta))):
        raise SingularDesignError(f"the local design is singular at some τ for bandwidth {h:g}; "
                                  "use a larger bandwidth")
    zq = float(scipy.stats.norm.ppf(0.5 + level / 2))
    return TVVARFit(tau, theta, se, theta - zq * se, theta + zq * se, fitted, resid, sigma_u, h, kern, method)


def tvvar_cv(y, p: int, bandwidths, *, kernel: str = "epanechnikov",
             method: str = "local_constant") -> CVResult:
    """Leave-one-out CV score of each bandwidth (tvReg's criterion) and the minimiser; one jit for the grid."""
    hs = np.atleast_1d(np.asarray(bandwidths, dtype=float))
    if hs.ndim != 1 or hs.size == 0:
        raise ValueError(f"bandwidths must be a non-empty 1-D sequence, got shape {hs.shape}")
    for i, h in enumerate(hs):
        check_bandwidth(float(h), f"bandwidths[{i}]")
    Y, Z, tau, kern, method = _prepare(y, p, kernel, method, [float(h) for h in hs], loo=True)
    per_eq = _cv_scores(Y, Z, tau, jnp.asarray(hs, Y.dtype), kern, method)
    if not bool(jnp.all(jnp.isfinite(per_eq))):
        bad = hs[~np.all(np.isfinite(np.asarray(per_eq)), axis=1)]
        raise SingularDesignError(f"leave-one-out local designs are singular for bandwidths {bad.tolist()}; "
                                  "drop them from the grid")
    scores = jnp.sum(per_eq, axis=1)
    return CVResult(jnp.asarray(hs), scores, per_eq, float(hs[int(jnp.argmin(scores))]))


# --------------------------------------------------------------------------------------------------
# Simulation with known (possibly time-varying) coefficients
# --------------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("burn_in",))
def _simulate(key: PRNGKey, A_TxPxKxK: Array, c_TxK: Array, chol: Array, burn_in: int) -> Array:
    T, p, k, _ = A_TxPxKxK.shape
    # Burn-in runs with the coefficients of t = 0 so the series starts near its local stationary law.
    A_all = jnp.concatenate([jnp.broadcast_to(A_TxPxKxK[:1], (burn_in, p, k, k)), A_TxPxKxK], axis=0)
    c_all = jnp.concatenate([jnp.broadcast_to(c_TxK[:1], (burn_in, k)), c_TxK], axis=0)
    eps = jax.random.normal(key, (burn_in + T, k), A_TxPxKxK.dtype) @ chol.T

    def step(past_PxK, inp):
        A, c, e = inp
        y = c + jnp.einsum("lij,lj->i", A, past_PxK) + e
        return jnp.concatenate([y[None], past_PxK[:-1]], axis=0), y

    _, ys = jax.lax.scan(step, jnp.zeros((p, k), A_TxPxKxK.dtype), (A_all, c_all, eps))
    return ys[burn_in:]


def simulate_var(key: PRNGKey, coefs, n: int, *, intercept=None, noise_cov=None, burn_in: int = 200) -> Array:
    """Simulate y ``[n, k]`` from y_t = c_t + Σ_l A_l(t) y_{t−l} + ε_t, ε_t ~ N(0, noise_cov).

    ``coefs`` is ``[p, k, k]`` (constant coefficients, A_l = coefs[l−1]) or ``[n, p, k, k]`` (time-varying);
    ``intercept`` ``[k]`` or ``[n, k]``.  Pure JAX once validated: ``jax.vmap(_simulate)`` over keys gives
    replicates (see :mod:`tvvar.theory.estimation.granger`).
    """
    A = np.asarray(coefs, dtype=float)
    if A.ndim == 3:
        A = np.broadcast_to(A[None], (n,) + A.shape)
    if A.ndim != 4 or A.shape[0] != n or A.shape[2] != A.shape[3]:
        raise ValueError(f"coefs must have shape [p, k, k] or [n, p, k, k] with n = {n}, got {np.shape(coefs)}")
    k = A.shape[2]
    c = np.zeros((n, k)) if intercept is None else np.broadcast_to(np.asarray(intercept, dtype=float), (n, k))
    S = np.eye(k) if noise_cov is None else np.asarray(noise_cov, dtype=float)
    if S.shape != (k, k):
        raise ValueError(f"noise_cov must have shape {(k, k)}, got {S.shape}")
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(c)) and np.all(np.isfinite(S))):
        raise ValueError("coefs, intercept and noise_cov must be finite")
    dt = jnp.result_type(float)
    chol = jnp.asarray(np.linalg.cholesky(S), dt)
    return _simulate(key, jnp.asarray(A, dt), jnp.asarray(c, dt), chol, int(burn_in))


def smooth_tv_coefficients(n: int, k: int, p: int = 1, *, seed: int = 0, scale: float = 0.35) -> np.ndarray:
    """Known smooth time-varying coefficients ``[n, p, k, k]``: each entry a random linear trend or half-sine.

    The entries are scaled so that Σ_l ‖A_l(t)‖₂ ≤ 0.9 at every t, a sufficient condition for local
    stability (the process never explodes), after Haslbeck et al.'s simulation design.
    """
    rng = np.random.default_rng(seed)
    tau = (np.arange(n) + 1.0) / n
    shape = rng.integers(0, 2, size=(p, k, k))
    a0, a1 = rng.uniform(-scale, scale, size=(2, p, k, k))
    trend = a0[None] + (a1 - a0)[None] * tau[:, None, None, None]
    sine = a0[None] + (a1 - a0)[None] * np.sin(math.pi * tau)[:, None, None, None]
    A = np.where(shape[None] == 0, trend, sine)
    norm = np.linalg.norm(A, ord=2, axis=(2, 3)).sum(axis=1)  # [n]
    return A * np.minimum(1.0, 0.9 / norm)[:, None, None, None]


def coefficient_mae(estimate_MxDxK: Array, truth_TxPxKxK: np.ndarray, p: int) -> float:
    """Mean |Â_l(τ_t) − A_l(t)| over t = p..n−1, lags and entries (intercepts excluded)."""
    truth = np.asarray(truth_TxPxKxK)[p:]  # rows of the fit are t = p..n−1
    m, _, k, _ = truth.shape
    # params[1 + (l−1)k + j, i] = A_l[i, j]
    est = np.asarray(estimate_MxDxK)[:, 1:].reshape(m, p, k, k).transpose(0, 1, 3, 2)
    return float(np.mean(np.abs(est - truth)))


# --------------------------------------------------------------------------------------------------
# Haslbeck, Bringmann & Waldorp's simulation design (arXiv:1711.05204, Simulation A) and its MAE table
# --------------------------------------------------------------------------------------------------

HASLBECK_TYPES: tuple[str, ...] = ("constant", "linear increase", "linear decrease", "sigmoid increase",
                                   "sigmoid decrease", "step down", "step up")
HASLBECK_NOISE_SD: float = 0.1
HASLBECK_BANDWIDTHS: np.ndarray = np.round(np.linspace(0.05, 1.0, 20), 10)  # our grid, not theirs (see mae_table)


def _haslbeck_paths(n: int, theta: float) -> np.ndarray:
    """The seven parameter paths ``[7, n]`` in HASLBECK_TYPES order, on n equally spaced time points."""
    x = np.linspace(0.0, theta, n)  # the sigmoids' argument runs over [0, θ], not [0, 1]: their k = 15 is on it
    s = 15.0
    up = np.where(np.arange(n) < n // 2, 0.0, theta)  # R's c(rep(0, floor(N/2)), rep(θ, ceiling(N/2)))
    down = np.where(np.arange(n) < n - n // 2, theta, 0.0)  # and c(rep(θ, ceiling(N/2)), rep(0, floor(N/2)))
    return np.stack([np.full(n, theta), np.linspace(0.0, theta, n), np.linspace(theta, 0.0, n),
                     theta / (1 + np.exp(-s * (x - theta / 2))), theta / (1 + np.exp(s * (x - theta / 2))),
                     down, up])


def haslbeck_design(n: int, *, seed: int, k: int = 10, edge_prob: float = 0.2, theta: float = 0.35,
                    return_types: bool = False, max_tries: int = 10_000):
    """Time-varying VAR(1) coefficients ``[n, 1, k, k]`` and intercept ``[k]`` of Haslbeck et al.'s Simulation A.

    From the authors' code archive (github.com/jmbh/tvvar_paper, ``SimulationA/VarSim_aux.R`` and
    ``VarSim_data.R``; the paper's main results use its 10-variable, P(e) = 0.2 cell):

    * every autoregressive (diagonal) entry is present, and round(P(e)·(k² − k)) off-diagonal entries are
      drawn without replacement (18 of 90 for k = 10), the rest are exactly 0;
    * each present entry follows one of seven paths drawn uniformly (``HASLBECK_TYPES``): constant θ, linear
      0 → θ, linear θ → 0, sigmoid increase θ/(1 + exp(−15(x − θ/2))) and its mirror with x running over
      [0, θ] (so the sigmoid goes from 0.07θ to 0.93θ), a step θ → 0 at the middle and a step 0 → θ; θ = 0.35;
    * the whole draw is repeated until every A(t) has all eigenvalues inside the unit circle;
    * intercepts are 0 and the noise is N(0, 0.1² I) (``HASLBECK_NOISE_SD``); n ranges over
      round(exp(linspace(3, 7.5, 12))) = 20, 25, …, 1808.

    Assumed or changed: the random draws are numpy's, not R's, so no graph equals theirs; the archive samples
    the off-diagonal positions from labels 2..k²−k, which can never pick the last lower-triangle entry, a
    quirk not copied (all k² − k positions are eligible); :func:`simulate_var` starts with a burn-in at the
    t = 0 coefficients where their ``VARData`` starts from one N(0, 0.1²) draw.  ``return_types`` adds the
    ``[k, k]`` type index (0 absent, 1..7 the HASLBECK_TYPES entry) as a third output.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer ≥ 2 (time points), got {n!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (variables), got {k!r}")
    if not 0 <= edge_prob <= 1:
        raise ValueError(f"edge_prob must lie in [0, 1], got {edge_prob}")
    if not 0 < theta < 1:
        raise ValueError(f"theta must lie in (0, 1) (a diagonal entry θ ≥ 1 is never stable), got {theta}")
    rng = np.random.default_rng(seed)
    paths = _haslbeck_paths(int(n), float(theta))
    off = np.flatnonzero(~np.eye(k, dtype=bool))
    for _ in range(max_tries):
        present = np.eye(k, dtype=bool).ravel()
        present[rng.choice(off, size=int(round(edge_prob * off.size)), replace=False)] = True
        types = np.where(present, rng.integers(1, len(HASLBECK_TYPES) + 1, size=k * k), 0).reshape(k, k)
        A = np.where(types[None] > 0, paths[np.maximum(types, 1) - 1].transpose(2, 0, 1), 0.0)  # [n, k, k]
        if np.all(np.abs(np.linalg.eigvals(A)) < 1):
            out = (A[:, None], np.zeros(k))
            return out + (types,) if return_types else out
    raise RuntimeError(f"no locally stable draw in {max_tries} tries (k = {k}, edge_prob = {edge_prob}, "
                       f"theta = {theta})")


def _sd(x: list[float]) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def mae_table(ns, *, reps: int = 5, bandwidths=HASLBECK_BANDWIDTHS, kernel: str = "epanechnikov",
              method: str = "local_constant", seed: int = 0, k: int = 10) -> list[dict]:
    """Kernel TV-VAR against stationary OLS on :func:`haslbeck_design`, ``reps`` replicates per n.

    Each replicate draws a design, simulates it with :func:`simulate_var` (noise sd ``HASLBECK_NOISE_SD``),
    picks h by leave-one-out :func:`tvvar_cv` over the bandwidths of the grid that leave enough rows at the
    ends of the series for this n (the rest are dropped, and the row says which range was used), refits at
    that h and scores both fits by :func:`coefficient_mae`: the mean |Â(τ_t) − A(t)| over every t and all k²
    entries, zeros included, intercepts excluded.  The paper itself plots the mean absolute error separately
    per path type (constant, linear increase, sigmoid increase, step, zero; intercepts excluded, 20 time
    points); ``kernel_mae_by_type`` / ``ols_mae_by_type`` give the same split (over all t here), and
    ``kernel_mae_varying`` / ``ols_mae_varying`` pool the entries whose path is not constant (types 2–7).

    Differences from the paper: their KS estimator is mgm's (Gaussian kernel, bandwidth = its sd, chosen on
    one held-out fold of round((0.2 n)^{2/3}) time points from seq(0.01, 0.5, length = 15)), 100 replicates;
    here the kernel has compact support, h is its half-width, and the CV is leave-one-out.

    Returns one dict per n: ``kernel_mae``, ``ols_mae``, ``bandwidth`` (means over replicates) with
    ``*_sd`` (sample standard deviations, 0 for one replicate), the per-replicate values, and the grid used.
    """
    kern = _check_choice(kernel, "kernel", KERNELS)
    method = _check_choice(method, "method", METHODS)
    if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps < 1:
        raise ValueError(f"reps must be an integer ≥ 1, got {reps!r}")
    ns = [ns] if np.ndim(ns) == 0 else list(ns)
    if not ns:
        raise ValueError("ns must name at least one series length")
    grid = np.atleast_1d(np.asarray(bandwidths, dtype=float))
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"bandwidths must be a non-empty 1-D sequence, got shape {grid.shape}")
    for i, h in enumerate(grid):
        check_bandwidth(float(h), f"bandwidths[{i}]")
    D = (1 + k) * (1 if method == "local_constant" else 2)
    names = ("zero",) + HASLBECK_TYPES
    rows = []
    for n in ns:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"ns: every n must be an integer ≥ 2, got {n!r}")
        usable = [float(h) for h in grid if _min_window(int(n) - 1, float(h), kern, True) > D]
        if not usable:
            raise ValueError(f"n = {n} is too small: no bandwidth in [{grid.min():g}, {grid.max():g}] leaves more "
                             f"than {D} rows (the {method} parameters per equation) at the ends of the series; "
                             f"use n ≥ about {int(np.ceil((D + 2) / grid.max())) + 1} or larger bandwidths")
        mae_tv, mae_ols, hs, var_tv, var_ols = [], [], [], [], []
        by_type = {name: ([], []) for name in names}
        for r in range(reps):
            sub = int(np.random.SeedSequence([seed, int(n), r]).generate_state(1)[0])
            A, c, types = haslbeck_design(int(n), seed=sub, k=k, return_types=True)
            y = np.asarray(simulate_var(jax.random.key(sub), A, int(n), intercept=c,
                                        noise_cov=HASLBECK_NOISE_SD**2 * np.eye(k)))
            cv = tvvar_cv(y, 1, usable, kernel=kern, method=method)
            tv = tvvar_fit(y, 1, cv.bandwidth, kernel=kern, method=method)
            ols = np.broadcast_to(np.asarray(fit_var(y, 1).params), (int(n) - 1, 1 + k, k))
            mae_tv.append(coefficient_mae(tv.coefficients, A, 1))
            mae_ols.append(coefficient_mae(ols, A, 1))
            hs.append(cv.bandwidth)
            # |error| per entry [m, k, k] (row i, column j = A[i, j]), averaged within each path type
            err_tv = np.abs(np.asarray(tv.coefficients)[:, 1:].transpose(0, 2, 1) - A[1:, 0])
            err_ols = np.abs(ols[:, 1:].transpose(0, 2, 1) - A[1:, 0])
            for ti, name in enumerate(names):
                if np.any(types == ti):
                    by_type[name][0].append(float(err_tv[:, types == ti].mean()))
                    by_type[name][1].append(float(err_ols[:, types == ti].mean()))
            varying = types >= 2  # every path but "constant" (and absent)
            var_tv.append(float(err_tv[:, varying].mean()))
            var_ols.append(float(err_ols[:, varying].mean()))
        rows.append({
            "n": int(n), "reps": int(reps), "kernel": kern, "method": method,
            "kernel_mae": float(np.mean(mae_tv)), "kernel_mae_sd": _sd(mae_tv),
            "ols_mae": float(np.mean(mae_ols)), "ols_mae_sd": _sd(mae_ols),
            "bandwidth": float(np.mean(hs)), "bandwidth_sd": _sd(hs),
            "kernel_mae_varying": float(np.mean(var_tv)), "ols_mae_varying": float(np.mean(var_ols)),
            "kernel_mae_by_type": {t: float(np.mean(v[0])) for t, v in by_type.items() if v[0]},
            "ols_mae_by_type": {t: float(np.mean(v[1])) for t, v in by_type.items() if v[1]},
            "kernel_maes": mae_tv, "ols_maes": mae_ols, "bandwidths": hs,
            "grid": [min(usable), max(usable), len(usable)],
        })
    return rows
