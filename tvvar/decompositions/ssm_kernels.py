"""The three algorithms for one selective state-space map (Eq. 78), as pure functions.

The map, for heads h, head channels p and state index n (Mamba-2 "SSD" layout)::

    state_t[h, p, n] = a_t[h, n] · state_{t-1}[h, p, n] + x̄_t[h, p] · B_t[n]       a_t = exp(la_t) ∈ (0, 1]
    y_t[h, p]        = Σ_n C_t[n] · state_t[h, p, n]

with ``la`` the log-decay (Δ_t A ≤ 0) and ``x̄ = Δ_t x_t`` (the discretized input B̄_t x_t = Δ_t B_t x_t
with Δ folded into x). ``la`` has a last axis of size 1 (scalar-times-identity A_t per head: Mamba-2)
or N (diagonal A_t: Mamba-1 / S4D). Unrolled, y_i = Σ_{j≤i} C_iᵀ(Π_{k=j+1..i} a_k ⊙ B_j) x̄_j: the TV-VAR
coefficient C A_i⋯A_{j+1} B_j of Eq. 78.

* :func:`ssd_scan` — the sequential ``lax.scan`` reference (and the inference path);
* :func:`ssd_chunked` — the chunked SSD algorithm ("Transformers are SSMs", Dao & Gu 2024, Listing 1):
  quadratic attention-like form inside chunks, the recurrence between chunks, with the stable masked
  :func:`segsum`; T need not be a multiple of the chunk size;
* :func:`ssd_step` — one token (decoding).

All take and return the state [B, H, P, N]; accumulation is in float32 or better (DESIGN numerics).
The kernels are jitted so that eager callers (tests, the Jacobians of the test kit) compile each one once
instead of dispatching dozens of small ops.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from tvvar.typing import Array, DType

__all__ = ["acc_dtype", "segsum", "decay_exp", "ssd_scan", "ssd_chunked", "ssd_step", "causal_conv", "conv_step"]

_HI = jax.lax.Precision.HIGHEST


def acc_dtype(dtype: DType) -> DType:
    """Accumulator dtype: float32, or float64 when computing in float64."""
    return jnp.promote_types(dtype, jnp.float32)


def segsum(x: Array) -> Array:
    """Stable segment sum: out[..., i, j] = Σ_{k=j+1..i} x[..., k] for j ≤ i, −inf for j > i.

    A sum of the direct terms x_k, never cumsum_i − cumsum_j, so long sequences with strong decay do
    not lose precision to cancellation (DESIGN numerics). The masked sum is one matrix product with 0/1
    masks, out[i, j] = Σ_k [k ≤ i]·[j < k]·x_k, which runs (forward and backward) as a batched matmul
    instead of a scan of adds. exp(segsum) is the lower-triangular decay matrix Π_{k=j+1..i} a_k with
    exact zeros above the diagonal.
    """
    T = x.shape[-1]
    idx = jnp.arange(T)
    upto = (idx[None, :] <= idx[:, None]).astype(x.dtype)  # [i, k]: k ≤ i
    after = jnp.where(idx[:, None] < idx[None, :], x[..., None, :], 0)  # [..., j, k]: x_k for k > j
    s = jnp.einsum("ik,...jk->...ij", upto, after, precision=_HI)
    return jnp.where(idx[:, None] >= idx[None, :], s, -jnp.inf)


def decay_exp(z: Array) -> Array:
    """exp(z) for log-decays z ≤ 0, flushed to exactly 0 below the smallest normal number.

    Strong decay drives exp(Σ Δ A) into the subnormal range, where CPU arithmetic is orders of magnitude
    slower; the flushed values are < finfo.tiny (≈ 1e-38 in float32), so the map changes by less than that.
    """
    tiny = math.log(float(jnp.finfo(z.dtype).tiny))
    return jnp.where(z < tiny, 0.0, jnp.exp(z)).astype(z.dtype)


def _check_shapes(x: Array, la: Array, Bm: Array, Cm: Array, state: Array | None) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must have shape [B, T, H, P], got {x.shape}")
    Bsz, T, H, P = x.shape
    N = Bm.shape[-1]
    if la.ndim != 4 or la.shape[:3] != (Bsz, T, H) or la.shape[3] not in (1, N):
        raise ValueError(f"log-decay must have shape [B={Bsz}, T={T}, H={H}, 1 or N={N}], got {la.shape}")
    if Bm.shape != (Bsz, T, N) or Cm.shape != (Bsz, T, N):
        raise ValueError(f"B and C must have shape [B={Bsz}, T={T}, N], got {Bm.shape} and {Cm.shape}")
    if state is not None and state.shape != (Bsz, H, P, N):
        raise ValueError(f"initial_state must have shape [B={Bsz}, H={H}, P={P}, N={N}], got {state.shape}")


@jax.jit
def ssd_step(state: Array, x_t: Array, la_t: Array, B_t: Array, C_t: Array) -> tuple[Array, Array]:
    """One step of Eq. 78. state [B,H,P,N], x_t [B,H,P], la_t [B,H,1|N], B_t, C_t [B,N] → (y_t [B,H,P], state)."""
    state = decay_exp(la_t)[:, :, None, :] * state + x_t[..., None] * B_t[:, None, None, :]
    y_t = jnp.einsum("bhpn,bn->bhp", state, C_t, precision=_HI)
    return y_t, state


@jax.jit
def ssd_scan(x: Array, la: Array, Bm: Array, Cm: Array, initial_state: Array | None = None) -> tuple[Array, Array]:
    """Sequential reference: ``lax.scan`` of :func:`ssd_step` over T.

    x [B,T,H,P] (already multiplied by Δ), la [B,T,H,1|N], Bm, Cm [B,T,N] → (y [B,T,H,P], final state).
    """
    _check_shapes(x, la, Bm, Cm, initial_state)
    Bsz, T, H, P = x.shape
    N = Bm.shape[-1]
    adt = acc_dtype(x.dtype)
    h0 = jnp.zeros((Bsz, H, P, N), adt) if initial_state is None else initial_state.astype(adt)
    xs = tuple(jnp.moveaxis(a.astype(adt), 1, 0) for a in (x, la, Bm, Cm))

    def body(state, inp):
        y_t, state = ssd_step(state, *inp)
        return state, y_t

    hT, y = jax.lax.scan(body, h0, xs)
    return jnp.moveaxis(y, 0, 1), hT


@partial(jax.jit, static_argnames=("chunk_size",))
def ssd_chunked(
    x: Array, la: Array, Bm: Array, Cm: Array, chunk_size: int, initial_state: Array | None = None
) -> tuple[Array, Array]:
    """The chunked SSD algorithm; same inputs and outputs as :func:`ssd_scan`.

    Steps (Dao & Gu 2024): (1) intra-chunk outputs by the masked decay matrix exp(segsum) — the
    quadratic "attention" form; (2) each chunk's final state from its own inputs; (3) the recurrence
    across chunk boundaries (again by exp(segsum), over chunks), starting from ``initial_state``;
    (4) the contribution of the state entering each chunk to that chunk's outputs.
    The sequence is zero-padded to a multiple of ``chunk_size``: padded steps have decay 1 and input 0,
    so they change neither the outputs kept nor the final state.
    """
    _check_shapes(x, la, Bm, Cm, initial_state)
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be an int ≥ 1, got {chunk_size!r}")
    return _ssd_chunked_steps(x, la, Bm, Cm, chunk_size, initial_state, tile_by_chunk=la.shape[-1] > 1)


def _ssd_chunked_materialized(
    x: Array, la: Array, Bm: Array, Cm: Array, chunk_size: int, initial_state: Array | None = None
) -> tuple[Array, Array]:
    """Steps (1)–(4) with the intra-chunk decay of all chunks at once: for the diagonal family the tensor
    [b, h, N, c, l, l] that :func:`ssd_chunked` used until issue 17, kept as the reference of the per-chunk
    tiles (tests, and the before/after memory benchmark). For the scalar family it *is* ``ssd_chunked``."""
    return _ssd_chunked_steps(x, la, Bm, Cm, chunk_size, initial_state, tile_by_chunk=False)


def _intra_chunk_diagonal(C_c: Array, B_c: Array, la_c: Array, group: int = 1) -> Array:
    """G[b, h, c, l, s] = Σ_n C_l[n] B_s[n] Π_{k=s+1..l} a_k[n] (diagonal A_t), ``group`` chunks at a time.

    The decay Π a[n] depends on the state index n, so each chunk needs an [h, N, l, l] tile; a ``lax.map``
    over groups of chunks, rematerialized in the backward pass (``jax.checkpoint``), holds only one
    group's tiles, O(b·h·N·group·l²), instead of all chunks' O(b·h·N·T·l). G itself has no N axis.
    """
    Bsz, H, Nd, nc, Q = la_c.shape
    g = max(1, min(group, nc))
    ng = -(-nc // g)
    pad = ng * g - nc

    def grouped(a, axis):  # chunk axis → [ng, ..., g, ...] with the group index first
        a = jnp.pad(a, [(0, 0)] * axis + [(0, pad)] + [(0, 0)] * (a.ndim - axis - 1))
        a = a.reshape(a.shape[:axis] + (ng, g) + a.shape[axis + 1:])
        return jnp.moveaxis(a, axis, 0)

    @jax.checkpoint
    def tile(inp):
        C_g, B_g, la_g = inp  # [b, g, l, n], [b, g, l, n], [b, h, n, g, l]
        return jnp.einsum("bcln,bcsn,bhncls->bhcls", C_g, B_g, decay_exp(segsum(la_g)), precision=_HI)

    G = jax.lax.map(tile, (grouped(C_c, 1), grouped(B_c, 1), grouped(la_c, 3)))  # [ng, b, h, g, l, s]
    G = jnp.moveaxis(G, 0, 2).reshape(Bsz, H, ng * g, Q, Q)
    return G[:, :, :nc]


def _ssd_chunked_steps(
    x: Array, la: Array, Bm: Array, Cm: Array, chunk_size: int, initial_state: Array | None, *, tile_by_chunk: bool
) -> tuple[Array, Array]:
    Bsz, T, H, P = x.shape
    N, Nd = Bm.shape[-1], la.shape[-1]
    adt = acc_dtype(x.dtype)
    Q = min(chunk_size, T)
    nc = -(-T // Q)
    pad = nc * Q - T

    def chunks(a):
        a = jnp.pad(a.astype(adt), [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return a.reshape((Bsz, nc, Q) + a.shape[2:])

    # Heads before time: every contraction below is a batched matmul over (b, h, c) or (b, c) with the
    # summed axis last or second-to-last, so XLA emits no transposes inside the chunk loop.
    x_c = jnp.transpose(chunks(x), (0, 3, 1, 2, 4))  # [b, h, c, l, p]
    la_c = jnp.transpose(chunks(la), (0, 3, 4, 1, 2))  # [b, h, d, c, l]  (d = 1 or N)
    B_c, C_c = chunks(Bm), chunks(Cm)  # [b, c, l, n]
    cum = jnp.cumsum(la_c, axis=-1)

    # (1) intra-chunk: y_i = Σ_{j≤i in chunk} (C_i·B_j ⊙ decay_ij) x̄_j
    if Nd == 1:
        CB = jnp.einsum("bcln,bcsn->bcls", C_c, B_c, precision=_HI)
        G = CB[:, None] * decay_exp(segsum(la_c))[:, :, 0]  # [b, h, c, l, s]
    elif tile_by_chunk:
        G = _intra_chunk_diagonal(C_c, B_c, la_c)
    else:
        G = jnp.einsum("bcln,bcsn,bhncls->bhcls", C_c, B_c, decay_exp(segsum(la_c)), precision=_HI)
    y_diag = jnp.einsum("bhcls,bhcsp->bhclp", G, x_c, precision=_HI)

    # (2) the state each chunk would end in from its own inputs
    decay_to_end = decay_exp(cum[..., -1:] - cum)  # [b, h, d, c, l]; exponent ≤ 0
    if Nd == 1:
        states = jnp.einsum("bhclp,bcln->bhcpn", x_c * decay_to_end[:, :, 0, ..., None], B_c, precision=_HI)
    else:
        states = jnp.einsum("bhclp,bcln,bhncl->bhcpn", x_c, B_c, decay_to_end, precision=_HI)

    # (3) recurrence across chunk boundaries, from the initial state
    h0 = jnp.zeros((Bsz, H, P, N), adt) if initial_state is None else initial_state.astype(adt)
    states = jnp.concatenate([h0[:, :, None], states], axis=2)  # [b, h, c+1, p, n]
    chunk_la = jnp.pad(cum[..., -1], [(0, 0)] * 3 + [(1, 0)])  # [b, h, d, c+1]
    decay_chunk = decay_exp(segsum(chunk_la))  # [b, h, d, z, c]
    if Nd == 1:
        states = jnp.einsum("bhzc,bhcpn->bhzpn", decay_chunk[:, :, 0], states, precision=_HI)
    else:
        states = jnp.einsum("bhnzc,bhcpn->bhzpn", decay_chunk, states, precision=_HI)
    entering, final = states[:, :, :-1], states[:, :, -1]

    # (4) the entering state's contribution inside each chunk
    decay_in = decay_exp(cum)  # [b, h, d, c, l]
    if Nd == 1:
        y_off = jnp.einsum("bcln,bhcpn->bhclp", C_c, entering, precision=_HI) * decay_in[:, :, 0, ..., None]
    else:
        y_off = jnp.einsum("bcln,bhcpn,bhncl->bhclp", C_c, entering, decay_in, precision=_HI)

    y = jnp.transpose(y_diag + y_off, (0, 2, 3, 1, 4)).reshape(Bsz, nc * Q, H, P)[:, :T]
    return y, final


@jax.jit
def causal_conv(z: Array, w: Array, buffer: Array | None = None) -> tuple[Array, Array]:
    """Depthwise causal convolution out_t = Σ_k w[k] ⊙ z_{t−k}, k = 0..K−1.

    z [B, T, C], w [K, C]; ``buffer`` [B, K−1, C] holds the K−1 inputs before z (zeros if None).
    Returns (out [B, T, C], the new buffer: the last K−1 inputs of buffer ++ z).
    """
    K = w.shape[0]
    Bsz, T, Cc = z.shape
    if buffer is None:
        buffer = jnp.zeros((Bsz, K - 1, Cc), z.dtype)
    elif buffer.shape != (Bsz, K - 1, Cc):
        raise ValueError(f"conv buffer must have shape [B={Bsz}, K-1={K - 1}, C={Cc}], got {buffer.shape}")
    zp = jnp.concatenate([buffer.astype(z.dtype), z], axis=1)  # [B, K-1+T, C]
    out = sum(w[k][None, None, :] * zp[:, K - 1 - k : K - 1 - k + T] for k in range(K))
    return out, zp[:, T:]


@jax.jit
def conv_step(z_t: Array, w: Array, buffer: Array) -> tuple[Array, Array]:
    """One step of :func:`causal_conv`: z_t [B, C], buffer [B, K−1, C] → (out_t [B, C], buffer)."""
    window = jnp.concatenate([buffer.astype(z_t.dtype), z_t[:, None]], axis=1)  # [B, K, C], oldest first
    out = jnp.einsum("kc,bkc->bc", w[::-1], window, precision=_HI)
    return out, window[:, 1:]
