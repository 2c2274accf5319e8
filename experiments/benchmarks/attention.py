"""Theorem 5's attention decomposition in a 4-layer model vs a plain hand-written einsum Transformer.

Both compute the same function from the same weights (checked); the ratio is the price of the TV-VAR
abstraction (target ≤ 1.10). Memory: XLA's temp allocation of the fast path vs ``coefficients``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.benchmarks.timing import compare
from tvvar.core import mix_dense
from tvvar.decompositions.attention import Attention
from tvvar.model import ModelConfig, TVVARModel


def _weights(model: TVVARModel) -> dict:
    """The model's parameters as a plain dict of arrays for the hand-written baseline."""
    blocks = [
        {
            "g1": b.norm1.scale[...], "g2": b.norm2.scale[...],
            "wq": b.mixer.wq[...], "wk": b.mixer.wk[...], "wv": b.mixer.wv[...], "wo": b.mixer.wo[...],
            "w1": b.psi.w1[...], "w2": b.psi.w2[...],
        }
        for b in model.blocks
    ]
    return {"E": model.embed.table[...], "gf": model.final_norm.scale[...], "blocks": blocks}


def _rms(x, g):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * g[None, None, :]


def plain_transformer(w: dict, ids: jax.Array) -> jax.Array:
    """Pre-norm causal Transformer written directly with einsums; tied unit-norm readout."""
    E = w["E"] / jnp.linalg.norm(w["E"], axis=-1, keepdims=True)
    x = E[ids]
    T = ids.shape[1]
    causal = jnp.tril(jnp.ones((T, T), bool))
    for b in w["blocks"]:
        h = _rms(x, b["g1"])
        q = jnp.einsum("btd,dhk->bthk", h, b["wq"])
        k = jnp.einsum("btd,dhk->bthk", h, b["wk"])
        v = jnp.einsum("btd,dhk->bthk", h, b["wv"])
        s = jnp.einsum("bihk,bjhk->bhij", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        p = jax.nn.softmax(jnp.where(causal, s, jnp.finfo(s.dtype).min), axis=-1)
        x = x + jnp.einsum("bihk,hke->bie", jnp.einsum("bhij,bjhk->bihk", p, v), b["wo"])
        x = x + jax.nn.gelu(_rms(x, b["g2"]) @ b["w1"]) @ b["w2"]
    return jnp.einsum("btd,vd->btv", _rms(x, w["gf"]), E)


def _nll(logits, ids):
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))


def _speed(quick: bool) -> dict:
    B, T, H, K, L, V = (2, 128, 4, 32, 2, 64) if quick else (4, 512, 8, 64, 4, 256)
    D = H * K
    model = TVVARModel(ModelConfig(V, D, num_layers=L, mixer={"num_heads": H}), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    ids = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    weights = _weights(model)

    tvvar_step = jax.jit(jax.value_and_grad(lambda s, x: _nll(nnx.merge(graphdef, s)(x), x)))
    plain_step = jax.jit(jax.value_and_grad(lambda w, x: _nll(plain_transformer(w, x), x)))
    same = float(jnp.max(jnp.abs(nnx.merge(graphdef, state)(ids) - jax.jit(plain_transformer)(weights, ids))))
    return compare(
        f"forward+backward, {L}-layer model (B={B}, T={T}, H={H}, K={K})",
        ("plain einsum Transformer", lambda: plain_step(weights, ids)),
        ("tvvar attention decomposition", lambda: tvvar_step(state, ids)),
        target=1.10, repeats=5 if quick else 7, max_abs_logit_difference=same,
    )


def _temp_bytes(fn, *args) -> int:
    return int(jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes)


def _memory(quick: bool) -> dict:
    """Peak temporary memory (XLA's allocation) of h = mixer(u) vs h = Σ_j A[i,j] u_j at T = 256."""
    T, D, H = (128, 16, 2) if quick else (256, 32, 4)
    att = Attention(D, rngs=nnx.Rngs(0), num_heads=H)
    graphdef, state = nnx.split(att)
    u = jnp.ones((1, T, D))
    fast = _temp_bytes(lambda s, x: nnx.merge(graphdef, s)(x), state, u)
    slow = _temp_bytes(lambda s, x: mix_dense(nnx.merge(graphdef, s).coefficients(x), x), state, u)
    by_T = {t: _temp_bytes(lambda s, x: nnx.merge(graphdef, s)(x), state, jnp.ones((1, t, D)))
            for t in (T // 4, T // 2, T)}
    return {
        "name": f"peak temp memory at T={T}, D={D}, H={H} (bytes)", "baseline": "coefficients + mix_dense",
        "contender": "fast path", "baseline_s": float("nan"), "contender_s": float("nan"),
        "baseline_bytes": slow, "contender_bytes": fast, "ratio": fast / slow, "target": None, "met": None,
        "coefficient_tensor_bytes": T * T * D * D * 4, "fast_path_bytes_by_T": by_T,
        "note": "fast path holds π [B,H,T,T] (einsum path), never [T,T,D,D]",
    }


def run(quick: bool) -> list[dict]:
    return [_speed(quick), _memory(quick)]
