"""Eq. 78 SSM (Mamba-2 scalar family, ``"ssm"``): chunked SSD vs the sequential ``lax.scan``, and decoding.

Full size (issue 3): batch 4, T 1024, 8 heads, head dim 64, state 64 (d_model = 512), chunk 64.

* the SSM map itself (``ssd_chunked`` vs ``ssd_scan`` on x [B,T,H,P], log-decay [B,T,H,1], B, C [B,T,N]):
  forward+backward (∇ of Σ y² w.r.t. all four inputs), target ≥ 4× faster; forward only (reported);
* the whole ``"ssm"`` mixer, projections W_x, W_o (about 2·B·T·D·H·P multiply-adds, shared by both
  algorithms) included: forward+backward w.r.t. every parameter and u (reported);
* one decode step (``step``, batch 4) vs one full chunked forward over T tokens (reported; the per-token
  cost of generation against re-running the prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.benchmarks.timing import compare
from tvvar.decompositions.ssm import ScalarSSM
from tvvar.decompositions.ssm_kernels import ssd_chunked, ssd_scan


@dataclass(frozen=True)
class Size:
    B: int
    T: int
    H: int
    P: int
    N: int
    Q: int


FULL = Size(B=4, T=1024, H=8, P=64, N=64, Q=64)
QUICK = Size(B=2, T=256, H=4, P=32, N=32, Q=64)


def run(quick: bool) -> list[dict]:
    s = QUICK if quick else FULL
    m = ScalarSSM(s.H * s.P, rngs=nnx.Rngs(0), num_heads=s.H, head_dim=s.P, state_size=s.N, chunk_size=s.Q)
    graphdef, params = nnx.split(m)
    u = jax.random.normal(jax.random.key(1), (s.B, s.T, s.H * s.P), jnp.float32)
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    sizes = {"B": s.B, "T": s.T, "H": s.H, "P": s.P, "N": s.N, "chunk": s.Q, "device": jax.devices()[0].platform}

    def forward(algo):
        def f(params, u):
            mm = nnx.merge(graphdef, params)
            return (mm.scan(u) if algo == "scan" else mm.chunked(u))[0]

        return jax.jit(f)

    def fwd_bwd(algo):
        f = forward(algo)
        return jax.jit(jax.grad(lambda p, x: jnp.sum(f(p, x) ** 2), argnums=(0, 1)))

    repeats = 5 if quick else 7
    out = []
    # The SSM map on the inputs the mixer feeds it (Δ folded into x, log-decay = Δ·A ≤ 0).
    dt, Bm, Cm = m._selective(u)
    x = m._value(u) * dt[..., None]
    la = dt[..., None] * m.decay_rates()[None, None]
    args = (x, la, Bm, Cm)
    k_scan = jax.jit(lambda *a: ssd_scan(*a)[0])
    k_chunk = jax.jit(lambda *a: ssd_chunked(*a, s.Q)[0])
    g_scan = jax.jit(jax.grad(lambda *a: jnp.sum(k_scan(*a) ** 2), argnums=(0, 1, 2, 3)))
    g_chunk = jax.jit(jax.grad(lambda *a: jnp.sum(k_chunk(*a) ** 2), argnums=(0, 1, 2, 3)))
    out.append(compare("SSD forward+backward: chunked SSD vs lax.scan", ("scan", lambda: g_scan(*args)),
                       ("chunked SSD", lambda: g_chunk(*args)), target=4.0, direction=">=", repeats=repeats, **sizes))
    out.append(compare("SSD forward: chunked SSD vs lax.scan", ("scan", lambda: k_scan(*args)),
                       ("chunked SSD", lambda: k_chunk(*args)), target=None, direction=">=", repeats=repeats, **sizes))
    gs, gc = fwd_bwd("scan"), fwd_bwd("chunked")
    out.append(compare("ssm mixer (with projections) forward+backward: chunked vs scan",
                       ("scan", lambda: gs(params, u)),
                       ("chunked SSD", lambda: gc(params, u)), target=None, direction=">=", repeats=repeats, **sizes))
    fc = forward("chunked")
    step = jax.jit(lambda p, c, x: nnx.merge(graphdef, p).step(c, x))
    cache = m.init_cache(s.B, s.T, jnp.float32)
    u_t = u[:, 0]
    entry = compare("ssm decode: one step vs one full chunked forward over T",
                    ("chunked forward (T tokens)", lambda: fc(params, u)),
                    ("decode step (1 token)", lambda: step(params, cache, u_t)), target=None, direction="<=",
                    repeats=repeats, **sizes)
    entry["T_steps_vs_forward"] = entry["contender_s"] * s.T / entry["baseline_s"]
    out.append(entry)
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=2))
