"""Every experiment check can fail: each verdict is computed by a small function of the experiment module,
called here on real (small) inputs, where it passes, and on a perturbed input, where it must fail."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import elbo as X_elbo
from tvvar.model import ModelConfig, TVVARModel
from tvvar.theory.transformer import elbo as E

F64 = dict(param_dtype="float64", dtype="float64")


def _by_name(checks, fragment):
    hits = [c for c in checks if fragment in c["name"]]
    assert len(hits) == 1, (fragment, [c["name"] for c in checks])
    return hits[0]


# --------------------------------------------------------------------------------------------------
# experiments.elbo: Theorem 6 checks against an independent log P
# --------------------------------------------------------------------------------------------------


def _pure_model(V=7, D=8, H=2, seed=0, **kw):
    cfg = ModelConfig.pure(V, D, "attention", mixer={"num_heads": H}, xi=0.5, **kw)
    return TVVARModel(cfg, rngs=nnx.Rngs(params=seed))


def _elbo_inputs(model, B=3, T=6, seed=1):
    V = model.cfg.vocab_size
    tok = jax.random.randint(jax.random.key(seed), (B, T + 1), 0, V)
    ids, tgt = tok[:, :-1], tok[:, 1:]
    t = jax.device_get(E.elbo_terms(model, ids, tgt))  # the closed form (row-independent model)
    f = jax.device_get(E.latent_features(model, ids))
    direct = X_elbo.direct_marginal(f.cond_logp, f.log_q, f.support, np.asarray(tgt))
    sc = E.vocab_scores(model, ids)
    d = np.asarray(sc["elbo"] - sc["soft"])
    return t, f, direct, float(np.max(d.max(-1) - d.min(-1)))


@pytest.mark.slow
def test_direct_marginal_equals_library_float64():
    """The float64 reference is the same quantity as the library's log P and gap (1e-10)."""
    with jax.enable_x64(True):
        t, f, direct, _ = _elbo_inputs(_pure_model(**F64))
        assert t.log_p.dtype == jnp.float64
        np.testing.assert_allclose(direct["log_p"], t.log_p, rtol=0, atol=1e-10)
        np.testing.assert_allclose(direct["kl_post"], t.gap, rtol=0, atol=1e-10)


def test_direct_marginal_by_hand():
    """One row worked out by hand: H = 1, S(0) = {0} ⇒ log P(U_0) = log P(U_0 | J = 0)."""
    cond = np.log(np.array([[[[[0.2, 0.8], [0.5, 0.5]]]]]))  # [B=1, 1, H=1, T=2, V=2]
    log_q = np.log(np.array([[[[1.0, 1e-300]], [[0.25, 0.75]]]]))  # [1, T=2, H=1, T=2]
    support = np.tril(np.ones((2, 2), bool))
    r = X_elbo.direct_marginal(cond, log_q, support, np.array([[1, 0]]))
    # row 0: P(U=1) = 0.8; row 1: uniform prior ½ over j ∈ {0, 1}: ½·0.2 + ½·0.5 = 0.35
    np.testing.assert_allclose(r["log_p"], [[math.log(0.8), math.log(0.35)]], atol=1e-12)
    post = np.array([0.1, 0.25]) / 0.35
    np.testing.assert_allclose(r["kl_post"][0, 1], 0.25 * math.log(0.25 / post[0]) + 0.75 * math.log(0.75 / post[1]),
                               atol=1e-12)


@pytest.fixture(scope="module")
def f32_inputs():
    return _elbo_inputs(_pure_model())


@pytest.mark.slow
def test_theorem6_checks_pass_on_model_and_fail_on_shifted_log_p(f32_inputs):
    t, f, direct, spread7 = f32_inputs
    good = X_elbo.theorem6_checks("x", X_elbo.theorem6_measures(t, direct, f.support, spread7))
    assert all(c["passed"] for c in good), [c for c in good if not c["passed"]]
    # a log P off by 5 nats, and the posterior the library would build from it
    bad_t = t._replace(log_p=t.log_p + 5.0, log_post=t.log_post - 5.0)
    bad = X_elbo.theorem6_checks("x", X_elbo.theorem6_measures(bad_t, direct, f.support, spread7))
    for fragment in ("log P(U) (library)", "Σ_J P(J | U) − 1", "ELBO − (log P − KL"):
        assert not _by_name(bad, fragment)["passed"], fragment
    assert _by_name(bad, "ELBO − (log P − KL")["measured"] == pytest.approx(5.0, abs=1e-3)
    assert _by_name(bad, "Σ_J P(J | U) − 1")["measured"] == pytest.approx(1 - math.exp(-5.0), abs=1e-4)
    # the former check (KL against the library's own posterior) is blind to it: that is why it changed
    s = X_elbo.sensitivity("x", t, direct, f.log_q, f.support, spread7)
    assert s["former_identity_check_deviation"] < 1e-4
    assert len(s["failed"]) == 3


def test_theorem6_checks_fail_on_wrong_elbo_and_jensen(f32_inputs):
    t, f, direct, spread7 = f32_inputs
    bad = X_elbo.theorem6_checks("x", X_elbo.theorem6_measures(t._replace(elbo=t.log_p + 0.01), direct, f.support,
                                                                spread7))
    assert not _by_name(bad, "ELBO − log P")["passed"] and not _by_name(bad, "ELBO − (log P − KL")["passed"]
    bad = X_elbo.theorem6_checks("x", X_elbo.theorem6_measures(t._replace(soft_ll=t.e_loglik - 0.01), direct,
                                                                f.support, spread7))
    assert not _by_name(bad, "Jensen")["passed"]
    bad = X_elbo.theorem6_checks("x", X_elbo.theorem6_measures(t, direct, f.support, 0.5))
    assert not _by_name(bad, "spread_v")["passed"]


def test_worst_propagates_nan():
    m = X_elbo.worst([{"a": 0.0}, {"a": float("nan")}])
    assert math.isnan(m["a"])


def test_training_checks_can_fail():
    init = {"soft_ll": -2.0, "log_p": -2.0, "log_p_attention": -2.0, "elbo": -2.5, "entropy": 1.0}
    better = dict(init, soft_ll=-1.5, elbo=-1.9)
    assert all(c["passed"] for c in X_elbo.training_checks("s", "elbo", better, init))
    assert not X_elbo.training_checks("s", "elbo", init | {"elbo": -2.6}, init)[0]["passed"]
    below_floor = dict(better, soft_ll=-0.9)  # CE 0.9 < entropy 1.0 − 0.02
    assert not X_elbo.training_checks("s", "soft", below_floor, init)[1]["passed"]
    assert len(X_elbo.training_checks("t", "soft", {k: v for k, v in better.items() if k != "entropy"}, init)) == 1


def test_elbo_text_path_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("TVVAR_TEXT", raising=False)
    p = X_elbo.Config().text_path
    assert p == str(X_elbo.REPO_TEXT) and "shared" not in p
    monkeypatch.setenv("TVVAR_TEXT", str(tmp_path / "none.txt"))
    assert X_elbo.Config.quick().text_path == str(tmp_path / "none.txt")


def test_elbo_planned_text_checks_are_skipped_with_reason():
    cfg = X_elbo.Config.quick()
    rows = X_elbo.planned_text_checks(cfg, "text corpus 'x' not found")
    # per objective one training check (no entropy for text) + the Theorem 6–7 checks
    assert len(rows) == len(cfg.objectives) + 6
    assert all(r["passed"] is None and r["measured"] is None and r["skipped"] == "text corpus 'x' not found"
               for r in rows)
    assert all(r["name"].startswith("text") for r in rows)


def test_elbo_text_corpus_missing_gives_reason(tmp_path):
    cfg = X_elbo.Config.quick()
    import dataclasses

    corpus, why = X_elbo.text_corpus(dataclasses.replace(cfg, text_path=str(tmp_path / "absent.txt")))
    assert corpus is None and "absent.txt" in why and "not found" in why
    corpus, why = X_elbo.text_corpus(dataclasses.replace(cfg, text_path=None))
    assert corpus is None and "None" in why


# --------------------------------------------------------------------------------------------------
# experiments.rademacher: violation checks only where a bound is informative; findings that can fail
# --------------------------------------------------------------------------------------------------

from experiments import rademacher as X_rad  # noqa: E402

LOG_V = math.log(8)


def test_regime_and_informative_M_by_hand():
    r = X_rad.regime((100, 1000, 10000), (5.0, 2.5, 1.9), LOG_V)
    assert r == {"informative_Ms": [10000], "vacuous_Ms": [100, 1000], "first_informative_M": 10000}
    assert X_rad.regime((100,), (5.0,), LOG_V)["first_informative_M"] is None
    # c0/√M = ln V − risk  ⇔  M = (c0 / (ln V − risk))²
    assert X_rad.informative_M(10.0, LOG_V, LOG_V - 0.5) == pytest.approx(400.0)
    assert X_rad.informative_M(10.0, LOG_V, LOG_V + 0.1) == math.inf


def test_violation_check_judges_only_informative_M():
    Ms, bound = (100, 1000, 10000), (5.0, 2.5, 1.9)
    # a violation rate of 0.5 where the bound is vacuous is not held against it ...
    assert X_rad.violation_check("b", Ms, bound, (0.5, 0.5, 0.0), 0.05, 200, LOG_V, "")["passed"]
    # ... but where it is informative it is
    assert not X_rad.violation_check("b", Ms, bound, (0.0, 0.0, 0.2), 0.05, 200, LOG_V, "")["passed"]
    # no informative M at all: the check cannot be a test, so it fails and says so
    c = X_rad.violation_check("b", Ms, (5.0, 4.0, 3.0), (0.0, 0.0, 0.0), 0.05, 200, LOG_V, "")
    assert not c["passed"] and "vacuous" in c["source"]


def test_certified_terms_are_the_printed_formula():
    """4Λr√(V/M) + 3B√(ln(2/δ)/2M), B = ln V + 2Λr, equals the library's certified bound minus L̂ on the
    sphere (where Jensen's R̂ is exact), and differs from it when the library drops B or V."""
    from tvvar.core import sphere
    from tvvar.theory.transformer import rademacher as rd

    M, V, Lam, deltas = 500, 8, 8.0, np.array([0.05, 0.2])
    got = X_rad.certified_terms(M, V, Lam, deltas)
    assert got[0] == pytest.approx(4 * 8 * math.sqrt(8 / 500) + 3 * (math.log(8) + 16) * math.sqrt(math.log(40) / 1000))
    with jax.enable_x64(True):
        X = sphere(jax.random.normal(jax.random.key(0), (M, 4), jnp.float64))
        rc = rd.linear_rc_jensen(X, V, Lam)
        lib = np.array([float(rd.rigorous_bound(0.0, rc, M, float(d), rd.loss_range(V, Lam)).total) for d in deltas])
    np.testing.assert_allclose(lib, got, rtol=1e-12)
    assert abs(float(rd.rigorous_bound(0.0, rc, M, 0.05, 1.0).total) - got[0]) > 1.0  # B dropped: far off


def test_finite_context_rc_mc_is_within_jensen_of_the_certified_bound():
    from tvvar.theory.transformer import rademacher as rd

    ids = np.asarray(jax.random.randint(jax.random.key(1), (2000,), 0, 16))
    cert = rd.finite_context_rc(ids, 8, 2.0)
    mc = X_rad.finite_context_rc_mc(jax.random.key(2), ids, 8, 2.0, 256)
    assert math.sqrt(2 / math.pi) - 0.03 <= mc / cert <= 1.0  # n_κ ≈ 125: near √(2/π) (MC SE ≈ 0.5 %)
    single = np.arange(50)  # every context once: E|σ| = 1 = √1, so MC = certified exactly
    assert X_rad.finite_context_rc_mc(jax.random.key(3), single, 8, 2.0, 4) == pytest.approx(
        rd.finite_context_rc(single, 8, 2.0))


def test_middle_term_check_fails_if_the_term_shrinks():
    Ms = (100, 1000, 10000)
    settled = np.array([3.2, 2.59, 2.52])  # as measured: larger at M=100 (overfit), flat over the last decade
    c = X_rad.middle_term_check(Ms, settled)
    assert c["passed"] and "M = 10000 / M = 1000" in c["source"]
    shrinking = 2.6 * np.sqrt(Ms[0] / np.asarray(Ms, float))  # what a Rademacher term would do
    assert not X_rad.middle_term_check(Ms, shrinking)["passed"]
    # the former check (first/last ratio ≥ √(M0/M1), tolerance 0) passed on both: it could not tell them apart
    from experiments.common import check

    for m in (settled, shrinking):
        assert check("", m[-1] / m[0], math.sqrt(Ms[0] / Ms[-1]), ">=", 0.0)["passed"]
    with pytest.raises(ValueError, match="Ms"):
        X_rad.middle_term_check((100,), np.array([1.0]))


def test_empirical_violation_check_needs_a_non_bound():
    assert X_rad.empirical_violation_check("linear", np.array([0.9, 0.6]), 0.05, 200)["passed"]
    # a "bound" violated at rate ≈ δ would pass as a bound; then L̂ would not show the test's power
    assert not X_rad.empirical_violation_check("linear", np.array([0.9, 0.05]), 0.05, 200)["passed"]


def test_confidence_term_is_the_library_one():
    from tvvar.theory.transformer import rademacher as rd

    got = X_rad._conf(1000, [0.01, 0.05], B=2.0)
    np.testing.assert_allclose(got, [float(rd.confidence_term(1000, d, 2.0)) for d in (0.01, 0.05)], rtol=1e-6)
    np.testing.assert_allclose(got, 3 * 2.0 * np.sqrt(np.log(2 / np.array([0.01, 0.05])) / 2000), rtol=1e-6)
