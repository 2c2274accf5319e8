"""experiments.estimators: every verdict passes on the right numbers and fails on a perturbed one."""

import numpy as np
import pytest

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


@pytest.mark.slow
def test_size_power_and_bias_verdicts_fail_when_perturbed():
    assert X.verdict_size("size", 0.054, 1000)["passed"]
    assert not X.verdict_size("size", 0.08, 1000)["passed"]  # an over-rejecting test
    assert not X.verdict_size("size", 0.02, 1000)["passed"]  # a conservative one
    assert X.verdict_power("power", 0.95, 0.9)["passed"]
    assert not X.verdict_power("power", 0.5, 0.9)["passed"]
    # √n rate between n = 1000 and 10⁴: the bound is 2 × 0.03 × √0.1 = 0.019
    assert X.verdict_rmse_rate("rmse", 0.03, 0.009, 1000, 10_000)["passed"]
    assert not X.verdict_rmse_rate("rmse", 0.03, 0.025, 1000, 10_000)["passed"]  # falls, but like a bias, not √n
    assert not X.verdict_rmse_rate("rmse", 0.01, 0.03, 1000, 10_000)["passed"]
    rng = np.random.default_rng(0)
    te0 = [X.G.te_likelihood_ratio_test(rng.integers(0, 2, 500), rng.integers(0, 2, 500)).te for _ in range(300)]
    assert X.verdict_plugin_null_bias("bias", np.array(te0), 499, 2)["passed"]
    assert not X.verdict_plugin_null_bias("bias", np.array(te0), 499, 4)["passed"]  # wrong degrees of freedom
    assert not X.verdict_plugin_null_bias("bias", np.array(te0) + 0.002, 499, 2)["passed"]  # a biased estimator


def test_flip_streams_have_the_stated_transfer_entropy():
    s, t = X._flip_streams(np.random.default_rng(0), 200_000, 0.1)
    te = float(X.E.plugin_transfer_entropy(s, t))
    assert abs(te - (np.log(2) - X._binary_entropy(0.1))) < 0.005


def test_recovery_verdicts_fail_when_perturbed():
    assert X.verdict_exact_recovery("exact", 1e-14)["passed"]
    assert not X.verdict_exact_recovery("exact", 1e-6)["passed"]  # float32 or a wrong solve
    assert X.verdict_z2("z2", 1.03, 1800)["passed"]
    assert not X.verdict_z2("z2", 1.5, 1800)["passed"]  # standard errors too small by √1.5
    assert not X.verdict_z2("z2", 0.5, 1800)["passed"]
    assert X.verdict_data_dependent("dd", 0.2)["passed"]
    assert not X.verdict_data_dependent("dd", 1e-29)["passed"]  # the linear SSM's value: nothing data-dependent


def test_haslbeck_verdicts_fail_when_perturbed():
    assert X.verdict_haslbeck_mae("mae", 0.082, 0.074)["passed"]
    assert not X.verdict_haslbeck_mae("mae", 0.126, 0.074)["passed"]  # the stationary OLS error instead
    assert X.verdict_haslbeck_bandwidth("h", 0.40, 0.18)["passed"]  # 0.40/√5 = 0.179
    assert not X.verdict_haslbeck_bandwidth("h", 1.0, 0.18)["passed"]  # no smoothing choice: h = 1
    assert X.verdict_kernel_beats_ols("k<ols", 0.026, 0.041)["passed"]
    assert not X.verdict_kernel_beats_ols("k<ols", 0.041, 0.026)["passed"]


def test_chain_rule_rows_are_identities_and_their_pairs_catch_a_wrong_joint_table():
    """Issue 29 §2.7: the CMI-matrix and Massey rows hold for ANY joint table (they only check axis bookkeeping);
    each is paired with the same quantity by a second route (log-ratios of the enumerated states, built from the
    process's conditionals), which a wrong table fails."""
    from tvvar.theory.estimation import categorical as C

    proc = C.random_categorical_tvvar(0, vocab=2, length=3, feedback=0.8)
    lj = C.joint_log_prob(proc)
    ind = X.enumerate_information(proc)
    assert abs(ind["total"] - 1.0) < 1e-12
    assert abs(ind["DI"] - C.directed_information(lj)) < 1e-10
    assert abs(ind["reverse_DI"] - C.reverse_directed_information(lj)) < 1e-10
    assert abs(ind["MI"] - C.mutual_information(lj)) < 1e-10
    assert np.abs(ind["cmi_matrix"] - C.cmi_matrix(lj)).max() < 1e-10
    # a wrong joint table (another process's law): the bookkeeping identities still hold, the pairs do not
    wrong = C.joint_log_prob(C.random_categorical_tvvar(1, vocab=2, length=3, feedback=0.8))
    M, di = C.cmi_matrix(wrong), C.directed_information(wrong)
    rev, mi = C.reverse_directed_information(wrong), C.mutual_information(wrong)
    assert X.verdict_identity("b", float(M[np.triu_indices(3)].sum()), di, X.BOOKKEEPING)["passed"]
    assert X.verdict_identity("c", di + rev, mi, X.CONSERVATION)["passed"]
    assert X.verdict_identity("b", 0.0, 0.0, X.BOOKKEEPING)["identity"] == X.BOOKKEEPING
    assert not X.verdict_identity("di", di, ind["DI"])["passed"]
    assert not X.verdict_identity("mi", mi, ind["MI"])["passed"]
    assert not X.verdict_identity("rev", rev, ind["reverse_DI"])["passed"]
    assert not X.verdict_identity("cmi", float(np.abs(M - ind["cmi_matrix"]).max()), 0.0)["passed"]
    assert X.verdict_identity("di", di, ind["DI"])["identity"] is None  # a verification, not an identity


def test_sections_are_checked():
    import dataclasses

    import pytest

    assert X.Config().sections == () and X.Config.quick().sections == ()
    with pytest.raises(ValueError, match="Config.sections"):
        dataclasses.replace(X.Config.quick(), sections=("gaussian", "nonsense"))
    with pytest.raises(ValueError, match="Config.sections"):
        dataclasses.replace(X.Config.quick(), sections="gaussian")
