"""Blahut–Arimoto capacity with a reward constraint, R_post(W) and the exact one-step R_pre(D) curve."""

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from tvvar.theory.information import capacity as C


@pytest.mark.parametrize("p", [0.0, 0.11, 0.3])
def test_binary_symmetric_channel(p):
    r = C.blahut_arimoto([[1 - p, p], [p, 1 - p]])
    assert abs(r["capacity_bits"] - (1 - C.binary_entropy(p))) < 1e-6


@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_erasure_channel(eps):
    r = C.blahut_arimoto([[1 - eps, eps, 0], [0, eps, 1 - eps]])
    assert abs(r["capacity_bits"] - (1 - eps)) < 1e-6


def test_z_channel_nonuniform_optimum():
    z = 0.2
    r = C.blahut_arimoto([[1, 0], [z, 1 - z]])
    assert abs(r["capacity_bits"] - math.log2(1 + (1 - z) * z ** (z / (1 - z)))) < 1e-6
    assert r["prior"][0] > 0.5


def test_reward_constraint_binds_and_matches_brute_force():
    p = 0.11
    W = np.array([[1 - p, p], [p, 1 - p]])
    w = np.array([[1.0, 1.0], [0.0, 0.0]])                     # reward for sending prompt 0
    r = C.blahut_arimoto(W, w, 0.8)
    assert abs(r["reward"] - 0.8) < 1e-6 and r["mu"] > 0
    grid = np.linspace(0.8, 1.0, 20001)
    best = max(C.mutual_information([a, 1 - a], W) for a in grid)
    assert abs(r["capacity"] - best) < 1e-7
    loose = C.blahut_arimoto(W, w, 0.1)
    assert abs(loose["capacity_bits"] - (1 - C.binary_entropy(p))) < 1e-6 and loose["mu"] == 0


def test_r_pre_one_step_matches_direct_minimisation():
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.full(3, 0.4), size=4)
    pr = rng.dirichlet(np.ones(4))

    def lagrangian(x, b):
        Q = np.exp(x.reshape(4, 3))
        Q /= Q.sum(1, keepdims=True)
        r = pr @ Q
        return np.sum(pr * np.sum(Q * np.log(Q / r), 1)) + b * np.sum(pr * np.sum(P * np.log(P / Q), 1))

    for b in (0.5, 3.0):
        pt = C.rate_distortion_one_step(pr, P, b)
        direct = minimize(lagrangian, np.log(P).ravel(), args=(b,), method="BFGS", options={"gtol": 1e-10}).fun
        assert pt["R"] + b * pt["D"] <= direct + 1e-9
        assert abs(pt["R"] + b * pt["D"] - direct) < 1e-7
    curve = C.rate_distortion_curve(pr, P, np.geomspace(0.1, 100, 12))
    assert np.all(np.diff(curve["R"]) <= 1e-9)                 # non-increasing in D
    assert abs(curve["R"][0] - C.mutual_information(pr, P)) < 1e-12 and curve["R"][-1] == 0.0


def test_rate_reward():
    pr = np.full(3, 1 / 3)
    w = np.eye(3)                                               # reward for echoing the prompt
    low = C.rate_reward(pr, w, 0.2)
    assert low["rate"] == 0.0
    full = C.rate_reward(pr, w, 1.0 - 1e-9)
    assert abs(full["rate"] - math.log(3)) < 1e-6
    mid = C.rate_reward(pr, w, 0.7)
    assert abs(mid["reward"] - 0.7) < 1e-6 and 0 < mid["rate"] < math.log(3)


def test_bad_input():
    W = [[0.9, 0.1], [0.1, 0.9]]
    with pytest.raises(ValueError, match="reward must be finite"):
        C.blahut_arimoto(W, lambda k, y: float("nan"), 0.5)
    with pytest.raises(ValueError, match="infeasible"):
        C.blahut_arimoto(W, np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match="channel"):
        C.blahut_arimoto(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="zero-probability"):
        C.rate_distortion_one_step([0.0, 0.0], W, 1.0)
    with pytest.raises(ValueError, match="beta"):
        C.rate_distortion_one_step([0.5, 0.5], W, -1.0)


def _lagrangian_by_bfgs(pr, P, b):
    """An independent solver: min over a softmax parametrisation of Q of I(S; U) + β Σ p KL(P_s ‖ Q_s)."""
    K, V = P.shape

    def lagrangian(x):
        z = x.reshape(K, V)
        Q = np.exp(z - z.max(1, keepdims=True))
        Q /= Q.sum(1, keepdims=True)
        r = pr @ Q
        return np.sum(pr * np.sum(Q * np.log(Q / r), 1)) + b * np.sum(pr * np.sum(P * np.log(P / Q), 1))

    return minimize(lagrangian, np.log(P).ravel(), method="BFGS", options={"gtol": 1e-12}).fun


@pytest.mark.parametrize("beta", [0.5, 3.0, 60.0, 200.0, 1000.0])
def test_r_pre_large_beta_no_fixed_bracket(beta):
    """Issue 29 §3.1: the multiplier search was bounded to [−60, 60], so at β ≳ 60 the rows summed to 3.2
    (β = 200) or 15.8 (β = 1000) before a silent rescale and R + βD ended above what Q = P achieves."""
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.full(3, 0.4), size=4)
    pr = rng.dirichlet(np.ones(4))
    pt = C.rate_distortion_one_step(pr, P, beta)
    lag = pt["R"] + beta * pt["D"]
    assert pt["normalisation_error"] < 1e-12                      # rows sum to 1 before the final rescale
    np.testing.assert_allclose(pt["Q"].sum(1), 1.0, atol=1e-14)
    assert lag <= C.mutual_information(pr, P) + 1e-12             # never above Q = P's value
    assert abs(lag - _lagrangian_by_bfgs(pr, P, beta)) < 1e-9     # the independent solver's minimum
    assert pt["beta"] == beta


def test_kl_of_a_channel_with_a_zero_is_infinite():
    # capacity's KL rows are +inf where the reference gives 0 to a possible output (Issue 29 §3.2, NumPy side)
    assert C._kl_rows(np.array([[0.5, 0.5, 0.0]]), np.array([[1.0, 0.0, 0.0]]))[0] == np.inf
