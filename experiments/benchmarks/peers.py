"""The attention model against what a JAX user would pick instead (issue item 1), and its MFU (item 3).

Peers, each forward+backward of the mean next-token NLL, interleaved in one process:

* **flax**: a Transformer written with flax's own ``nnx.MultiHeadAttention`` (no biases), ``nnx.RMSNorm``,
  ``nnx.Linear`` MLP (4·D, gelu) and a tied ``nnx.Embed`` readout — the same shapes and FLOPs as the tvvar
  model (4 layers, B 4, T 512, H 8, K 64, V 256; and T 2048 at B 1). Target: tvvar ≤ 0.90× its time.
* **xla**: the tvvar model with ``implementation="xla"`` (``jax.nn.dot_product_attention``) against the same
  model with its default implementation (``"auto"``: einsum below ``BLOCKWISE_MIN_LENGTH``, blockwise above).

MFU (model-FLOPs utilisation) of the tvvar training step, against a matmul rate measured in the same run
(``jnp.dot`` float32 at 2048³, timed in turns with the step so that load drift hits both alike): FLOPs =
6·N·tokens (N = non-embedding parameters) + 6·B·T·D·V for the readout + 6·B·L·H·K·T² for causal attention
(QKᵀ and PV counted once over the causal half, forward 2× and backward 4×). :func:`step_flops` is that count;
``mfu = flops / step_s / matmul_rate``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.benchmarks.timing import compare, time_interleaved
from tvvar.model import ModelConfig, TVVARModel


def step_flops(*, B: int, T: int, L: int, D: int, H: int, K: int, V: int, d_ff: int | None = None) -> dict:
    """Model FLOPs of one forward+backward step of an L-layer attention model (the usual count).

    Per layer: Q, K, V, O projections 4·D·H·K and MLP 2·D·d_ff parameters; matmul FLOPs are 6 per parameter
    per token (2 forward, 4 backward). Readout (tied, V×D): 6·B·T·D·V. Causal attention: QKᵀ and PV are
    2·2·H·K·T² forward on the full square, halved by the mask, ×3 for forward+backward: 6·B·L·H·K·T².
    """
    for name, v in dict(B=B, T=T, L=L, D=D, H=H, K=K, V=V).items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int ≥ 1, got {v!r}")
    d_ff = 4 * D if d_ff is None else d_ff
    n_params = L * (4 * D * H * K + 2 * D * d_ff)
    tokens = B * T
    dense = 6 * n_params * tokens
    readout = 6 * tokens * D * V
    attention = 6 * B * L * H * K * T * T
    return {"non_embedding_params": n_params, "dense": dense, "readout": readout, "attention": attention,
            "total": dense + readout + attention}


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 ``jnp.dot`` rate at n³ in FLOP/s (2·n³ per product), median of ``repeats``."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    jax.block_until_ready(f(a, b))
    med = time_interleaved({"dot": lambda: f(a, b)}, repeats=repeats)["dot"]
    return 2 * n**3 / med


class FlaxTransformer(nnx.Module):
    """Pre-norm causal Transformer from flax's own layers: what a JAX user writes without tvvar."""

    def __init__(self, V: int, D: int, H: int, L: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(V, D, rngs=rngs)
        self.layers = nnx.List([
            nnx.Dict(
                norm1=nnx.RMSNorm(D, rngs=rngs),
                attn=nnx.MultiHeadAttention(H, D, use_bias=False, decode=False, rngs=rngs),
                norm2=nnx.RMSNorm(D, rngs=rngs),
                w1=nnx.Linear(D, 4 * D, use_bias=False, rngs=rngs),
                w2=nnx.Linear(4 * D, D, use_bias=False, rngs=rngs),
            ) for _ in range(L)
        ])
        self.final_norm = nnx.RMSNorm(D, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.embed(ids)
        mask = nnx.make_causal_mask(ids)
        for lyr in self.layers:
            x = x + lyr["attn"](lyr["norm1"](x), mask=mask)
            x = x + lyr["w2"](jax.nn.gelu(lyr["w1"](lyr["norm2"](x))))
        return self.embed.attend(self.final_norm(x))


def _nll(logits, ids):
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))


def _step(model):
    gd, st = nnx.split(model)
    f = jax.jit(jax.value_and_grad(lambda s, x: _nll(nnx.merge(gd, s)(x), x)))
    return f, st


def _tvvar(V, D, H, L, implementation="auto"):
    return TVVARModel(ModelConfig(V, D, num_layers=L, mixer={"num_heads": H, "implementation": implementation}),
                      rngs=nnx.Rngs(0))


def mfu(flops: float, step_s: float, rate: float) -> float:
    """Model-FLOPs utilisation: achieved FLOP/s over the measured matmul rate."""
    if step_s <= 0 or rate <= 0:
        raise ValueError(f"step_s and rate must be > 0, got {step_s}, {rate}")
    return flops / step_s / rate


def time_breakdown(*, B: int, T: int, L: int, D: int, H: int, K: int, V: int, repeats: int = 3) -> dict:
    """Where a training step's time goes: each part of the model as its own jitted forward+backward at the
    step's shapes (L times where it is per layer), timed interleaved. Keys: seconds per part and their sum."""
    from tvvar.decompositions.attention import Attention
    from tvvar.model import FFN, RMSNorm

    ks = jax.random.split(jax.random.key(0), 8)
    x = jax.random.normal(ks[0], (B, T, D))
    gf, sf = nnx.split(FFN(D, rngs=nnx.Rngs(1)))  # the model's own MLP (its matmul layout is what is timed)
    E = jax.random.normal(ks[3], (V, D))
    ids = jax.random.randint(ks[4], (B, T), 0, V)
    att = Attention(D, rngs=nnx.Rngs(0), num_heads=H, head_dim=K)
    gd, st = nnx.split(att)
    q, k, v = att._qkv(x)
    norm = RMSNorm(D)
    gn, sn = nnx.split(norm)

    def g(f, *args):
        return jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=tuple(range(len(args)))))

    from tvvar.decompositions.blockwise import blockwise_attention

    parts = {
        "mlp matmuls + gelu": (g(lambda s, x: nnx.merge(gf, s)(x), sf, x), (sf, x), L),
        "qkv/o projections": (g(lambda s, x: jnp.einsum("bihk,hke->bie", jnp.stack(nnx.merge(gd, s)._qkv(x)).sum(0),
                                                        nnx.merge(gd, s).wo[...]), st, x), (st, x), L),
        "attention core (softmax(QKᵀ)V)": (g(lambda q, k, v: blockwise_attention(q, k, v, scale=K**-0.5,
                                                                                 block_size=256), q, k, v),
                                           (q, k, v), L),
        "rms norms (2 per layer)": (g(lambda s, x: nnx.merge(gn, s)(x), sn, x), (sn, x), 2 * L + 1),
        "readout + log-softmax NLL": (jax.jit(jax.grad(lambda E, x: _nll(x @ E.T, ids), argnums=(0, 1))), (E, x), 1),
    }
    med = time_interleaved({k: (lambda f=f, a=a: f(*a)) for k, (f, a, _) in parts.items()}, repeats=repeats)
    out = {k: med[k] * parts[k][2] for k in parts}
    out["sum of parts"] = sum(out.values())
    return out


def run(quick: bool) -> list[dict]:
    H, K, L, V = (4, 32, 2, 64) if quick else (8, 64, 4, 256)
    D = H * K
    sizes = [(2, 128), (1, 256)] if quick else [(4, 512), (1, 2048)]
    out = []
    for B, T in sizes:
        ids = jax.random.randint(jax.random.key(1), (B, T), 0, V)
        t_step, t_st = _step(_tvvar(V, D, H, L))
        f_step, f_st = _step(FlaxTransformer(V, D, H, L, rngs=nnx.Rngs(0)))
        shape = dict(B=B, T=T, L=L, H=H, K=K, V=V)
        e = compare(f"forward+backward vs flax nnx.MultiHeadAttention Transformer, {L} layers (B={B}, T={T})",
                    ("flax nnx.MultiHeadAttention Transformer", lambda f=f_step, s=f_st, x=ids: f(s, x)),
                    ("tvvar attention model", lambda f=t_step, s=t_st, x=ids: f(s, x)),
                    target=0.90, repeats=3 if (quick or T > 1024) else 5, **shape)
        out.append(e)
        x_step, x_st = _step(_tvvar(V, D, H, L, "xla"))
        out.append(compare(f"tvvar default attention vs jax.nn.dot_product_attention (xla) in the same model "
                           f"(B={B}, T={T})",
                           ("tvvar, implementation='xla'", lambda f=x_step, s=x_st, x=ids: f(s, x)),
                           ("tvvar, implementation='auto'", lambda f=t_step, s=t_st, x=ids: f(s, x)),
                           target=None, repeats=3 if (quick or T > 1024) else 5, **shape))
    # MFU at the first size: the step and the reference matmul timed in alternating turns (interleaved), so a
    # change of machine load hits the numerator and the denominator alike
    B, T = sizes[0]
    t0 = time.perf_counter()
    n = 1024 if quick else 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    ids = jax.random.randint(jax.random.key(1), (B, T), 0, V)
    t_step, t_st = _step(_tvvar(V, D, H, L))
    med = time_interleaved({"step": lambda: t_step(t_st, ids), "dot": lambda: dot(a, b)}, repeats=3 if quick else 7)
    rate = 2 * n**3 / med["dot"]
    flops = step_flops(B=B, T=T, L=L, D=D, H=H, K=K, V=V)
    step_s = med["step"]
    u = mfu(flops["total"], step_s, rate)
    parts = time_breakdown(B=B, T=T, L=L, D=D, H=H, K=K, V=V)
    out.append({"name": f"model-FLOPs utilisation of the tvvar training step (B={B}, T={T}, {L} layers)",
                "baseline": "jnp.dot float32 matmul rate (measured in this run)", "contender": "tvvar step",
                "baseline_s": float("nan"), "contender_s": step_s, "ratio": u, "target": None if quick else 0.50,
                "direction": ">=", "met": None if quick else u >= 0.50, "flops": flops, "matmul_flop_per_s": rate,
                "achieved_flop_per_s": flops["total"] / step_s, "rate_seconds": time.perf_counter() - t0,
                "time_breakdown_s": parts,
                "time_breakdown_note": "each part jitted alone (fwd+bwd) at the step's shapes, × its count"})
    return out
