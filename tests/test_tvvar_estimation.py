"""Kernel TV-VAR estimation: OLS/statsmodels limit, exactness on polynomial paths, brute-force LOO CV, MAE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from statsmodels.tsa.api import VAR

from tvvar.theory.estimation import kernel_tvvar as T

A2 = np.array([[[0.5, 0.1], [0.0, 0.4]], [[0.1, 0.0], [0.2, -0.2]]])


@pytest.fixture(scope="module")
def y2():
    with jax.enable_x64(True):
        return np.asarray(T.simulate_var(jax.random.key(0), A2, 300, intercept=[0.3, -0.1]))


def test_fit_var_matches_statsmodels(y2):
    ref = VAR(y2).fit(2)
    with jax.enable_x64(True):
        fit = T.fit_var(y2, 2)
    for ours, theirs in [(fit.params, ref.params), (fit.sigma_u, ref.sigma_u), (fit.stderr, ref.stderr),
                         (fit.cov_params, ref.cov_params()), (fit.resid, ref.resid)]:
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=1e-10)
    assert fit.df_resid == ref.df_resid


def test_equal_weights_give_ols_and_statsmodels(y2):
    # Uniform kernel with h = 1: every |τ_s − τ_t| ≤ 1, so every weight is ½ and the fit is OLS at each τ.
    ref = VAR(y2).fit(2)
    with jax.enable_x64(True):
        tv = T.tvvar_fit(y2, 2, 1.0, kernel="uniform", method="local_constant")
    m = y2.shape[0] - 2
    np.testing.assert_allclose(np.asarray(tv.coefficients), np.broadcast_to(ref.params, (m, 5, 2)), atol=1e-10)
    np.testing.assert_allclose(np.asarray(tv.stderr), np.broadcast_to(ref.stderr, (m, 5, 2)), atol=1e-10)
    np.testing.assert_allclose(np.asarray(tv.sigma_u), ref.sigma_u, atol=1e-10)
    np.testing.assert_allclose(np.asarray(tv.resid), ref.resid, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", T.KERNELS)
def test_local_fits_are_exact_on_their_polynomial_class(kernel):
    # Noise-free responses: local-constant reproduces constant coefficients, local-linear linear ones, at any
    # bandwidth, since the weighted residual is then exactly zero.
    rng = np.random.default_rng(0)
    m, d, k = 80, 4, 2
    with jax.enable_x64(True):
        Z = jnp.asarray(rng.standard_normal((m, d)))
        tau = T.rescaled_time(m)
        th0, th1 = jnp.asarray(rng.standard_normal((2, d, k)))
        W = T._weights(tau, jnp.asarray(0.4), kernel, False)
        Yc = Z @ th0
        theta_c, _ = T._local_solve(W, Z, Yc, tau, "local_constant")
        np.testing.assert_allclose(np.asarray(theta_c), np.broadcast_to(np.asarray(th0), (m, d, k)), atol=1e-10)
        path = th0[None] + tau[:, None, None] * th1[None]  # θ(τ) linear in τ
        Yl = jnp.einsum("ta,tae->te", Z, path)
        theta_l, _ = T._local_solve(W, Z, Yl, tau, "local_linear")
        np.testing.assert_allclose(np.asarray(theta_l), np.asarray(path), atol=1e-10)
        theta_lc, _ = T._local_solve(W, Z, Yl, tau, "local_constant")
        assert float(jnp.max(jnp.abs(theta_lc - path))) > 1e-3  # the local-constant fit is biased on a slope


@pytest.mark.slow
@pytest.mark.parametrize("method", T.METHODS)
def test_loo_cv_equals_brute_force_refits(y2, method):
    y = y2[:70]
    hs = [0.5, 0.8]
    with jax.enable_x64(True):
        cv = T.tvvar_cv(y, 1, hs, kernel="triweight", method=method)
    Y, Z = y[1:], np.concatenate([np.ones((len(y) - 1, 1)), y[:-1]], axis=1)  # the VAR(1) design by hand
    m = Y.shape[0]
    tau = np.arange(1, m + 1) / m
    for i, h in enumerate(hs):
        err = 0.0
        for t in range(m):
            u = (tau - tau[t]) / h
            w = np.where(np.abs(u) < 1, 35 / 32 * (1 - u * u) ** 3, 0.0)
            w[t] = 0.0
            X = Z if method == "local_constant" else np.concatenate([Z, (tau - tau[t])[:, None] * Z], axis=1)
            coef = np.linalg.lstsq(X * np.sqrt(w)[:, None], Y * np.sqrt(w)[:, None], rcond=None)[0][: Z.shape[1]]
            err = err + (Y[t] - Z[t] @ coef) ** 2
        np.testing.assert_allclose(np.asarray(cv.scores_per_equation[i]), err / m, rtol=1e-10)
    assert cv.bandwidth == hs[int(np.argmin(np.asarray(cv.scores)))]


def test_kernel_estimate_beats_stationary_ols_on_a_time_varying_var():
    n, k, p = 800, 2, 1
    A = T.smooth_tv_coefficients(n, k, p, seed=3, scale=0.6)
    with jax.enable_x64(True):
        y = np.asarray(T.simulate_var(jax.random.key(4), A, n))
        cv = T.tvvar_cv(y, p, np.linspace(0.1, 1.0, 10), kernel="epanechnikov")
        tv = T.tvvar_fit(y, p, cv.bandwidth, kernel="epanechnikov")
        ols = T.fit_var(y, p)
    mae_tv = T.coefficient_mae(tv.coefficients, A, p)
    mae_ols = T.coefficient_mae(np.broadcast_to(np.asarray(ols.params), (n - p,) + ols.params.shape), A, p)
    assert cv.bandwidth < 1.0
    assert mae_tv < 0.8 * mae_ols, (mae_tv, mae_ols, cv.bandwidth)
    assert bool(jnp.all(tv.lower <= tv.coefficients)) and bool(jnp.all(tv.coefficients <= tv.upper))


def test_confidence_bands_cover_at_the_nominal_rate():
    # Constant coefficients (no smoothing bias): the pointwise 95 % band at τ = 0.5 covers the true A_1
    # in 95 % of 400 replicates, within 3 binomial standard errors (measured 0.94).
    n, R = 300, 400
    with jax.enable_x64(True):
        A_T = jnp.full((n, 1, 1, 1), 0.5)
        tau = T.rescaled_time(n - 1)

        def covered(key):
            y = T._simulate(key, A_T, jnp.zeros((n, 1)), jnp.eye(1), 200)
            Y, Z = T.var_design(y, 1)
            theta, se, *_ = T._fit(Y, Z, tau, jnp.asarray(0.5), "epanechnikov", "local_constant")
            return jnp.abs(theta[n // 2, 1, 0] - 0.5) <= 1.959963984540054 * se[n // 2, 1, 0]

        rate = float(jnp.mean(jax.jit(jax.vmap(covered))(jax.random.split(jax.random.key(0), R))))
    assert abs(rate - 0.95) < 3 * np.sqrt(0.95 * 0.05 / R), rate


def test_simulated_tv_var_follows_its_recursion():
    # Noise of sd 1e-15 leaves the deterministic recursion y_t = c + Σ_l A_l(t) y_{t−l} to check step by step.
    n, k, p = 50, 2, 2
    A = T.smooth_tv_coefficients(n, k, p, seed=1)
    c = np.array([1.0, 0.5])
    with jax.enable_x64(True):
        y = np.asarray(T.simulate_var(jax.random.key(5), A, n, intercept=c, noise_cov=np.eye(2) * 1e-30))
    assert np.abs(y).max() > 0.5
    for t in range(p, n):
        np.testing.assert_allclose(y[t], c + sum(A[t, ell] @ y[t - ell - 1] for ell in range(p)), atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bandwidth=0.0), r"bandwidth must lie in \(0, 1\]"),
        (dict(bandwidth=1.5), r"bandwidth must lie in \(0, 1\]"),
        (dict(bandwidth=0.5, kernel="gaussian"), "kernel must be one of"),
        (dict(bandwidth=0.5, method="local_cubic"), "method must be one of"),
        (dict(bandwidth=0.01), "bandwidth 0.01 is too small"),
        (dict(bandwidth=0.5, p=300), r"p \(lag order\)"),
        (dict(bandwidth=0.5, p=0), r"p \(lag order\)"),
        (dict(bandwidth=0.5, y=np.ones((300, 2))), "constant"),
        (dict(bandwidth=0.5, y=np.full((300, 2), np.nan)), "y must be finite"),
        (dict(bandwidth=0.5, p=100), "fewer samples than parameters"),
    ],
)
def test_bad_input_is_a_named_error(y2, kwargs, match):
    args = dict(y=y2, p=2) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        T.tvvar_fit(args.pop("y"), args.pop("p"), **args)


def test_cv_rejects_a_bandwidth_outside_the_unit_interval(y2):
    with pytest.raises(ValueError, match=r"bandwidths\[1\] must lie in \(0, 1\]"):
        T.tvvar_cv(y2, 1, [0.5, 2.0])


# --------------------------------------------------------------------------------------------------
# Haslbeck, Bringmann & Waldorp's Simulation A design and the MAE table on it
# --------------------------------------------------------------------------------------------------


def test_haslbeck_paths_by_hand():
    # n = 5, θ = 0.35: linear steps of θ/4, steps at ceil(5/2) = 3, sigmoid at x = 0, θ/2, θ.
    P = T._haslbeck_paths(5, 0.35)
    np.testing.assert_allclose(P[0], 0.35)
    np.testing.assert_allclose(P[1], [0, 0.0875, 0.175, 0.2625, 0.35], atol=1e-15)
    np.testing.assert_allclose(P[2], P[1][::-1], atol=1e-15)
    np.testing.assert_allclose(P[3][[0, 2, 4]], 0.35 / (1 + np.exp([2.625, 0.0, -2.625])), atol=1e-15)
    np.testing.assert_allclose(P[3] + P[4], 0.35, atol=1e-15)  # the two sigmoids mirror each other
    np.testing.assert_array_equal(P[5], [0.35, 0.35, 0.35, 0, 0])
    np.testing.assert_array_equal(P[6], [0, 0, 0.35, 0.35, 0.35])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_haslbeck_design_structure(seed):
    n, k = 201, 10
    A, c, types = T.haslbeck_design(n, seed=seed, k=k, return_types=True)
    assert A.shape == (n, 1, k, k) and c.shape == (k,) and types.shape == (k, k)
    np.testing.assert_array_equal(c, 0.0)
    assert np.all(np.diag(types) > 0)  # every autoregressive effect is present
    assert np.count_nonzero(types) == k + 18  # round(0.2 · 90) cross-lagged effects
    P = T._haslbeck_paths(n, 0.35)
    for i in range(k):
        for j in range(k):
            want = P[types[i, j] - 1] if types[i, j] else np.zeros(n)
            np.testing.assert_array_equal(A[:, 0, i, j], want)
    assert np.abs(np.linalg.eigvals(A[:, 0])).max() < 1  # locally stable at every t
    again = T.haslbeck_design(n, seed=seed, k=k)
    np.testing.assert_array_equal(again[0], A)


def test_haslbeck_design_draws_every_type_about_equally():
    counts = np.zeros(8, int)
    for seed in range(40):
        counts += np.bincount(T.haslbeck_design(20, seed=seed, return_types=True)[2].ravel(), minlength=8)
    assert counts[0] == 40 * 72
    # 40 · 28 = 1120 present entries over 7 types: 160 each, binomial sd ≈ 11.7; within 4 sd.
    assert counts[1:].sum() == 1120 and np.all(np.abs(counts[1:] - 160) < 47), counts


def test_mae_table_kernel_beats_ols_on_a_small_case():
    # 0.02 leaves ⌊0.02 · 299⌋ − 1 = 4 rows at the ends, fewer than the 11 parameters: dropped from the grid.
    hs = [0.02, 0.2, 0.35, 0.5, 0.7, 1.0]
    with jax.enable_x64(True):
        (row,) = T.mae_table([300], reps=2, bandwidths=hs)
    assert row["n"] == 300 and row["reps"] == 2 and len(row["kernel_maes"]) == 2
    assert row["grid"] == [0.2, 1.0, 5]
    assert row["kernel_mae"] < row["ols_mae"], row
    assert all(h in hs[1:] for h in row["bandwidths"]) and 0.2 <= row["bandwidth"] <= 1.0
    assert row["kernel_mae_sd"] == pytest.approx(np.std(row["kernel_maes"], ddof=1))
    assert row["bandwidth"] == pytest.approx(np.mean(row["bandwidths"]))
    # OLS cannot follow a step: the kernel fit is much better there
    assert row["kernel_mae_by_type"]["step up"] < 0.8 * row["ols_mae_by_type"]["step up"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: T.mae_table([20], reps=1, bandwidths=[0.5]), "n = 20 is too small"),
        (lambda: T.mae_table([300], reps=0), "reps must be an integer ≥ 1"),
        (lambda: T.mae_table([300], reps=1.5), "reps must be an integer ≥ 1"),
        (lambda: T.mae_table([], reps=1), "ns must name at least one"),
        (lambda: T.mae_table([300.0], reps=1), "every n must be an integer"),
        (lambda: T.mae_table([300], bandwidths=[0.5, 1.5]), r"bandwidths\[1\] must lie in \(0, 1\]"),
        (lambda: T.mae_table([300], method="spline"), "method must be one of"),
        (lambda: T.haslbeck_design(1, seed=0), "n must be an integer ≥ 2"),
        (lambda: T.haslbeck_design(100, seed=0, edge_prob=1.5), r"edge_prob must lie in \[0, 1\]"),
        (lambda: T.haslbeck_design(100, seed=0, theta=1.0), r"theta must lie in \(0, 1\)"),
    ],
)
def test_haslbeck_bad_input_is_a_named_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("method", T.METHODS)
def test_loo_cv_in_float32_tracks_float64(y2, method):
    # The same sweep in the default float32: scores within 1e-3 relative of the float64 ones, same argmin.
    y, hs = y2[:150], [0.4, 0.6, 1.0]
    with jax.enable_x64(True):
        ref = T.tvvar_cv(y, 1, hs, kernel="epanechnikov", method=method)
    cv = T.tvvar_cv(y.astype(np.float32), 1, hs, kernel="epanechnikov", method=method)
    assert cv.scores.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(cv.scores), np.asarray(ref.scores), rtol=1e-3)
    assert cv.bandwidth == ref.bandwidth
