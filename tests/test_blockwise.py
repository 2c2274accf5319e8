"""Blockwise (flash-style) attention: the same values and gradients as the einsum path, no [T, T] array."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tvvar.decompositions import attention as attention_module
from tvvar.decompositions.attention import Attention
from tvvar.decompositions.blockwise import blockwise_attention
from tvvar.testing import check_decomposition, plain_attention


def _qkv(B, T, H, K, Kv, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q, k = (jax.random.normal(kk, (B, T, H, K), dtype) for kk in ks[:2])
    v = jax.random.normal(ks[2], (B, T, H, Kv), dtype)
    w = jax.random.normal(ks[3], (B, T, H, Kv), dtype)
    return q, k, v, w


def _einsum_attention(q, k, v, scale, causal):
    """The einsum path written out: softmax of all [T, T] scores, masked with -inf."""
    s = jnp.einsum("bihk,bjhk->bhij", q, k, precision="highest") * scale
    T = q.shape[1]
    if causal:
        s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf)
    return jnp.einsum("bhij,bjhk->bihk", jax.nn.softmax(s, -1), v, precision="highest")


@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T,block", [(8, 4), (7, 3), (9, 1), (5, 16), (11, 4)])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-10)])
def test_values_and_gradients_equal_the_einsum_path(causal, T, block, dtype, tol):
    """Dividing and non-dividing block sizes (padding + masking), one block, block 1; values and ∇q, ∇k, ∇v."""
    with jax.enable_x64(dtype == jnp.float64):
        q, k, v, w = _qkv(2, T, 3, 4, 5, dtype)
        fast = blockwise_attention(q, k, v, scale=0.5, causal=causal, block_size=block)
        ref = _einsum_attention(q, k, v, 0.5, causal)
        assert fast.shape == ref.shape and fast.dtype == dtype
        np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), atol=tol, rtol=tol)
        g_fast = jax.grad(lambda *a: jnp.sum(w * blockwise_attention(*a, scale=0.5, causal=causal,
                                                                     block_size=block)), (0, 1, 2))(q, k, v)
        g_ref = jax.grad(lambda *a: jnp.sum(w * _einsum_attention(*a, 0.5, causal)), (0, 1, 2))(q, k, v)
        for name, a, b in zip("qkv", g_fast, g_ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol, err_msg=f"d/d{name}")


@pytest.mark.slow
@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
def test_blockwise_attention_passes_the_decomposition_kit(mask):
    """The kit at T = 6 with block 4: padding, a masked diagonal tile, exact causality through the custom VJP."""
    check_decomposition(lambda rngs, dtype: Attention(8, mask=mask, rngs=rngs, num_heads=2, dtype=dtype,
                                                      implementation="blockwise", block_size=4))


@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
def test_blockwise_module_equals_plain_attention_float64(mask):
    with jax.enable_x64(True):
        att = Attention(12, mask=mask, rngs=nnx.Rngs(3), num_heads=3, head_dim=5, value_dim=4, d_out=7,
                        dtype=jnp.float64, implementation="blockwise", block_size=4)
        u = jax.random.normal(jax.random.key(1), (2, 10, 12), jnp.float64)
        ref = plain_attention(np.asarray(u), *(np.asarray(p[...]) for p in (att.wq, att.wk, att.wv, att.wo)),
                              causal=mask == "causal")
        np.testing.assert_allclose(np.asarray(att(u)), ref, atol=1e-10, rtol=0)


def test_causal_gradient_is_exactly_zero_for_future_keys():
    q, k, v, _ = _qkv(1, 10, 2, 4, 4, jnp.float32)
    # output row 3 must not depend on keys/values at 4..9: exact zeros, not small numbers
    g = jax.grad(lambda k, v: jnp.sum(blockwise_attention(q, k, v, scale=0.5, block_size=4)[:, 3]), (0, 1))(k, v)
    for x in g:
        assert np.all(np.asarray(x)[:, 4:] == 0.0)
        assert np.any(np.asarray(x)[:, :4] != 0.0)


def test_bf16_runs_its_softmax_in_float32():
    q, k, v, _ = _qkv(1, 12, 2, 8, 8, jnp.float32)
    out = blockwise_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), scale=0.3, block_size=5)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(_einsum_attention(q, k, v, 0.3, True)),
                               atol=5e-2)


def test_no_txt_array_in_the_compiled_forward_and_backward():
    """The temporary memory of forward+backward stays far below one [B, H, T, T] float32 score array."""
    B, T, H, K = 1, 1024, 2, 16
    q, k, v, w = _qkv(B, T, H, K, K, jnp.float32)

    def loss(impl):
        f = blockwise_attention if impl == "blockwise" else (
            lambda q, k, v, **kw: _einsum_attention(q, k, v, kw["scale"], True))
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(w * f(q, k, v, scale=0.25, block_size=128)), (0, 1, 2)))

    mem = {i: loss(i).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes for i in ("blockwise", "einsum")}
    one_score_array = B * H * T * T * 4
    assert mem["blockwise"] < one_score_array / 8, mem
    assert mem["einsum"] >= one_score_array, mem  # the reference does hold [T, T]: the comparison can fail


def test_auto_picks_blockwise_on_cpu_above_the_threshold(monkeypatch):
    calls = []

    def spy(*a, **kw):
        calls.append(a[0].shape[1])
        return blockwise_attention(*a, **kw)

    monkeypatch.setattr(attention_module, "blockwise_attention", spy)
    monkeypatch.setattr(attention_module, "BLOCKWISE_MIN_LENGTH", 8)
    att = Attention(8, rngs=nnx.Rngs(0), num_heads=2)
    assert att.implementation == "auto"
    short, long = (jax.random.normal(jax.random.key(0), (1, T, 8)) for T in (7, 8))
    att(short)
    assert calls == []
    h = att(long)
    assert calls == [8]
    ref = Attention(8, rngs=nnx.Rngs(0), num_heads=2, implementation="einsum")(long)
    np.testing.assert_allclose(np.asarray(h), np.asarray(ref), atol=1e-5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_block_size_below_one_or_not_an_int_is_refused(bad):
    q, k, v, _ = _qkv(1, 4, 1, 2, 2, jnp.float32)
    with pytest.raises(ValueError, match="block_size must be an int ≥ 1"):
        blockwise_attention(q, k, v, scale=1.0, block_size=bad)
    with pytest.raises(ValueError, match="block_size must be an int ≥ 1"):
        Attention(4, rngs=nnx.Rngs(0), num_heads=1, implementation="blockwise", block_size=bad)


def test_unknown_implementation_and_cudnn_on_cpu_are_refused():
    with pytest.raises(ValueError, match="implementation must be one of"):
        Attention(4, rngs=nnx.Rngs(0), num_heads=1, implementation="flash")
    if jax.default_backend() != "gpu":
        att = Attention(4, rngs=nnx.Rngs(0), num_heads=1, implementation="cudnn")
        with pytest.raises(ValueError, match="implementation='cudnn' needs a GPU backend"):
            att(jnp.ones((1, 3, 4)))


def test_shape_errors_name_the_arguments():
    q, k, v, _ = _qkv(1, 4, 1, 2, 2, jnp.float32)
    with pytest.raises(ValueError, match="q and k must both have shape"):
        blockwise_attention(q, k[:, :3], v, scale=1.0)
    with pytest.raises(ValueError, match="v must have shape"):
        blockwise_attention(q, k, v[:, :3], scale=1.0)


def test_benchmark_memory_verdict_can_fail():
    from experiments.benchmarks.blockwise import memory_ratio_met

    assert memory_ratio_met(800, 100) and not memory_ratio_met(800, 101)


# ---- sliding-window attention (Mistral): S(i) = {i − w + 1, …, i} -----------------------------------------------


def _window_attention(q, k, v, scale, window):
    """The banded reference written out: scores masked to i − window < j ≤ i with -inf, softmax, values."""
    T = q.shape[1]
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    band = jnp.asarray((j <= i) & (j > i - window))
    s = jnp.einsum("bihk,bjhk->bhij", q, k, precision="highest") * scale
    return jnp.einsum("bhij,bjhk->bihk", jax.nn.softmax(jnp.where(band, s, -jnp.inf), -1), v, precision="highest")


@pytest.mark.slow
@pytest.mark.parametrize("T,block,window", [(19, 4, 5), (16, 4, 4), (13, 8, 1), (10, 3, 30), (24, 5, 11)])
def test_window_values_and_gradients_equal_the_banded_reference_float64(T, block, window):
    """Windows shorter than, equal to and longer than a block, w = 1 (the diagonal only), w ≥ T (plain causal)."""
    with jax.enable_x64(True):
        q, k, v, w = _qkv(2, T, 3, 4, 5, jnp.float64, seed=1)
        fast = blockwise_attention(q, k, v, scale=0.5, block_size=block, window=window)
        np.testing.assert_allclose(np.asarray(fast), np.asarray(_window_attention(q, k, v, 0.5, window)),
                                   atol=1e-12, rtol=0)
        g_fast = jax.grad(lambda *a: jnp.sum(w * blockwise_attention(*a, scale=0.5, block_size=block,
                                                                     window=window)), (0, 1, 2))(q, k, v)
        g_ref = jax.grad(lambda *a: jnp.sum(w * _window_attention(*a, 0.5, window)), (0, 1, 2))(q, k, v)
        for name, a, b in zip("qkv", g_fast, g_ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12, rtol=0, err_msg=f"d/d{name}")


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["einsum", "blockwise", "xla"])
def test_window_module_is_a_banded_tvvar_on_every_path(impl):
    """π and A[i, j] are exactly 0 outside the band (support(T) says so), each implementation gives the same
    output, and decoding step by step reproduces the full forward's rows."""
    T, window = 14, 4
    att = Attention(8, rngs=nnx.Rngs(0), num_heads=2, implementation=impl, block_size=4, window=window)
    u = jax.random.normal(jax.random.key(2), (2, T, 8))
    band = np.asarray(att.support(T))
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    np.testing.assert_array_equal(band, (j <= i) & (j > i - window))
    A = np.asarray(att.coefficients(u))
    assert np.all(A[:, ~band] == 0) and np.all(np.asarray(att.pi(u))[:, :, ~band] == 0)
    from tvvar.core import mix_dense

    np.testing.assert_allclose(np.asarray(att(u)), np.asarray(mix_dense(jnp.asarray(A), u)), atol=2e-5)
    cache = att.init_cache(2, T)
    full = np.asarray(att(u))
    for t in range(T):
        h, cache = att.step(cache, u[:, t])
        np.testing.assert_allclose(np.asarray(h), full[:, t], atol=2e-5)


@pytest.mark.slow
def test_window_passes_the_decomposition_kit():
    check_decomposition(lambda rngs, dtype: Attention(8, rngs=rngs, num_heads=2, dtype=dtype, window=3,
                                                      implementation="blockwise", block_size=4))


@pytest.mark.parametrize("T,b,window", [(1024, 64, 64), (100, 8, 13), (37, 5, 1), (40, 8, 100)])
def test_window_visits_exactly_the_tiles_that_hold_an_admissible_key(T, b, window):
    """The loops' bounds (_first_key_block forward, _query_block_end backward) are tight: every tile they skip is
    entirely masked, every tile they visit holds an admissible (row, key) pair — so the cost grows as T·w: at
    T = 1024 with a 64-key window, 31 tiles of 64 × 64 are visited where the causal kernel visits 136."""
    from tvvar.decompositions.blockwise import _first_key_block, _query_block_end, _tile_mask

    n = -(-T // b)
    fwd = {(i, j) for i in range(n) for j in range(int(_first_key_block(i, b, window)), i + 1)}
    bwd = {(i, j) for j in range(n) for i in range(j, int(_query_block_end(j, b, n, window)))}
    assert fwd == bwd
    for i in range(n):
        for j in range(i + 1):
            assert bool(np.any(np.asarray(_tile_mask(i, j, b, T, True, window)))) == ((i, j) in fwd), (i, j)
    if (T, b, window) == (1024, 64, 64):
        assert len(fwd) == 31 and n * (n + 1) // 2 == 136


def test_window_refusals():
    with pytest.raises(ValueError, match="window .* must be an int ≥ 1 or None, got 0"):
        Attention(8, rngs=nnx.Rngs(0), window=0)
    with pytest.raises(ValueError, match="needs mask='causal'"):
        Attention(8, rngs=nnx.Rngs(0), mask="bidirectional", window=3)
    q, k, v, _ = _qkv(1, 6, 1, 2, 2, jnp.float32)
    with pytest.raises(ValueError, match="needs causal=True"):
        blockwise_attention(q, k, v, scale=1.0, causal=False, window=2)
