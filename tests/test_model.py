"""tvvar.model: embeddings on the sphere → L × [mixer + Ψ] → tied readout (Eq. 44)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tvvar.core import mix_dense
from tvvar.model import ModelConfig, TVVARModel


def _ids(B, T, V, seed=0):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, V)


def test_pure_model_is_exactly_eq44_in_float64():
    """ModelConfig.pure: logits_i = ũᵀ Σ_j A[i, j] u_j / Ξ with ũ the unit token vectors."""
    with jax.enable_x64(True):
        cfg = ModelConfig.pure(7, 6, "bilinear_attention", xi=0.7, param_dtype="float64", dtype="float64",
                               mixer={"num_heads": 2})
        m = TVVARModel(cfg, rngs=nnx.Rngs(0))
        ids = _ids(2, 5, 7)
        u = m.embed_tokens(ids)
        U = m.embed.vectors()
        h = mix_dense(m.blocks[0].mixer.coefficients(u), u)
        expect = jnp.einsum("btd,vd->btv", h, U) / 0.7
        np.testing.assert_allclose(np.asarray(m(ids)), np.asarray(expect), atol=1e-10, rtol=1e-10)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(u), axis=-1), 1.0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["attention", "bilinear_attention", "dense"])
def test_every_decomposition_plugs_in_and_the_model_is_causal(name):
    opts = {"max_len": 16} if name == "dense" else {"num_heads": 2}
    m = TVVARModel(ModelConfig(13, 8, num_layers=2, decomposition=name, mixer=opts), rngs=nnx.Rngs(1))
    ids = _ids(2, 9, 13)
    logits = m(ids)
    assert logits.shape == (2, 9, 13) and logits.dtype == jnp.float32
    assert bool(jnp.isfinite(logits).all())
    # changing tokens after position 4 leaves rows 0..4 exactly unchanged
    ids2 = ids.at[:, 5:].set((ids[:, 5:] + 1) % 13)
    np.testing.assert_array_equal(np.asarray(m(ids2)[:, :5]), np.asarray(logits[:, :5]))
    assert not np.array_equal(np.asarray(m(ids2)[:, 5:]), np.asarray(logits[:, 5:]))


@pytest.mark.slow
def test_bidirectional_model_sees_the_future():
    m = TVVARModel(ModelConfig(5, 8, num_layers=1, mask="bidirectional"), rngs=nnx.Rngs(0))
    ids = _ids(1, 6, 5)
    ids2 = ids.at[:, -1].set((ids[:, -1] + 1) % 5)
    assert not np.allclose(np.asarray(m(ids2)[:, 0]), np.asarray(m(ids)[:, 0]))


@pytest.mark.slow
def test_jit_equals_eager_and_bf16_compute_gives_float32_logits():
    cfg = ModelConfig(11, 16, num_layers=2, max_len=32)
    m = TVVARModel(cfg, rngs=nnx.Rngs(0))
    ids = _ids(2, 10, 11)
    graphdef, state = nnx.split(m)
    jitted = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, ids)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(m(ids)), atol=1e-5, rtol=1e-5)
    m16 = TVVARModel(cfg.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    out = m16(ids)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(m(ids)), atol=0.25)


@pytest.mark.slow
def test_gradients_reach_every_parameter():
    m = TVVARModel(ModelConfig(9, 8, num_layers=2, tied=False), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(m)
    ids = _ids(2, 6, 9)

    def loss(s):
        logits = nnx.merge(graphdef, s)(ids[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], -1))

    grads = jax.grad(loss)(state)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert bool(jnp.isfinite(g).all()), path
        assert float(jnp.abs(g).max()) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_bad_config_and_input_are_refused():
    with pytest.raises(ValueError, match="unknown decomposition 'lstm'"):
        ModelConfig(5, 8, decomposition="lstm")
    with pytest.raises(ValueError, match="unknown psi"):
        ModelConfig(5, 8, psi="moe")
    with pytest.raises(ValueError, match="xi"):
        ModelConfig(5, 8, xi=0)
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig(1, 8)
    with pytest.raises(ValueError, match="mask"):
        ModelConfig(5, 8, mask="left")
    m = TVVARModel(ModelConfig(5, 8, num_layers=1, max_len=4), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ids must have shape \[B, T\]"):
        m(jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, V=5\)"):
        m(jnp.array([[0, 5]]))
    with pytest.raises(TypeError, match="integer"):
        m(jnp.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="exceeds max_len=4"):
        m(jnp.zeros((1, 5), jnp.int32))


def test_config_refuses_nonfinite_xi_fractional_max_len_and_unknown_options():
    with pytest.raises(ValueError, match="xi .* finite number > 0, got inf"):
        ModelConfig(5, 8, xi=float("inf"))
    with pytest.raises(ValueError, match="xi"):
        ModelConfig(5, 8, xi=float("nan"))
    with pytest.raises(ValueError, match="max_len must be an int ≥ 1 or None, got 2.5"):
        ModelConfig(5, 8, max_len=2.5)
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig(True, 8)
    with pytest.raises(ValueError, match=r"mixer: unknown option\(s\) \['num_head'\] for decomposition 'attention'; "
                                         r"valid options: .*num_heads"):
        ModelConfig(5, 8, mixer={"num_head": 2})
    # a heads option on a decomposition without heads is refused, not ignored
    with pytest.raises(ValueError, match=r"\['num_heads'\] for decomposition 'dense'"):
        ModelConfig(5, 8, decomposition="dense", mixer={"num_heads": 2})
    with pytest.raises(ValueError, match=r"psi_options: unknown option\(s\) \['width'\] for psi 'ffn'; "
                                         r"valid options: d_ff"):
        ModelConfig(5, 8, psi_options={"width": 3})
    with pytest.raises(TypeError, match="mixer .* must be a dict"):
        ModelConfig(5, 8, mixer=[("num_heads", 2)])
    ModelConfig(5, 8, decomposition="ssm", mixer={"num_heads": 2, "state_size": 4})  # valid options pass
    for bad in (0.0, -2.0, float("nan"), True):
        with pytest.raises(ValueError, match=f"embed_scale must be a finite number > 0 or None, got {bad!r}"):
            ModelConfig(5, 8, embed_scale=bad)
    with pytest.raises(ValueError, match="norm_position must be 'pre' or 'post', got 'middle'"):
        ModelConfig(5, 8, norm_position="middle")
    with pytest.raises(ValueError, match="parallel_residual needs residual=True, norm_position='pre'"):
        ModelConfig(5, 8, parallel_residual=True, norm_position="post")
    with pytest.raises(ValueError, match=r"rotary_dim must be an even int in \[2, head_dim=4\] or None, got 3"):
        TVVARModel(ModelConfig(5, 8, mixer={"num_heads": 2, "rotary": True, "rotary_dim": 3}), rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_embed_scale_multiplies_the_token_vectors_in_the_full_and_the_cached_forward():
    """Gemma's √D: embed_tokens is the unscaled model's times the constant, and decode_step (the cache path) agrees
    with the full forward row by row."""
    cfg = ModelConfig(7, 8, num_layers=1, mixer={"num_heads": 2}, embedding="plain", psi="geglu", norm="rms_offset")
    scaled = TVVARModel(cfg.replace(embed_scale=3.0), rngs=nnx.Rngs(0))
    plain = TVVARModel(cfg, rngs=nnx.Rngs(0))
    ids = jnp.array([[1, 4, 2, 6, 0]], jnp.int32)
    np.testing.assert_allclose(np.asarray(scaled.embed_tokens(ids)), 3.0 * np.asarray(plain.embed_tokens(ids)),
                               rtol=1e-6)
    assert not np.allclose(np.asarray(scaled(ids)), np.asarray(plain(ids)), atol=1e-3)
    full = np.asarray(scaled(ids))
    cache = scaled.init_cache(1, 5)
    for t in range(5):
        logits, cache = scaled.decode_step(cache, ids[:, t])
        np.testing.assert_allclose(np.asarray(logits), full[:, t], atol=1e-5)


def test_empty_sequences_and_traced_out_of_range_ids():
    m = TVVARModel(ModelConfig(5, 8, num_layers=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ids must hold at least one token \(T ≥ 1"):
        m(jnp.zeros((2, 0), jnp.int32))
    with pytest.raises(ValueError, match=r"ids_t must have shape \[B\]"):
        m.decode_step(m.init_cache(1, 4), jnp.zeros((1, 1), jnp.int32))
    # documented behaviour under jit: the row of an id ≥ V is NaN (nothing can raise on a tracer)
    fwd = nnx.jit(lambda mm, x: mm(x))
    assert bool(jnp.isnan(fwd(m, jnp.array([[1, 7, 2]]))[0, 1]).all())
    assert bool(jnp.isfinite(fwd(m, jnp.array([[1, 4, 2]]))).all())
