"""Theorem 5: softmax-bilinear attention is a TV-VAR, A[i, j] = Σ_h π^h[i, j] A_h."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tvvar.core import build, mix_dense
from tvvar.decompositions.attention import Attention, BilinearAttention
from tvvar.testing import check_decomposition, plain_attention


def _u(B, T, D, dtype, seed=0):
    u = jax.random.normal(jax.random.key(seed), (B, T, D), dtype)
    return u / jnp.linalg.norm(u, axis=-1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-10)])
def test_tvvar_form_equals_plain_multihead_attention(mask, dtype, tol):
    """Both conversion directions agree with an independently written float64 QKV attention."""
    with jax.enable_x64(dtype == jnp.float64):
        att = Attention(12, mask=mask, rngs=nnx.Rngs(3), num_heads=3, head_dim=5, value_dim=4, d_out=7, dtype=dtype)
        u = _u(2, 9, 12, dtype)
        ref = plain_attention(np.asarray(u), *(np.asarray(w[...]) for w in (att.wq, att.wk, att.wv, att.wo)),
                              causal=mask == "causal")
        bil = att.to_bilinear()
        back = bil.factorize()
        for name, h in [("factorized fast path", att(u)), ("bilinear fast path", bil(u)),
                        ("TV-VAR coefficients", mix_dense(bil.coefficients(u), u)),
                        ("re-factorized", back(u))]:
            np.testing.assert_allclose(np.asarray(h), ref, atol=tol, rtol=tol, err_msg=name)


@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
def test_head_outputs_are_the_per_head_terms_of_the_mixer_float64(mask):
    """head_outputs(π, u)[:, :, h] = plain attention restricted to head h; their sum is the mixer."""
    with jax.enable_x64(True):
        att = Attention(12, mask=mask, rngs=nnx.Rngs(4), num_heads=3, head_dim=5, value_dim=4, d_out=7,
                        dtype=jnp.float64)
        bil = att.to_bilinear()
        u = _u(2, 9, 12, jnp.float64, seed=1)
        w = [np.asarray(p[...]) for p in (att.wq, att.wk, att.wv, att.wo)]
        for m in (att, bil):
            heads = np.asarray(m.head_outputs(m.pi(u), u))
            assert heads.shape == (2, 3, 9, 7)
            for h in range(3):
                ref = plain_attention(np.asarray(u), *(x[:, h:h + 1] for x in w[:3]), w[3][h:h + 1],
                                      causal=mask == "causal")
                np.testing.assert_allclose(heads[:, h], ref, atol=1e-10, rtol=0, err_msg=type(m).__name__)
            np.testing.assert_allclose(heads.sum(1), np.asarray(m(u)), atol=1e-10, rtol=0)


def test_factorize_then_bilinear_roundtrip_float64():
    with jax.enable_x64(True):
        bil = BilinearAttention(6, rngs=nnx.Rngs(0), num_heads=2, dtype=jnp.float64)
        att = bil.factorize()  # full-rank B needs K = D
        assert att.head_dim == 6
        np.testing.assert_allclose(np.asarray(att.bilinear_forms()), np.asarray(bil.B[...]), atol=1e-12)
        np.testing.assert_allclose(np.asarray(att.value_maps()), np.asarray(bil.A[...]), atol=1e-12)
        u = _u(2, 5, 6, jnp.float64)
        np.testing.assert_allclose(np.asarray(att(u)), np.asarray(bil(u)), atol=1e-10)


def test_factorize_refuses_when_rank_exceeds_head_dim():
    bil = BilinearAttention(6, rngs=nnx.Rngs(0), num_heads=1)
    with pytest.raises(ValueError, match="head_dim=2 is smaller than rank"):
        bil.factorize(head_dim=2)


def test_low_rank_b_factorizes_exactly_at_its_rank():
    with jax.enable_x64(True):
        att = Attention(8, rngs=nnx.Rngs(1), num_heads=2, head_dim=3, dtype=jnp.float64)
        back = att.to_bilinear().factorize(rtol=1e-9)
        assert back.head_dim == 3 and back.value_dim == 3
        u = _u(1, 6, 8, jnp.float64)
        np.testing.assert_allclose(np.asarray(back(u)), np.asarray(att(u)), atol=1e-10)


def test_pi_is_a_distribution_over_the_support_and_b_is_asymmetric():
    att = Attention(8, rngs=nnx.Rngs(0), num_heads=2)
    u = _u(3, 7, 8, jnp.float32)
    pi = np.asarray(att.pi(u))
    assert pi.shape == (3, 2, 7, 7)
    assert (pi >= 0).all()
    np.testing.assert_allclose(pi.sum(-1), 1.0, atol=1e-6)
    assert np.all(pi[..., np.triu_indices(7, 1)[0], np.triu_indices(7, 1)[1]] == 0)
    B = np.asarray(att.bilinear_forms())
    assert np.abs(B - np.swapaxes(B, 1, 2)).max() > 1e-2  # W_q ≠ W_k ⇒ B ≠ Bᵀ


def test_scale_is_explicit_in_b():
    att = Attention(4, rngs=nnx.Rngs(0), num_heads=1, head_dim=4)
    wq, wk = np.asarray(att.wq[...])[:, 0], np.asarray(att.wk[...])[:, 0]
    np.testing.assert_allclose(np.asarray(att.bilinear_forms())[0], wq @ wk.T / 2.0, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["attention", "bilinear_attention"])
@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
def test_kit_passes(name, mask):
    check_decomposition(lambda rngs, dtype: build(name, 8, rngs=rngs, mask=mask, dtype=dtype, num_heads=2))


def test_fast_path_never_builds_the_coefficient_tensor():
    """No intermediate of the fast path's jaxpr has the O(T²D²) size of [B, T, T, D, D]."""
    B, T, D = 1, 32, 16
    att = Attention(D, rngs=nnx.Rngs(0), num_heads=2)
    graphdef, state = nnx.split(att)
    jaxpr = jax.make_jaxpr(lambda s, u: nnx.merge(graphdef, s)(u))(state, jnp.zeros((B, T, D)))
    sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars]
    assert max(sizes) < B * T * T * D * D // 8


def test_bad_input_is_refused_with_a_named_error():
    att = Attention(8, rngs=nnx.Rngs(0), num_heads=2)
    with pytest.raises(ValueError, match="u must have shape"):
        att(jnp.zeros((4, 8)))
    with pytest.raises(ValueError, match="width D=8"):
        att(jnp.zeros((1, 4, 5)))
    with pytest.raises(TypeError, match="floating"):
        att(jnp.zeros((1, 4, 8), jnp.int32))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        Attention(10, rngs=nnx.Rngs(0), num_heads=3)
    with pytest.raises(ValueError, match="mask must be one of"):
        build("attention", 8, rngs=nnx.Rngs(0), mask="sideways")
    with pytest.raises(ValueError, match="unknown decomposition 'transformer'"):
        build("transformer", 8, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
def test_xla_implementation_equals_the_einsum_path(mask, dtype, tol):
    """implementation='xla' against the einsum path and the float64 QKV reference, in both dtypes."""
    with jax.enable_x64(dtype == jnp.float64):
        ein = Attention(12, mask=mask, rngs=nnx.Rngs(4), num_heads=3, dtype=dtype)
        xla = Attention.from_weights(ein.wq[...], ein.wk[...], ein.wv[...], ein.wo[...], mask=mask,
                                     implementation="xla")
        u = _u(2, 9, 12, dtype, seed=1)
        ref = plain_attention(np.asarray(u), *(np.asarray(w[...]) for w in (ein.wq, ein.wk, ein.wv, ein.wo)),
                              causal=mask == "causal")
        h = xla(u)
        assert h.dtype == dtype
        np.testing.assert_allclose(np.asarray(h), np.asarray(ein(u)), atol=tol, rtol=tol)
        np.testing.assert_allclose(np.asarray(h), ref, atol=tol, rtol=tol)


def test_every_dense_fast_path_contraction_asks_for_highest_precision():
    """DenseTVVAR's __call__ and step were the fast paths without precision=HIGHEST (TF32/bf16 passes on
    accelerators); the jaxpr shows the precision of every dot_general."""
    m = build("dense", 4, rngs=nnx.Rngs(0), max_len=5)
    u = _u(1, 5, 4, jnp.float32)
    cache = m.init_cache(1, 5)

    def precisions(fn, *args):
        eqns = jax.make_jaxpr(fn)(*args).jaxpr.eqns
        return [e.params["precision"] for e in eqns if e.primitive.name == "dot_general"]

    for ps in (precisions(m, u), precisions(lambda c, x: m.step(c, x), cache, u[:, 0])):
        assert ps and all(p is not None and jax.lax.Precision.HIGHEST in tuple(p) for p in ps), ps
