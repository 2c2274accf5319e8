"""The latent-alignment source (tvvar.sources.alignment) and the verdicts of experiments.latent_alignment.

Source: exact probabilities against brute-force numpy enumeration over every latent path (float64,
1e-10), normalization over every token sequence, the posterior, the entropy field, sampling frequencies
against the exact conditionals (z-scores), info round trip, validation errors that name the argument.
Experiment: every check's verdict passes on inputs of the measured kind and fails on a perturbed one.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvvar.sources import LatentAlignmentSource

# --------------------------------------------------------------------------------------------------
# numpy references: enumerate every latent path J_0..J_{T-1} (J_i ∈ {0..i})
# --------------------------------------------------------------------------------------------------


def _np_pi(src, x, i):
    """π[i, ·] over j ≤ i for one token sequence x, straight from ũ, B, τ (not the cached score table)."""
    U = src.token_vectors
    s = np.array([U[x[i]] @ src.bilinear @ U[x[j]] / src.temperature for j in range(i + 1)])
    w = np.exp(s - s.max())
    return w / w.sum()


def _np_joint_given_x0(src, x):
    """P(x_1..x_T | x_0) = Σ over every path (J_0..J_{T-1}) of Π_i π[i, J_i] E[x_{J_i}, x_{i+1}]."""
    T = len(x) - 1
    pis = [_np_pi(src, x, i) for i in range(T)]
    total = 0.0
    for path in itertools.product(*[range(i + 1) for i in range(T)]):
        total += math.prod(pis[i][j] * src.emissions[x[j], x[i + 1]] for i, j in enumerate(path))
    return total


def _small(seed=3, V=3, **kw):
    return LatentAlignmentSource(V, 4, temperature=0.7, alpha=0.5, seed=seed, **kw)


# --------------------------------------------------------------------------------------------------
# exactness (float64, 1e-10)
# --------------------------------------------------------------------------------------------------


def test_log_likelihood_equals_enumeration_over_latent_paths_float64():
    src = _small()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (5, 5))  # 5 sequences of 4 targets: 1·2·3·4 = 24 paths each
    with jax.enable_x64(True):
        ll = np.asarray(src.log_likelihood(jnp.asarray(x[:, :-1]), jnp.asarray(x[:, 1:]), dtype=jnp.float64))
    for b in range(len(x)):
        assert abs(ll[b].sum() - math.log(_np_joint_given_x0(src, x[b]))) < 1e-10
        # and row by row: P(x_{i+1} | x_{≤i}) is the ratio of two path enumerations
        for i in range(4):
            ratio = _np_joint_given_x0(src, x[b, : i + 2]) / (_np_joint_given_x0(src, x[b, : i + 1]) if i else 1.0)
            assert abs(ll[b, i] - math.log(ratio)) < 1e-10


def test_every_sequence_has_total_probability_one_float64():
    src = _small(V=3, initial=[0.2, 0.5, 0.3])
    seqs = np.array(list(itertools.product(range(3), repeat=4)), np.int32)  # every x_0..x_3
    with jax.enable_x64(True):
        ll = src.log_likelihood(jnp.asarray(seqs[:, :-1]), jnp.asarray(seqs[:, 1:]), dtype=jnp.float64)
        total = np.sum(src.initial[seqs[:, 0]] * np.exp(np.asarray(ll).sum(1)))
    assert abs(total - 1.0) < 1e-10


def test_conditional_entropy_and_posterior_float64():
    src = _small(seed=5, V=4)
    x = np.random.default_rng(1).integers(0, 4, (3, 6))
    ids, tg = jnp.asarray(x[:, :-1]), jnp.asarray(x[:, 1:])
    with jax.enable_x64(True):
        p = np.asarray(src.conditional(ids, dtype=jnp.float64))
        H = np.asarray(src.entropy(ids, dtype=jnp.float64))
        post = np.asarray(src.posterior(ids, tg, dtype=jnp.float64))
        ll = np.asarray(src.log_likelihood(ids, tg, dtype=jnp.float64))
    for b, i in itertools.product(range(3), range(5)):
        pi = _np_pi(src, x[b], i)
        p_ref = pi @ src.emissions[x[b, : i + 1]]
        np.testing.assert_allclose(p[b, i], p_ref, rtol=0, atol=1e-12)
        assert abs(H[b, i] + np.sum(p_ref * np.log(p_ref))) < 1e-10
        assert abs(ll[b, i] - math.log(p_ref[x[b, i + 1]])) < 1e-10
        joint = pi * src.emissions[x[b, : i + 1], x[b, i + 1]]
        np.testing.assert_allclose(post[b, i, : i + 1], joint / joint.sum(), rtol=0, atol=1e-12)
        assert np.all(post[b, i, i + 1:] == 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(post.sum(-1), 1.0, rtol=0, atol=1e-12)


def test_batch_entropy_field_matches_exact_conditional_entropy_float64():
    src = LatentAlignmentSource(6, 8, seed=2)
    with jax.enable_x64(True):
        b = jax.jit(lambda k: src.batch(k, 4, 9))(jax.random.key(0))
        assert b["tokens"].shape == (4, 10) and b["tokens"].dtype == jnp.int32
        assert b["entropy"].shape == (4, 9) and b["alignment"].shape == (4, 9)
        H = src.entropy(b["tokens"][:, :-1], dtype=jnp.float64)
        np.testing.assert_allclose(np.asarray(b["entropy"]), np.asarray(H), rtol=0, atol=1e-10)
    assert np.all(np.asarray(b["alignment"]) <= np.arange(9)[None]) and np.all(np.asarray(b["alignment"]) >= 0)


# --------------------------------------------------------------------------------------------------
# sampling: empirical frequencies against the exact laws
# --------------------------------------------------------------------------------------------------


def _z(indicator, prob):
    """Σ(1[x = v] − p) / sqrt(Σ p(1 − p)) over draws: each term has mean 0 given the past, so this is a
    z-score whatever the prefixes were (a martingale CLT); |z| > 5 has probability ~6e-7 per cell."""
    prob = np.broadcast_to(prob, indicator.shape)
    return np.sum(indicator - prob, axis=0) / np.sqrt(np.maximum(np.sum(prob * (1 - prob), axis=0), 1e-12))


def test_sampled_tokens_and_alignments_follow_their_exact_laws():
    V, T, N = 4, 6, 20_000
    src = LatentAlignmentSource(V, 5, temperature=0.6, alpha=0.3, seed=7, initial=[0.1, 0.2, 0.3, 0.4])
    b = jax.device_get(jax.jit(lambda k: src.batch(k, N, T))(jax.random.key(1)))
    x, J = b["tokens"], b["alignment"]
    p = np.asarray(src.conditional(jnp.asarray(x[:, :-1])), np.float64)  # [N, T, V]
    onehot = np.eye(V)[x[:, 1:]]
    assert np.max(np.abs(_z(onehot, p))) < 5.0  # x_{i+1} ~ P(· | x_{≤i})
    # hard alignment: given J_i = j, x_{i+1} ~ E[x_j, ·] (row x_{J_i} alone)
    e_rows = src.emissions[np.take_along_axis(x, J, axis=1)]
    assert np.max(np.abs(_z(onehot, e_rows))) < 5.0
    pi = np.exp(np.asarray(src.log_alignment(jnp.asarray(x[:, :-1])), np.float64))
    assert np.max(np.abs(_z(np.eye(T)[J], pi))) < 5.0  # J_i ~ π[i, ·]
    assert np.max(np.abs(_z(np.eye(V)[x[:, 0]][:, None], src.initial[None, None]))) < 5.0
    # the test has power: emitting from the query's row E[x_i, ·] instead of E[x_{J_i}, ·] is rejected
    assert np.max(np.abs(_z(onehot, src.emissions[x[:, :-1]]))) > 20.0


def test_splits_differ_and_draws_are_reproducible():
    src = LatentAlignmentSource(8, 8)
    f = jax.jit(lambda k: src.batch(k, 8, 16)["tokens"])
    g = jax.jit(lambda k: src.batch(k, 8, 16, split="val")["tokens"])
    k = jax.random.key(3)
    assert np.array_equal(f(k), f(k)) and not np.array_equal(f(k), g(k))


def test_info_round_trip():
    E = np.full((3, 3), 1 / 3)
    for src in (LatentAlignmentSource(5, 3, temperature=0.3, seed=9), _small(emissions=E, initial=[0.5, 0.5, 0.0])):
        again = LatentAlignmentSource.from_info(src.info())
        assert again.info() == src.info()
        np.testing.assert_array_equal(again.emissions, src.emissions)
        np.testing.assert_array_equal(again.scores, src.scores)
        np.testing.assert_array_equal(again.initial, src.initial)


# --------------------------------------------------------------------------------------------------
# bad input: clear errors naming the argument
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(vocab_size=1), "vocab_size must be an int ≥ 2"),
    (dict(vocab_size=2.0), "vocab_size must be an int ≥ 2"),
    (dict(vocab_size=True), "vocab_size must be an int ≥ 2"),
    (dict(d_model=0), "d_model must be an int ≥ 1"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(temperature=-1.0), "temperature must be > 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(alpha=0.0), "alpha .* must be > 0"),
    (dict(eps=1.5), r"eps .* must lie in \[0, 1\]"),
    (dict(emissions=np.full((3, 3), 0.5)), "emissions must sum to 1 along its last axis .* row 0 sums to 1.5"),
    (dict(emissions=np.eye(4)), r"emissions must have shape \(3, 3\)"),
    (dict(emissions=np.array([[1.5, -0.5, 0], [0, 1, 0], [0, 0, 1]])), "emissions must be finite and ≥ 0"),
    (dict(initial=[0.5, 0.4, 0.0]), "initial must sum to 1"),
    (dict(initial=[0.5, 0.5]), r"initial must have shape \(3,\)"),
    (dict(initial=["a", "b", "c"]), "initial must be a real array"),
])
def test_bad_construction_raises_naming_the_argument(kwargs, match):
    args = dict(vocab_size=3, d_model=4)
    args.update(kwargs)
    exc = TypeError if "real array" in match else ValueError
    with pytest.raises(exc, match=match):
        LatentAlignmentSource(args.pop("vocab_size"), args.pop("d_model"), **args)


def test_bad_calls_raise_naming_the_argument():
    src = _small()
    ids = jnp.zeros((2, 4), jnp.int32)
    with pytest.raises(ValueError, match="targets must have the shape of ids"):
        src.log_likelihood(ids, jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="targets"):
        src.posterior(ids, jnp.full((2, 4), 3, jnp.int32))  # token 3 outside V = 3
    with pytest.raises(TypeError, match="ids"):
        src.conditional(jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="split must be one of"):
        src.batch(jax.random.key(0), 2, 3, split="test")
    with pytest.raises(ValueError, match="seq_len must be an int ≥ 1"):
        src.batch(jax.random.key(0), 2, 0)
    with pytest.raises(ValueError, match="info\\['kind'\\] must be 'latent-alignment'"):
        LatentAlignmentSource.from_info({"kind": "markov"})


# --------------------------------------------------------------------------------------------------
# experiments.latent_alignment: every verdict passes on real inputs and fails on a perturbed one
# --------------------------------------------------------------------------------------------------

from experiments import latent_alignment as LA  # noqa: E402


def test_verdict_ordering_fails_when_perplexities_are_swapped():
    # own held-out NLLs measured at --quick (alignment source, 2 seeds)
    nll = {"soft": [1.484, 1.473], "marginal_attention": [1.454, 1.427]}
    assert LA.verdict_ordering(nll, "marginal_attention", "soft", 0.02, "alignment")["passed"]
    swapped = {"soft": nll["marginal_attention"], "marginal_attention": nll["soft"]}
    assert not LA.verdict_ordering(swapped, "marginal_attention", "soft", 0.02, "alignment")["passed"]
    one_seed_reversed = {"soft": [1.484, 1.40], "marginal_attention": [1.454, 1.427]}
    assert not LA.verdict_ordering(one_seed_reversed, "marginal_attention", "soft", 0.02, "alignment")["passed"]


def _source_and_heldout(n=256, T=16):
    src = LatentAlignmentSource(8, 8, seed=4)
    b = jax.device_get(jax.jit(lambda k: src.batch(k, n, T))(jax.random.key(2)))
    return src, b["tokens"], np.asarray(b["entropy"], np.float64)


def _per_seq_stats(x):
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def test_verdict_floor_and_source_consistency_on_the_source_itself():
    src, tok, H = _source_and_heldout()
    nll = -np.asarray(src.log_likelihood(jnp.asarray(tok[:, :-1]), jnp.asarray(tok[:, 1:])), np.float64)
    # a model equal to the source: excess ~ 0 within its SE (floor passes), consistency passes
    ex, se = _per_seq_stats((nll - H).mean(-1))
    assert LA.verdict_floor([ex], [se], "alignment")["passed"]
    assert LA.verdict_source_consistency(nll.mean(), H.mean(), se, "alignment")["passed"]
    # an unnormalized 'likelihood' (every probability doubled) goes below the floor: caught
    ex_bad, se_bad = _per_seq_stats((nll - math.log(2) - H).mean(-1))
    assert not LA.verdict_floor([ex_bad], [se_bad], "alignment")["passed"]
    # soft mixing in logit space is not this source: its likelihood no longer matches the entropy field
    logits = np.einsum("bij,bjv->biv", np.exp(np.asarray(src.log_alignment(jnp.asarray(tok[:, :-1])), np.float64)),
                       np.log(src.emissions)[tok[:, :-1]])
    logq = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    soft_nll = -np.take_along_axis(logq, tok[:, 1:, None], -1)[..., 0]
    _, se_s = _per_seq_stats((soft_nll - H).mean(-1))
    assert not LA.verdict_source_consistency(soft_nll.mean(), H.mean(), se_s, "alignment")["passed"]


def test_verdict_q_closer_than_uniform_fails_for_a_uniform_q():
    src, tok, _ = _source_and_heldout()
    ids, tg = jnp.asarray(tok[:, :-1]), jnp.asarray(tok[:, 1:])
    post = np.asarray(src.posterior(ids, tg), np.float64)
    T = post.shape[1]
    uniform = np.broadcast_to(np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None], post.shape)
    prior = np.exp(np.asarray(src.log_alignment(ids), np.float64)) * np.tril(np.ones((T, T)))
    kl_u = LA._kl_rows(uniform, post).mean()
    # the source's own alignment prior (the best Q that does not see the target) passes
    assert LA.verdict_q_closer_than_uniform([LA._kl_rows(prior, post).mean()] * 2, kl_u, 0.05, "Q")["passed"]
    assert not LA.verdict_q_closer_than_uniform([kl_u, kl_u], kl_u, 0.05, "Q")["passed"]


def test_verdict_posterior_calibration_passes_on_the_drawn_alignment_and_fails_for_the_prior():
    src = LatentAlignmentSource(8, 8, seed=4)
    b = jax.device_get(jax.jit(lambda k: src.batch(k, 256, 16))(jax.random.key(2)))
    tok, J = b["tokens"], np.asarray(b["alignment"])
    ids, tg = jnp.asarray(tok[:, :-1]), jnp.asarray(tok[:, 1:])
    T = J.shape[1]

    logE = np.log(src.emissions)[tok[:, None, :-1], tok[:, 1:, None]]  # ln E[x_j, x_{i+1}], [N, T, T]

    def stats(q):  # per-sequence means of ln E at the drawn J and under q — the verdict compares them
        at_drawn = np.take_along_axis(logE, J[:, :, None], -1)[..., 0].mean(-1)
        return at_drawn, np.sum(np.where(q > 0, q * logE, 0), -1).mean(-1)

    post = np.asarray(src.posterior(ids, tg), np.float64)
    assert LA.verdict_posterior_calibration(*stats(post))["passed"]
    prior = np.exp(np.asarray(src.log_alignment(ids), np.float64)) * np.tril(np.ones((T, T)))
    assert not LA.verdict_posterior_calibration(*stats(prior))["passed"]  # Bayes' rule without the emission


def test_decoding_verdicts_fail_for_a_random_and_for_a_peeking_decoder():
    src, tok, _ = _source_and_heldout()
    ids, tg = tok[:, :-1], tok[:, 1:]
    bayes = np.asarray(src.bayes_decode(jnp.asarray(ids)))
    acc_b = float(np.mean(bayes == tg))
    rng = np.random.default_rng(0)
    random = rng.integers(0, src.vocab_size, tg.shape)

    def se(dec):
        return _per_seq_stats(((dec == tg).astype(float) - (bayes == tg)).mean(-1))[1]

    assert LA.verdict_bayes_optimal([acc_b], acc_b, se(bayes), "bayes")["passed"]
    assert LA.verdict_decoding_learned([acc_b, acc_b], acc_b, src.vocab_size, "bayes")["passed"]
    acc_r = float(np.mean(random == tg))
    assert not LA.verdict_decoding_learned([acc_b, acc_r], acc_b, src.vocab_size, "random")["passed"]
    peeking = np.where(rng.random(tg.shape) < 0.5, tg, bayes)  # sees the target half of the time
    acc_p = float(np.mean(peeking == tg))
    assert not LA.verdict_bayes_optimal([acc_b, acc_p], acc_b, se(peeking), "peeking")["passed"]


@pytest.mark.slow
def test_objective_losses_equal_make_objective():
    from flax import nnx

    from tvvar.model import ModelConfig, TVVARModel
    from tvvar.theory.transformer import elbo as E

    model = TVVARModel(ModelConfig.pure(6, 8, "attention", mixer={"num_heads": 2}), rngs=nnx.Rngs(0))
    tok = jnp.asarray(np.random.default_rng(0).integers(0, 6, (3, 9)), jnp.int32)
    got = np.asarray(LA.objective_losses(model, tok))
    want = [float(E.make_objective(k)(model, {"tokens": tok}, None)[0]) for k in LA.OBJECTIVES]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_the_source_is_registered_by_name_and_rebuilt_from_info():
    from tvvar.sources import make_source, source_from_info

    src = make_source("latent-alignment", vocab_size=5, d_model=4, seed=3)
    assert isinstance(src, LatentAlignmentSource)
    again = source_from_info(src.info())
    assert isinstance(again, LatentAlignmentSource) and again.info() == src.info()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_target_no_position_can_emit_is_minus_inf_on_every_row_with_the_prior_as_posterior(dtype):
    """Issue 29 §3.5: token 2 is never emitted (column 2 of E is zero). The old code gave ≈ −3.4e38 on inner
    rows (the j > i fill won the log-sum-exp) and −inf on the last, and posterior rows summing to 0 or NaN."""
    E = np.array([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    src = LatentAlignmentSource(3, 4, seed=3, emissions=E)
    x = np.array([[0, 1, 0, 1, 2], [1, 0, 1, 1, 0]], np.int32)
    ids, tg = jnp.asarray(x[:, :-1]), jnp.asarray(x[:, 1:])
    tg = tg.at[0, :].set(2)  # every row of sequence 0 asks for the impossible token
    with jax.enable_x64(dtype == jnp.float64):
        ll = np.asarray(src.log_likelihood(ids, tg, dtype=dtype), np.float64)
        ll_jit = np.asarray(jax.jit(lambda a, b: src.log_likelihood(a, b, dtype=dtype))(ids, tg), np.float64)
        post = np.asarray(src.posterior(ids, tg, dtype=dtype), np.float64)
        prior = np.exp(np.asarray(src.log_alignment(ids, dtype=dtype), np.float64)) * np.tril(np.ones((4, 4)))
    assert np.all(ll[0] == -np.inf) and np.all(ll_jit[0] == -np.inf)
    assert np.all(np.isfinite(ll[1]))  # the possible sequence is untouched
    assert np.all(np.isfinite(post))
    np.testing.assert_allclose(post.sum(-1), 1.0, rtol=0, atol=1e-6 if dtype == jnp.float32 else 1e-12)
    np.testing.assert_allclose(post[0], prior[0], rtol=0, atol=1e-6 if dtype == jnp.float32 else 1e-12)
    assert np.all(np.triu(post, 1) == 0)
