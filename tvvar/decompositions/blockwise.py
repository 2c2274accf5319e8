"""Blockwise attention with an online softmax (flash-style), in plain JAX, forward and backward.

The same map as Theorem 5's attention, o_i = Σ_{j∈S(i)} π[i, j] v_j with π[i, j] = softmax_{j∈S(i)}(s_ij),
s_ij = q_i·k_j · scale, computed one [b, b] tile of scores at a time so that no [T, T] array exists in
the forward or the backward pass. Peak temporary memory is O(B·H·b·T/… ) — a few [B, H, b, b] tiles plus
the O(B·H·T·K) inputs, outputs and the per-row log-sum-exp — instead of the einsum path's O(B·H·T²).

Forward, for a block of queries Q_i and each admissible block of keys K_j, V_j (the online softmax of
Milakov & Gimelshein 2018, as in FlashAttention-2, Dao 2023, Algorithm 1):

    S = Q_i K_jᵀ · scale,   m' = max(m, rowmax S),   P = exp(S − m'),
    ℓ' = e^{m − m'} ℓ + rowsum P,   acc' = e^{m − m'} acc + P V_j,

then o_i = acc / ℓ and L_i = m + log ℓ (the row log-sum-exp, saved for the backward pass).

Backward (Algorithm 2 there), with D_i = Σ_k dO_ik O_ik and the recomputed P_ij = exp(S_ij − L_i):

    dV_j += P_ijᵀ dO_i,   dP = dO_i V_jᵀ,   dS = P ⊙ (dP − D_i),
    dQ_i += dS K_j · scale,   dK_j += dSᵀ Q_i · scale.

Causal masking skips the key blocks j > i entirely (half the work), masks inside the diagonal block with
``finfo.min`` and forces P to exactly 0 there, so ∂o_i/∂(k_j, v_j) is exactly 0 for j > i. A length T that
``block_size`` does not divide is padded to the next multiple; padded keys are masked (never attended),
padded query rows are dropped. Scores, the softmax statistics and the accumulators run in float32 (float64
for float64 input, so the float64 identity holds at 1e-10); the output has the input dtype.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from tvvar.core import float32_or_better, masked_fill_value
from tvvar.typing import Array

__all__ = ["blockwise_attention", "check_block_size"]

_HI = jax.lax.Precision.HIGHEST


def check_block_size(block_size: int) -> int:
    """``block_size`` as an int ≥ 1, or a ValueError naming it."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int ≥ 1, got {block_size!r}")
    return block_size


def blockwise_attention(q: Array, k: Array, v: Array, *, scale: float, causal: bool = True,
                        block_size: int = 256, window: int | None = None) -> Array:
    """Softmax attention by [block_size, block_size] tiles with an online softmax.

    q, k: [B, T, H, K]; v: [B, T, H, K_v] → o: [B, T, H, K_v], equal (to rounding) to
    ``softmax(q kᵀ · scale, masked to S(i)) v`` per head — the einsum path of
    :class:`tvvar.decompositions.attention.Attention` — with gradients by a custom VJP that recomputes the
    tiles instead of storing them.

    ``window`` (causal only): a sliding window of ``window`` keys, S(i) = {i − window + 1, …, i}; key blocks
    entirely outside every row's window are never visited, forward or backward, so the cost grows as T·window
    rather than T² when T ≫ window.
    """
    check_block_size(block_size)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be an int ≥ 1 or None, got {window!r}")
    if window is not None and not causal:
        raise ValueError("window (a sliding window) needs causal=True")
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both have shape [B, T, H, K], got {q.shape} and {k.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape [B={q.shape[0]}, T={q.shape[1]}, H={q.shape[2]}, K_v], got {v.shape}")
    T = q.shape[1]
    b = min(block_size, T)  # one block when T is short: no padding beyond T
    n = -(-T // b)
    pad = n * b - T
    acc_dtype = float32_or_better(q.dtype)

    def blocks(x):  # [B, T, H, K] → [B, H, n·b, K] in the accumulation dtype
        x = jnp.swapaxes(x, 1, 2).astype(acc_dtype)
        return jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) if pad else x

    o = _flash(blocks(q), blocks(k), blocks(v), float(scale), bool(causal), b, T, int(window or 0))
    return jnp.swapaxes(o[:, :, :T], 1, 2).astype(q.dtype)


def _tile_mask(i: Array, j: Array, b: int, T: int, causal: bool, window: int = 0) -> Array:
    """[b, b] True where key j·b + c is admissible for query i·b + r (in range, c ≤ r when causal, and
    c > r − window with a sliding window)."""
    rows = i * b + jnp.arange(b)[:, None]
    cols = j * b + jnp.arange(b)[None, :]
    ok = cols < T
    if window:
        ok = ok & (cols > rows - window)
    return ok & (cols <= rows) if causal else ok


def _first_key_block(i: Array, b: int, window: int) -> Array:
    """The first key block any row of query block i sees: 0, or with a window the block of key i·b − window + 1."""
    return jnp.maximum(0, (i * b - window + 1) // b) if window else 0


def _query_block_end(j: Array, b: int, n: int, window: int) -> Array:
    """One past the last query block that sees key block j: n, or with a window one past the block of row
    (j + 1)·b + window − 2 (the last row whose window reaches the block)."""
    return jnp.minimum(n, ((j + 1) * b + window - 2) // b + 1) if window else n


def _slice(x: Array, j: Array, b: int) -> Array:
    return jax.lax.dynamic_slice_in_dim(x, j * b, b, axis=2)


def _forward(q, k, v, scale, causal, b, T, window=0):
    """o [B, H, n·b, K_v] and the row log-sum-exp L [B, H, n·b] (both in the accumulation dtype)."""
    Bsz, H, Tp, _ = q.shape
    Kv = v.shape[-1]
    n = Tp // b
    neg = masked_fill_value(q.dtype)

    def query_block(i):
        q_i = _slice(q, i, b)

        def key_block(j, carry):
            m, ell, acc = carry
            k_j, v_j = _slice(k, j, b), _slice(v, j, b)
            allowed = _tile_mask(i, j, b, T, causal, window)
            s = jnp.einsum("bhrk,bhck->bhrc", q_i, k_j, precision=_HI) * scale
            s = jnp.where(allowed, s, neg)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.where(allowed, jnp.exp(s - m_new[..., None]), 0)
            alpha = jnp.exp(m - m_new)
            ell = alpha * ell + p.sum(-1)
            acc = alpha[..., None] * acc + jnp.einsum("bhrc,bhck->bhrk", p, v_j, precision=_HI)
            return m_new, ell, acc

        init = (jnp.full((Bsz, H, b), neg, q.dtype), jnp.zeros((Bsz, H, b), q.dtype),
                jnp.zeros((Bsz, H, b, Kv), q.dtype))
        # causal: key blocks j > i are entirely outside S(i) and are never visited; nor, with a window, the blocks
        # left of every row's window
        m, ell, acc = jax.lax.fori_loop(_first_key_block(i, b, window), i + 1 if causal else n, key_block, init)
        # a padding row (beyond T) can have no admissible key at all (with a window): give it o = 0 and a finite
        # log-sum-exp, never 0/0, so that the backward pass's Σ dO·O stays finite
        ell = jnp.where(ell > 0, ell, 1)
        return acc / ell[..., None], m + jnp.log(ell)

    o, lse = jax.lax.map(query_block, jnp.arange(n))  # [n, B, H, b, Kv], [n, B, H, b]
    o = jnp.moveaxis(o, 0, 2).reshape(Bsz, H, Tp, Kv)
    lse = jnp.moveaxis(lse, 0, 2).reshape(Bsz, H, Tp)
    return o, lse


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _flash(q, k, v, scale, causal, b, T, window):
    return _forward(q, k, v, scale, causal, b, T, window)[0]


def _flash_fwd(q, k, v, scale, causal, b, T, window):
    o, lse = _forward(q, k, v, scale, causal, b, T, window)
    return o, (q, k, v, o, lse)


def _flash_bwd(scale, causal, b, T, window, res, do):
    q, k, v, o, lse = res
    Tp = q.shape[2]
    n = Tp // b
    do = do.astype(q.dtype)
    D = jnp.sum(do * o, axis=-1)  # [B, H, Tp]: D_i = Σ_k dO_ik O_ik

    def key_block(dq, j):
        k_j, v_j = _slice(k, j, b), _slice(v, j, b)

        def query_block(i, carry):
            dq, dk_j, dv_j = carry
            q_i, do_i = _slice(q, i, b), _slice(do, i, b)
            lse_i = jax.lax.dynamic_slice_in_dim(lse, i * b, b, axis=2)
            D_i = jax.lax.dynamic_slice_in_dim(D, i * b, b, axis=2)
            allowed = _tile_mask(i, j, b, T, causal, window)
            s = jnp.einsum("bhrk,bhck->bhrc", q_i, k_j, precision=_HI) * scale
            p = jnp.where(allowed, jnp.exp(s - lse_i[..., None]), 0)
            dv_j = dv_j + jnp.einsum("bhrc,bhrk->bhck", p, do_i, precision=_HI)
            dp = jnp.einsum("bhrk,bhck->bhrc", do_i, v_j, precision=_HI)
            ds = p * (dp - D_i[..., None])
            dq_i = _slice(dq, i, b) + jnp.einsum("bhrc,bhck->bhrk", ds, k_j, precision=_HI) * scale
            dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * b, axis=2)
            dk_j = dk_j + jnp.einsum("bhrc,bhrk->bhck", ds, q_i, precision=_HI) * scale
            return dq, dk_j, dv_j

        # causal: only query blocks i ≥ j see key block j (and, with a window, only those up to its end)
        dq, dk_j, dv_j = jax.lax.fori_loop(j if causal else 0, _query_block_end(j, b, n, window), query_block,
                                           (dq, jnp.zeros_like(k_j), jnp.zeros_like(v_j)))
        return dq, (dk_j, dv_j)

    dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros_like(q), jnp.arange(n))
    Bsz, H = q.shape[:2]
    dk = jnp.moveaxis(dk, 0, 2).reshape(Bsz, H, Tp, k.shape[-1])
    dv = jnp.moveaxis(dv, 0, 2).reshape(Bsz, H, Tp, v.shape[-1])
    return dq, dk, dv


_flash.defvjp(_flash_fwd, _flash_bwd)
