"""tvvar.theory.space.cpc: backward directed information and Eq. 42's chain, exact (float64, 1e-10)."""

import math

import numpy as np
import pytest

from tvvar.theory.space import cpc


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


# --------------------------------------------------------------------------------------------------
# CPC trained: InfoNCE per horizon with a tvvar model as g_AR
# --------------------------------------------------------------------------------------------------


def _cpc(V=5, D=8, K=2, d=3, dtype="float64", mask="causal"):
    from flax import nnx

    from tvvar.model import ModelConfig, TVVARModel

    m = TVVARModel(ModelConfig(vocab_size=V, d_model=D, num_layers=1, mixer={"num_heads": 2}, mask=mask,
                               param_dtype=dtype, dtype=dtype), rngs=nnx.Rngs(params=0))
    return cpc.CPC(m, K, d, rngs=nnx.Rngs(params=1))


@pytest.mark.slow
def test_infonce_is_the_neural_estimators_bound_and_blocks_are_batches():
    import jax
    import jax.numpy as jnp

    from tvvar.theory.estimation.neural import infonce_bound

    with jax.enable_x64(True):
        S = jax.random.normal(jax.random.key(0), (3, 8, 8), jnp.float64) * 2.0
        ref = np.mean([float(infonce_bound(S[t])) for t in range(3)])
        assert abs(float(cpc.infonce(S)) - ref) <= 1e-12
        got = np.asarray(cpc.infonce_by_size(S, (2, 4, 8)))
        Sn = np.asarray(S)

        def bound(B):  # numpy: mean_i B_ii − ln Σ_j e^{B_ij} + ln n
            mx = B.max(1, keepdims=True)
            return np.mean(np.diag(B) - (mx[:, 0] + np.log(np.exp(B - mx).sum(1)))) + math.log(B.shape[0])

        for v, n in zip(got, (2, 4, 8), strict=True):
            blocks = [bound(Sn[t, g * n:(g + 1) * n, g * n:(g + 1) * n]) for t in range(3) for g in range(8 // n)]
            assert abs(v - np.mean(blocks)) <= 1e-12
            assert v <= math.log(n) + 1e-12  # InfoNCE never exceeds ln N


@pytest.mark.slow
def test_cpc_scores_and_gradients_equal_a_plain_loop_float64():
    """The einsum scores and optax's CE against S[t, i, j] = c_{i,t}ᵀ W_k g_enc(x_{j,t+k}) written as loops."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    with jax.enable_x64(True):
        model = _cpc()
        ids = jax.random.randint(jax.random.key(2), (3, 6), 0, 5)

        def reference(m, ids):
            c, z, W = m.ar.hidden(ids), m.code[...], m.critic[...]
            est = []
            for k in (1, 2):
                vals = []
                for t in range(6 - k):
                    S = c[:, t] @ W[k - 1] @ z[ids[:, t + k]].T  # [i, j]
                    vals.append(jnp.mean(jnp.diag(S) - jax.nn.logsumexp(S, axis=1)) + jnp.log(3.0))
                est.append(jnp.mean(jnp.stack(vals)))
            return jnp.stack(est)

        np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(nnx.jit(reference)(model, ids)), rtol=0,
                                   atol=1e-10)
        w = jnp.array([1.0, -0.5])
        g_fast = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) * w)))(model, ids)
        g_ref = nnx.jit(nnx.grad(lambda m, x: jnp.sum(reference(m, x) * w)))(model, ids)
        leaves_f, leaves_r = jax.tree.leaves(nnx.state(g_fast)), jax.tree.leaves(nnx.state(g_ref))
        assert len(leaves_f) == len(leaves_r) > 2
        for a, b in zip(leaves_f, leaves_r, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-10)


def test_bayes_scores_are_the_log_density_ratio_and_infonce_ignores_a_context_shift():
    import jax
    import jax.numpy as jnp

    P, pi = _stationary_chain(3)
    with jax.enable_x64(True):
        ids = jax.random.randint(jax.random.key(0), (4, 7), 0, 3)
        for k in (1, 3):
            S = np.asarray(cpc.bayes_scores(P, pi, k, ids, dtype=jnp.float64))
            Pk = np.linalg.matrix_power(P, k)
            a, b = np.asarray(ids)[:, :-k], np.asarray(ids)[:, k:]
            for t in range(7 - k):
                for i in range(4):
                    for j in range(4):
                        assert abs(S[t, i, j] - (math.log(Pk[a[i, t], b[j, t]]) - math.log(pi[b[j, t]]))) <= 1e-12
            shift = np.arange(7 - k)[:, None, None] * 0.3 + np.arange(4)[None, :, None] * 1.7
            assert abs(float(cpc.infonce(jnp.asarray(S + shift))) - float(cpc.infonce(jnp.asarray(S)))) <= 1e-10


@pytest.mark.slow
def test_bayes_optimal_infonce_at_two_candidates_matches_its_exact_expectation():
    """E[Î] with N = 2 and the Bayes critic f(a, b) = ln P(a, b) − ln π(b), by enumeration:
    Σ_{a,b,b'} π_a P_ab π_b' [ln 2 − ln(1 + e^{f(a,b') − f(a,b)})]; sampled within 4 standard errors."""
    import jax

    from tvvar.sources import MarkovSource

    P, pi = _stationary_chain(0)
    f = np.log(P) - np.log(pi)[None, :]
    exact = sum(pi[a] * P[a, b] * pi[c] * (math.log(2) - math.log1p(math.exp(f[a, c] - f[a, b])))
                for a in range(3) for b in range(3) for c in range(3))
    src = MarkovSource(3, 1, transitions=P)
    np.testing.assert_allclose(src.pi, pi, atol=1e-10)
    ids = src.batch(jax.random.key(0), 2048, 15)["tokens"]
    S = cpc.bayes_scores(P, pi, 1, ids)
    per_group = [float(cpc.infonce_by_size(S[:, g * 128:(g + 1) * 128, g * 128:(g + 1) * 128], (2,))[0])
                 for g in range(16)]
    est, se = np.mean(per_group), np.std(per_group, ddof=1) / 4.0
    assert abs(est - exact) <= 4 * se, (est, se, exact)
    assert exact < min(math.log(2), cpc.markov_horizon_information(P, pi, 1))


@pytest.mark.slow
def test_trained_cpc_reaches_most_of_the_bayes_optimal_critic_and_stays_below_the_truth():
    import jax
    from flax import nnx

    from tvvar.model import ModelConfig, TVVARModel
    from tvvar.sources import MarkovSource

    src = MarkovSource(6, 1, seed=3)
    m = TVVARModel(ModelConfig(vocab_size=6, d_model=16, num_layers=1, mixer={"num_heads": 2}),
                   rngs=nnx.Rngs(params=0))
    model = cpc.CPC(m, 2, 8, rngs=nnx.Rngs(params=1))
    curve = cpc.train_cpc(model, src, steps=150, batch_size=32, seq_len=12, key=jax.random.key(0))
    assert curve.shape == (150, 2) and np.all(np.isfinite(curve))
    # a run shorter than its warmup (20) warms up over its steps: it used to stop in optax (0 decay steps)
    short = cpc.train_cpc(cpc.CPC(m, 2, 8, rngs=nnx.Rngs(params=2)), src, steps=3, batch_size=4, seq_len=12,
                          key=jax.random.key(0))
    assert short.shape == (3, 2) and np.all(np.isfinite(short))
    ids = src.batch(jax.random.key(1), 256, 11, split="val")["tokens"]
    trained = np.asarray([cpc.infonce_by_size(S, (32,))[0] for S in model.scores(ids)])
    bayes = np.asarray([cpc.infonce_by_size(cpc.bayes_scores(src.P, src.pi, k, ids), (32,))[0] for k in (1, 2)])
    exact = np.array([cpc.markov_horizon_information(src.P, src.pi, k) for k in (1, 2)])
    assert np.all(trained >= 0.8 * bayes), (trained, bayes)
    assert np.all(trained <= exact + 0.05), (trained, exact)  # a lower bound on I_k (sampling error ≲ 0.02 here)


def test_cpc_bad_input_is_refused_with_the_argument_named():
    import jax.numpy as jnp
    from flax import nnx

    good = _cpc(dtype="float32")
    with pytest.raises(ValueError, match="horizons"):
        cpc.CPC(good.ar, 0, 3, rngs=nnx.Rngs(params=0))
    with pytest.raises(ValueError, match="code_dim"):
        cpc.CPC(good.ar, 1, 0, rngs=nnx.Rngs(params=0))
    with pytest.raises(ValueError, match="causal"):
        _cpc(dtype="float32", mask="bidirectional")
    with pytest.raises(ValueError, match="ids must have shape"):
        good(jnp.zeros((1, 6), jnp.int32))  # a single sequence has no negatives
    with pytest.raises(ValueError, match="ids must have shape"):
        good(jnp.zeros((3, 2), jnp.int32))  # shorter than K + 1
    with pytest.raises(ValueError, match="integer token ids"):
        good(jnp.zeros((3, 6), jnp.float32))
    with pytest.raises(ValueError, match="sizes"):
        cpc.infonce_by_size(jnp.zeros((2, 8, 8)), (3,))
    P, pi = _stationary_chain(0)
    with pytest.raises(ValueError, match="k must be"):
        cpc.bayes_scores(P, pi, 0, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, V=3\)"):
        cpc.bayes_scores(P, pi, 1, jnp.full((2, 4), 5, jnp.int32))  # an id outside [0, V)
    with pytest.raises(ValueError, match="steps"):
        cpc.train_cpc(good, None, steps=0, batch_size=4, seq_len=6, key=None)
    with pytest.raises(ValueError, match="seq_len"):
        cpc.train_cpc(good, None, steps=5, batch_size=4, seq_len=2, key=None)
    with pytest.raises(ValueError, match="warmup"):  # optax would start a negative warmup at 0.78·lr, silently
        cpc.train_cpc(good, None, steps=5, batch_size=4, seq_len=6, warmup=-5, key=None)
