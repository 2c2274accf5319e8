"""Neural MI estimators: exact properties of the bounds, the Bayes-optimal critic against closed forms (InfoNCE's
ln K ceiling on the Gaussian staircase, issue 14), trained critics against closed forms at small n (stated
tolerances), bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvvar.theory import estimators as E
from tvvar.theory import neural_estimators as N

RHO_PAIR = 0.4 / math.sqrt(0.52)  # MI 0.18386 nats


def gaussian_critic(rho: float, offset: float = 0.0):
    """The Bayes-optimal critic ln p(b | a) − ln p(b) (+ offset) for a_k, b_k unit Gaussians with correlation ρ."""

    def f(params, a, b):
        s = 1 - rho**2
        return jnp.sum(-0.5 * jnp.log(s) - (b - rho * a) ** 2 / (2 * s) + b**2 / 2, -1) + offset

    return f


def pairs(rng, n, d, rho):
    a = rng.standard_normal((n, d))
    return a, rho * a + math.sqrt(1 - rho**2) * rng.standard_normal((n, d))


def test_infonce_never_exceeds_log_k_and_bounds_agree_on_definitions():
    with jax.enable_x64(True):
        S = jnp.asarray(np.random.default_rng(0).normal(0, 5, (16, 16)) + 30 * np.eye(16))
        assert float(N.infonce_bound(S)) <= math.log(16) + 1e-12
        off = np.asarray(S)[~np.eye(16, dtype=bool)]
        dv = np.mean(np.diag(S)) - math.log(np.mean(np.exp(off)))
        assert abs(float(N.dv_bound(S)) - dv) < 1e-10
        nwj = np.mean(np.diag(S)) - np.mean(np.exp(off - 1))
        assert abs(float(N.nwj_bound(S)) - nwj) < 1e-10
        # NWJ ≤ DV for every critic (ln z ≤ z/e), equality at E_Q e^T = e
        assert float(N.nwj_bound(S)) <= float(N.dv_bound(S)) + 1e-12
        # the clip only acts on large exponents
        small = S / 100
        assert abs(float(N.dv_bound(small, clip=10.0)) - float(N.dv_bound(small))) < 1e-12
        assert float(N.dv_bound(S, clip=1.0)) != pytest.approx(float(N.dv_bound(S)), abs=1e-3)


@pytest.mark.parametrize("true_mi, issue_value", [(2, 1.82), (4, 3.08), (6, 3.74), (8, 4.03), (10, 4.12)])
def test_infonce_log_k_ceiling_on_gaussian_staircase(true_mi, issue_value):
    # Bayes-optimal critic, K = 64, d = 20: InfoNCE saturates below ln 64 = 4.159 (issue 14's numbers).
    rho = math.sqrt(1 - math.exp(-2 * true_mi / 20))
    rng = np.random.default_rng(true_mi)
    with jax.enable_x64(True):
        vals = [float(N.infonce_bound(N.score_matrix(gaussian_critic(rho), None, *map(jnp.asarray, pairs(
            rng, 64, 20, rho))))) for _ in range(100)]
    se = np.std(vals) / 10
    assert abs(np.mean(vals) - issue_value) < 0.03 + 3 * se
    assert np.mean(vals) < math.log(64)


def test_optimal_critic_dv_and_nwj_recover_the_pair_mi():
    # DV is invariant to a constant offset; NWJ needs the critic 1 + ln dP/dQ.  K = 512 pairs, 20 batches.
    rng = np.random.default_rng(1)
    truth = E.gaussian_pair_mutual_information(RHO_PAIR)
    with jax.enable_x64(True):
        dv, nwj = [], []
        for _ in range(20):
            a, b = map(jnp.asarray, pairs(rng, 512, 1, RHO_PAIR))
            dv.append(float(N.dv_bound(N.score_matrix(gaussian_critic(RHO_PAIR, 3.0), None, a, b))))
            nwj.append(float(N.nwj_bound(N.score_matrix(gaussian_critic(RHO_PAIR, 1.0), None, a, b))))
    assert np.mean(dv) == pytest.approx(truth, abs=0.02)
    assert np.mean(nwj) == pytest.approx(truth, abs=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("bound", N.BOUNDS)
def test_trained_critic_estimates_pair_mi(bound):
    # n = 3000 samples, 300 Adam steps, batch 128: within 0.06 nats of 0.18386 (measured ≈ 0.16 for all three);
    # the held-out interval is finite and ordered.
    a, b = pairs(np.random.default_rng(0), 3000, 1, RHO_PAIR)
    est = N.train_mi_estimator(a, b, bound=bound, steps=300, batch=128, hidden=32, lr=3e-3)
    assert est.value == pytest.approx(E.gaussian_pair_mutual_information(RHO_PAIR), abs=0.06)
    assert est.low < est.value < est.high and est.batches == 7
    assert np.all(np.isfinite(est.train_curve))


@pytest.mark.slow
def test_dv_transfer_entropy_on_the_issue_var():
    A = np.array([[0.5, 0.4], [0.0, 0.6]])
    rng = np.random.default_rng(0)
    n = 4000
    x = np.zeros((n, 2))
    for t in range(1, n):
        x[t] = A @ x[t - 1] + rng.standard_normal(2)
    te, full, restricted = N.transfer_entropy_dv(x[:, 1], x[:, 0], steps=300, batch=128, hidden=32, lr=3e-3)
    assert te.value == pytest.approx(0.10207, abs=0.05)  # truth 0.10207 nats; n = 4000 (not the 10⁵ target)
    assert np.allclose(te.batch_values, full.batch_values - restricted.batch_values)
    # no flow in the other direction
    back, _, _ = N.transfer_entropy_dv(x[:, 0], x[:, 1], steps=300, batch=128, hidden=32, lr=3e-3)
    assert abs(back.value) < 0.05


def test_bad_input():
    a = np.zeros((1000, 1))
    with pytest.raises(ValueError, match="bound must be one of"):
        N.train_mi_estimator(a, a, bound="mine")
    with pytest.raises(ValueError, match="same number of samples"):
        N.train_mi_estimator(a, a[:10])
    bad = a.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="b must be finite"):
        N.train_mi_estimator(a, bad)
    with pytest.raises(ValueError, match="too few"):
        N.train_mi_estimator(a[:100], a[:100], batch=128)
    with pytest.raises(ValueError, match="held_out"):
        N.train_mi_estimator(a, a, held_out=1.5)
    with pytest.raises(ValueError, match="sequences must have the same length"):
        N.transfer_entropy_dv(np.zeros(100), np.zeros(99))
