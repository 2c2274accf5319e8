"""Granger F and Wald tests: agreement with statsmodels on identical data, exact identities, size and power."""

import jax
import numpy as np
import pytest
from statsmodels.tsa.api import VAR

from tvvar.theory.estimation import granger as G
from tvvar.theory.estimation.kernel_tvvar import simulate_var

# Channel 2 drives channel 0; nothing drives channel 2 from 0 or 1; 1 → 0 and 0 → 1 at lag 1.
A3 = np.array([[[0.5, 0.1, 0.3], [0.2, 0.4, 0.0], [0.0, 0.0, 0.3]],
               [[0.1, 0.0, 0.0], [0.2, -0.2, 0.0], [0.0, 0.0, 0.1]]])


@pytest.fixture(scope="module")
def y3():
    with jax.enable_x64(True):
        return np.asarray(simulate_var(jax.random.key(0), A3, 300))


@pytest.mark.slow
@pytest.mark.parametrize("caused, causing", [(0, 1), (0, [1, 2]), ([0, 1], 2), (2, [0, 1])])
@pytest.mark.parametrize("kind", ["f", "wald"])
def test_agrees_with_statsmodels(y3, caused, causing, kind):
    ref = VAR(y3).fit(2).test_causality(caused, causing, kind=kind)
    with jax.enable_x64(True):
        res = G.granger_test(y3, 2, caused, causing, kind=kind)
    assert res.statistic == pytest.approx(ref.test_statistic, rel=1e-8, abs=1e-8)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-8)
    assert res.crit_value == pytest.approx(ref.crit_value, rel=1e-8, abs=1e-8)
    assert res.df == tuple(np.atleast_1d(ref.df).tolist())
    assert res.reject == (ref.conclusion == "reject")


def test_wald_equals_the_restricted_ssr_difference(y3):
    # One caused channel: λ_W = N × the classical equation-wise F (SSR difference), an independent route.
    with jax.enable_x64(True):
        F, pval, (N, df2) = G.equationwise_f(y3, 3, 1, [0, 2])
        wald = G.granger_test(y3, 3, 1, [0, 2], kind="wald").statistic
    assert wald == pytest.approx(N * F, abs=1e-10)
    assert N == 6 and df2 == 300 - 3 - 10
    assert 0 <= pval <= 1


@pytest.mark.slow
def test_size_within_three_standard_errors_and_power():
    # Null: 2 does not drive 1 (A3[:, 1, 2] = 0).  Alternative: 2 drives 0 (A3[0, 0, 2] = 0.3).
    R, alpha = 1000, 0.05
    se = np.sqrt(alpha * (1 - alpha) / R)
    with jax.enable_x64(True):
        null = G.size_and_power(jax.random.key(1), A3, 200, 2, caused=1, causing=2, replicates=R)
        alt = G.size_and_power(jax.random.key(2), A3, 200, 2, caused=0, causing=2, replicates=R)
        weak = G.size_and_power(jax.random.key(3), A3 * np.array([1, 1, 0.2])[None, None], 200, 2, 0, 2,
                                replicates=R)
    assert abs(null.f_rate - alpha) < 3 * se, null
    assert abs(null.wald_rate - alpha) < 3 * se, null
    assert alt.f_rate > 0.95 and alt.wald_rate > 0.95, alt  # measured 0.978 at n = 200
    assert 3 * se < weak.f_rate - alpha, weak  # a 0.06 coupling is detected more often than the level
    assert weak.wald_rate >= weak.f_rate  # the χ² reference law is the more liberal one


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(y=np.ones((50, 2)), p=1, caused=0), "constant"),
        (dict(p=1, caused=0, y=np.r_[np.random.default_rng(0).standard_normal((9, 2)), [[np.nan, 0.0]]]),
         "y must be finite"),
        (dict(y=np.random.default_rng(0).standard_normal((10, 2)), p=4, caused=0), "fewer samples than parameters"),
        (dict(y=np.random.default_rng(0).standard_normal((10, 2)), p=10, caused=0), r"p \(lag order\)"),
        (dict(y=np.random.default_rng(0).standard_normal((50, 2)), p=1, caused=0, kind="lr"), "kind must be"),
        (dict(y=np.random.default_rng(0).standard_normal((50, 2)), p=1, caused=0, causing=0), "disjoint"),
        (dict(y=np.random.default_rng(0).standard_normal((50, 2)), p=1, caused=5), "caused must be"),
        (dict(y=np.random.default_rng(0).standard_normal((50, 2)), p=1, caused=0, signif=1.5), "signif"),
    ],
)
def test_bad_input_is_a_named_error(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        G.granger_test(**kwargs)


def test_collinear_series_is_a_singular_design_error():
    x = np.random.default_rng(0).standard_normal((80, 1))
    with pytest.raises(ValueError, match="singular"):
        G.granger_test(np.concatenate([x, 3 * x], axis=1), 1, 0)


# --------------------------------------------------------------------------------------------------
# Likelihood-ratio (G) test on the plug-in TE for token streams (issue 14, item 5)
# --------------------------------------------------------------------------------------------------


def _markov_target(rng, n, source=None, stay=0.3, follow=0.0):
    y = (rng.random(n) < 0.5).astype(np.int64)
    for i in range(1, n):
        if source is not None and rng.random() < follow:
            y[i] = source[i - 1]
        elif rng.random() < stay:
            y[i] = y[i - 1]
    return y


def test_te_lr_statistic_is_the_count_model_log_likelihood_ratio():
    from collections import Counter

    from tvvar.theory.estimation.granger import te_likelihood_ratio_test

    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, 500)
    y = _markov_target(rng, 500, x, follow=0.2)

    def loglik(keys):  # maximum-likelihood categorical fit of y_t given the context keys
        joint = Counter(zip(keys, y[1:].tolist(), strict=True))
        ctx = Counter(keys)
        return sum(c * np.log(c / ctx[kk]) for (kk, _), c in joint.items())

    full = loglik(list(zip(y[:-1].tolist(), x[:-1].tolist(), strict=True)))
    restricted = loglik(y[:-1].tolist())
    with jax.enable_x64(True):
        res = te_likelihood_ratio_test(x, y)
    assert abs(res.statistic - 2 * (full - restricted)) < 1e-10
    assert res.df == (3 - 1) * (3 - 1) * 3 and res.n_eff == 499  # y copies x, so both alphabets have 3 symbols


@pytest.mark.slow
def test_te_lr_size_and_power():
    from tvvar.theory.estimation.granger import te_likelihood_ratio_test

    rng = np.random.default_rng(1)
    R, n = 1000, 300
    null = [te_likelihood_ratio_test(rng.integers(0, 2, n), _markov_target(rng, n)).pvalue for _ in range(R)]
    size = np.mean(np.asarray(null) < 0.05)
    assert abs(size - 0.05) <= 3 * np.sqrt(0.05 * 0.95 / R)  # within 3 standard errors of the nominal 5 %
    alt = []
    for _ in range(200):
        x = rng.integers(0, 2, n)
        alt.append(te_likelihood_ratio_test(x, _markov_target(rng, n, x, follow=0.25)).pvalue)
    assert np.mean(np.asarray(alt) < 0.05) > 0.9


def test_te_lr_bad_input():
    from tvvar.theory.estimation.granger import te_likelihood_ratio_test

    with pytest.raises(ValueError, match="same length"):
        te_likelihood_ratio_test(np.zeros(10, int), np.zeros(9, int))
    with pytest.raises(TypeError, match="integer symbols"):
        te_likelihood_ratio_test(np.zeros(10), np.zeros(10, int))
    with pytest.raises(ValueError, match="source_vocab"):
        te_likelihood_ratio_test(np.array([0, 1, 2] * 5), np.zeros(15, int), source_vocab=2)
