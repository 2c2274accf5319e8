"""tvvar.theory.cpc: backward directed information and Eq. 42's chain, exact (float64, 1e-10)."""

import math

import numpy as np
import pytest

from tvvar.theory import cpc


def _stationary_chain(seed: int, V: int = 3):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(V, 0.7), size=V)
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    return P, pi / pi.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_markov_closed_forms_equal_enumeration(seed):
    P, pi = _stationary_chain(seed)
    n = 5
    joint = cpc.markov_joint(P, pi, n)
    assert abs(joint.sum() - 1) < 1e-12
    got, ref = cpc.eq42_chain(joint), cpc.markov_chain_terms(P, pi, n)
    for k in ref:
        assert abs(got[k] - ref[k]) <= 1e-10, (k, got[k], ref[k])
    H = cpc.horizon_information(joint)
    for t in range(n - 1):
        for k in range(1, n - t):
            assert abs(H[t, k - 1] - cpc.markov_horizon_information(P, pi, k)) <= 1e-10
    # the chain of Eq. 42, strictly here (a mixing chain with memory beyond one step in its sums)
    assert ref["backward_di"] <= ref["future_sum"] <= ref["horizon_sum"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_chain_holds_for_lossy_encoders(seed):
    """B(f) ≤ Σ_t I(X^t; X_{t+1:n}) for any causal encoder; the identity encoder attains the future sums."""
    P, pi = _stationary_chain(seed, V=4)
    joint = cpc.markov_joint(P, pi, 4)
    rng = np.random.default_rng(100 + seed)
    table = rng.integers(0, 2, size=64)

    def lossy(prefix):  # a random 1-bit summary of the whole prefix
        return int(table[int(np.ravel_multi_index(prefix, (4,) * len(prefix))) % 64])

    future = cpc.future_information(joint).sum()
    for enc in (None, lambda p: p[-1], lossy, lambda p: 0):
        assert cpc.backward_directed_information(joint, enc) <= future + 1e-12
    assert abs(cpc.backward_directed_information(joint, lambda p: 0)) <= 1e-12  # a constant embedding
    # S_t = X_t is sufficient for a Markov chain: it loses nothing against the whole prefix
    assert abs(cpc.backward_directed_information(joint, lambda p: p[-1])
               - cpc.backward_directed_information(joint)) <= 1e-10


def test_exact_values_on_extreme_sources():
    V, n = 3, 4
    iid = np.full((V,) * n, 1.0 / V**n)
    assert abs(cpc.backward_directed_information(iid)) <= 1e-12
    copy = np.zeros((V,) * n)
    for v in range(V):
        copy[(v,) * n] = 1.0 / V  # X_t = X_0 for all t
    c = cpc.eq42_chain(copy)
    assert abs(c["backward_di"] - math.log(V)) <= 1e-12  # all of it at t = 0, nothing new afterwards
    assert abs(c["future_sum"] - (n - 1) * math.log(V)) <= 1e-12
    assert abs(c["horizon_sum"] - n * (n - 1) / 2 * math.log(V)) <= 1e-12


def test_second_inequality_needs_the_markov_property():
    """X_0 a fair bit, X_1 a fair bit, X_2 = X_0 ⊕ X_1: each of X_1, X_2 alone says nothing about X_0."""
    joint = np.zeros((2, 2, 2))
    for a in range(2):
        for b in range(2):
            joint[a, b, a ^ b] = 0.25
    c = cpc.eq42_chain(joint)
    assert abs(c["future_sum"] - 2 * math.log(2)) <= 1e-12
    assert abs(c["horizon_sum"] - math.log(2)) <= 1e-12
    assert c["backward_di"] <= c["future_sum"] + 1e-12
    assert c["future_sum"] > c["horizon_sum"]


def test_bad_input_is_refused_with_the_argument_named():
    P, pi = _stationary_chain(0)
    with pytest.raises(ValueError, match="joint must sum to 1"):
        cpc.backward_directed_information(np.full((2, 2), 0.3))
    with pytest.raises(ValueError, match="non-negative"):
        cpc.future_information(np.array([[1.2, -0.2], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        cpc.eq42_chain(np.full((2, 3), 1 / 6))
    with pytest.raises(ValueError, match="row-stochastic"):
        cpc.markov_joint(P * 2, pi, 3)
    with pytest.raises(ValueError, match="stationary"):
        cpc.markov_chain_terms(P, np.array([1.0, 0.0, 0.0]), 3)
    with pytest.raises(ValueError, match="n must be"):
        cpc.markov_joint(P, pi, 1)
    with pytest.raises(ValueError, match="k must be"):
        cpc.markov_horizon_information(P, pi, 0)


def test_history_is_the_whole_past_of_the_embeddings():
    """S_t = X_t makes S^{t−1} = X^{t−1}, so B equals the identity encoder's on ANY source (here a random
    joint with memory of every order); conditioning on S_{t−1} alone would not."""
    rng = np.random.default_rng(7)
    joint = rng.dirichlet(np.full(3**4, 0.5)).reshape((3,) * 4)
    assert abs(cpc.backward_directed_information(joint, lambda p: p[-1])
               - cpc.backward_directed_information(joint)) <= 1e-10
    # and the first inequality of Eq. 42 holds for any source
    c = cpc.eq42_chain(joint)
    assert c["backward_di"] <= c["future_sum"] + 1e-12
