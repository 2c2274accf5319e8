"""Tests for tvvar.theory.transformer.hopfield (Section V-E, Definition 14): reference values from the literature,
plain references for every fast path, tolerances stated next to each assertion."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import optimize

from tvvar.theory.transformer import hopfield as H

# ----------------------------------------------------------------------------------------------
# Classical network
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_classical_overlap_transition_and_flip_rate_n1000():
    n, trials = 1000, 4
    r = H.classical_sweep(jax.random.key(0), n, [120, 200], trials, chunk=8)
    m = r["overlap"].mean(axis=1)
    # Amit–Gutfreund–Sompolinsky: retrieval (m ≈ 0.99) below α_c ≈ 0.138, collapse above.
    assert m[0] >= 0.97, m
    assert m[1] <= 0.7, m
    assert r["converged"].all()
    # one-step flip rate vs Φ(−1/√α): within 4 binomial standard errors (trials·n neurons)
    for j, alpha in enumerate(r["alpha"]):
        q = H.flip_rate_reference(alpha)
        se = np.sqrt(q * (1 - q) / (trials * n))
        assert abs(r["flip_rate"][j].mean() - q) <= 4 * se, (alpha, r["flip_rate"][j].mean(), q, se)


def _async_reference(J, s, key, max_sweeps):
    """Plain asynchronous dynamics: recompute the full field for every neuron, same random orders."""
    J, s = np.asarray(J, np.float64), np.asarray(s, np.float64).copy()
    n = s.size
    energies = [-0.5 * s @ J @ s]
    for t in range(max_sweeps):
        key, sub = jax.random.split(key)
        order = np.asarray(jax.random.permutation(sub, n))
        flips = 0
        for i in order:
            h = J[i] @ s
            new = 1.0 if h > 0 else (-1.0 if h < 0 else s[i])
            flips += new != s[i]
            s[i] = new
            energies.append(-0.5 * s @ J @ s)
        if flips == 0:
            return s, t + 1, energies
    return s, max_sweeps, energies


def test_asynchronous_matches_plain_reference_and_energy_decreases():
    n, p = 40, 8
    pats = H.random_patterns(jax.random.key(1), p, n)
    W = H.hebbian_couplings(pats)
    s0 = H.random_patterns(jax.random.key(2), 1, n)[0]
    key = jax.random.key(3)
    s, sweeps, conv = H.run_asynchronous(W, s0, key, max_sweeps=50)
    s_ref, sweeps_ref, energies = _async_reference(W, s0, key, 50)
    np.testing.assert_array_equal(np.asarray(s), s_ref)
    assert int(sweeps) == sweeps_ref and bool(conv)
    assert np.all(np.diff(energies) <= 1e-12)  # energy never increases (W symmetric, W_ii = 0)
    assert np.all(np.asarray(s) * np.asarray(W @ s) >= 0)  # a fixed point
    assert float(H.energy(W, s)) <= float(H.energy(W, s0))


def test_hebbian_couplings_and_synchronous_against_numpy():
    n, p = 30, 5
    pats = H.random_patterns(jax.random.key(4), p, n)
    X = np.asarray(pats, np.float64)
    W_ref = X.T @ X / n
    np.fill_diagonal(W_ref, 0)
    np.testing.assert_allclose(np.asarray(H.hebbian_couplings(pats)), W_ref, atol=1e-7)
    s0 = np.asarray(H.random_patterns(jax.random.key(5), 1, n)[0], np.float64)
    s_ref, prev = s0.copy(), s0.copy()
    for _ in range(100):
        h = W_ref @ s_ref
        new = np.where(h > 0, 1.0, np.where(h < 0, -1.0, s_ref))
        if np.array_equal(new, s_ref) or np.array_equal(new, prev):
            prev, s_ref = s_ref, new
            break
        prev, s_ref = s_ref, new
    s, steps, settled = H.run_synchronous(jnp.asarray(W_ref, jnp.float32), jnp.asarray(s0, jnp.float32))
    np.testing.assert_array_equal(np.asarray(s), s_ref)
    assert bool(settled)
    assert float(H.overlap(pats[0], pats[0])) == 1.0


# ----------------------------------------------------------------------------------------------
# Gardner capacity, Cover's counting, perceptrons
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kappa, ref", [(0.0, 2.000), (0.5, 0.961), (1.0, 0.520), (2.0, 0.200)])
def test_gardner_alpha_c_literature_values(kappa, ref):
    assert abs(float(H.gardner_alpha_c(kappa)) - ref) <= 1e-3  # Gardner 1988, 3 decimals
    # the closed form is the defining integral (quadrature), to 1e-10
    assert abs(float(H.gardner_alpha_c(kappa)) - H.gardner_alpha_c_quad(kappa)) <= 1e-10


def test_cover_fraction():
    for n in (1, 2, 5, 50, 100):
        assert H.cover_fraction(2 * n, n, exact=True) == Fraction(1, 2)  # exactly ½
        assert abs(H.cover_fraction(2 * n, n) - 0.5) <= 1e-12
    assert H.cover_fraction(7, 7, exact=True) == 1  # p ≤ n: every dichotomy
    # p = n + 1: all but the 2 dichotomies with C(p−1, n) = 1 … P = 1 − 2^{1−p}
    assert H.cover_fraction(6, 5, exact=True) == 1 - Fraction(2, 2**6)
    for p, n in [(30, 10), (150, 99), (250, 99)]:
        assert abs(float(H.cover_fraction(p, n, exact=True)) - H.cover_fraction(p, n)) <= 1e-12


def test_perceptron_finds_couplings_below_and_fails_above_capacity():
    n = 100
    ok_low = H.perceptron_couplings(H.random_patterns(jax.random.key(10), 150, n), 0.0, max_epochs=200)
    J, success, _ = ok_low
    assert bool(success)
    pats = H.random_patterns(jax.random.key(10), 150, n)
    assert np.all(np.diag(np.asarray(J)) == 0)
    assert np.all(np.asarray(H._stabilities(J, pats)) > 0)
    hi = H.random_patterns(jax.random.key(11), 250, n)
    assert not bool(H.perceptron_couplings(hi, 0.0, max_epochs=200)[1])
    assert not bool(H.perceptron_couplings(hi, 0.0, method="perceptron", max_epochs=30)[1])
    # Gardner's plain rule converges well below capacity, with a margin
    lo = H.random_patterns(jax.random.key(12), 30, n)
    J, success, epochs = H.perceptron_couplings(lo, 0.3, method="perceptron", max_epochs=500)
    assert bool(success) and int(epochs) < 500
    assert float(jnp.min(H._stabilities(J, lo))) > 0.3


def _qp_kappa(x, y):
    """Reference maximal stability by SLSQP on min |w|² s.t. y_μ w·x_μ ≥ 1: κ = min_μ y w·x / |w|."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    Z = y[:, None] * x
    cons = {"type": "ineq", "fun": lambda w: Z @ w - 1.0, "jac": lambda w: Z}
    w0 = np.linalg.lstsq(Z, np.ones(len(y)), rcond=None)[0]
    res = optimize.minimize(lambda w: w @ w, w0, jac=lambda w: 2 * w, constraints=[cons], method="SLSQP",
                            options={"ftol": 1e-14, "maxiter": 500})
    w = res.x
    return np.min(Z @ w) / np.linalg.norm(w)


def _lp_feasible(x, y):
    Z = np.asarray(y, np.float64)[:, None] * np.asarray(x, np.float64)
    res = optimize.linprog(np.zeros(Z.shape[1]), A_ub=-Z, b_ub=-np.ones(len(y)), bounds=[(None, None)] * Z.shape[1])
    return res.status == 0


def test_max_stability_against_qp_and_lp_references():
    m, p = 20, 24
    for seed in range(3):
        kx, ky = jax.random.split(jax.random.key(seed))
        x = H.random_patterns(kx, p, m)
        y = jnp.where(jax.random.bernoulli(ky, 0.5, (p,)), 1.0, -1.0)
        lo, up, _ = H.max_stability(x, y, iters=2000)
        ref = _qp_kappa(x, y)
        assert float(lo) <= ref + 1e-4 and ref <= float(up) + 1e-4  # certified bounds
        assert abs(float(lo) - ref) <= 2e-3, (seed, float(lo), ref)
    # near and beyond capacity: LP infeasible ⇒ the certified lower bound is not positive; feasible ⇒ upper > 0
    for seed in range(4):
        kx, ky = jax.random.split(jax.random.key(100 + seed))
        x = H.random_patterns(kx, 40, m)
        y = jnp.where(jax.random.bernoulli(ky, 0.5, (40,)), 1.0, -1.0)
        lo, up, _ = H.max_stability(x, y, iters=2000)
        if _lp_feasible(x, y):
            assert float(up) > 0.0
        else:
            assert float(lo) <= 0.0


def test_network_adatron_equals_single_perceptron_solver():
    pats = H.random_patterns(jax.random.key(3), 25, 16)
    J, lo, up = jax.jit(H._adatron_network, static_argnums=2)(pats, jnp.ones(25), 2000)
    for i in (0, 7):
        x = jnp.delete(pats, i, axis=1)
        lo1, up1, w = H.max_stability(x, pats[:, i], iters=2000)
        np.testing.assert_allclose(float(lo[i]), float(lo1), atol=1e-4)
        scale = float(jnp.max(jnp.abs(w)))  # float32 after 2000 steps: agree to 1e-4 of the coupling scale
        np.testing.assert_allclose(np.asarray(jnp.delete(J[i], i)), np.asarray(w), atol=1e-4 * scale)


# ----------------------------------------------------------------------------------------------
# Dense associative memory
# ----------------------------------------------------------------------------------------------


def test_dense_fields_are_energy_differences_float64():
    n = 9
    with jax.enable_x64(True):
        pats = H.random_patterns(jax.random.key(0), 7, n, dtype=jnp.float64)
        s = H.random_patterns(jax.random.key(1), 1, n, dtype=jnp.float64)[0]
        X, s_np = np.asarray(pats), np.asarray(s)
        S_plus = np.where(np.eye(n) > 0, 1.0, s_np[None, :])  # row i: s with s_i = +1
        S_minus = np.where(np.eye(n) > 0, -1.0, s_np[None, :])
        for kind, k in [("poly", 2), ("poly", 3), ("poly", 4), ("exp", 3)]:
            f = np.asarray(H.dense_fields(pats, s, kind, k))
            F = (lambda o, k=k: o**k) if kind == "poly" else np.exp  # noqa: E731
            Ep, Em = -F(S_plus @ X.T).sum(1), -F(S_minus @ X.T).sum(1)  # energies, plain numpy
            ref = (Em - Ep) / n**k if kind == "poly" else np.log(-Ep) - np.log(-Em)
            np.testing.assert_allclose(f, ref, rtol=1e-10, atol=1e-10, err_msg=f"{kind} {k}")
        assert abs(float(H.dense_energy(pats, s, "poly", 3)) + np.sum((X @ s_np) ** 3)) <= 1e-9


def test_dense_k2_is_the_classical_network():
    pats = H.random_patterns(jax.random.key(2), 12, 31)
    J = H._integer_couplings(pats)
    classical = np.asarray(pats * (pats @ J.T) >= 0)  # s_i h_i ≥ 0 from each stored pattern
    np.testing.assert_array_equal(np.asarray(H.dense_stable(pats, "poly", 2)), classical)


def test_dense_flip_rate_matches_signal_to_noise():
    n, p, trials = 24, 48, 16
    r = H.dense_sweep(jax.random.key(3), n, [p], trials, "poly", 3, queries=16)
    q = float(H.dense_flip_reference(n, p, "poly", 3))
    count = trials * min(p, 16) * n
    se = np.sqrt(q * (1 - q) / count)
    # Gaussian crosstalk underestimates the heavier tails of b² sums a little: 25 % relative or 4 SE
    assert abs(r["flip_rate"].mean() - q) <= max(0.25 * q, 4 * se), (r["flip_rate"].mean(), q)
    # k = 2 reference reduces to Φ(−1/√α) for large n
    assert abs(float(H.dense_flip_reference(2000, 200, "poly", 2)) - float(H.flip_rate_reference(0.1))) < 2e-4


# ----------------------------------------------------------------------------------------------
# Modern continuous Hopfield network
# ----------------------------------------------------------------------------------------------


def test_theorem3_constants():
    c1 = H.theorem3_constants(1.0, 3.0, 20, 0.001)
    c2 = H.theorem3_constants(1.0, 1.0, 75, 0.001)
    assert abs(c1["c"] - 3.1546) <= 1e-3 and c1["valid"]  # Ramsauer et al. 2020, Theorem 3 examples
    assert abs(c2["c"] - 1.3718) <= 1e-3 and c2["valid"]


def test_theorem3_storage_condition_holds_at_the_bound():
    beta, K, d, p = 1.0, 3.0, 20, 0.001
    N = int(H.theorem3_constants(beta, K, d, p)["N"])
    keys = jax.random.split(jax.random.key(0), 64)
    ok = jax.vmap(lambda k: H.theorem3_storage_condition(H.sphere_patterns(k, N, d, K * np.sqrt(d - 1)), beta))(keys)
    assert float(np.mean(ok)) >= 1 - p  # the theorem: failure probability ≤ p per pattern


def test_theorem5_bound_holds_in_every_trial():
    N, d, beta = 16, 12, 2.0
    M = np.sqrt(d - 1)

    def trial(key):
        kx, kn, kr = jax.random.split(key, 3)
        X = H.sphere_patterns(kx, N, d, M)
        r = jax.random.uniform(kr, (), minval=0.0, maxval=0.3)
        xi = X[0] + r * jax.random.normal(kn, (d,)) / np.sqrt(d)
        err = jnp.linalg.norm(H.hopfield_update(X, xi, beta) - X[0])
        return err, H.theorem5_bound(X, xi, 0, beta)

    err, bound = jax.jit(jax.vmap(trial))(jax.random.split(jax.random.key(7), 512))
    err, bound = np.asarray(err), np.asarray(bound)
    assert np.all(err <= bound * (1 + 1e-5) + 1e-6)
    assert np.mean(bound < M) > 0.2  # the bound is not vacuous in a good share of trials (can fail)


def test_energy_never_increases_and_iteration_converges():
    with jax.enable_x64(True):
        X = H.sphere_patterns(jax.random.key(1), 30, 8, 2.0, dtype=jnp.float64)

        @jax.jit
        def trajectory(xi, beta):
            def step(x, _):
                x = H.hopfield_update(X, x, beta)
                return x, H.modern_energy(X, x, beta)

            x, E = jax.lax.scan(step, xi, None, length=30)
            return x, jnp.concatenate([H.modern_energy(X, xi, beta)[None], E])

        for beta in (0.1, 1.0, 8.0):
            xi, E = trajectory(jax.random.normal(jax.random.key(2), (8,), jnp.float64), beta)
            E = np.asarray(E)
            assert np.all(np.diff(E) <= 1e-12), (beta, np.diff(E).max())
            assert E[-1] >= -1e-12  # E ≥ 0 by construction (Ramsauer Lemma A?: lse ≤ log N/β + M|ξ|)
            x_star, it = H.hopfield_retrieve(X, xi, beta, tol=1e-12, max_iter=1000)
            np.testing.assert_allclose(np.asarray(H.hopfield_update(X, x_star, beta)), np.asarray(x_star), atol=1e-9)


def test_update_against_numpy_and_fixed_point_kinds():
    X = np.asarray(H.sphere_patterns(jax.random.key(3), 10, 6, 1.5), np.float64)
    xi = np.random.default_rng(0).normal(size=6)
    z = 0.7 * X @ xi
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    got = H.hopfield_update(jnp.asarray(X, jnp.float32), jnp.asarray(xi, jnp.float32), 0.7)
    np.testing.assert_allclose(np.asarray(got), X.T @ p, atol=1e-6)
    # separation by hand
    Xs = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    np.testing.assert_allclose(np.asarray(H.separation(Xs)), [1.0 - 0.6, 1.0 - 0.8, 1.0 - 0.8], atol=1e-6)
    # kinds: tiny β → global average; large β from a pattern → single; two near-identical patterns → metastable
    Xk = jnp.asarray([[1.0, 0.0, 0.0], [0.999, 0.0447, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) * 3.0
    kind = lambda beta, x0: int(H.classify_fixed_point(Xk, H.hopfield_retrieve(Xk, x0, beta, max_iter=500)[0], beta))  # noqa: E731
    assert H.FIXED_POINT_KINDS[kind(1e-4, Xk[3])] == "global"
    assert H.FIXED_POINT_KINDS[kind(5.0, Xk[3])] == "single"
    assert H.FIXED_POINT_KINDS[kind(1.0, Xk[0])] == "metastable"


@pytest.mark.slow
def test_retrieval_accuracy_nondecreasing_in_d():
    accs = []
    for d in (4, 8, 16, 32):
        r = H.retrieval_sweep(jax.random.key(d), d, [64], 1.0, trials=400, noise=0.4, K=1.0)
        accs.append(float(r["accuracy"][0]))
    se = np.sqrt(0.25 / 400)
    assert accs[-1] - accs[0] > 0.3, accs  # the sweep spans a real range, so the test can fail
    for a, b in zip(accs, accs[1:], strict=False):
        assert b >= a - 3 * np.sqrt(2) * se, accs  # non-decreasing within 3 SE of the difference


# ----------------------------------------------------------------------------------------------
# Attention is retrieval; the Hopfield layer as Ψ
# ----------------------------------------------------------------------------------------------


def test_one_update_is_attention():
    X = H.sphere_patterns(jax.random.key(4), 12, 8, 1.0)
    xi = X[:5] + 0.3 * jax.random.normal(jax.random.key(5), (5, 8))
    via_attention = jax.jit(H.hopfield_update_via_attention)
    for beta in (0.5, 4.0, 40.0):
        np.testing.assert_allclose(np.asarray(via_attention(X, xi, beta)),
                                   np.asarray(H.hopfield_update(X, xi, beta)), atol=1e-6)
    with jax.enable_x64(True):
        X64 = H.sphere_patterns(jax.random.key(4), 12, 8, 3.0, dtype=jnp.float64)
        xi64 = X64[2] + 0.5 * jax.random.normal(jax.random.key(6), (8,), jnp.float64)
        np.testing.assert_allclose(np.asarray(via_attention(X64, xi64, 2.0)),
                                   np.asarray(H.hopfield_update(X64, xi64, 2.0)), atol=1e-10)
        g_attn = jax.jit(jax.grad(lambda X, x: jnp.sum(jnp.sin(H.hopfield_update_via_attention(X, x, 2.0))),
                                  argnums=(0, 1)))(X64, xi64)
        g_hop = jax.jit(jax.grad(lambda X, x: jnp.sum(jnp.sin(H.hopfield_update(X, x, 2.0))),
                                 argnums=(0, 1)))(X64, xi64)
        for a, b in zip(g_attn, g_hop, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-10)


def test_hopfield_psi_layer_matches_update_values_and_gradients():
    layer = H.HopfieldPsi(8, rngs=nnx.Rngs(0), num_patterns=5, beta=0.9, steps=2)
    x = jax.random.normal(jax.random.key(1), (2, 3, 8))

    def ref(X, x):
        return jax.vmap(jax.vmap(lambda v: H.hopfield_update(X, H.hopfield_update(X, v, 0.9), 0.9)))(x)

    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(ref(layer.patterns[...], x)), atol=1e-6)
    graphdef, params = nnx.split(layer)
    g_layer = jax.jit(jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) ** 2), argnums=(0, 1)))(params, x)
    g_ref = jax.jit(jax.grad(lambda X, x: jnp.sum(ref(X, x) ** 2), argnums=(0, 1)))(layer.patterns[...], x)
    # float32 gradients of size ~16: an absolute 1e-5 alone is below their rounding (failed at HEAD by 4e-6)
    np.testing.assert_allclose(np.asarray(g_layer[0]["patterns"][...]), np.asarray(g_ref[0]), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_layer[1]), np.asarray(g_ref[1]), atol=1e-5, rtol=1e-5)


def test_model_uses_hopfield_psi():
    from tvvar.model import ModelConfig, TVVARModel

    cfg = ModelConfig(16, d_model=8, num_layers=1, psi="hopfield", psi_options={"num_patterns": 6},
                      mixer={"num_heads": 2})
    model = TVVARModel(cfg, rngs=nnx.Rngs(0))
    assert isinstance(model.blocks[0].psi, H.HopfieldPsi)
    logits = model(jnp.zeros((2, 5), jnp.int32))
    assert logits.shape == (2, 5, 16) and bool(jnp.all(jnp.isfinite(logits)))
    # registered by name without importing tvvar.theory.transformer.hopfield: `import tvvar` registers the built-ins
    import tvvar.model as tm

    assert tm.PSI["hopfield"] is H.HopfieldPsi and "hopfield" in tm.available_psi()


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_bad_input_errors():
    with pytest.raises(ValueError, match="±1"):
        H.hebbian_couplings(jnp.asarray([[1.0, 0.5, -1.0]]))
    with pytest.raises(ValueError, match="n ≥ 2"):
        H.hebbian_couplings(jnp.ones((3, 1)))
    with pytest.raises(ValueError, match="n must be an integer ≥ 2"):
        H.classical_sweep(jax.random.key(0), 1, [1], 1)
    with pytest.raises(ValueError, match="beta"):
        H.hopfield_update(jnp.ones((3, 4)), jnp.ones(4), 0.0)
    with pytest.raises(ValueError, match="beta"):
        H.theorem3_constants(-1.0, 1.0, 10, 0.01)
    with pytest.raises(ValueError, match="beta"):
        H.HopfieldPsi(4, rngs=nnx.Rngs(0), beta=-2.0)
    with pytest.raises(ValueError, match="kappa"):
        H.perceptron_couplings(jnp.ones((2, 3)), -1.0)
    with pytest.raises(ValueError, match="kind"):
        H.dense_stable(jnp.ones((2, 3)), "cosh")
    with pytest.raises(ValueError, match="d ≥ 2"):
        H.hopfield_update(jnp.ones((3, 1)), jnp.ones(1), 1.0)


def test_retrieval_sweep_segments_match_plain_updates():
    from tvvar.core import sphere

    d, Ns, beta, noise, trials, K = 6, [3, 1, 8, 20], 2.0, 0.3, 8, 1.0
    r = H.retrieval_sweep(jax.random.key(9), d, Ns, beta, trials=trials, noise=noise, K=K)
    M = K * np.sqrt(d - 1)
    for t, key in enumerate(jax.random.split(jax.random.key(9), trials)):
        kx, kz = jax.random.split(key)
        X = H.sphere_patterns(kx, max(Ns), d, M)
        xi = X[0] + noise * M * sphere(jax.random.normal(kz, (d,)))
        for j, N in enumerate(Ns):  # the plain reference: one update with exactly N stored patterns
            err = float(jnp.linalg.norm(H.hopfield_update(X[:N], xi, beta) - X[0]))
            if abs(err - 0.1 * M) > 1e-4:  # skip float ties at the success threshold
                assert bool(r["success"][j, t]) == (err <= 0.1 * M), (t, N, err)


# ----------------------------------------------------------------------------------------------
# Exactly-zero local fields (issue 12, item 16): a real fixed point must not be called unstable
# ----------------------------------------------------------------------------------------------

# n = 10 (1/n is not a float32 number): J ξ³ has exact zeros, which W ξ³ = (J/n) ξ³ computes in float32 as
# ±tiny, so the old code counted a "flip" of a neuron that keeps its state.
_ZERO_FIELD_PATTERNS = [[1, -1, -1, -1, 1, -1, 1, 1, 1, 1], [-1, 1, 1, 1, -1, 1, -1, -1, -1, 1],
                        [-1, 1, 1, -1, 1, 1, 1, -1, 1, 1], [1, -1, -1, -1, 1, -1, 1, 1, -1, -1]]


def test_classical_zero_field_keeps_the_state_exactly():
    pats = jnp.asarray(_ZERO_FIELD_PATTERNS, jnp.float32)
    xi = pats[2]
    X = np.asarray(_ZERO_FIELD_PATTERNS, np.int64)
    J = X.T @ X - len(X) * np.eye(10, dtype=np.int64)  # exact integer couplings
    h = J @ X[2]
    zero = h == 0
    assert zero.any() and np.all(X[2] * h >= 0)  # ξ³ is a fixed point with zero fields
    W = H.hebbian_couplings(pats)
    assert np.any(np.asarray(xi * (W @ xi))[zero] < 0)  # the float32 fields are not zero: the trap
    assert float(H.one_step_flip_rate(W, xi)) == 0.0
    np.testing.assert_array_equal(np.asarray(H.synchronous_step(W, xi)), np.asarray(xi))
    s, steps, settled = H.run_synchronous(W, xi)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(xi))
    s, sweeps, conv = H.run_asynchronous(W, xi, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(xi))


def _dense_keeps_reference(X, k):
    """s_i Δ_i ≥ 0 from every stored pattern in Python integers (no rounding anywhere)."""
    X = np.asarray(X, np.int64)
    out = []
    for s in X:
        b = (X @ s)[:, None] - X * s[None, :]
        out.append(s * ((b + X) ** k - (b - X) ** k).sum(0) >= 0)
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("seed,P,k", [(3, 6, 3), (0, 8, 2), (66, 12, 4)])
def test_dense_stable_is_exact_at_zero_fields(seed, P, k):
    """Pattern sets (n = 10) where the float32 fields (b ± ξ)/n)^k misjudge an exact zero Δ_i."""
    pats = H.random_patterns(jax.random.key(seed), P, 10)
    ref = _dense_keeps_reference(np.asarray(pats), k)
    mask = jnp.ones((P,))
    floats = np.asarray(jax.vmap(lambda nu: pats[nu] * H.dense_fields(pats, pats[nu], "poly", k, mask) >= 0)(
        jnp.arange(P)))
    assert not np.array_equal(floats, ref)  # the trap is there
    np.testing.assert_array_equal(np.asarray(H.dense_stable(pats, "poly", k)), ref)


def test_exact_column_sign_carries_past_int32():
    big = 2**28
    t = np.array([[big, -big, 1], [big, -big, -1]] * 12 + [[-big, big, 0]] * 24, np.int64)  # totals 0, 0, 0
    t[0, 0] += 1  # column 0: +1
    t[1, 1] -= 2  # column 1: −2
    sums = t.sum(0)
    assert np.abs(np.cumsum(t, 0)).max() > 2**31  # partial sums leave int32
    got = np.asarray(H._exact_column_sign(jnp.asarray(t, jnp.int32), big + 2))
    np.testing.assert_array_equal(got, np.sign(sums))
    assert list(np.sign(sums)) == [1, -1, 0]


def test_dense_kinds_come_from_one_table():
    assert H.DENSE_KINDS == ("poly", "exp")
    with pytest.raises(ValueError, match=r"kind must be one of \('poly', 'exp'\)"):
        H.dense_energy(jnp.ones((2, 3)), jnp.ones(3), "cosh")


def test_experiment_dense_kinds_must_include_the_checked_ones(tmp_path):
    """experiments.hopfield_capacity: Config.dense_kinds may drop the figure-only kinds, never x^3 or exp."""
    import dataclasses

    from experiments import hopfield_capacity as X

    cfg = dataclasses.replace(X.Config.quick(), dense_kinds=(("poly", 2), ("exp", 0)))
    with pytest.raises(ValueError, match="dense_kinds"):
        X._dense(cfg, jax.random.key(0), tmp_path, [], {}, [])



def test_experiment_second_routes_agree_with_the_library_and_fail_when_perturbed():
    """experiments.hopfield_capacity: the dense memory's energy rule (numpy int64) gives the library's exact
    fixed-point test; the numpy re-simulation of the retrieval sweep agrees with it within its tolerance, and its
    verdict fails on a curve moved by a few standard errors. Config.sections names parts."""
    import dataclasses

    from experiments import hopfield_capacity as X

    rng = np.random.default_rng(0)
    for k in (2, 3, 4):
        pats = rng.choice(np.array([-1, 1], np.int8), size=(24, 12))
        lib = np.asarray(H.dense_stable(jnp.asarray(pats, jnp.float32), "poly", k))
        assert (lib == X.dense_keeps_numpy(pats, k)).all()
        assert 0 < lib.mean() < 1  # both decisions occur at this load
    Ns = np.array([1, 2, 4, 8, 16])
    lib = H.retrieval_sweep(jax.random.key(0), 8, Ns, 1.0, trials=256, noise=0.3)["accuracy"]
    ref = X.retrieval_accuracy_numpy(8, Ns, 1.0, 0.3, 1.0, 2000, seed=0)
    assert X.verdict_retrieval_resimulated("r", {8: lib}, {8: ref}, 256, "")["passed"]
    assert not X.verdict_retrieval_resimulated("r", {8: np.clip(lib - 0.2, 0, 1)}, {8: ref}, 256, "")["passed"]
    with pytest.raises(ValueError, match="Config.sections"):
        dataclasses.replace(X.Config.quick(), sections=("dense", "nonsense"))


@pytest.mark.slow
def test_the_modern_section_runs_with_a_single_d(tmp_path):
    """One d has no step between sizes to report: the run used to stop in min() of an empty sequence."""
    from experiments import hopfield_capacity as X

    cfg = X.Config(sections=("modern",), d_modern=(8,), betas=(1.0,), modern_log2_N=(1, 2, 3), trials_modern=8)
    res = X.run(cfg, tmp_path)
    assert res["data"]["modern_monotone_in_d"]["min_step"] is None
    assert [c["name"] for c in res["checks"] if c["skipped"] is None and not c["passed"]] == []
