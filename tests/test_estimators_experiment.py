"""experiments.estimators: every verdict passes on the right numbers and fails on a perturbed one."""

import numpy as np

from experiments import estimators as X


def test_verdict_relative_can_fail():
    assert X.verdict_relative("te", 0.1025, X.TE_ISSUE, 0.01)["passed"]
    assert not X.verdict_relative("te", 0.1040, X.TE_ISSUE, 0.01)["passed"]
    assert X.verdict_relative("dv", 0.14, X.TE_ISSUE, 0.05, abs_tol=0.05)["passed"]
    assert not X.verdict_relative("dv", 0.16, X.TE_ISSUE, 0.05, abs_tol=0.05)["passed"]
    assert not X.verdict_relative("nan", float("nan"), X.TE_ISSUE, 0.05)["passed"]


def test_verdict_identity_can_fail():
    assert X.verdict_identity("id", 0.3, 0.3 + 1e-12)["passed"]
    assert not X.verdict_identity("id", 0.3, 0.3 + 1e-8)["passed"]


def test_verdict_staircase_on_the_optimal_critic_and_a_perturbed_one():
    v = X._staircase(10, 50, seed=0)
    assert X.verdict_staircase(10, v)["passed"]
    assert not X.verdict_staircase(10, v - 0.3)["passed"]  # a critic that misses the ceiling
    assert not X.verdict_staircase(2, v)["passed"]  # the ceiling value for MI 10 is not the one for MI 2


def test_simulated_var_has_the_issue_coefficients():
    z = X._simulate_var(20000, seed=0)
    coef, *_ = np.linalg.lstsq(z[:-1], z[1:], rcond=None)
    np.testing.assert_allclose(coef.T, X.A_ISSUE, atol=0.03)
