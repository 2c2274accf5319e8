"""Definition 13 core: mixing, registry, token vectors on the sphere, readout (Eq. 44), argsoftmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from tvvar import core
from tvvar.core import Mixer, Readout, SphereEmbedding, argsoftmax, build, mix_dense, register
from tvvar.testing import check_causality, check_decomposition


def test_mix_dense_matches_a_hand_computed_sum():
    A = np.zeros((1, 2, 2, 1, 2))
    A[0, 0, 0] = [[1.0, 2.0]]
    A[0, 1, 0] = [[3.0, 0.0]]
    A[0, 1, 1] = [[0.0, -1.0]]
    u = np.array([[[1.0, 1.0], [2.0, 5.0]]])
    # h_0 = 1·1 + 2·1 = 3;  h_1 = 3·1 + (−1)·5 = −2
    np.testing.assert_array_equal(np.asarray(mix_dense(jnp.asarray(A), jnp.asarray(u)))[0, :, 0], [3.0, -2.0])


def test_mix_dense_refuses_inconsistent_shapes():
    with pytest.raises(ValueError, match="A must have shape"):
        mix_dense(jnp.zeros((2, 2, 1, 1)), jnp.zeros((1, 2, 1)))
    with pytest.raises(ValueError, match="u must have shape"):
        mix_dense(jnp.zeros((1, 3, 3, 2, 2)), jnp.zeros((1, 2, 2)))


def test_support_masks():
    np.testing.assert_array_equal(np.asarray(core.support_mask("causal", 3)), np.tril(np.ones((3, 3), bool)))
    assert bool(core.support_mask("bidirectional", 3).all())


def test_registry_lists_builtins_and_refuses_duplicates():
    assert {"attention", "bilinear_attention", "dense"} <= set(core.available())
    with pytest.raises(ValueError, match="already registered"):
        register("attention")(type("Other", (Mixer,), {}))
    with pytest.raises(TypeError, match="Mixer subclass"):
        register("not_a_mixer")(int)


class _Leaky(Mixer):
    """A deliberately non-causal toy: h_i = Σ_j u_j over ALL j, while claiming mask='causal'."""

    def __init__(self, d, *, mask="causal", rngs=None, dtype=jnp.float32):
        self.d_in = self.d_out = d
        self.mask = mask

    def coefficients(self, u):
        B, T, D = u.shape
        return jnp.broadcast_to(jnp.eye(D, dtype=u.dtype), (B, T, T, D, D))

    def __call__(self, u):
        return jnp.broadcast_to(jnp.sum(u, axis=1, keepdims=True), u.shape)


def test_kit_catches_a_non_causal_decomposition():
    with pytest.raises(AssertionError, match="support"):
        check_decomposition(lambda rngs, dtype: _Leaky(3, dtype=dtype), dtypes=(jnp.float32,))
    u = jax.random.normal(jax.random.key(0), (1, 4, 3))
    with pytest.raises(AssertionError, match="causality"):
        check_causality(_Leaky(3), u)


class _WrongLaw(_Leaky):
    def __call__(self, u):
        return 2.0 * mix_dense(self.coefficients(u), u)


def test_kit_catches_a_broken_law():
    with pytest.raises(AssertionError, match="law"):
        check_decomposition(lambda rngs, dtype: _WrongLaw(3, mask="bidirectional"), dtypes=(jnp.float32,))


def test_tied_token_vectors_have_unit_norm_and_readout_is_eq44():
    emb = SphereEmbedding(11, 6, rngs=nnx.Rngs(0))
    U = np.asarray(emb.vectors())
    np.testing.assert_allclose(np.linalg.norm(U, axis=-1), 1.0, rtol=1e-6)
    ro = Readout(11, 6, rngs=nnx.Rngs(1), embedding=emb, xi=0.5)
    assert ro.tied and ro.embedding is emb
    h = jax.random.normal(jax.random.key(2), (3, 6))
    np.testing.assert_allclose(np.asarray(ro(h)), np.asarray(h) @ U.T / 0.5, rtol=1e-5, atol=1e-5)
    untied = Readout(11, 6, rngs=nnx.Rngs(1), xi=1.0)
    assert not untied.tied
    np.testing.assert_allclose(np.linalg.norm(np.asarray(untied.embedding.vectors()), axis=-1), 1.0, rtol=1e-6)
    # token_logits reads the same logits at given ids without computing the others
    ids = jnp.array([[0, 10], [3, 3], [7, 1]])
    hh = jnp.broadcast_to(h[:, None], (3, 2, 6))
    np.testing.assert_allclose(np.asarray(ro.token_logits(hh, ids)),
                               np.take_along_axis(np.asarray(ro(hh)), np.asarray(ids)[..., None], -1)[..., 0],
                               rtol=1e-5, atol=1e-5)


def test_readout_and_embedding_refuse_bad_input():
    with pytest.raises(ValueError, match="xi"):
        Readout(4, 3, rngs=nnx.Rngs(0), xi=0.0)
    emb = SphereEmbedding(4, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, V=4\)"):
        emb(jnp.array([[0, 4]]))
    with pytest.raises(ValueError, match=r"ids must lie"):
        emb(jnp.array([[-1, 0]]))
    with pytest.raises(TypeError, match="integer"):
        emb(jnp.array([[0.0, 1.0]]))


def test_greedy_equals_argmax_and_is_the_zero_temperature_limit():
    logits = jax.random.normal(jax.random.key(0), (50, 7))
    np.testing.assert_array_equal(np.asarray(argsoftmax(None, logits, 0.0)), np.asarray(jnp.argmax(logits, -1)))
    cold = argsoftmax(jax.random.key(1), logits, 1e-4)
    np.testing.assert_array_equal(np.asarray(cold), np.asarray(jnp.argmax(logits, -1)))


@pytest.mark.parametrize("xi", [0.5, 1.0, 2.0])
def test_sampled_frequencies_match_softmax_chi_square(xi):
    logits = jnp.array([1.0, 0.2, -0.5, 2.0, 0.0])
    n = 40_000
    draws = argsoftmax(jax.random.key(7), jnp.broadcast_to(logits, (n, 5)), xi)
    counts = np.bincount(np.asarray(draws), minlength=5)
    p = np.asarray(jax.nn.softmax(logits / xi), np.float64)
    p /= p.sum()
    chi2, pval = stats.chisquare(counts, n * p)
    assert pval > 1e-3, (counts, n * p, chi2)


def test_top_k_and_top_p_restrict_the_support():
    logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
    n = 5000
    key = jax.random.key(3)
    L = jnp.broadcast_to(logits, (n, 4))
    k2 = np.asarray(argsoftmax(key, L, 1.0, top_k=2))
    assert set(np.unique(k2)) == {0, 1}
    # nucleus 0.75: smallest prefix with mass ≥ 0.75 is {0, 1} (0.5 + 0.3)
    p75 = np.asarray(argsoftmax(key, L, 1.0, top_p=0.75))
    assert set(np.unique(p75)) == {0, 1}
    p1 = np.asarray(argsoftmax(key, L, 1.0, top_p=0.4))
    assert set(np.unique(p1)) == {0}
    # the restricted draw is the renormalized softmax: P(0 | top-2) = 0.5 / 0.8
    assert abs((k2 == 0).mean() - 0.625) < 4 * np.sqrt(0.625 * 0.375 / n)


def test_argsoftmax_noise_is_float32_for_bf16_logits():
    logits = jnp.array([[0.0, 3.0, 1.0]], jnp.bfloat16)
    out = argsoftmax(jax.random.key(0), logits, 1.0)
    assert out.shape == (1,)


def test_argsoftmax_refuses_bad_arguments():
    logits = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="temperature"):
        argsoftmax(jax.random.key(0), logits, -1.0)
    with pytest.raises(ValueError, match="top_k"):
        argsoftmax(jax.random.key(0), logits, 1.0, top_k=5)
    with pytest.raises(ValueError, match="top_p"):
        argsoftmax(jax.random.key(0), logits, 1.0, top_p=0.0)
    with pytest.raises(ValueError, match="key"):
        argsoftmax(None, logits, 1.0)


def test_dense_decomposition_kit_and_max_len():
    summary = check_decomposition(lambda rngs, dtype: build("dense", 4, rngs=rngs, dtype=dtype, max_len=8))
    # the kit's summary: the largest discrepancy of each check, per dtype (exact zeros where the law says 0)
    assert set(summary) == {"float32", "float64"}
    assert set(summary["float64"]) == {"law", "gradients", "support", "causality", "batch_independence", "jit"}
    assert summary["float64"]["law"] < 1e-12 and summary["float64"]["gradients"] < 1e-12
    assert summary["float64"]["support"] == summary["float64"]["causality"] == 0.0
    assert summary["float32"]["law"] < 1e-5  # float32 rounding
    check_decomposition(lambda rngs, dtype: build("dense", 4, rngs=rngs, dtype=dtype, max_len=8, mask="bidirectional"),
                        dtypes=(jnp.float32,))
    m = build("dense", 4, rngs=nnx.Rngs(0), max_len=5)
    with pytest.raises(ValueError, match="T=6 exceeds the dense decomposition's max_len=5"):
        m(jnp.zeros((1, 6, 4)))


def test_token_logits_refuses_out_of_range_ids_and_never_clamps():
    ro = Readout(4, 3, rngs=nnx.Rngs(0))
    h = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, V=4\)"):
        ro.token_logits(h, jnp.array([0, 4]))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, V=4\)"):
        ro.token_logits(h, jnp.array([-1, 0]))
    with pytest.raises(TypeError, match="integer"):
        ro.token_logits(h, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="must broadcast to h.shape"):
        ro.token_logits(h, jnp.array([0, 1, 2]))
    # traced ids cannot raise: an out-of-range id reads NaN, not the last row's logit (the old clamp)
    out = jax.jit(ro.token_logits)(h, jnp.array([3, 4]))
    assert np.isfinite(float(out[0])) and np.isnan(float(out[1]))


def test_check_token_ids_names_the_argument_rank_and_empty_sequences():
    with pytest.raises(ValueError, match=r"prompt must have shape \[B, T\] \(rank 2\)"):
        core.check_token_ids(jnp.zeros((3,), jnp.int32), 5, name="prompt", ndim=2)
    with pytest.raises(ValueError, match=r"ids must hold at least one token \(T ≥ 1"):
        core.check_token_ids(jnp.zeros((2, 0), jnp.int32), 5, ndim=2)
    with pytest.raises(TypeError, match="ids must be an integer array"):
        core.check_token_ids([1, 2], 5)
    # a tracer passes (the range is unknowable there), so jitted callers still trace
    jax.jit(lambda x: core.check_token_ids(x, 5, ndim=2) or x)(jnp.full((1, 2), 9, jnp.int32))


def test_lecun_normal_is_the_initializer_and_glorot_a_deprecated_alias():
    key = jax.random.key(3)
    w = core.lecun_normal(key, (4000, 50), 50, jnp.float32)
    assert abs(float(jnp.var(w)) - 1 / 50) < 0.05 / 50  # N(0, 1/fan_in): fan_in only, not Glorot's 2/(in+out)
    with pytest.warns(DeprecationWarning, match="lecun_normal"):
        w2 = core.glorot(key, (4000, 50), 50, jnp.float32)
    np.testing.assert_array_equal(np.asarray(w), np.asarray(w2))


def test_lru_cache_is_bounded_and_evicts_the_least_recently_used():
    c = core.LRUCache(2)
    calls = []
    make = lambda k: (lambda: calls.append(k) or k)  # noqa: E731
    for k in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
        c.get_or_create(k, make(k))
    assert len(c) == 2 and "a" in c and "c" in c and "b" not in c
    assert calls == ["a", "b", "c"]
    with pytest.raises(ValueError, match="maxsize"):
        core.LRUCache(0)


def test_build_refuses_unknown_options_with_the_valid_list():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_heads'\] for decomposition 'dense'; "
                                         r"valid options: d_out, max_len"):
        build("dense", 4, rngs=nnx.Rngs(0), num_heads=2)
    assert "num_heads" in core.mixer_options("attention") and "implementation" in core.mixer_options("attention")
    # options forwarded by **kw up the MRO count as the subclass's own
    assert {"expand", "d_conv", "state_size", "chunk_size"} <= set(core.mixer_options("mamba"))
    assert {"state_size", "num_heads"} <= set(core.mixer_options("ssm_lti"))
    assert "rngs" not in core.mixer_options("ssm") and "mask" not in core.mixer_options("ssm")
