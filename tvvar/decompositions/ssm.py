"""Eq. 78: the linear state-space model is a TV-VAR.

    state_t = A_t state_{t-1} + B_t s_t,      y_t = C_t state_t        (Eq. 78; s_t the mixer input)
    ⇒  y_i = Σ_{j≤i} C_i A_i ⋯ A_{j+1} B_j s_j,   i.e.  A[i, j] = C_i A_i⋯A_{j+1} B_j  (j = i: C_i B_i)

This is the "Transformers are SSMs" view (Dao & Gu 2024): the materialized matrix of an SSM is exactly a
decomposition of the TV-VAR coefficients. In code indices (DESIGN.md) row i includes j = i, which is the
causal set S(i) = {0..i}. Selective models compute Δ_t, B_t, C_t from the input, so A[i, j] depends on
u — as attention's π_tj does — while h = Σ_j A[i, j](u) u_j holds exactly.

Registered families (state transition A_t, discretized as Ā = exp(Δ A), B̄ = Δ B):

| name            | A_t                                   | model            |
|-----------------|---------------------------------------|------------------|
| "ssm"           | scalar × identity per head (a_t^h I)  | Mamba-2 SSD      |
| "ssm_diagonal"  | diagonal per channel (N entries)      | Mamba-1 / S4D    |
| "ssm_lti"       | diagonal, time-invariant (Δ, B, C fixed) | S4D / linear VAR |
| "ssm_dense"     | general dense N × N, time-varying     | Eq. 78 as written|
| "mamba"         | Mamba-2 block: in-proj, short conv, SiLU, SSM, gate, out-proj | Mamba |
| "mamba1"        | Mamba-1 block: diagonal [E, N] A, Δ/B/C from the convolved x  | Mamba-1 |

Head layout (``ssm``, ``ssm_diagonal``, ``ssm_lti``, ``mamba``): x_t = W_x u_t split into H heads of
P channels; per head, state [P, N]; y = W_o (SSM(x) + D ⊙ x). Then, with Δ folded into the input,

    A[i, j] = Σ_h L^h[i, j] (W_x^h W_o^h)ᵀ,
    L^h[i, j] = Σ_n C_i[n] B_j[n] Δ_j^h exp(A^h_n Σ_{k=j+1..i} Δ_k^h) + D^h δ_ij       (:meth:`mixing_matrix`)

which is Theorem 5's A_tj = π_tj A with π replaced by the SSM's L (Dao & Gu's "semiseparable matrix").

Three algorithms compute the same map (see :mod:`tvvar.decompositions.ssm_kernels`): :meth:`scan`
(sequential ``lax.scan``, the reference), :meth:`chunked` (chunked SSD, the default ``__call__``) and
:meth:`step` (one token, the decoding protocol). All accept an initial state and return the final state.

Initializations: S4D-real A_n = −(n+1) (diagonal), Mamba-2 A^h ~ U(1, 16) (scalar, A = −A^h), Δ
log-uniform in [dt_min, dt_max] = [1e-3, 0.1] through an inverse-softplus bias.

Only the causal mask is supported: a state-space recurrence is causal by construction, and a
bidirectional SSM (two scans) is a different model; ``mask="bidirectional"`` raises.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tvvar.core import Mixer, check_u, lecun_normal, param, register
from tvvar.decompositions.ssm_kernels import (
    acc_dtype,
    causal_conv,
    conv_step,
    ssd_chunked,
    ssd_scan,
    ssd_step,
)
from tvvar.typing import Array, DType, MaskKind

__all__ = ["SelectiveSSM", "ScalarSSM", "DiagonalSSM", "LTISSM", "DenseSSM", "MambaBlock", "Mamba1Block",
           "inverse_softplus"]

_HI = jax.lax.Precision.HIGHEST


def inverse_softplus(y: Array) -> Array:
    """x with softplus(x) = y > 0 (Mamba's Δ bias initialization)."""
    return y + jnp.log(-jnp.expm1(-y))


def _jitted(*static: str):
    """Run a method under ``jax.jit`` with the module itself as a pytree argument.

    Eager callers (tests, the kit's Jacobians, plotting) then compile each method once per shape instead
    of dispatching every small op; inside an outer jit or grad this is an ordinary nested jit.
    """

    def deco(fn):
        jfn = jax.jit(fn, static_argnames=static)

        @functools.wraps(fn)
        def method(self, *args, **kwargs):
            return jfn(self, *args, **kwargs)

        return method

    return deco


def _check_mask(mask: MaskKind, cls: str) -> None:
    if mask != "causal":
        raise NotImplementedError(
            f"{cls}: mask={mask!r} is not supported; a state-space recurrence is causal (use mask='causal')"
        )


def _positive_int(name: str, v: Any) -> int:
    if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
        raise ValueError(f"{name} must be an int ≥ 1, got {v!r}")
    return int(v)


def _check_decay_rates(A_init: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A continuous-time decay rate must have Re(A) < 0 for Ā = exp(ΔA) to decay."""
    a = np.asarray(A_init)
    if a.ndim == 0:
        a = np.full(shape, a)
    if a.shape != shape:
        raise ValueError(f"A_init must have shape {list(shape)} ({what}), got {list(a.shape)}")
    if np.iscomplexobj(a):
        if not np.all(a.real < 0):
            raise ValueError("A_init must have a strictly negative real part (decay requires Re(A) < 0), "
                             f"got max Re = {a.real.max()}")
        raise ValueError("A_init: complex decay rates are not supported by this real-valued SSM; pass the real part")
    if not np.all(np.isfinite(a)) or not np.all(a < 0):
        raise ValueError(f"A_init must be finite and strictly negative (decay requires Re(A) < 0), got max {a.max()}")
    return a


def _check_dt(dt: Any, H: int) -> np.ndarray:
    d = np.asarray(dt, dtype=np.float64)
    if d.ndim == 0:
        d = np.full((H,), d)
    if d.shape != (H,):
        raise ValueError(f"dt_init must be a scalar or have shape [H={H}], got {list(d.shape)}")
    if not np.all(np.isfinite(d)) or not np.all(d > 0):
        raise ValueError(f"dt_init (the step Δ) must be > 0, got min {d.min()}")
    return d


def _check_state(state: Any, shape: tuple[int, ...], name: str = "initial_state") -> None:
    got = getattr(state, "shape", None)
    if got is None or tuple(got) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)} (the SSM state [B, H, P, N]), got {got}")


# --------------------------------------------------------------------------------------------------
# Head-structured selective SSMs: scalar (Mamba-2), diagonal (Mamba-1 / S4D), LTI
# --------------------------------------------------------------------------------------------------


class SelectiveSSM(Mixer):
    """Abstract base: H heads × P channels, state [B, H, P, N], decay A^h (scalar) or A^h_n (diagonal).

    Options: ``num_heads`` H, ``head_dim`` P, ``state_size`` N, ``d_out``, ``selective`` (Δ_t, B_t, C_t
    from the input; else fixed parameters), ``skip`` (the D ⊙ x term), ``chunk_size`` (for ``__call__``),
    ``A_init`` (continuous-time decay rates, < 0), ``dt_init`` (Δ, > 0; the fixed Δ when not selective,
    the bias's initial value when selective), ``dt_min``/``dt_max`` (log-uniform Δ range otherwise).
    """

    diagonal: ClassVar[bool] = False
    default_heads: ClassVar[int | None] = 4

    def __init__(
        self,
        d_model: int,
        *,
        mask: MaskKind = "causal",
        rngs: nnx.Rngs,
        dtype: DType = jnp.float32,
        num_heads: int | None = None,
        head_dim: int | None = None,
        state_size: int = 16,
        d_out: int | None = None,
        selective: bool = True,
        skip: bool = True,
        chunk_size: int = 64,
        A_init: Any = None,
        dt_init: Any = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ):
        _check_mask(mask, type(self).__name__)
        D = _positive_int("d_model", d_model)
        H = _positive_int("num_heads", num_heads if num_heads is not None else (self.default_heads or D))
        if head_dim is None:
            if D % H:
                raise ValueError(f"d_model={D} is not divisible by num_heads={H}; pass head_dim")
            head_dim = D // H
        P, N = _positive_int("head_dim", head_dim), _positive_int("state_size", state_size)
        self.chunk_size = _positive_int("chunk_size", chunk_size)
        if not (0 < dt_min <= dt_max):
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min ≤ dt_max, got {dt_min}, {dt_max}")
        self.d_in, self.d_out, self.mask = D, _positive_int("d_out", d_out or D), mask
        self.num_heads, self.head_dim, self.state_size = H, P, N
        self.selective, self.skip = bool(selective), bool(skip)
        keys = iter(jax.random.split(rngs.params(), 8))

        self.W_x = param(lecun_normal(next(keys), (D, H, P), D, dtype), "embed", "heads", "kv")
        self.W_o = param(lecun_normal(next(keys), (H, P, self.d_out), H * P, dtype), "heads", "kv", "embed")
        # Decay rates: A = −exp(A_log) < 0 by construction, so Ā = exp(ΔA) ∈ (0, 1).
        a_shape = (H, N) if self.diagonal else (H,)
        if A_init is not None:
            A = _check_decay_rates(A_init, a_shape, "[H, N] diagonal" if self.diagonal else "[H] one per head")
        elif self.diagonal:
            A = -jnp.broadcast_to(jnp.arange(1, N + 1, dtype=dtype), a_shape)  # S4D-real
        else:
            # jnp, not numpy: the constructor must stay traceable (sharded init runs it under jit)
            A = -jax.random.uniform(next(keys), (H,), jnp.float32, 1.0, 16.0)  # Mamba-2
        self.A_log = param(jnp.log(-jnp.asarray(A, dtype)), *(("heads", "state") if self.diagonal else ("heads",)))
        if dt_init is not None:
            dt = jnp.asarray(_check_dt(dt_init, H), dtype)
        else:
            lo, hi = math.log(dt_min), math.log(dt_max)
            dt = jnp.exp(jax.random.uniform(next(keys), (H,), jnp.float32, lo, hi)).astype(dtype)
        self.b_dt = param(inverse_softplus(dt), "heads")
        if self.selective:
            self.W_dt = param(lecun_normal(next(keys), (D, H), D, dtype), "embed", "heads")
            self.W_B = param(lecun_normal(next(keys), (D, N), D, dtype), "embed", "state")
            self.W_C = param(lecun_normal(next(keys), (D, N), D, dtype), "embed", "state")
        else:
            self.B = param(lecun_normal(next(keys), (N,), 1, dtype), "state")
            self.C = param(lecun_normal(next(keys), (N,), N, dtype), "state")
        if self.skip:
            self.D = param(jnp.ones((H,), dtype), "heads")

    # -- parameters of the map ------------------------------------------------------------------

    def decay_rates(self) -> Array:
        """Continuous-time A as [H, 1] (scalar family) or [H, N] (diagonal family); all < 0."""
        A = -jnp.exp(self.A_log[...])
        return A if self.diagonal else A[:, None]

    def _selective(self, u: Array) -> tuple[Array, Array, Array]:
        """Δ [B,T,H], B [B,T,N], C [B,T,N] from u (selective) or fixed parameters broadcast over (B, T)."""
        Bsz, T, _ = u.shape
        adt = acc_dtype(u.dtype)
        w = lambda p: p[...].astype(adt)  # noqa: E731
        u32 = u.astype(adt)
        if self.selective:
            dt = jax.nn.softplus(jnp.einsum("btd,dh->bth", u32, w(self.W_dt), precision=_HI) + w(self.b_dt)[None, None])
            Bm = jnp.einsum("btd,dn->btn", u32, w(self.W_B), precision=_HI)
            Cm = jnp.einsum("btd,dn->btn", u32, w(self.W_C), precision=_HI)
        else:
            N, H = self.state_size, self.num_heads
            dt = jnp.broadcast_to(jax.nn.softplus(w(self.b_dt))[None, None], (Bsz, T, H))
            Bm = jnp.broadcast_to(w(self.B)[None, None], (Bsz, T, N))
            Cm = jnp.broadcast_to(w(self.C)[None, None], (Bsz, T, N))
        return dt, Bm, Cm

    def _value(self, u: Array) -> Array:
        """x = W_x u: [B, T, H, P] (the part of the map linear in u)."""
        return jnp.einsum("btd,dhp->bthp", u.astype(acc_dtype(u.dtype)), self.W_x[...].astype(acc_dtype(u.dtype)),
                          precision=_HI)

    def _skip(self, x: Array) -> Array:
        return self.D[...].astype(x.dtype)[None, None, :, None] * x if self.skip else jnp.zeros_like(x)

    def _out(self, y: Array, dtype: DType) -> Array:
        return jnp.einsum("bthp,hpe->bte", y, self.W_o[...].astype(y.dtype), precision=_HI).astype(dtype)

    def state_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        return (batch_size, self.num_heads, self.head_dim, self.state_size)

    # -- the three algorithms --------------------------------------------------------------------

    def _run(self, u: Array, initial_state: Array | None, algo) -> tuple[Array, Array]:
        check_u(u, self.d_in)
        if initial_state is not None:
            _check_state(initial_state, self.state_shape(u.shape[0]))
        dt, Bm, Cm = self._selective(u)
        x = self._value(u)
        la = dt[..., None] * self.decay_rates().astype(dt.dtype)[None, None]  # [B, T, H, 1|N], ≤ 0
        y, state = algo(x * dt[..., None], la, Bm, Cm, initial_state)
        return self._out(y + self._skip(x), u.dtype), state

    @_jitted()
    def scan(self, u: Array, initial_state: Array | None = None) -> tuple[Array, Array]:
        """Sequential ``lax.scan`` reference: u [B, T, D] → (h [B, T, D_out], final state [B, H, P, N])."""
        return self._run(u, initial_state, ssd_scan)

    @_jitted("chunk_size")
    def chunked(self, u: Array, chunk_size: int | None = None,
                initial_state: Array | None = None) -> tuple[Array, Array]:
        """Chunked SSD (T need not divide by ``chunk_size``): → (h [B, T, D_out], final state)."""
        Q = self.chunk_size if chunk_size is None else _positive_int("chunk_size", chunk_size)
        return self._run(u, initial_state, lambda *a: ssd_chunked(*a[:4], Q, a[4]))

    def __call__(self, u: Array) -> Array:
        return self.chunked(u)[0]

    def init_cache(self, batch_size: int, max_len: int | None = None, dtype: DType = jnp.float32) -> Array:
        """Decoding cache = the SSM state [B, H, P, N] (zeros), in float32 or better; ``max_len`` is unused."""
        return jnp.zeros(self.state_shape(_positive_int("batch_size", batch_size)), acc_dtype(dtype))

    @_jitted()
    def step(self, cache: Array, u_t: Array) -> tuple[Array, Array]:
        """One token: u_t [B, D] → (h_t [B, D_out], cache); equals row t of ``self(u)``."""
        if getattr(u_t, "ndim", None) != 2:
            raise ValueError(f"u_t must have shape [B, D={self.d_in}], got {getattr(u_t, 'shape', None)}")
        _check_state(cache, self.state_shape(u_t.shape[0]), "cache")
        u = u_t[:, None]
        check_u(u, self.d_in, name="u_t[:, None]")
        dt, Bm, Cm = self._selective(u)
        x = self._value(u)
        la = dt[..., None] * self.decay_rates().astype(dt.dtype)[None, None]
        y_t, cache = ssd_step(cache.astype(x.dtype), (x * dt[..., None])[:, 0], la[:, 0], Bm[:, 0], Cm[:, 0])
        return self._out((y_t[:, None] + self._skip(x)), u_t.dtype)[:, 0], cache

    # -- the TV-VAR coefficients -----------------------------------------------------------------

    @_jitted()
    def mixing_matrix(self, u: Array) -> Array:
        """L^h[i, j] (the SSM's analogue of attention's π, skip term included): [B, H, T, T].

        Computed from cumulative log-decays (cum_i − cum_j): a different formula from the chunked
        path's segment sums, meant for the small T of ``coefficients``.
        """
        check_u(u, self.d_in)
        T = u.shape[1]
        dt, Bm, Cm = self._selective(u)
        la = dt[..., None] * self.decay_rates().astype(dt.dtype)[None, None]  # [B, T, H, d]
        cum = jnp.cumsum(la, axis=1)
        causal = (jnp.arange(T)[:, None] >= jnp.arange(T)[None, :])[None, :, :, None, None]
        diff = cum[:, :, None] - cum[:, None, :]  # [B, i, j, H, d]
        decay = jnp.exp(jnp.where(causal, diff, -jnp.inf))
        if self.diagonal:
            L = jnp.einsum("bin,bjn,bijhn->bhij", Cm, Bm, decay, precision=_HI)
        else:
            L = jnp.einsum("bin,bjn,bijh->bhij", Cm, Bm, decay[..., 0], precision=_HI)
        L = L * jnp.moveaxis(dt, 1, 2)[:, :, None, :]  # Δ_j
        if self.skip:
            L = L + self.D[...].astype(L.dtype)[None, :, None, None] * jnp.eye(T, dtype=L.dtype)[None, None]
        return L

    def value_maps(self) -> Array:
        """(W_x^h W_o^h)ᵀ: [H, D_out, D_in]."""
        return jnp.einsum("dhp,hpe->hed", self.W_x[...], self.W_o[...], precision=_HI)

    @_jitted()
    def coefficients(self, u: Array) -> Array:
        """A[b, i, j] = Σ_h L^h[b, i, j] (W_x^h W_o^h)ᵀ: [B, T, T, D_out, D_in] (Eq. 78)."""
        L = self.mixing_matrix(u)
        return jnp.einsum("bhij,hed->bijed", L, self.value_maps().astype(L.dtype), precision=_HI).astype(u.dtype)


@register("ssm")
class ScalarSSM(SelectiveSSM):
    """Mamba-2 SSD: A_t = exp(Δ_t^h A^h) · I per head (scalar times identity); default 4 heads."""

    diagonal = False
    default_heads = 4


@register("ssm_diagonal")
class DiagonalSSM(SelectiveSSM):
    """Mamba-1 / S4D: A_t = diag(exp(Δ_t^h A^h_n)); default one head per channel (P = 1, as Mamba-1)."""

    diagonal = True
    default_heads = None


@register("ssm_lti")
class LTISSM(DiagonalSSM):
    """Time-invariant diagonal SSM (S4D-like; a classical linear VAR): Δ, B, C fixed parameters.

    Then A[i, j] depends on i − j only: the kernel K_k = Σ_n C_n B_n Δ exp(k Δ A_n) of a causal
    convolution (:meth:`kernel`, :meth:`convolve`).
    """

    def __init__(self, d_model: int, **kw):
        if kw.pop("selective", False):
            raise ValueError("ssm_lti is time-invariant: selective must be False "
                             "(use 'ssm_diagonal' for a selective SSM)")
        super().__init__(d_model, selective=False, **kw)

    def kernel(self, T: int, dtype: DType = jnp.float32) -> Array:
        """K[k, h] = Σ_n C_n B_n Δ^h exp(k Δ^h A^h_n), k = 0..T−1 (skip term excluded): [T, H]."""
        adt = acc_dtype(dtype)
        dt = jax.nn.softplus(self.b_dt[...].astype(adt))  # [H]
        A = self.decay_rates().astype(adt)  # [H, N]
        k = jnp.arange(T, dtype=adt)[:, None, None]
        CB = (self.C[...] * self.B[...]).astype(adt)[None, None, :]
        return jnp.sum(CB * jnp.exp(k * (dt[:, None] * A)[None]), axis=-1) * dt[None, :]

    @_jitted()
    def convolve(self, u: Array) -> Array:
        """The convolutional view: y_i = Σ_{k≤i} K[k] x_{i−k} (+ D x_i), as a Toeplitz product."""
        check_u(u, self.d_in)
        T = u.shape[1]
        K = self.kernel(T, u.dtype)
        lag = jnp.arange(T)[:, None] - jnp.arange(T)[None, :]
        toeplitz = jnp.where((lag >= 0)[..., None], K[jnp.clip(lag, 0, T - 1)], 0)  # [i, j, H]
        x = self._value(u)
        y = jnp.einsum("ijh,bjhp->bihp", toeplitz, x, precision=_HI)
        return self._out(y + self._skip(x), u.dtype)


# --------------------------------------------------------------------------------------------------
# The Mamba block: in-projection, short causal conv + SiLU, scalar SSM, SiLU gate, out-projection
# --------------------------------------------------------------------------------------------------


class _GatedBlockCoefficients:
    """``linear_coefficients``, ``intercept`` and ``coefficients`` of a gated SSM block (Mamba-1 and -2), whose output
    is linear in u given its gates plus the remainder r_i(u) of a conv bias. The block supplies ``_factors(u) ->
    (L, s, aff, gate)``, ``_linear(u, L, s, gate)`` (A_lin) and ``_intercept(L, aff, gate, shape)`` (r)."""

    @_jitted()
    def linear_coefficients(self, u: Array) -> Array:
        """A_lin[b, i, m]: the part of the map linear in u given the gates: [B, T, T, D_out, D_in]."""
        check_u(u, self.d_in)
        L, s, _, gate = self._factors(u)
        return self._linear(u, L, s, gate).astype(u.dtype)

    @_jitted()
    def intercept(self, u: Array) -> Array:
        """r_i(u) [B, T, D_out]: the affine remainder of the conv bias (zeros without one)."""
        check_u(u, self.d_in)
        L, _, aff, gate = self._factors(u)
        return self._intercept(L, aff, gate, u.shape[:2] + (self.d_out,)).astype(u.dtype)

    @_jitted()
    def coefficients(self, u: Array) -> Array:
        """A[b, i, m] = A_lin[b, i, m] + δ_im r_i u_iᵀ/‖u_i‖² (the remainder folded onto the diagonal, so that
        Σ_m A[b, i, m] u_m = mixer(u)_i — the law): [B, T, T, D_out, D_in]."""
        check_u(u, self.d_in)
        T = u.shape[1]
        L, s, aff, gate = self._factors(u)
        A = self._linear(u, L, s, gate)
        if aff is not None:
            r = self._intercept(L, aff, gate, None)  # [B, T, D_out]
            uu = u.astype(A.dtype)
            n2 = jnp.sum(jnp.square(uu), axis=-1)  # [B, T]
            inv = jnp.where(n2 > 0, 1.0 / jnp.where(n2 > 0, n2, 1.0), 0.0)
            fold = r[..., :, None] * uu[..., None, :] * inv[..., None, None]  # [B, T, D_out, D_in]
            A = A + jnp.eye(T, dtype=A.dtype)[None, :, :, None, None] * fold[:, :, None]
        return A.astype(u.dtype)


@register("mamba")
class MambaBlock(_GatedBlockCoefficients, ScalarSSM):
    """The Mamba-2 block (Dao & Gu 2024, ``mamba_ssm.modules.mamba2.Mamba2``) as a TV-VAR decomposition.

        [z, xBC, Δ̃] = in_proj(u);  xBC = conv_K(xBC) + b (depthwise, causal);  x = SiLU(xBC_x),
        B = SiLU(xBC_B), C = SiLU(xBC_C) (G groups of N; head h reads group ⌊h·G/H⌋);  Δ = softplus(Δ̃ + b_Δ);
        state_t = exp(Δ_t A) state_{t−1} + Δ_t B_t x_t,  A^h = −exp(A_log^h);  y = C_t state_t + D^h x_t;
        out = W_o g(y, z),   g = y ⊙ SiLU(z)                       (``norm=None``, Mamba-1-style gate)
                             g = RMSNorm_groups(y ⊙ SiLU(z)) ⊙ w    (``norm="rms"``, Mamba-2's gated RMSNorm)
                             g = RMSNorm_groups(y) ⊙ w ⊙ SiLU(z)    (``norm="rms", norm_before_gate=True``)

    The block is nonlinear in u; it is still a TV-VAR because every nonlinearity is a data-dependent
    *coefficient*, exactly as attention's π is. The decomposition (a documented choice, not the only one):

    * the value path u → W_x u → conv → ⊙ σ(xBC_x) → SSM (+ D x) → ⊙ γ → W_o is linear in u once the
      gates are fixed, because SiLU(a) = σ(a)·a: the activation is the data-dependent gate σ(xBC_x);
    * the gates σ(xBC_x), the output multiplier γ_i (SiLU(z_i); with the gated RMSNorm also w / rms_i, the
      root-mean-square of the group at row i — a data-dependent scalar per row and group, computed from
      the block's own y) and the selective Δ, B, C are computed from u (causally) and form the
      data-dependent part of A[i, j]; the short convolution composes into it as a banded Toeplitz factor.

    Hence A_lin[i, m] = Σ_{h,p} W_o[h,p]ᵀ γ_i[h,p] Σ_j L^h[i, j] σ(xBC_x)_j[h,p] w[j − m][h,p] W_x[:, h, p]ᵀ
    (:meth:`linear_coefficients`), with L^h[i, j] = Σ_n C_i^{g(h)}[n] B_j^{g(h)}[n] Δ_j^h e^{A^h Σ_{k=j+1..i} Δ_k^h}
    + D^h δ_ij (:meth:`mixing_matrix`).

    **The x-channel convolution bias** (``conv_x_bias=True``, which every Mamba-2 checkpoint has) makes the map
    *affine* in u: x_j = σ_j ⊙ (conv_j(W_x u) + b_x), so mixer(u) = Σ_m A_lin[i, m](u) u_m + r_i(u) with the
    data-dependent remainder r_i(u) = W_oᵀ(γ_i ⊙ Σ_j L[i, j] (σ_j ⊙ b_x)) (:meth:`intercept`). Unlike GPT-2's
    folded ``mixer_bias`` it is not a constant (the gates depend on u), so it cannot move out of the mixer.
    ``coefficients`` keeps the law mixer(u) == Σ_m A[i, m](u) u_m exact by carrying it as a data-dependent
    coefficient on the current input, A[i, i] = A_lin[i, i] + r_i u_iᵀ / ‖u_i‖² (rank one; exact whenever
    u_i ≠ 0 — in a model u_i = RMSNorm(x_i)·w, zero only if x_i or w is zero; at u_i = 0 the term is
    dropped, and the law fails at that row by r_i). Analyses that want the linear part alone use
    :meth:`linear_coefficients` and :meth:`intercept` (tested: their sum reproduces the mixer).

    Options beyond the SSM's: ``expand`` (E = expand·D, default 2), ``d_conv`` (kernel K, 0 disables the
    convolution), ``gate`` (the SiLU(z) gate), ``ngroups`` G (B/C groups; H divisible by G),
    ``conv_x_bias`` (a bias on the x channels of the conv; the B/C channels always have one), ``norm``
    (None or "rms": the gated RMSNorm), ``norm_before_gate``, ``norm_eps`` (1e-5) and ``norm_groups`` (the
    RMSNorm's groups over E, default G as in ``mamba_ssm``; transformers' Mamba2 normalises over all E: 1).
    ``initial_state`` of :meth:`scan` / :meth:`chunked` and the decoding cache are
    ``{"ssm": [B, H, P, N], "conv": [B, K−1, E + 2GN]}`` (no "conv" when K = 0).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        dtype: DType = jnp.float32,
        expand: int = 2,
        num_heads: int | None = None,
        head_dim: int | None = None,
        d_conv: int = 4,
        gate: bool = True,
        ngroups: int = 1,
        conv_x_bias: bool = False,
        norm: str | None = None,
        norm_before_gate: bool = False,
        norm_eps: float = 1e-5,
        norm_groups: int | None = None,
        **kw,
    ):
        if kw.get("selective", True) is not True:
            raise ValueError("mamba is selective by definition: selective must be True")
        if not (isinstance(d_conv, int) and d_conv >= 0):
            raise ValueError(f"d_conv must be an int ≥ 0 (0: no convolution), got {d_conv!r}")
        H = _positive_int("num_heads", num_heads if num_heads is not None else 4)
        if head_dim is None:
            E = _positive_int("expand", expand) * d_model
            if E % H:
                raise ValueError(f"expand·d_model={E} is not divisible by num_heads={H}; pass head_dim")
            head_dim = E // H
        G = _positive_int("ngroups", ngroups)
        if H % G:
            raise ValueError(f"num_heads={H} is not divisible by ngroups={G}")
        if norm not in (None, "rms"):
            raise ValueError(f"norm must be None or 'rms' (the gated RMSNorm), got {norm!r}")
        if not (isinstance(norm_eps, (int, float)) and not isinstance(norm_eps, bool) and norm_eps > 0):
            raise ValueError(f"norm_eps must be a number > 0, got {norm_eps!r}")
        super().__init__(d_model, rngs=rngs, dtype=dtype, num_heads=H, head_dim=head_dim, **kw)
        self.d_conv, self.gate, self.ngroups = d_conv, bool(gate), G
        self.conv_x_bias, self.norm, self.norm_before_gate = bool(conv_x_bias), norm, bool(norm_before_gate)
        self.norm_eps = float(norm_eps)
        E, N, D = H * self.head_dim, self.state_size, self.d_in
        NG = _positive_int("norm_groups", norm_groups if norm_groups is not None else G)
        if E % NG:
            raise ValueError(f"norm_groups={NG} does not divide the inner width E={E}")
        self.norm_groups = NG
        keys = jax.random.split(rngs.params(), 5)
        if G > 1:  # B and C per group: [D, G·N] (G = 1 keeps the SSM's [D, N])
            self.W_B = param(lecun_normal(keys[3], (D, G * N), D, dtype), "embed", "state")
            self.W_C = param(lecun_normal(keys[4], (D, G * N), D, dtype), "embed", "state")
        if self.gate:
            self.W_z = param(lecun_normal(keys[0], (D, H, self.head_dim), D, dtype), "embed", "heads", "kv")
        if d_conv:
            self.conv_w = param(lecun_normal(keys[1], (d_conv, E + 2 * G * N), d_conv, dtype), None, "mlp")
        self.conv_b = param(jnp.zeros((2 * G * N,), dtype), "state")
        if self.conv_x_bias:
            self.conv_bx = param(jnp.zeros((H, self.head_dim), dtype), "heads", "kv")
        if norm is not None:
            self.norm_w = param(jnp.ones((H, self.head_dim), dtype), "heads", "kv")

    @property
    def conv_channels(self) -> int:
        return self.num_heads * self.head_dim + 2 * self.ngroups * self.state_size

    def _pre_conv(self, u: Array) -> Array:
        """[W_x u, W_B u, W_C u]: [B, T, E + 2GN] (before the convolution)."""
        adt = acc_dtype(u.dtype)
        u32 = u.astype(adt)
        x = jnp.einsum("btd,dhp->bthp", u32, self.W_x[...].astype(adt), precision=_HI)
        Bm = jnp.einsum("btd,dn->btn", u32, self.W_B[...].astype(adt), precision=_HI)
        Cm = jnp.einsum("btd,dn->btn", u32, self.W_C[...].astype(adt), precision=_HI)
        return jnp.concatenate([x.reshape(x.shape[:2] + (-1,)), Bm, Cm], axis=-1)

    def _post_conv(self, xbc: Array, u: Array):
        """Split the convolved channels: (x [B,T,H,P], σ-gate [B,T,H,P], Δ [B,T,H], B, C [B,T,G,N], SiLU(z) or None)."""
        adt = xbc.dtype
        E, N, G = self.num_heads * self.head_dim, self.state_size, self.ngroups
        xc = xbc[..., :E].reshape(xbc.shape[:2] + (self.num_heads, self.head_dim))
        if self.conv_x_bias:
            xc = xc + self.conv_bx[...].astype(adt)[None, None]
        bc = xbc[..., E:] + self.conv_b[...].astype(adt)[None, None]
        Bm = jax.nn.silu(bc[..., : G * N]).reshape(bc.shape[:2] + (G, N))
        Cm = jax.nn.silu(bc[..., G * N:]).reshape(bc.shape[:2] + (G, N))
        s = jax.nn.sigmoid(xc)
        u32 = u.astype(adt)
        dt = jax.nn.softplus(jnp.einsum("btd,dh->bth", u32, self.W_dt[...].astype(adt), precision=_HI)
                             + self.b_dt[...].astype(adt)[None, None])
        g = (jax.nn.silu(jnp.einsum("btd,dhp->bthp", u32, self.W_z[...].astype(adt), precision=_HI)) if self.gate
             else None)
        return s * xc, s, dt, Bm, Cm, g

    def _multiplier(self, y: Array, g: Array | None) -> Array | None:
        """γ [B,T,H,P]: what the pre-output y (SSM + D x) is multiplied by before W_o (None: 1)."""
        if self.norm is None:
            return g
        NG, w = self.norm_groups, self.norm_w[...].astype(y.dtype)[None, None]
        yn = y if (self.norm_before_gate or g is None) else y * g
        flat = yn.reshape(yn.shape[:2] + (NG, -1))
        inv = jax.lax.rsqrt(jnp.mean(jnp.square(flat), axis=-1, keepdims=True) + self.norm_eps)
        inv = jnp.broadcast_to(inv, flat.shape).reshape(yn.shape)
        return w * inv if g is None else w * inv * g

    def _out_gated(self, y: Array, g: Array | None, dtype: DType) -> Array:
        m = self._multiplier(y, g)
        return self._out(y * m if m is not None else y, dtype)

    def _grouped(self, algo, x: Array, la: Array, Bm: Array, Cm: Array, state: Array | None):
        """Run the one-group kernel ``algo`` per B/C group (the group folded into the batch): x [B,T,H,P],
        la [B,T,H,1], Bm, Cm [B,T,G,N], state [B,H,P,N] → (y [B,T,H,P], state)."""
        G = self.ngroups
        if G == 1:
            return algo(x, la, Bm[:, :, 0], Cm[:, :, 0], state)
        Bsz, T, H, P = x.shape
        N = Bm.shape[-1]

        def fold(a):  # [B, T, H, ...] → [B·G, T, H/G, ...]
            a = a.reshape((Bsz, T, G, H // G) + a.shape[3:])
            return jnp.moveaxis(a, 2, 1).reshape((Bsz * G, T, H // G) + a.shape[4:])

        bc = lambda a: jnp.moveaxis(a, 2, 1).reshape(Bsz * G, T, N)  # noqa: E731
        st = None if state is None else state.reshape(Bsz * G, H // G, P, N)
        y, st = algo(fold(x), fold(la), bc(Bm), bc(Cm), st)
        y = jnp.moveaxis(y.reshape(Bsz, G, T, H // G, P), 1, 2).reshape(Bsz, T, H, P)
        return y, st.reshape(Bsz, H, P, N)

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        shapes = {"ssm": self.state_shape(batch_size)}
        if self.d_conv:
            shapes["conv"] = (batch_size, self.d_conv - 1, self.conv_channels)
        return shapes

    def _check_cache(self, state: Any, batch_size: int, name: str) -> None:
        shapes = self.state_shapes(batch_size)
        if not isinstance(state, dict) or set(state) != set(shapes):
            raise ValueError(f"{name} must be a dict with keys {sorted(shapes)} (the mamba block's state), "
                             f"got {type(state).__name__}"
                             + (f" with keys {sorted(state)}" if isinstance(state, dict) else ""))
        for k, shp in shapes.items():
            _check_state(state[k], shp, f"{name}[{k!r}]")

    def _run(self, u: Array, initial_state: dict | None, algo) -> tuple[Array, dict]:
        check_u(u, self.d_in)
        if initial_state is not None:
            self._check_cache(initial_state, u.shape[0], "initial_state")
        pre = self._pre_conv(u)
        final: dict[str, Array] = {}
        if self.d_conv:
            buf = None if initial_state is None else initial_state["conv"].astype(pre.dtype)
            pre, final["conv"] = causal_conv(pre, self.conv_w[...].astype(pre.dtype), buf)
        x, _, dt, Bm, Cm, g = self._post_conv(pre, u)
        la = dt[..., None] * self.decay_rates().astype(dt.dtype)[None, None]
        y, final["ssm"] = self._grouped(algo, x * dt[..., None], la, Bm, Cm,
                                        None if initial_state is None else initial_state["ssm"])
        return self._out_gated(y + self._skip(x), g, u.dtype), final

    def init_cache(self, batch_size: int, max_len: int | None = None, dtype: DType = jnp.float32) -> dict:
        """``{"ssm": zeros [B, H, P, N], "conv": zeros [B, K−1, E + 2GN]}``; ``max_len`` is unused."""
        shapes = self.state_shapes(_positive_int("batch_size", batch_size))
        return {k: jnp.zeros(s, acc_dtype(dtype)) for k, s in shapes.items()}

    @_jitted()
    def step(self, cache: dict, u_t: Array) -> tuple[Array, dict]:
        if getattr(u_t, "ndim", None) != 2:
            raise ValueError(f"u_t must have shape [B, D={self.d_in}], got {getattr(u_t, 'shape', None)}")
        self._check_cache(cache, u_t.shape[0], "cache")
        u = u_t[:, None]
        check_u(u, self.d_in, name="u_t[:, None]")
        pre = self._pre_conv(u)[:, 0]
        new: dict[str, Array] = {}
        if self.d_conv:
            pre, new["conv"] = conv_step(pre, self.conv_w[...].astype(pre.dtype), cache["conv"])
        x, _, dt, Bm, Cm, g = self._post_conv(pre[:, None], u)
        la = dt[..., None] * self.decay_rates().astype(dt.dtype)[None, None]

        def one(x1, la1, B1, C1, st):  # one token of the one-group recurrence
            y1, st = ssd_step(st, x1[:, 0], la1[:, 0], B1[:, 0], C1[:, 0])
            return y1[:, None], st

        y_t, new["ssm"] = self._grouped(one, x * dt[..., None], la, Bm, Cm, cache["ssm"].astype(x.dtype))
        return self._out_gated(y_t + self._skip(x), g, u_t.dtype)[:, 0], new

    def _selective(self, u: Array) -> tuple[Array, Array, Array]:
        """Δ [B,T,H] and per-head B, C [B,T,H,N] (head h reads group ⌊h·G/H⌋)."""
        pre = self._pre_conv(u)
        if self.d_conv:
            pre = causal_conv(pre, self.conv_w[...].astype(pre.dtype))[0]
        _, _, dt, Bm, Cm, _ = self._post_conv(pre, u)
        rep = self.num_heads // self.ngroups
        return dt, jnp.repeat(Bm, rep, axis=2), jnp.repeat(Cm, rep, axis=2)

    @_jitted()
    def mixing_matrix(self, u: Array) -> Array:
        """L^h[i, j] (skip term included): [B, H, T, T], each head with its group's B and C."""
        check_u(u, self.d_in)
        T = u.shape[1]
        dt, Bm, Cm = self._selective(u)
        la = dt * self.decay_rates()[:, 0].astype(dt.dtype)[None, None]  # [B, T, H]
        cum = jnp.cumsum(la, axis=1)
        causal = (jnp.arange(T)[:, None] >= jnp.arange(T)[None, :])[None, :, :, None]
        decay = jnp.exp(jnp.where(causal, cum[:, :, None] - cum[:, None, :], -jnp.inf))  # [B, i, j, H]
        L = jnp.einsum("bihn,bjhn,bijh->bhij", Cm, Bm, decay, precision=_HI)
        L = L * jnp.moveaxis(dt, 1, 2)[:, :, None, :]  # Δ_j
        if self.skip:
            L = L + self.D[...].astype(L.dtype)[None, :, None, None] * jnp.eye(T, dtype=L.dtype)[None, None]
        return L

    def _factors(self, u: Array):
        """(L [B,H,i,j], σ-gate s [B,T,H,P], the affine part s ⊙ b_x or None, γ [B,T,H,P] or None)."""
        pre = self._pre_conv(u)
        if self.d_conv:
            pre = causal_conv(pre, self.conv_w[...].astype(pre.dtype))[0]
        x, s, _, _, _, g = self._post_conv(pre, u)
        L = self.mixing_matrix(u)
        aff = s * self.conv_bx[...].astype(s.dtype)[None, None] if self.conv_x_bias else None
        y = jnp.einsum("bhij,bjhp->bihp", L, x, precision=_HI)  # SSM + D x, the pre-output
        return L, s, aff, self._multiplier(y, g)

    def _linear(self, u: Array, L: Array, s: Array, gamma: Array | None) -> Array:
        T = u.shape[1]
        adt = L.dtype
        H, P = self.num_heads, self.head_dim
        lag = jnp.arange(T)[:, None] - jnp.arange(T)[None, :]  # j − m
        if self.d_conv:
            w = self.conv_w[...][:, : H * P].reshape(self.d_conv, H, P).astype(adt)
            band = (lag >= 0) & (lag < self.d_conv)
            toeplitz = jnp.where(band[..., None, None], w[jnp.clip(lag, 0, self.d_conv - 1)], 0)  # [j, m, H, P]
        else:
            toeplitz = jnp.broadcast_to((lag == 0)[..., None, None], (T, T, H, P)).astype(adt)
        V = s[:, :, None] * toeplitz[None]  # [B, j, m, H, P]: x_j = Σ_m V[j, m] ⊙ (W_x u_m) (+ s_j ⊙ b_x)
        Gm = jnp.einsum("bhij,bjmhp->bimhp", L, V, precision=_HI)
        if gamma is not None:
            Gm = Gm * gamma[:, :, None]
        return jnp.einsum("bimhp,dhp,hpe->bimed", Gm, self.W_x[...].astype(adt), self.W_o[...].astype(adt),
                          precision=_HI)

    def _intercept(self, L: Array, aff: Array | None, gamma: Array | None, shape) -> Array:
        if aff is None:
            return jnp.zeros(shape, L.dtype)
        y = jnp.einsum("bhij,bjhp->bihp", L, aff, precision=_HI)
        return jnp.einsum("bihp,hpe->bie", y if gamma is None else y * gamma, self.W_o[...].astype(L.dtype),
                          precision=_HI)


# --------------------------------------------------------------------------------------------------
# The Mamba-1 block: in-projection, short causal conv + SiLU, diagonal selective SSM whose Δ, B, C are
# read from the convolved x (not from u), SiLU gate, out-projection
# --------------------------------------------------------------------------------------------------


@register("mamba1")
class Mamba1Block(_GatedBlockCoefficients, Mixer):
    """The Mamba-1 block (Gu & Dao 2023; ``mamba_ssm.modules.mamba_simple.Mamba``, transformers' ``MambaMixer``)
    as a TV-VAR decomposition. E = expand·D channels, N states per channel, R = ``dt_rank``:

        [x̃, z] = [W_x u, W_z u] (in_proj, E each);  x̃ = conv_K(x̃) + b (depthwise, causal);  x = SiLU(x̃);
        [Δ̃, B, C] = x_proj(x) (R, N, N: read from the convolved x, not from u);  Δ = softplus(W_Δ Δ̃ + b_Δ) [E];
        h_t[e, n] = exp(Δ_t[e] A[e, n]) h_{t−1}[e, n] + Δ_t[e] B_t[n] x_t[e],   A = −exp(A_log) [E, N];
        y_t[e] = Σ_n C_t[n] h_t[e, n] + D[e] x_t[e];   out_t = W_o (y_t ⊙ SiLU(z_t)).

    Unlike :class:`MambaBlock` (Mamba-2: one scalar decay per head, Δ from u) the transition is *diagonal per
    channel and state*, A_t = diag_{e,n}(exp(Δ_t[e] A[e, n])), i.e. :class:`DiagonalSSM` with one head per channel
    (P = 1), and Δ, B, C depend on u only through the gated, convolved x.

    **The TV-VAR coefficients.** SiLU(a) = σ(a)·a, so with the gates s_j = σ(x̃_j), g_i = SiLU(z_i) and the
    selective Δ, B, C held fixed (they are computed from u, causally, and are the data-dependent part of A_tj, as
    attention's π is) the block is linear in u up to the conv bias. Per channel e the SSM mixes positions by

        L^e[i, j] = Σ_n C_i[n] (Π_{k=j+1..i} exp(Δ_k[e] A[e, n])) Δ_j[e] B_j[n] + D[e] δ_ij     (j ≤ i)

    (:meth:`mixing_matrix`), the diagonal SSM's coefficient of Eq. 78, and the conv composes into it as a banded
    Toeplitz factor (w[k] weighs x̃_{j−k}):

        A_lin[i, m] = Σ_e g_i[e] Σ_j L^e[i, j] s_j[e] w[j − m][e] · W_o[e, :]ᵀ W_x[:, e]ᵀ      (m ≤ j ≤ i)

    (:meth:`linear_coefficients`). The conv bias b (``conv_bias=True``, every Mamba-1 checkpoint) makes the map
    affine: mixer(u)_i = Σ_m A_lin[i, m] u_m + r_i(u), r_i = W_oᵀ(g_i ⊙ Σ_j L[i, j] (s_j ⊙ b)) (:meth:`intercept`),
    carried, as in :class:`MambaBlock`, as the rank-one data-dependent coefficient A[i, i] += r_i u_iᵀ/‖u_i‖² (exact
    for u_i ≠ 0) so that ``mixer(u) == mix_dense(coefficients(u), u)``.

    Options: ``expand`` (2), ``state_size`` N (16), ``d_conv`` K (4), ``dt_rank`` R (default ⌈D/16⌉, mamba_ssm's
    "auto"), ``conv_bias`` (True), ``d_out``, ``chunk_size`` (of the chunked scan in ``__call__``), ``A_init``
    ([E, N] or a scalar, < 0; default S4D-real −(n+1) as Mamba-1 initialises it), ``dt_min``/``dt_max`` (the
    log-uniform initial Δ). The fast path is the diagonal chunked SSD (:func:`ssd_chunked` with H = E heads of
    P = 1); ``initial_state`` of :meth:`scan` / :meth:`chunked` and the decoding cache are
    ``{"ssm": [B, E, 1, N], "conv": [B, K−1, E]}``. Causal mask only.
    """

    def __init__(
        self,
        d_model: int,
        *,
        mask: MaskKind = "causal",
        rngs: nnx.Rngs,
        dtype: DType = jnp.float32,
        expand: int = 2,
        state_size: int = 16,
        d_conv: int = 4,
        dt_rank: int | None = None,
        conv_bias: bool = True,
        d_out: int | None = None,
        chunk_size: int = 64,
        A_init: Any = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ):
        _check_mask(mask, type(self).__name__)
        D = _positive_int("d_model", d_model)
        E = _positive_int("expand", expand) * D
        N, K = _positive_int("state_size", state_size), _positive_int("d_conv", d_conv)
        R = _positive_int("dt_rank", dt_rank if dt_rank is not None else math.ceil(D / 16))
        self.chunk_size = _positive_int("chunk_size", chunk_size)
        if not (0 < dt_min <= dt_max):
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min ≤ dt_max, got {dt_min}, {dt_max}")
        if not isinstance(conv_bias, bool):
            raise ValueError(f"conv_bias must be a bool, got {conv_bias!r}")
        self.d_in, self.d_out, self.mask = D, _positive_int("d_out", d_out or D), mask
        self.inner, self.state_size, self.d_conv, self.dt_rank, self.conv_bias = E, N, K, R, conv_bias
        keys = iter(jax.random.split(rngs.params(), 10))
        self.W_x = param(lecun_normal(next(keys), (D, E), D, dtype), "embed", "heads")
        self.W_z = param(lecun_normal(next(keys), (D, E), D, dtype), "embed", "heads")
        self.conv_w = param(lecun_normal(next(keys), (K, E), K, dtype), None, "heads")  # w[k] weighs x̃_{t−k}
        if conv_bias:  # PyTorch Conv1d's default: U(−1/√K, 1/√K)
            bound = 1.0 / math.sqrt(K)
            self.conv_b = param(jax.random.uniform(next(keys), (E,), dtype, -bound, bound), "heads")
        self.W_dtl = param(lecun_normal(next(keys), (E, R), E, dtype), "heads", None)  # x_proj, Δ̃ rows
        self.W_B = param(lecun_normal(next(keys), (E, N), E, dtype), "heads", "state")  # x_proj, B rows
        self.W_C = param(lecun_normal(next(keys), (E, N), E, dtype), "heads", "state")  # x_proj, C rows
        self.W_dt = param(lecun_normal(next(keys), (R, E), R, dtype), None, "heads")  # dt_proj (transposed)
        lo, hi = math.log(dt_min), math.log(dt_max)
        dt = jnp.exp(jax.random.uniform(next(keys), (E,), jnp.float32, lo, hi)).astype(dtype)
        self.b_dt = param(inverse_softplus(dt), "heads")
        if A_init is not None:
            A = jnp.asarray(_check_decay_rates(A_init, (E, N), "[E, N] per channel and state"), dtype)
        else:
            A = -jnp.broadcast_to(jnp.arange(1, N + 1, dtype=dtype), (E, N))  # S4D-real, Mamba-1's init
        self.A_log = param(jnp.log(-A), "heads", "state")
        self.D = param(jnp.ones((E,), dtype), "heads")
        self.W_o = param(lecun_normal(next(keys), (E, self.d_out), E, dtype), "heads", "embed")

    # -- pieces of the map ----------------------------------------------------------------------

    def decay_rates(self) -> Array:
        """Continuous-time A = −exp(A_log): [E, N], all < 0."""
        return -jnp.exp(self.A_log[...])

    def _pre_conv(self, u: Array) -> Array:
        """x̃ = W_x u before the convolution: [B, T, E], in float32 or better."""
        adt = acc_dtype(u.dtype)
        return jnp.einsum("btd,de->bte", u.astype(adt), self.W_x[...].astype(adt), precision=_HI)

    def _post_conv(self, xc: Array, u: Array):
        """From the convolved x̃ [B,T,E]: (x = SiLU(x̃ + b), σ-gate s, Δ [B,T,E], B, C [B,T,N], g = SiLU(W_z u))."""
        adt = xc.dtype
        w = lambda p: p[...].astype(adt)  # noqa: E731
        if self.conv_bias:
            xc = xc + w(self.conv_b)[None, None]
        s = jax.nn.sigmoid(xc)
        x = s * xc
        dlow = jnp.einsum("bte,er->btr", x, w(self.W_dtl), precision=_HI)
        Bm = jnp.einsum("bte,en->btn", x, w(self.W_B), precision=_HI)
        Cm = jnp.einsum("bte,en->btn", x, w(self.W_C), precision=_HI)
        dt = jax.nn.softplus(jnp.einsum("btr,re->bte", dlow, w(self.W_dt), precision=_HI) + w(self.b_dt)[None, None])
        g = jax.nn.silu(jnp.einsum("btd,de->bte", u.astype(adt), w(self.W_z), precision=_HI))
        return x, s, dt, Bm, Cm, g

    def _out(self, y: Array, x: Array, g: Array, dtype: DType) -> Array:
        """W_o ((y + D ⊙ x) ⊙ g): [B, T, D_out]."""
        y = (y + self.D[...].astype(y.dtype)[None, None] * x) * g
        return jnp.einsum("bte,eo->bto", y, self.W_o[...].astype(y.dtype), precision=_HI).astype(dtype)

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        return {"ssm": (batch_size, self.inner, 1, self.state_size), "conv": (batch_size, self.d_conv - 1, self.inner)}

    def _check_cache(self, state: Any, batch_size: int, name: str) -> None:
        shapes = self.state_shapes(batch_size)
        if not isinstance(state, dict) or set(state) != set(shapes):
            raise ValueError(f"{name} must be a dict with keys {sorted(shapes)} (the mamba1 block's state), "
                             f"got {type(state).__name__}"
                             + (f" with keys {sorted(state)}" if isinstance(state, dict) else ""))
        for k, shp in shapes.items():
            _check_state(state[k], shp, f"{name}[{k!r}]")

    # -- the algorithms --------------------------------------------------------------------------

    def _run(self, u: Array, initial_state: dict | None, algo) -> tuple[Array, dict]:
        check_u(u, self.d_in)
        if initial_state is not None:
            self._check_cache(initial_state, u.shape[0], "initial_state")
        pre = self._pre_conv(u)
        buf = None if initial_state is None else initial_state["conv"].astype(pre.dtype)
        xc, conv_state = causal_conv(pre, self.conv_w[...].astype(pre.dtype), buf)
        x, _, dt, Bm, Cm, g = self._post_conv(xc, u)
        la = dt[..., None] * self.decay_rates().astype(dt.dtype)[None, None]  # [B, T, E, N], ≤ 0
        y, ssm_state = algo((x * dt)[..., None], la, Bm, Cm, None if initial_state is None else initial_state["ssm"])
        return self._out(y[..., 0], x, g, u.dtype), {"ssm": ssm_state, "conv": conv_state}

    @_jitted()
    def scan(self, u: Array, initial_state: dict | None = None) -> tuple[Array, dict]:
        """Sequential ``lax.scan`` reference: u [B, T, D] → (h [B, T, D_out], final state)."""
        return self._run(u, initial_state, ssd_scan)

    @_jitted("chunk_size")
    def chunked(self, u: Array, chunk_size: int | None = None,
                initial_state: dict | None = None) -> tuple[Array, dict]:
        """Chunked diagonal SSD (T need not divide by ``chunk_size``): → (h [B, T, D_out], final state)."""
        Q = self.chunk_size if chunk_size is None else _positive_int("chunk_size", chunk_size)
        return self._run(u, initial_state, lambda *a: ssd_chunked(*a[:4], Q, a[4]))

    def __call__(self, u: Array) -> Array:
        return self.chunked(u)[0]

    def init_cache(self, batch_size: int, max_len: int | None = None, dtype: DType = jnp.float32) -> dict:
        """``{"ssm": zeros [B, E, 1, N], "conv": zeros [B, K−1, E]}``; ``max_len`` is unused."""
        shapes = self.state_shapes(_positive_int("batch_size", batch_size))
        return {k: jnp.zeros(s, acc_dtype(dtype)) for k, s in shapes.items()}

    @_jitted()
    def step(self, cache: dict, u_t: Array) -> tuple[Array, dict]:
        """One token: u_t [B, D] → (h_t [B, D_out], cache); equals row t of ``self(u)``."""
        if getattr(u_t, "ndim", None) != 2:
            raise ValueError(f"u_t must have shape [B, D={self.d_in}], got {getattr(u_t, 'shape', None)}")
        self._check_cache(cache, u_t.shape[0], "cache")
        u = u_t[:, None]
        check_u(u, self.d_in, name="u_t[:, None]")
        pre = self._pre_conv(u)[:, 0]
        xc, conv_state = conv_step(pre, self.conv_w[...].astype(pre.dtype), cache["conv"])
        x, _, dt, Bm, Cm, g = self._post_conv(xc[:, None], u)
        la = dt[..., None] * self.decay_rates().astype(dt.dtype)[None, None]
        y_t, ssm_state = ssd_step(cache["ssm"].astype(x.dtype), (x * dt)[:, 0, :, None], la[:, 0], Bm[:, 0], Cm[:, 0])
        return self._out(y_t[:, None, :, 0], x, g, u_t.dtype)[:, 0], {"ssm": ssm_state, "conv": conv_state}

    # -- the TV-VAR coefficients -----------------------------------------------------------------

    def _factors(self, u: Array):
        """(L [B, E, i, j], σ-gate s [B, T, E], the affine part s ⊙ b or None, g [B, T, E])."""
        pre = self._pre_conv(u)
        xc = causal_conv(pre, self.conv_w[...].astype(pre.dtype))[0]
        _, s, dt, Bm, Cm, g = self._post_conv(xc, u)
        T = u.shape[1]
        la = dt[..., None] * self.decay_rates().astype(dt.dtype)[None, None]  # [B, T, E, N]
        cum = jnp.cumsum(la, axis=1)
        causal = (jnp.arange(T)[:, None] >= jnp.arange(T)[None, :])[None, :, :, None, None]
        decay = jnp.exp(jnp.where(causal, cum[:, :, None] - cum[:, None, :], -jnp.inf))  # [B, i, j, E, N]
        L = jnp.einsum("bin,bjn,bijen->beij", Cm, Bm, decay, precision=_HI)
        L = L * jnp.moveaxis(dt, 1, 2)[:, :, None, :]  # Δ_j[e]
        L = L + self.D[...].astype(L.dtype)[None, :, None, None] * jnp.eye(T, dtype=L.dtype)[None, None]
        aff = s * self.conv_b[...].astype(s.dtype)[None, None] if self.conv_bias else None
        return L, s, aff, g

    @_jitted()
    def mixing_matrix(self, u: Array) -> Array:
        """L^e[i, j] (skip term included): [B, E, T, T], one per channel (see the class docstring)."""
        check_u(u, self.d_in)
        return self._factors(u)[0]

    def _linear(self, u: Array, L: Array, s: Array, g: Array) -> Array:
        T, K = u.shape[1], self.d_conv
        adt = L.dtype
        lag = jnp.arange(T)[:, None] - jnp.arange(T)[None, :]  # j − m
        w = self.conv_w[...].astype(adt)
        toeplitz = jnp.where(((lag >= 0) & (lag < K))[..., None], w[jnp.clip(lag, 0, K - 1)], 0)  # [j, m, E]
        V = s[:, :, None] * toeplitz[None]  # [B, j, m, E]: x_j = Σ_m V[j, m] ⊙ (W_x u_m) (+ s_j ⊙ b)
        Gm = jnp.einsum("beij,bjme->bime", L, V, precision=_HI) * g[:, :, None]
        return jnp.einsum("bime,de,eo->bimod", Gm, self.W_x[...].astype(adt), self.W_o[...].astype(adt),
                          precision=_HI)

    def _intercept(self, L: Array, aff: Array | None, g: Array, shape) -> Array:
        if aff is None:
            return jnp.zeros(shape, L.dtype)
        y = jnp.einsum("beij,bje->bie", L, aff, precision=_HI) * g
        return jnp.einsum("bie,eo->bio", y, self.W_o[...].astype(L.dtype), precision=_HI)


# --------------------------------------------------------------------------------------------------
# General time-varying dense A_t (Eq. 78 as written; small N)
# --------------------------------------------------------------------------------------------------


@register("ssm_dense")
class DenseSSM(Mixer):
    """Eq. 78 with a general dense N × N transition: state_t = A_t state_{t−1} + Δ_t B u_t, y_t = C state_t.

    Selective: A_t = A₀ + Σ_d u_t[d] W_A[d] (a dense matrix depending on the input) and
    Δ_t = softplus(w_Δ·u_t + b_Δ); otherwise A_t = A₀ and Δ = softplus(b_Δ). No structure is imposed on
    A_t, so stability is not guaranteed by the parametrization: the initialization keeps ‖A_t‖ < 1
    (A₀ a contraction, W_A small); meant for small N and analysis. A[i, j] = C A_i⋯A_{j+1} Δ_j B.
    State [B, N]; ``A0_init`` [N, N] fixes A₀. The chunked algorithm runs the recurrence inside chunks
    for all chunks at once and then across chunk boundaries (Q + T/Q sequential steps instead of T).
    """

    def __init__(
        self,
        d_model: int,
        *,
        mask: MaskKind = "causal",
        rngs: nnx.Rngs,
        dtype: DType = jnp.float32,
        state_size: int = 8,
        d_out: int | None = None,
        selective: bool = True,
        chunk_size: int = 16,
        A0_init: Any = None,
        dt_init: float = 0.5,
    ):
        _check_mask(mask, type(self).__name__)
        D, N = _positive_int("d_model", d_model), _positive_int("state_size", state_size)
        self.d_in, self.d_out, self.mask = D, _positive_int("d_out", d_out or D), mask
        self.state_size, self.selective = N, bool(selective)
        self.chunk_size = _positive_int("chunk_size", chunk_size)
        keys = jax.random.split(rngs.params(), 6)
        if A0_init is not None:
            A0 = np.asarray(A0_init, dtype=np.float64)
            if A0.shape != (N, N):
                raise ValueError(f"A0_init must have shape [N, N] = [{N}, {N}] (state_size={N}), got {list(A0.shape)}")
            A0 = jnp.asarray(A0, dtype)
        else:
            A0 = jnp.diag(jnp.linspace(0.9, 0.5, N, dtype=dtype)) + lecun_normal(keys[0], (N, N), N, dtype) * 0.1
        self.A0 = param(A0, "state", "state2")
        self.b_dt = param(inverse_softplus(jnp.asarray(_check_dt(dt_init, 1)[0], dtype)))
        self.B = param(lecun_normal(keys[1], (N, D), D, dtype), "state", "embed")
        self.C = param(lecun_normal(keys[2], (self.d_out, N), N, dtype), "embed", "state")
        if self.selective:
            self.W_A = param(lecun_normal(keys[3], (D, N, N), D * N, dtype) * 0.3, "embed", "state", "state2")
            self.w_dt = param(lecun_normal(keys[4], (D,), D, dtype), "embed")

    def _transitions(self, u: Array) -> tuple[Array, Array, Array]:
        """A_t [B, T, N, N], Δ_t [B, T] and B̄_t u_t = Δ_t B u_t [B, T, N]."""
        adt = acc_dtype(u.dtype)
        u32 = u.astype(adt)
        A0 = self.A0[...].astype(adt)
        Bu = jnp.einsum("nd,btd->btn", self.B[...].astype(adt), u32, precision=_HI)
        if self.selective:
            A_t = A0[None, None] + jnp.einsum("btd,dnm->btnm", u32, self.W_A[...].astype(adt), precision=_HI)
            dt = jax.nn.softplus(jnp.einsum("btd,d->bt", u32, self.w_dt[...].astype(adt), precision=_HI)
                                 + self.b_dt[...].astype(adt))
        else:
            A_t = jnp.broadcast_to(A0[None, None], u.shape[:2] + A0.shape)
            dt = jnp.broadcast_to(jax.nn.softplus(self.b_dt[...].astype(adt)), u.shape[:2])
        return A_t, dt, dt[..., None] * Bu

    def _readout(self, z: Array, dtype: DType) -> Array:
        return jnp.einsum("en,btn->bte", self.C[...].astype(z.dtype), z, precision=_HI).astype(dtype)

    def _init(self, u: Array, initial_state: Array | None) -> Array:
        shape = (u.shape[0], self.state_size)
        if initial_state is None:
            return jnp.zeros(shape, acc_dtype(u.dtype))
        got = getattr(initial_state, "shape", None)
        if got is None or tuple(got) != shape:
            raise ValueError(f"initial_state must have shape {list(shape)} (the SSM state [B, N]), got {got}")
        return initial_state.astype(acc_dtype(u.dtype))

    @_jitted()
    def scan(self, u: Array, initial_state: Array | None = None) -> tuple[Array, Array]:
        check_u(u, self.d_in)
        A_t, _, bu = self._transitions(u)

        def body(z, inp):
            A, b = inp
            z = jnp.einsum("bnm,bm->bn", A, z, precision=_HI) + b
            return z, z

        zT, zs = jax.lax.scan(body, self._init(u, initial_state), (jnp.moveaxis(A_t, 1, 0), jnp.moveaxis(bu, 1, 0)))
        return self._readout(jnp.moveaxis(zs, 0, 1), u.dtype), zT

    @_jitted("chunk_size")
    def chunked(self, u: Array, chunk_size: int | None = None,
                initial_state: Array | None = None) -> tuple[Array, Array]:
        check_u(u, self.d_in)
        Q = self.chunk_size if chunk_size is None else _positive_int("chunk_size", chunk_size)
        z0 = self._init(u, initial_state)
        A_t, _, bu = self._transitions(u)
        Bsz, T, N = bu.shape
        Q = min(Q, T)
        nc = -(-T // Q)
        pad = nc * Q - T
        eye = jnp.eye(N, dtype=A_t.dtype)
        # padded steps: A = I, input 0 (state unchanged)
        A_t = jnp.concatenate([A_t, jnp.broadcast_to(eye[None, None], (Bsz, pad, N, N))], axis=1)
        bu = jnp.pad(bu, [(0, 0), (0, pad), (0, 0)])
        A_c = jnp.moveaxis(A_t.reshape(Bsz, nc, Q, N, N), 2, 0)  # [l, b, c, N, N]
        b_c = jnp.moveaxis(bu.reshape(Bsz, nc, Q, N), 2, 0)

        # 1. inside every chunk at once, from a zero state: local states and prefix products
        def local(carry, inp):
            z, Pm = carry
            A, b = inp
            z = jnp.einsum("bcnm,bcm->bcn", A, z, precision=_HI) + b
            Pm = jnp.einsum("bcnm,bcmk->bcnk", A, Pm, precision=_HI)
            return (z, Pm), (z, Pm)

        start = (jnp.zeros((Bsz, nc, N), bu.dtype), jnp.broadcast_to(eye[None, None], (Bsz, nc, N, N)))
        _, (z_loc, P_loc) = jax.lax.scan(local, start, (A_c, b_c))  # [l, b, c, ...]

        # 2. across chunk boundaries: the state entering each chunk
        def across(z, inp):
            Pm, zl = inp
            return jnp.einsum("bnm,bm->bn", Pm, z, precision=_HI) + zl, z

        zT, z_in = jax.lax.scan(across, z0, (jnp.moveaxis(P_loc[-1], 1, 0), jnp.moveaxis(z_loc[-1], 1, 0)))
        # 3. add the entering state, carried through the chunk's prefix products
        z = z_loc + jnp.einsum("lbcnm,cbm->lbcn", P_loc, z_in, precision=_HI)
        z = jnp.moveaxis(z, 0, 2).reshape(Bsz, nc * Q, N)[:, :T]
        return self._readout(z, u.dtype), zT

    def __call__(self, u: Array) -> Array:
        return self.chunked(u)[0]

    def init_cache(self, batch_size: int, max_len: int | None = None, dtype: DType = jnp.float32) -> Array:
        return jnp.zeros((_positive_int("batch_size", batch_size), self.state_size), acc_dtype(dtype))

    @_jitted()
    def step(self, cache: Array, u_t: Array) -> tuple[Array, Array]:
        if getattr(u_t, "ndim", None) != 2:
            raise ValueError(f"u_t must have shape [B, D={self.d_in}], got {getattr(u_t, 'shape', None)}")
        u = u_t[:, None]
        check_u(u, self.d_in, name="u_t[:, None]")
        z = self._init(u, cache)
        A_t, _, bu = self._transitions(u)
        z = jnp.einsum("bnm,bm->bn", A_t[:, 0], z, precision=_HI) + bu[:, 0]
        return self._readout(z[:, None], u_t.dtype)[:, 0], z

    @_jitted()
    def coefficients(self, u: Array) -> Array:
        """A[i, j] = C A_i⋯A_{j+1} Δ_j B (j ≤ i): one scan over i carrying Φ(i, j) Δ_j B for every j at once."""
        check_u(u, self.d_in)
        A_t, dt, _ = self._transitions(u)
        adt = A_t.dtype
        Bsz, T = u.shape[:2]
        N, D = self.state_size, self.d_in
        Bbar = dt[..., None, None] * self.B[...].astype(adt)[None, None]  # [B, T, N, D]
        js = jnp.arange(T)

        def body(S, inp):
            i, A, Bb = inp  # S [B, j, N, D] = A_{i−1}⋯A_{j+1} B̄_j for j < i
            S = jnp.einsum("bnm,bjmd->bjnd", A, S, precision=_HI)
            S = jnp.where((js == i)[None, :, None, None], Bb[:, None], S)
            return S, S

        S0 = jnp.zeros((Bsz, T, N, D), adt)
        _, S = jax.lax.scan(body, S0, (js, jnp.moveaxis(A_t, 1, 0), jnp.moveaxis(Bbar, 1, 0)))  # [i, B, j, N, D]
        A = jnp.einsum("en,ibjnd->bijed", self.C[...].astype(adt), S, precision=_HI)
        return A.astype(u.dtype)
