"""Linear Granger causality tests for vector autoregressions (Bai, arXiv:2511.01202, Section V-F; Granger
1969, Lütkepohl 2005 §3.6.1), with the same conventions as statsmodels ``VARResults.test_causality``.

Fit the VAR(p) with an intercept by OLS (:func:`tvvar.theory.estimation.kernel_tvvar.fit_var`): θ̂ ``[d, k]``,
d = 1 + kp, Σ̂_u = ε̂ᵀε̂/(m − d), Cov vec(θ̂ᵀ) = (ZᵀZ)⁻¹ ⊗ Σ̂_u.  H0: the causing channels' coefficients in the
caused equations are zero at every lag, N = |causing| · |caused| · p restrictions Cβ = 0.  Then

    Wald  λ_W = (Cβ̂)ᵀ [C Cov(β̂) Cᵀ]⁻¹ (Cβ̂)  ~  χ²(N)                    (Lütkepohl 3.6.5)
    F     λ_F = λ_W / N                      ~  F(N, k (m − d))          (statsmodels' degrees of freedom)

For one caused channel, λ_W = (SSR_restricted − SSR_full) / σ̂²_caused (the classical equation-wise test;
:func:`equationwise_f` is that form, with its own F(N, m − d) reference law).  Everything after validation is
pure JAX, so :func:`size_and_power` vmaps whole Monte-Carlo replicates (simulate, fit, test) at once.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jax.scipy.special import betainc, gammaincc

from tvvar.theory.estimation.classical import _check_index_set
from tvvar.theory.estimation.kernel_tvvar import _fit_var, _simulate, check_var_input, fit_var, var_design
from tvvar.typing import Array, PRNGKey

__all__ = [
    "KINDS",
    "GrangerResult",
    "SizePower",
    "restriction_rows",
    "f_sf",
    "chi2_sf",
    "granger_test",
    "equationwise_f",
    "size_and_power",
    "TELikelihoodRatio",
    "te_likelihood_ratio_test",
]

KINDS: tuple[str, ...] = ("f", "wald")


class GrangerResult(NamedTuple):
    kind: str
    statistic: float
    pvalue: float
    df: tuple[int, ...]  # (N,) for the Wald test, (N, k (m − d)) for the F test
    crit_value: float
    signif: float
    reject: bool


class SizePower(NamedTuple):
    """Rejection rate of each test over replicates, with its binomial standard error."""

    f_rate: float
    wald_rate: float
    f_se: float
    wald_se: float
    replicates: int
    alpha: float


def f_sf(x: Array, d1, d2) -> Array:
    """P(F > x) for F ~ F(d1, d2): the regularised incomplete beta I_{d2/(d2 + d1 x)}(d2/2, d1/2)."""
    return betainc(d2 / 2.0, d1 / 2.0, d2 / (d2 + d1 * x))


def chi2_sf(x: Array, df) -> Array:
    """P(χ²(df) > x): the regularised upper incomplete gamma Q(df/2, x/2)."""
    return gammaincc(df / 2.0, x / 2.0)


def restriction_rows(k: int, p: int, causing: list[int]) -> np.ndarray:
    """Rows of θ (regressors) holding the causing channels at lags 1..p: 1 + (l − 1) k + j."""
    return np.array([1 + ell * k + j for ell in range(p) for j in causing], dtype=np.int32)


def _wald_from_fit(params: Array, zz_inv: Array, sigma_u: Array, rows: tuple[int, ...], cols: tuple[int, ...]):
    r, c = jnp.asarray(rows), jnp.asarray(cols)
    beta = params[r[:, None], c[None, :]].reshape(-1)  # (regressor, equation) row-major, as the kron below
    V = jnp.kron(zz_inv[r[:, None], r[None, :]], sigma_u[c[:, None], c[None, :]])
    return beta @ jnp.linalg.solve(V, beta)


@partial(jax.jit, static_argnames=("p", "rows", "cols"))
def _statistics(y: Array, p: int, rows: tuple[int, ...], cols: tuple[int, ...]):
    """(Wald, F, p_Wald, p_F) of one series ``[n, k]``; pure JAX so it vmaps over replicates."""
    params, _, sigma_u, _, _, zz_inv = _fit_var(y, p)
    n, k = y.shape
    N = len(rows) * len(cols)
    df2 = k * (n - p - (1 + k * p))
    wald = _wald_from_fit(params, zz_inv, sigma_u, rows, cols)
    F = wald / N
    return wald, F, chi2_sf(wald, N), f_sf(F, N, df2)


def _check_tests(y, p, caused, causing):
    y, p = check_var_input(y, p)
    k = y.shape[1]
    caused = _check_index_set(caused, "caused", k)
    causing = [j for j in range(k) if j not in caused] if causing is None else _check_index_set(causing, "causing", k)
    if set(caused) & set(causing):
        raise ValueError(f"caused {caused} and causing {causing} must be disjoint channel sets")
    if not causing:
        raise ValueError("causing is empty: with every channel caused there is nothing left to test")
    return y, p, caused, causing


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return kind


def _check_alpha(a, name):
    if not 0 < a < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {a}")
    return float(a)


def granger_test(y, p: int, caused, causing=None, *, kind: str = "f", signif: float = 0.05) -> GrangerResult:
    """Test H0: ``causing`` does not Granger-cause ``caused`` in a VAR(p) with intercept fitted to y ``[n, k]``.

    ``caused``/``causing`` are channel indices (int or list); ``causing=None`` means every other channel.
    Same statistic, degrees of freedom and p-value as statsmodels ``VAR(y).fit(p).test_causality(caused,
    causing, kind=kind)``.
    """
    kind = _check_kind(kind)
    signif = _check_alpha(signif, "signif")
    y, p, caused, causing = _check_tests(y, p, caused, causing)
    fit = fit_var(y, p)  # validates the design's rank
    k = y.shape[1]
    rows = tuple(int(r) for r in restriction_rows(k, p, causing))
    N = len(rows) * len(caused)
    wald = float(_wald_from_fit(fit.params, fit.zz_inv, fit.sigma_u, rows, tuple(caused)))
    if kind == "wald":
        df, stat = (N,), wald
        pval = float(chi2_sf(jnp.asarray(stat), N))
        crit = float(scipy.stats.chi2.ppf(1 - signif, N))
    else:
        df, stat = (N, k * fit.df_resid), wald / N
        pval = float(f_sf(jnp.asarray(stat), *df))
        crit = float(scipy.stats.f.ppf(1 - signif, *df))
    return GrangerResult(kind, stat, pval, df, crit, signif, bool(pval < signif))


def equationwise_f(y, p: int, caused: int, causing=None) -> tuple[float, float, tuple[int, int]]:
    """Classical single-equation F = ((SSR_r − SSR_u)/N) / (SSR_u/(m − d)), its F(N, m − d) p-value and df.

    SSR_r refits the caused equation without the causing channels' lags; an independent route to the Wald
    statistic (λ_W = N × this F when one channel is caused).
    """
    y, p, caused_l, causing = _check_tests(y, p, [caused] if isinstance(caused, (int, np.integer)) else caused,
                                           causing)
    if len(caused_l) != 1:
        raise ValueError(f"caused must be a single channel for the equation-wise F test, got {caused_l}")
    fit_var(y, p)
    yj = jnp.asarray(y, jnp.result_type(float))
    Y, Z = var_design(yj, p)
    e = caused_l[0]
    drop = set(restriction_rows(y.shape[1], p, causing).tolist())
    keep = jnp.asarray([r for r in range(Z.shape[1]) if r not in drop])

    def ssr(X):
        coef, *_ = jnp.linalg.lstsq(X, Y[:, e])
        r = Y[:, e] - X @ coef
        return r @ r

    m, d = Z.shape
    N = len(drop)
    ssr_u, ssr_r = ssr(Z), ssr(Z[:, keep])
    F = float((ssr_r - ssr_u) / N / (ssr_u / (m - d)))
    return F, float(f_sf(jnp.asarray(F), N, m - d)), (N, m - d)


def size_and_power(key: PRNGKey, coefs, n: int, p: int, caused, causing=None, *, replicates: int = 1000,
                   alpha: float = 0.05, noise_cov=None, burn_in: int = 200) -> SizePower:
    """Rejection rates of the F and Wald tests at level ``alpha`` over ``replicates`` simulated VAR series.

    ``coefs`` ``[p0, k, k]`` is the data-generating VAR (its own order p0, fitted with order p): a null
    source (causing → caused coefficients zero) gives the empirical size, an alternative the power.
    Replicates are simulated, fitted and tested in one vmapped, jitted computation.
    """
    alpha = _check_alpha(alpha, "alpha")
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) or replicates < 1:
        raise ValueError(f"replicates must be a positive int, got {replicates!r}")
    A = np.asarray(coefs, dtype=float)
    if A.ndim != 3 or A.shape[1] != A.shape[2]:
        raise ValueError(f"coefs must have shape [p, k, k], got {A.shape}")
    k = A.shape[1]
    S = np.eye(k) if noise_cov is None else np.asarray(noise_cov, dtype=float)
    if S.shape != (k, k):
        raise ValueError(f"noise_cov must have shape {(k, k)}, got {S.shape}")
    # Validate sizes and channel sets once on a representative shape (the replicates share it).
    _, p, caused, causing = _check_tests(np.random.default_rng(0).standard_normal((n, k)), p, caused, causing)
    rows = tuple(int(r) for r in restriction_rows(k, p, causing))
    dt = jnp.result_type(float)
    A_T = jnp.broadcast_to(jnp.asarray(A, dt)[None], (n,) + A.shape)
    c_T = jnp.zeros((n, k), dt)
    chol = jnp.asarray(np.linalg.cholesky(S), dt)

    @jax.jit
    def run(keys):
        def one(key):
            y = _simulate(key, A_T, c_T, chol, burn_in)
            _, _, p_wald, p_f = _statistics(y, p, rows, tuple(caused))
            return p_f < alpha, p_wald < alpha

        return jax.vmap(one)(keys)

    rej_f, rej_w = run(jax.random.split(key, replicates))
    f_rate, w_rate = float(jnp.mean(rej_f.astype(dt))), float(jnp.mean(rej_w.astype(dt)))
    return SizePower(f_rate, w_rate, _binomial_se(f_rate, replicates), _binomial_se(w_rate, replicates),
                     int(replicates), alpha)


def _binomial_se(rate: float, replicates: int) -> float:
    return float(np.sqrt(rate * (1 - rate) / replicates))


class TELikelihoodRatio(NamedTuple):
    """The likelihood-ratio (G) test of H0: TE_{source→target} = 0 for discrete streams."""

    statistic: float   # G = 2 · n_eff · TE_plugin (nats)
    df: int
    pvalue: float
    te: float
    n_eff: int


def te_likelihood_ratio_test(source, target, k: int = 1, ell: int = 1, *, source_vocab: int | None = None,
                             target_vocab: int | None = None) -> TELikelihoodRatio:
    """Granger causality for token streams as a likelihood-ratio test on the plug-in transfer entropy.

    The target's order-k Markov chain with and without the source's ℓ-step past: the log-likelihood ratio of
    the two maximum-likelihood (count) fits is exactly n_eff · TE_plugin, so G = 2 n_eff TE_plugin and under H0
    G ~ χ²((V_s^ℓ − 1)(V_t − 1) V_t^k) asymptotically (Wilks; the degrees of freedom count the free conditional
    probabilities added by the source).  Alphabet sizes default to max symbol + 1."""
    from tvvar.theory.estimation.classical import (
        check_history,
        check_same_length,
        check_stream,
        plugin_transfer_entropy,
    )

    s = check_stream(source, "source", discrete=True)
    t = check_stream(target, "target", discrete=True)
    n = check_same_length(source=s, target=t)
    k = check_history(k, "k (target history)", n)
    ell = check_history(ell, "ell (source history)", n)
    if s.shape[1] != 1 or t.shape[1] != 1:
        raise ValueError(f"source and target must be single-channel token streams, got shapes {s.shape}, {t.shape}")
    vs = int(s.max()) + 1 if source_vocab is None else int(source_vocab)
    vt = int(t.max()) + 1 if target_vocab is None else int(target_vocab)
    for name, v, x in (("source_vocab", vs, s), ("target_vocab", vt, t)):
        if v < 2 or x.max() >= v:
            raise ValueError(f"{name} must be ≥ 2 and exceed every symbol (max {int(x.max())}), got {v}")
    n_eff = n - max(k, ell)
    te = float(plugin_transfer_entropy(s, t, k, ell))
    df = (vs**ell - 1) * (vt - 1) * vt**k
    g = 2.0 * n_eff * te
    return TELikelihoodRatio(g, int(df), float(scipy.stats.chi2.sf(g, df)), te, n_eff)
