"""Theorem 8 (Rademacher bound): the paper's Eq. 72, the rigorous bound, and the truth they are judged by."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvvar.theory.transformer import rademacher as rd


def _sphere_np(rng, M, D):
    X = rng.normal(size=(M, D))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# The paper's bound, exactly as Eq. 72
# --------------------------------------------------------------------------------------------------


def test_paper_bound_matches_hand_computation():
    # logits [[ln 3, 0], [0, 0]], targets [0, 1]: q = (3/4, 1/4) and (1/2, 1/2)
    with jax.enable_x64(True):
        logits = jnp.array([[math.log(3.0), 0.0], [0.0, 0.0]], jnp.float64)
        y = jnp.array([0, 1])
        b = rd.paper_bound(logits, y, 0.5)
        emp = (math.log(4 / 3) + math.log(2.0)) / 2
        comp = 2 * math.sqrt(2) / 2 * (math.log(3.0) + 0.0)  # (2√2/M) Σ |z_m^ħ|
        conf = 3 * math.sqrt(math.log(2 / 0.5) / (2 * 2))
        for got, want in zip(b, (emp, comp, conf, emp + comp + conf), strict=True):
            assert abs(float(got) - want) < 1e-10
        # the alternative readings/gauges are switches, computed by hand too
        b_max = rd.paper_bound(logits, y, 0.5, reading="max_abs")
        assert abs(float(b_max.complexity) - math.sqrt(2) * (math.log(3.0) + 0.0)) < 1e-10
        b_ctr = rd.paper_bound(logits, y, 0.5, gauge="center")
        assert abs(float(b_ctr.complexity) - math.sqrt(2) * (math.log(3.0) / 2 + 0.0)) < 1e-10
        b_lp = rd.paper_bound(logits, y, 0.5, gauge="logprob")  # |log q(ħ)| = per-sample CE → 2√2 L̂
        assert abs(float(b_lp.complexity) - 2 * math.sqrt(2) * emp) < 1e-10
        # a shift of the logits changes no probability but changes the paper's bound
        b_shift = rd.paper_bound(logits + 5.0, y, 0.5)
        assert abs(float(b_shift.empirical) - emp) < 1e-10
        assert float(b_shift.complexity) > float(b.complexity) + 1.0


def test_rigorous_and_hoeffding_hand_computation():
    with jax.enable_x64(True):
        b = rd.rigorous_bound(1.0, 0.25, 50, 0.1, 3.0)
        conf = 3 * 3.0 * math.sqrt(math.log(20.0) / 100)
        assert abs(float(b.total) - (1.0 + 4 * 0.25 + conf)) < 1e-10
        assert rd.RIGOROUS_RC_FACTOR == pytest.approx(4.0, abs=1e-12)
        h = rd.hoeffding_bound(1.0, 50, 0.1, 3.0)
        assert abs(float(h.total) - (1.0 + 3.0 * math.sqrt(math.log(10.0) / 100))) < 1e-10
        assert rd.loss_range(8, 2.0) == pytest.approx(math.log(8) + 4.0, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# The pieces of the rigorous bound
# --------------------------------------------------------------------------------------------------


def test_cross_entropy_is_sqrt2_lipschitz_and_bounded_by_B():
    rng = np.random.default_rng(0)
    V, D, Lam = 6, 5, 3.0
    # ‖∇_z ℓ‖ = ‖softmax(z) − e_y‖ ≤ √2, approached when q concentrates on a wrong token
    z = jnp.asarray(rng.normal(size=(500, V)) * 4)
    y = jnp.asarray(rng.integers(V, size=500))
    g = jax.vmap(jax.grad(lambda zz, yy: rd.cross_entropy(zz[None], yy[None])[0]))(z, y)
    assert float(jnp.max(jnp.linalg.norm(g, axis=1))) <= rd.CE_LIPSCHITZ + 1e-6
    g_far = jax.grad(lambda zz: rd.cross_entropy(zz[None], jnp.array([0]))[0])(jnp.array([0.0, 30.0, 0, 0, 0, 0]))
    assert float(jnp.linalg.norm(g_far)) > rd.CE_LIPSCHITZ - 1e-6
    # range: −log softmax(W x)_y ≤ ln V + 2Λr on the ball, including an adversarial W (tight to ≈ √2 Λ)
    X = jnp.asarray(_sphere_np(rng, 400, D))
    B = rd.loss_range(V, Lam * 1.0)
    for _ in range(20):
        W = rng.normal(size=(V, D))
        W = jnp.asarray(W * Lam / np.linalg.norm(W))
        assert float(jnp.max(rd.cross_entropy(X @ W.T, y[:400] % V))) <= B
    W_adv = np.zeros((V, D))
    W_adv[0, 0], W_adv[1, 0] = -Lam / math.sqrt(2), Lam / math.sqrt(2)
    ce_adv = float(rd.cross_entropy(jnp.asarray(np.eye(D)[:1] @ W_adv.T), jnp.array([0]))[0])
    assert math.sqrt(2) * Lam < ce_adv <= B


def test_linear_rc_sup_is_attained_and_not_exceeded():
    rng = np.random.default_rng(1)
    M, V, D, Lam = 7, 4, 3, 2.5
    with jax.enable_x64(True):
        X = jnp.asarray(_sphere_np(rng, M, D))
        sigma = jnp.asarray(rng.choice([-1.0, 1.0], size=(M, V)))
        sup = float(rd.linear_rc_sup(sigma, X, Lam))
        G = np.asarray(sigma).T @ np.asarray(X)
        W_star = Lam * G / np.linalg.norm(G)

        def value(W):
            return float(np.sum(np.asarray(sigma) * (np.asarray(X) @ W.T)) / M)

        assert abs(value(W_star) - sup) < 1e-10
        for _ in range(200):
            W = rng.normal(size=(V, D))
            assert value(W * Lam / np.linalg.norm(W)) <= sup + 1e-12


def test_mc_rademacher_matches_exact_enumeration_and_closed_form_bound():
    rng = np.random.default_rng(2)
    M, V, D, Lam = 4, 3, 3, 1.5  # 2^12 sign patterns
    X = _sphere_np(rng, M, D)
    exact = rd.linear_rc_exact(X, V, Lam)
    mc, se = rd.linear_rc_mc(jax.random.key(0), jnp.asarray(X, jnp.float32), V, Lam, n_sigma=4096)
    assert abs(float(mc) - exact) <= 4 * float(se)  # MC error: 4 standard errors
    bound = rd.linear_rc_bound(M, V, Lam, r=1.0)  # Λ r √(V/M)
    assert float(mc) <= bound and exact <= float(rd.linear_rc_jensen(jnp.asarray(X), V, Lam)) + 1e-6
    assert float(rd.linear_rc_jensen(jnp.asarray(X), V, Lam)) == pytest.approx(bound, rel=1e-6)  # ‖x‖ = 1
    # orthonormal inputs: ‖σᵀX‖²_F = M V for every σ, so R̂ = Λ√(V/M) exactly with zero variance
    Xo = jnp.eye(M, D + 1, dtype=jnp.float32)
    mc_o, se_o = rd.linear_rc_mc(jax.random.key(1), Xo, V, Lam, n_sigma=8)
    assert float(mc_o) == pytest.approx(Lam * math.sqrt(V / M), rel=1e-6) and float(se_o) < 1e-6
    assert rd.linear_rc_exact(np.asarray(Xo), V, Lam) == pytest.approx(Lam * math.sqrt(V / M), rel=1e-12)


def test_rademacher_signs_are_fair_signs():
    s = np.asarray(rd.rademacher_signs(jax.random.key(3), (257, 33)))
    assert s.shape == (257, 33) and set(np.unique(s)) == {-1.0, 1.0}
    assert abs(s.mean()) < 4 / math.sqrt(s.size)
    assert abs(np.mean(s[:, :-1] * s[:, 1:])) < 4 / math.sqrt(s.size)  # neighbours uncorrelated


def test_finite_context_rc_hand_example_and_brute_force():
    ids = np.array([0, 0, 0, 0, 1])
    assert rd.finite_context_rc(ids, 2, 1.0) == pytest.approx(2 / 5 * (2 + 1), abs=1e-12)
    # brute force: the sup over F_c = all maps into [−c, c]^V on the contexts, vertices enumerated
    M, V, c, K = 5, 2, 0.7, 2
    bits = ((np.arange(2 ** (M * V))[:, None] >> np.arange(M * V)) & 1) * 2.0 - 1
    sig = bits.reshape(-1, M, V)
    verts = ((np.arange(2 ** (K * V))[:, None] >> np.arange(K * V)) & 1) * 2.0 - 1
    f = c * verts.reshape(-1, K, V)[:, ids, :]  # [F, M, V]
    brute = np.mean(np.max(np.einsum("smv,fmv->sf", sig, f), axis=1)) / M
    assert brute <= rd.finite_context_rc(ids, V, c) + 1e-12
    counts = np.bincount(ids)

    def e_abs(n):
        return np.mean(np.abs(np.sum(((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1, axis=1)))

    assert brute == pytest.approx(c * V / M * sum(e_abs(n) for n in counts), abs=1e-12)


def test_ce_grad_linear_matches_autodiff():
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        X, W = jnp.asarray(_sphere_np(rng, 30, 4)), jnp.asarray(rng.normal(size=(5, 4)))
        y = jnp.asarray(rng.integers(5, size=30))
        auto = jax.grad(lambda W: jnp.mean(rd.cross_entropy(X @ W.T, y)))(W)
        assert float(jnp.max(jnp.abs(rd.ce_grad_linear(W, X, y) - auto))) < 1e-10
        Wf = rd.fit_linear_softmax(X, y, 5, 0.8, steps=30)
        assert float(jnp.linalg.norm(Wf)) <= 0.8 + 1e-12  # stays in the class


# --------------------------------------------------------------------------------------------------
# The truth: the teacher's entropy floor and exact expected cross-entropy
# --------------------------------------------------------------------------------------------------


def test_teacher_floor_is_exact():
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        teacher = rd.LinearSoftmaxTeacher(jnp.asarray(rng.normal(size=(5, 3))), xi=0.7)
        X = jnp.asarray(_sphere_np(rng, 50, 3))
        H = teacher.conditional_entropy(X)
        assert float(jnp.max(jnp.abs(teacher.expected_cross_entropy(teacher.logits(X), X) - H))) < 1e-10
        other = X @ jnp.asarray(rng.normal(size=(5, 3))).T
        assert bool(jnp.all(teacher.expected_cross_entropy(other, X) >= H))  # KL ≥ 0 per x
        p = jax.nn.softmax(np.asarray(X) @ np.asarray(teacher.W_star).T / 0.7, axis=-1)
        assert float(jnp.max(jnp.abs(H + jnp.sum(p * jnp.log(p), axis=-1)))) < 1e-10
    with pytest.raises(ValueError, match="xi"):
        rd.LinearSoftmaxTeacher(jnp.ones((3, 2)), xi=0.0)


# --------------------------------------------------------------------------------------------------
# The vmapped + jitted sweep against its plain reference; the bound judged against the truth
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_matches_reference_values_and_gradients():
    teacher = rd.LinearSoftmaxTeacher.create(jax.random.key(0), 4, 3, 2.0)
    Xf = teacher.sample_x(jax.random.key(1), 256)
    kw = dict(M=20, R=3, Lam=3.0, steps=5, n_sigma=4)

    def total(fn, W, **extra):
        out = fn(jax.random.key(2), rd.LinearSoftmaxTeacher(W), Xf, **kw, **extra)
        return jnp.sum(out["true_risk"] + out["paper_logit"]), out

    (_, fast), g_fast = jax.value_and_grad(lambda W: total(rd.linear_sweep, W, batch_size=2),
                                           has_aux=True)(teacher.W_star)
    (_, ref), g_ref = jax.value_and_grad(lambda W: total(rd.linear_sweep_reference, W), has_aux=True)(teacher.W_star)
    for k in ref:
        np.testing.assert_allclose(np.asarray(fast[k]), np.asarray(ref[k]), rtol=2e-5, atol=2e-5, err_msg=k)
    assert float(jnp.max(jnp.abs(g_ref))) > 0
    np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_ref), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_rigorous_bound_violation_rate_and_floor_over_200_repeats():
    R, M, Lam, V = 200, 64, 4.0, 6
    teacher = rd.LinearSoftmaxTeacher.create(jax.random.key(10), V, 4, 3.0)
    Xf = teacher.sample_x(jax.random.key(11), 4096)
    out = rd.linear_sweep(jax.random.key(12), teacher, Xf, M=M, R=R, Lam=Lam, steps=40, n_sigma=8)
    true_risk = np.asarray(out["true_risk"])
    # the floor H(Y|X) ≤ E[CE] in every run (float32 rounding allowance 1e-6)
    assert np.all(true_risk >= np.asarray(out["floor"]) - 1e-6)
    B = rd.loss_range(V, Lam)
    for delta in (0.05, 0.1, 0.5):
        bound = np.asarray(rd.rigorous_bound(out["empirical"], out["rc_mc"], M, delta, B).total)
        assert rd.violation_rate(true_risk, bound) <= rd.violation_tolerance(delta, R)
    # the same check has power: the empirical risk of the fitted model alone is violated far too often
    assert rd.violation_rate(true_risk, np.asarray(out["empirical"])) > rd.violation_tolerance(0.1, R)
    # and the certified closed-form R̂ is never below the Monte Carlo estimate by more than MC error
    assert np.all(np.asarray(out["rc_mc"]) <= np.asarray(out["rc_jensen"]) + 4 * np.asarray(out["rc_mc_se"]))


# --------------------------------------------------------------------------------------------------
# The exact law at a position of an autoregressive source
# --------------------------------------------------------------------------------------------------


def test_position_law_is_a_distribution_and_sampling_follows_it():
    V, t = 3, 2
    ctx = rd.enumerate_contexts(V, t)
    assert ctx.shape == (27, 3) and np.array_equal(np.asarray(rd.context_id(jnp.asarray(ctx), V)), np.arange(27))
    # a first-order Markov source: logits row j depend on x_j only
    rng = np.random.default_rng(6)
    P = rng.dirichlet(np.ones(V), size=V)
    with jax.enable_x64(True):
        logits = jnp.asarray(np.log(P)[ctx])  # [K, t+1, V]
        log_P, log_p = rd.position_law(logits, t)
        assert abs(float(jnp.sum(jnp.exp(log_P))) - 1.0) < 1e-10
        brute = np.array([P[a, b] * P[b, c] / V for a, b, c in ctx])
        assert float(np.max(np.abs(np.exp(np.asarray(log_P)) - brute))) < 1e-12
    ids, y = rd.sample_position(jax.random.key(0), log_P.astype(jnp.float32), log_p.astype(jnp.float32), 20000)
    freq = np.bincount(np.asarray(ids) * V + np.asarray(y), minlength=27 * V) / 20000
    joint = (np.exp(np.asarray(log_P))[:, None] * np.exp(np.asarray(log_p))).reshape(-1)
    assert np.max(np.abs(freq - joint)) < 4 * math.sqrt(0.25 / 20000)


# --------------------------------------------------------------------------------------------------
# Bad input → clear errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_delta(delta):
    with pytest.raises(ValueError, match="delta"):
        rd.paper_bound(jnp.zeros((3, 2)), jnp.array([0, 1, 0]), delta)
    with pytest.raises(ValueError, match="delta"):
        rd.rigorous_bound(1.0, 0.1, 10, delta, 2.0)


def test_bad_input_errors():
    with pytest.raises(TypeError, match="delta"):
        rd.check_delta("0.1")
    with pytest.raises(ValueError, match="M"):
        rd.rigorous_bound(1.0, 0.1, 0, 0.1, 2.0)
    with pytest.raises(ValueError, match="M"):
        rd.paper_bound(jnp.zeros((0, 2)), jnp.zeros((0,), jnp.int32), 0.1)
    with pytest.raises(ValueError, match="M"):
        rd.linear_rc_bound(0, 3, 1.0)
    with pytest.raises(TypeError, match="M"):
        rd.check_num_samples(2.5)
    with pytest.raises(ValueError, match="NaN"):
        rd.paper_bound(jnp.array([[0.0, jnp.nan], [1.0, 2.0]]), jnp.array([0, 1]), 0.1)
    with pytest.raises(ValueError, match="targets"):
        rd.paper_bound(jnp.zeros((2, 3)), jnp.array([0, 3]), 0.1)
    with pytest.raises(ValueError, match="logits"):
        rd.paper_bound(jnp.zeros((2,)), jnp.array([0, 1]), 0.1)
    with pytest.raises(ValueError, match="reading"):
        rd.paper_bound(jnp.zeros((2, 3)), jnp.array([0, 1]), 0.1, reading="mean")
    with pytest.raises(ValueError, match="B"):
        rd.rigorous_bound(1.0, 0.1, 10, 0.1, float("inf"))
    with pytest.raises(ValueError, match="vector_rc"):
        rd.rigorous_bound(1.0, -0.1, 10, 0.1, 2.0)
    with pytest.raises(ValueError, match="V"):
        rd.loss_range(1, 1.0)
    with pytest.raises(ValueError, match="R"):
        rd.violation_tolerance(0.1, 0)
    with pytest.raises(ValueError, match="M·V"):
        rd.linear_rc_exact(np.zeros((10, 2)), 3, 1.0)


@pytest.mark.slow
def test_sweep_cache_is_bounded_and_does_not_keep_teachers_alive():
    import gc
    import weakref

    rd._SWEEP_CACHE.clear()
    for M in range(1, 30):  # a sweep over M: one jitted function per M (built, not compiled, here)
        rd._sweep_fn(M, 1.0, 1.0, 2, 1.0, 2, 1)
    assert len(rd._SWEEP_CACHE) <= rd._SWEEP_CACHE.maxsize
    teacher = rd.LinearSoftmaxTeacher.create(jax.random.key(0), 3, 2, 1.0)
    alive = weakref.ref(teacher)
    rd.linear_sweep_reference(jax.random.key(1), teacher, teacher.sample_x(jax.random.key(2), 8), M=4, R=1, Lam=1.0,
                              steps=1, n_sigma=2)
    del teacher
    gc.collect()
    assert alive() is None


def test_target_logit_tables_list_the_valid_names():
    z, y = jnp.asarray([[1.0, 2.0, 4.0]]), jnp.asarray([1])
    assert float(rd.target_logit(z, y, gauge="center")[0]) == pytest.approx(2.0 - 7.0 / 3.0)
    assert float(rd.target_logit(z, y, reading="max_abs")[0]) == 4.0
    with pytest.raises(ValueError, match=r"gauge must be one of \('raw', 'center', 'logprob'\), got 'mean'"):
        rd.target_logit(z, y, gauge="mean")
    with pytest.raises(ValueError, match=r"reading must be one of \('target', 'max_abs'\)"):
        rd.target_logit(z, y, reading="min")
