"""Diagonal SSM (Mamba-1 / S4D, ``"ssm_diagonal"``): memory of chunked SSD before/after removing the
[b, h, N, c, l, l] decay tensor (issue item 6), and the speed price of the scan over chunks.

Memory: XLA's compiled temporary allocation (load-independent) of forward and of forward+backward of
Σ y² through the kernel, at T = 4096, N = 16, H = 64 heads of width P = 1 (Mamba-1's one head per channel,
d_model 64), chunk 64. "before" is :func:`tvvar.decompositions.ssm_kernels._ssd_chunked_materialized` (all
chunks at once, the form ``ssd_chunked`` used for the diagonal family until issue 17), "after" is what
``ssd_chunked`` runs now.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.benchmarks.timing import compare
from tvvar.decompositions.ssm_kernels import _ssd_chunked_materialized, ssd_chunked


def _shapes(B, T, H, P, N):
    return [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((B, T, H, P), (B, T, H, N), (B, T, N), (B, T, N))]


def _fwd(fn, Q):
    return jax.jit(lambda *a: fn(*a, Q)[0])


def _fwd_bwd(fn, Q):
    return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a, Q)[0] ** 2), argnums=(0, 1, 2, 3)))


def _temp(f, args) -> int:
    return int(f.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def memory_reduced(before: int, after: int, factor: float = 4.0) -> bool:
    """Verdict: the new form needs at most 1/factor of the old form's temporary memory."""
    return after * factor <= before


def run(quick: bool) -> list[dict]:
    B, T, H, P, N, Q = (1, 1024, 16, 1, 16, 64) if quick else (1, 4096, 64, 1, 16, 64)
    args = _shapes(B, T, H, P, N)
    sizes = {"B": B, "T": T, "H": H, "P": P, "N": N, "chunk": Q}
    out = []
    for what, make in (("forward", _fwd), ("forward+backward", _fwd_bwd)):
        before, after = _temp(make(_ssd_chunked_materialized, Q), args), _temp(make(ssd_chunked, Q), args)
        out.append({
            "name": f"diagonal SSM chunked {what} peak temp memory at T={T}, N={N} (bytes)",
            "baseline": "all chunks at once ([b,h,N,c,l,l] decay)",
            "contender": "per-chunk decay tiles (lax.map, remat)",
            "baseline_s": float("nan"), "contender_s": float("nan"), "baseline_bytes": before,
            "contender_bytes": after, "ratio": after / before, "target": 0.25,
            "met": memory_reduced(before, after), "decay_tensor_bytes": B * H * N * T * Q * 4, **sizes,
            "note": "XLA compiled memory_analysis().temp_size_in_bytes",
        })
    ks = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(ks[0], (B, T, H, P))
    la = -jax.nn.softplus(jax.random.normal(ks[1], (B, T, H, N)))
    Bm, Cm = (jax.random.normal(k, (B, T, N)) for k in ks[2:])
    old, new = _fwd_bwd(_ssd_chunked_materialized, Q), _fwd_bwd(ssd_chunked, Q)
    out.append(compare(f"diagonal SSM chunked forward+backward time at T={T}, N={N}",
                       ("all chunks at once", lambda: old(x, la, Bm, Cm)),
                       ("per-chunk decay tiles (lax.map, remat)", lambda: new(x, la, Bm, Cm)),
                       target=None, repeats=3, **sizes))
    return out
