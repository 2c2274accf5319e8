"""Blockwise (online-softmax) attention vs the einsum path: peak temporary memory and speed (issue item 5).

Memory is XLA's compiled temporary allocation of forward+backward of ⟨w, attention(q, k, v)⟩ (load-independent);
speed is the same step timed interleaved. Targets: at T = 8192 (B 1, H 8, K 64) blockwise needs ≤ 1/8 of the
einsum path's temporary memory; at T = 2048 it is no slower (ratio ≤ 1.0); the crossover T is reported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.benchmarks.timing import compare
from tvvar.decompositions.attention import BLOCKWISE_MIN_LENGTH
from tvvar.decompositions.blockwise import blockwise_attention

BLOCK = 256


def einsum_attention(q, k, v, scale: float):
    """The Attention einsum path on q, k, v [B, T, H, K]: all [T, T] scores, finfo.min mask, float32 softmax."""
    T = q.shape[1]
    s = jnp.einsum("bihk,bjhk->bhij", q, k, precision="highest") * scale
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, jnp.finfo(s.dtype).min)
    return jnp.einsum("bhij,bjhk->bihk", jax.nn.softmax(s, axis=-1), v, precision="highest")


def _step(impl: str, block: int = BLOCK):
    def loss(q, k, v, w):
        o = (blockwise_attention(q, k, v, scale=0.125, block_size=block) if impl == "blockwise"
             else einsum_attention(q, k, v, 0.125))
        return jnp.sum(w * o)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _inputs(B: int, T: int, H: int, K: int):
    ks = jax.random.split(jax.random.key(0), 4)
    return tuple(jax.random.normal(kk, (B, T, H, K), jnp.float32) for kk in ks)


def temp_bytes(impl: str, B: int, T: int, H: int, K: int, block: int = BLOCK) -> int:
    args = [jax.ShapeDtypeStruct((B, T, H, K), jnp.float32)] * 4
    return int(_step(impl, block).lower(*args).compile().memory_analysis().temp_size_in_bytes)


def memory_ratio_met(einsum_bytes: int, blockwise_bytes: int, target: float = 1 / 8) -> bool:
    """The item-5 verdict: blockwise temp memory ≤ target × the einsum path's."""
    return blockwise_bytes <= target * einsum_bytes


def _memory(quick: bool) -> dict:
    B, T, H, K = (1, 2048, 2, 32) if quick else (1, 8192, 8, 64)
    e, b = temp_bytes("einsum", B, T, H, K), temp_bytes("blockwise", B, T, H, K)
    by_T = {t: {"einsum": temp_bytes("einsum", B, t, H, K), "blockwise": temp_bytes("blockwise", B, t, H, K)}
            for t in (T // 8, T // 4, T // 2)}
    return {
        "name": f"attention forward+backward peak temp memory at T={T} (B={B}, H={H}, K={K}), bytes",
        "baseline": "einsum path", "contender": f"blockwise (block {BLOCK})",
        "baseline_s": float("nan"), "contender_s": float("nan"),
        "baseline_bytes": e, "contender_bytes": b, "ratio": b / e, "target": 1 / 8,
        "met": memory_ratio_met(e, b), "bytes_by_T": by_T,
        "note": "XLA compiled memory_analysis().temp_size_in_bytes of jit(value_and_grad)",
    }


def _speed(quick: bool) -> list[dict]:
    B, H, K = (1, 2, 32) if quick else (1, 8, 64)
    Ts = (128, 256) if quick else (128, 512, 2048)
    out, crossover = [], None
    for T in Ts:
        args = _inputs(B, T, H, K)
        fe, fb = _step("einsum"), _step("blockwise")
        e = compare(f"attention forward+backward at T={T} (B={B}, H={H}, K={K})",
                    ("einsum path", lambda fe=fe, a=args: fe(*a)),
                    (f"blockwise (block {BLOCK})", lambda fb=fb, a=args: fb(*a)),
                    target=1.0 if T == Ts[-1] else None, repeats=3 if quick else 5)
        if crossover is None and e["ratio"] <= 1.0:
            crossover = T
        out.append(e)
    for e in out:
        e["crossover_T"] = crossover
        e["auto_threshold_BLOCKWISE_MIN_LENGTH"] = BLOCKWISE_MIN_LENGTH
    return out


def run(quick: bool) -> list[dict]:
    return [_memory(quick), *_speed(quick)]
