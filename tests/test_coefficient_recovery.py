"""TV-VAR fits of a model's own trajectories against its materialised A_tj (issue 14 item 7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tvvar.model import ModelConfig, TVVARModel
from tvvar.theory.estimation import recovery as R
from tvvar.theory.estimation.classical import SingularDesignError


def _model(decomposition: str, *, V: int = 16, D: int = 6, layers: int = 1, **mixer) -> TVVARModel:
    cfg = ModelConfig(V, D, num_layers=layers, decomposition=decomposition, mixer=mixer,
                      param_dtype="float64", dtype="float64")
    return TVVARModel(cfg, rngs=nnx.Rngs(0))


def _ids(B: int, T: int, V: int = 16, seed: int = 1):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, V)


def test_fit_equals_per_position_numpy_least_squares():
    """The masked batched solve = numpy lstsq on each position's own regressors (1e-10), with an
    intercept and a lag bound, coefficients outside the fitted set exactly zero."""
    rng = np.random.default_rng(0)
    B, T, D, E, L = 60, 5, 3, 2, 2
    u = rng.standard_normal((B, T, D))
    h = rng.standard_normal((B, T, E))
    with jax.enable_x64(True):
        fit = R.fit_tvvar_coefficients(u, h, max_lag=L, intercept=True)
    A = np.asarray(fit.coefficients)
    for i in range(T):
        js = [j for j in range(i, -1, -1) if i - j <= L]
        X = np.concatenate([np.ones((B, 1))] + [u[:, j] for j in js], axis=1)
        beta, *_ = np.linalg.lstsq(X, h[:, i], rcond=None)
        np.testing.assert_allclose(np.asarray(fit.intercept)[i], beta[0], atol=1e-10)
        for n, j in enumerate(js):
            np.testing.assert_allclose(A[i, j], beta[1 + n * D: 1 + (n + 1) * D].T, atol=1e-10)
        resid = h[:, i] - X @ beta
        np.testing.assert_allclose(np.asarray(fit.sigma2)[i], (resid**2).sum(0) / (B - X.shape[1]), atol=1e-10)
        cov = np.linalg.inv(X.T @ X)
        se0 = np.sqrt(cov[1:1 + D, 1:1 + D].diagonal()[:, None] * (resid**2).sum(0) / (B - X.shape[1]))
        np.testing.assert_allclose(np.asarray(fit.stderr)[i, i], se0.T, atol=1e-10)
        r2 = 1 - (resid**2).sum() / ((h[:, i] - h[:, i].mean(0)) ** 2).sum()
        np.testing.assert_allclose(float(fit.r2[i]), r2, atol=1e-10)
        outside = [j for j in range(T) if j not in js]
        assert np.all(A[i, outside] == 0)


@pytest.mark.slow
@pytest.mark.parametrize("decomposition,mixer", [("ssm_lti", {}), ("ssm", {"selective": False, "num_heads": 2}),
                                                 ("dense", {})])
def test_fixed_coefficient_mixers_are_recovered_exactly(decomposition, mixer):
    """A linear SSM without gating (and a free fixed A_tj) is exactly a linear TV-VAR: the fit on its own
    trajectories returns its materialised coefficients to 1e-10 (float64), with R² = 1."""
    with jax.enable_x64(True):
        model = _model(decomposition, **mixer)
        u, h, A = R.mixer_trajectories(model, _ids(200, 6))
        fit = R.fit_tvvar_coefficients(u, h)
        s = R.recovery_summary(fit, A)
    assert s["data_dependent_fraction"] < 1e-20
    assert s["max_abs_error"] < 1e-10
    assert s["unexplained"] < 1e-10


def test_noisy_linear_ssm_is_recovered_up_to_the_ols_error():
    """With Gaussian observation noise σ the estimate's errors match its own standard errors: the mean squared
    z-score over the ≈ 800 fitted entries is 1 within 0.15 (its sampling sd is ≈ √(2/800) ≈ 0.05)."""
    with jax.enable_x64(True):
        model = _model("ssm_lti")
        u, h, A = R.mixer_trajectories(model, _ids(400, 6))
        hn = h + 0.05 * jax.random.normal(jax.random.key(3), h.shape, h.dtype)
        s = R.recovery_summary(R.fit_tvvar_coefficients(u, hn), A)
    assert abs(s["z2"] - 1.0) < 0.15, s
    assert s["max_abs_error"] > 1e-4  # the noise is visible: this is not the exact case


def test_attention_fit_is_the_best_linear_predictor_not_the_coefficients():
    """For attention A[i, j] = Σ_h π^h_ij(u) A_h depends on the data: the fit's residuals are orthogonal to
    every regressor (normal equations, 1e-9), yet a fixed-coefficient TV-VAR leaves part of h unexplained and
    differs from the batch-mean coefficients."""
    with jax.enable_x64(True):
        model = _model("attention", num_heads=2)
        u, h, A = R.mixer_trajectories(model, _ids(300, 5))
        fit = R.fit_tvvar_coefficients(u, h)
        s = R.recovery_summary(fit, A)
        pred = jnp.einsum("ijed,bjd->bie", fit.coefficients, u)
    resid = np.asarray(h - pred)
    u = np.asarray(u)
    for i in range(u.shape[1]):
        g = np.einsum("be,bjd->jed", resid[:, i], u[:, : i + 1])
        assert np.abs(g).max() < 1e-9
    assert s["data_dependent_fraction"] > 1e-3
    assert s["unexplained"] > 1e-3
    assert s["rel_error_mean"] > 0.01


def test_deeper_layer_trajectories_are_that_layers_mixer():
    with jax.enable_x64(True):
        model = _model("ssm_lti", layers=2)
        ids = _ids(4, 5)
        u, h, A = R.mixer_trajectories(model, ids, layer=1)
        x0 = model.blocks[0](model.embed_tokens(ids))
        np.testing.assert_allclose(np.asarray(u), np.asarray(model.blocks[1].norm1(x0)), atol=1e-12)
        np.testing.assert_allclose(np.asarray(h), np.asarray(jnp.einsum("bijed,bjd->bie", A, u)), atol=1e-10)


def test_bad_input_is_refused_with_the_argument_named():
    rng = np.random.default_rng(0)
    u, h = rng.standard_normal((50, 4, 3)), rng.standard_normal((50, 4, 2))
    with pytest.raises(ValueError, match="different lengths"):
        R.fit_tvvar_coefficients(u, h[:, :3])
    with pytest.raises(ValueError, match="fewer samples than parameters"):
        R.fit_tvvar_coefficients(u[:10], h[:10])
    with pytest.raises(ValueError, match="max_lag"):
        R.fit_tvvar_coefficients(u, h, max_lag=4)
    with pytest.raises(ValueError, match="shape"):
        R.fit_tvvar_coefficients(u[0], h[0])
    with pytest.raises(TypeError, match="float"):
        R.fit_tvvar_coefficients(u.astype(int), h)
    bad = u.copy()
    bad[3, 1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        R.fit_tvvar_coefficients(bad, h)
    with pytest.raises(SingularDesignError, match="collinear"):
        R.fit_tvvar_coefficients(np.repeat(u[:, :, :1], 3, axis=2), h)  # three copies of one coordinate
    with jax.enable_x64(True):
        model = _model("ssm_lti", V=4, D=6)  # 4 tokens cannot span 6 directions
        uu, hh, _ = R.mixer_trajectories(model, _ids(100, 3, V=4))
        with pytest.raises(SingularDesignError, match="position i = 0"):
            R.fit_tvvar_coefficients(uu, hh)
        with pytest.raises(ValueError, match="layer"):
            R.mixer_trajectories(model, _ids(2, 3, V=4), layer=1)
    fit = R.fit_tvvar_coefficients(u, h)
    with pytest.raises(ValueError, match="A must have shape"):
        R.recovery_summary(fit, np.zeros((2, 4, 4, 3, 2)))
