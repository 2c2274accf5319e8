"""Theorem 5: the Transformer's attention is a TV-VAR decomposition,

    A_tj = π_tj A,      π_tj = softmax_j( u_{t-1}ᵀ B u_j ),      A = W_v,  B = W_qᵀ W_k     (Eqs. 45–53)

and with H heads  A_tj = Σ_h π^h_tj W_o^h W_v^h.  In code indices (DESIGN.md) the query of row i is
u_i and the admissible keys are j ∈ S(i):

    h_i = Σ_h Σ_{j∈S(i)} π^h[i, j] A_h u_j,     π^h[i, j] = softmax_{j∈S(i)}( u_iᵀ B_h u_j ).

Two parametrizations of the same family, one abstract base:

* :class:`BilinearAttention` (``"bilinear_attention"``) — the paper's form: per head an asymmetric
  bilinear form B_h [D, D] and a value-output map A_h [D_out, D] as free parameters.
* :class:`Attention` (``"attention"``) — the standard factorized form: W_q, W_k [D, H, K],
  W_v [D, H, K_v], W_o [H, K_v, D_out]; scores q_i·k_j / √K.

Conversions are exact: ``Attention.to_bilinear()`` gives B_h = W_q^h W_k^hᵀ / √K (the 1/√K scale is
folded into B) and A_h = (W_v^h W_o^h)ᵀ; ``BilinearAttention.factorize()`` inverts this by an SVD of
each B_h and A_h, and refuses with a clear error when rank(B_h) > K or rank(A_h) > K_v.

What Theorem 5 becomes in the pretrained-model options of :class:`Attention`:

* **rotary embeddings** (``rotary=True``, Llama/Mistral): q_i = R(i) W_qᵀ u_i, k_j = R(j) W_kᵀ u_j with R(p)
  a rotation, so R(i)ᵀ R(j) = R(j − i) and the form depends on the lag only,
  π^h[i, j] = softmax_j( u_iᵀ B_h(i − j) u_j ),   B_h(Δ) = W_q^h R(−Δ) W_k^hᵀ / √K
  (``relative_bilinear_forms(T)``); A_h is unchanged, so A[i, j] = Σ_h π^h[i, j] A_h still holds and
  ``coefficients``/``pi`` stay exact. There is no single B_h, so ``to_bilinear()`` refuses. A rotary scaling
  (``rope_scaling``: ``linear``, Llama 3.1's ``llama3``; :func:`rope_inv_freq`) changes only the frequencies of
  R, which stays a rotation with R(i)ᵀ R(j) = R(j − i): the same statement holds with the scaled R.
* **grouped-query attention** (``num_kv_heads`` = G < H): query head h uses key/value group h // (H/G),
  i.e. B_h and A_h share their W_k, W_v factors within a group; ``to_bilinear()`` expands to H heads.
* **query/key biases** (``qk_bias=True``, GPT-2): the score gains b_qᵀ W_kᵀ u_j (the other bias terms are
  constant in j and cancel in the softmax), which changes π only. The value and output biases add the
  constant Σ_h W_o^hᵀ b_v^h + b_o (Σ_j π = 1), an intercept the model adds after the mixer
  (``ModelConfig.mixer_bias``), so A[i, j] = Σ_h π^h[i, j] A_h is untouched.

(Our W_q is the transpose of the paper's: q_i = W_qᵀ u_i, so u_iᵀ B u_j = u_iᵀ W_q W_kᵀ u_j, which is
the paper's u_iᵀ W_qᵀ W_k u_j with W_q, W_k as [K, D] matrices.)

The fast paths never build the [T, T, D, D] coefficient tensor; softmax runs in float32 (or float64)
and masked scores are ``finfo.min``.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tvvar.core import (
    Mixer,
    check_cache_args,
    check_step_input,
    check_u,
    float32_or_better,
    lecun_normal,
    masked_fill_value,
    param,
    register,
)
from tvvar.decompositions.blockwise import blockwise_attention, check_block_size
from tvvar.typing import Array, DType, MaskKind

__all__ = ["SoftmaxBilinearAttention", "Attention", "BilinearAttention", "check_rope_scaling", "rope_inv_freq",
           "ROPE_SCALINGS"]

Implementation = Literal["auto", "einsum", "blockwise", "xla", "cudnn"]
IMPLEMENTATIONS = ("auto", "einsum", "blockwise", "xla", "cudnn")
# "auto" on CPU switches from the einsum path to blockwise attention at T ≥ this length. Measured
# (experiments/benchmarks/blockwise.py, forward+backward, H 8, K 64, 2 loaded cores): blockwise took 0.86×
# the einsum path's time at T = 128 (B 4), 0.75× at 512, 0.24× at 2048 — 256 keeps tiny T on einsum
BLOCKWISE_MIN_LENGTH = 256
_HI = jax.lax.Precision.HIGHEST

#: the rotary scalings implemented, with the fields each needs (as in a Hugging Face config.json ``rope_scaling``)
ROPE_SCALINGS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    # dynamic NTK: the frequencies are θ's own up to the original context L and grow with T beyond it; implemented
    # where the function is fixed — T ≤ L, longer inputs and caches refused (Attention.check_context)
    "dynamic": ("factor", "original_max_position_embeddings"),
}
#: scalings refused by name: what they would need
_ROPE_REFUSED = {
    "yarn": "YaRN's ramp and attention temperature are not implemented",
    "longrope": "LongRoPE's per-frequency factors are not implemented",
}


def check_rope_scaling(scaling: dict | None) -> dict | None:
    """A Hugging Face ``rope_scaling`` as a plain dict ``{"rope_type", fields...}`` (floats; the context length an
    int), or None; a type not implemented, a missing field or a value out of range is a ValueError naming it.
    ``"type"`` (older configs) is read as ``"rope_type"``; ``"default"`` is no scaling."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise TypeError(f"rope_scaling must be a dict (a config.json rope_scaling) or None, "
                        f"got {type(scaling).__name__}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return None
    if kind in _ROPE_REFUSED:
        raise ValueError(f"rope_scaling type {kind!r} is not supported: {_ROPE_REFUSED[kind]}")
    if kind not in ROPE_SCALINGS:
        raise ValueError(f"rope_scaling type must be one of {sorted(ROPE_SCALINGS)} (or 'default'), got {kind!r}")
    out: dict = {"rope_type": kind}
    for field in ROPE_SCALINGS[kind]:
        if field not in scaling:
            raise ValueError(f"rope_scaling of type {kind!r} needs {field!r}; got fields {sorted(scaling)}")
        v = scaling[field]
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
            raise ValueError(f"rope_scaling[{field!r}] must be a finite number > 0, got {v!r}")
        out[field] = int(v) if field == "original_max_position_embeddings" else float(v)
    if kind == "llama3" and not out["high_freq_factor"] > out["low_freq_factor"]:
        raise ValueError(f"rope_scaling: high_freq_factor ({out['high_freq_factor']}) must exceed low_freq_factor "
                         f"({out['low_freq_factor']})")
    return out


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None, dtype=jnp.float32) -> Array:
    """The K/2 rotary frequencies θ^{−2k/K}, k = 0..K/2−1, under ``scaling`` (:func:`check_rope_scaling`):

    * ``linear``: every frequency divided by ``factor`` (positions p ↦ p / factor);
    * ``dynamic`` (dynamic NTK): θ's own frequencies — its base is rescaled only once the sequence outgrows the
      original context L, and :class:`Attention` refuses sequences and caches longer than L;
    * ``llama3`` (Llama 3.1): with wavelength λ_k = 2π/f_k and the original context L, λ_k < L/high_freq_factor
      keeps f_k, λ_k > L/low_freq_factor takes f_k/factor, and between them
      f_k ((1 − s)/factor + s) with s = (L/λ_k − low_freq_factor)/(high_freq_factor − low_freq_factor).
    """
    f = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=dtype) / head_dim))
    if scaling is None:
        return f
    kind, factor = scaling["rope_type"], scaling["factor"]
    if kind == "linear":
        return f / factor
    if kind == "dynamic":
        return f
    L, lo, hi = scaling["original_max_position_embeddings"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelen = 2 * math.pi / f
    s = (L / wavelen - lo) / (hi - lo)
    mid = (1 - s) * f / factor + s * f
    return jnp.where(wavelen < L / hi, f, jnp.where(wavelen > L / lo, f / factor, mid))


class SoftmaxBilinearAttention(Mixer):
    """Abstract base of the Theorem 5 family: A[i, j] = Σ_h π^h[i, j] A_h.

    Subclasses supply ``scores(u)`` (the bilinear logits u_iᵀ B_h u_j, [B, H, T, T], before masking),
    ``value_maps()`` (A_h, [H, D_out, D_in]) and ``bilinear_forms()`` (B_h, [H, D_in, D_in]).
    """

    num_heads: int
    #: a sliding window of this many keys (S(i) = {i − window + 1, …, i}, causal only), or None
    window: int | None = None

    def support(self, T: int) -> Array:
        """Boolean [T, T]: True where j ∈ S(i) — the causal (or bidirectional) support, banded by ``window``."""
        allowed = super().support(T)
        if self.window is not None:
            allowed = allowed & (jnp.arange(T)[None, :] > jnp.arange(T)[:, None] - self.window)
        return allowed

    def scores(self, u: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def value_maps(self) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def bilinear_forms(self) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def pi(self, u: Array) -> Array:
        """The association matrix π^h[i, j] = softmax_{j∈S(i)}(u_iᵀ B_h u_j): [B, H, T, T].

        Rows sum to 1, entries ≥ 0, exactly 0 for j ∉ S(i).
        """
        check_u(u, self.d_in)
        return self._pi(self.scores(u), u.dtype)

    def _pi(self, s: Array, dtype: DType) -> Array:
        T = s.shape[-1]
        s = s.astype(float32_or_better(dtype))
        allowed = self.support(T)
        s = jnp.where(allowed, s, masked_fill_value(s.dtype))
        p = jax.nn.softmax(s, axis=-1)
        # exact zeros outside S(i) even if a whole row were masked
        return jnp.where(allowed, p, 0).astype(dtype)

    def _step_pi(self, s_BxHxL: Array, index: Array, dtype: DType) -> Array:
        """Row ``index`` of π over a cache of L slots: softmax over j ≤ index, exact 0 beyond.

        The same masking as :meth:`_pi` (finfo.min, float32/64 softmax), so a decoding step reproduces
        row t of the full forward; the unfilled slots j > index are the j ∉ S(t).
        """
        L = s_BxHxL.shape[-1]
        s = s_BxHxL.astype(float32_or_better(dtype))
        allowed_L = jnp.arange(L) <= index
        if self.window is not None:
            allowed_L = allowed_L & (jnp.arange(L) > index - self.window)
        s = jnp.where(allowed_L, s, masked_fill_value(s.dtype))
        p = jax.nn.softmax(s, axis=-1)
        return jnp.where(allowed_L, p, 0).astype(dtype)

    def head_outputs(self, pi: Array, u: Array) -> Array:
        """Σ_{j∈S(i)} π^h[i, j] A_h u_j for a given association π [B, H, T, T]: [B, H, T, D_out].

        The mixer is the sum over heads, ``self(u) == head_outputs(self.pi(u), u).sum(1)`` (Theorem 5);
        the heads apart are what the latent-position model of Theorem 6 needs (tvvar.theory.transformer.elbo).
        Laid out like π (head before row) so the product with π is a plain batched matmul. This
        generic version applies A_h to every u_j; subclasses with low-rank A_h override it.
        """
        v_BxHxTxDo = jnp.einsum("hde,bje->bhjd", self.value_maps().astype(u.dtype), u, precision=_HI)
        return jnp.einsum("bhij,bhjd->bhid", pi.astype(u.dtype), v_BxHxTxDo, precision=_HI)

    def coefficients(self, u: Array) -> Array:
        """A[b, i, j] = Σ_h π^h[b, i, j] A_h: [B, T, T, D_out, D_in] (Theorem 5, Eq. 53)."""
        pi = self.pi(u)
        return jnp.einsum("bhij,hde->bijde", pi, self.value_maps().astype(u.dtype), precision=_HI)


@register("bilinear_attention")
class BilinearAttention(SoftmaxBilinearAttention):
    """Theorem 5 in the paper's own parameters: free asymmetric B_h [D, D] and A_h [D_out, D]."""

    def __init__(
        self,
        d_model: int,
        *,
        mask: MaskKind = "causal",
        rngs: nnx.Rngs,
        num_heads: int = 1,
        d_out: int | None = None,
        dtype: DType = jnp.float32,
    ):
        if num_heads < 1:
            raise ValueError(f"num_heads must be ≥ 1, got {num_heads}")
        self.d_in, self.d_out, self.mask, self.num_heads = d_model, d_out or d_model, mask, num_heads
        D, Do, H = self.d_in, self.d_out, num_heads
        self.B = param(lecun_normal(rngs.params(), (H, D, D), D, dtype), "heads", "embed", "embed2")
        self.A = param(lecun_normal(rngs.params(), (H, Do, D), D * H, dtype), "heads", "embed2", "embed")

    def bilinear_forms(self) -> Array:
        return self.B[...]

    def value_maps(self) -> Array:
        return self.A[...]

    def scores(self, u: Array) -> Array:
        return jnp.einsum("bid,hde,bje->bhij", u, self.B[...].astype(u.dtype), u, precision=_HI)

    def __call__(self, u: Array) -> Array:
        check_u(u, self.d_in)
        pi = self._pi(self.scores(u), u.dtype)
        v = jnp.einsum("hde,bje->bjhd", self.A[...].astype(u.dtype), u, precision=_HI)  # A_h u_j
        return jnp.einsum("bhij,bjhd->bid", pi, v, precision=_HI)

    # ---- decoding protocol (tvvar.generate): cache the keys u_j and the values A_h u_j ----------

    def init_cache(self, batch_size: int, max_len: int, dtype: DType = jnp.float32) -> dict:
        """{"u": [B, L, D] keys u_j, "v": [B, L, H, D_out] values A_h u_j, "index": int32 t}."""
        check_cache_args(self, batch_size, max_len)
        return {"u": jnp.zeros((batch_size, max_len, self.d_in), dtype),
                "v": jnp.zeros((batch_size, max_len, self.num_heads, self.d_out), dtype),
                "index": jnp.zeros((), jnp.int32)}

    def step(self, cache: dict, u_t: Array) -> tuple[Array, dict]:
        """h_t = Σ_h Σ_{j≤t} π^h[t, j] A_h u_j with π^h[t, j] = softmax_{j≤t}(u_tᵀ B_h u_j) (Theorem 5),
        row t of ``self(u)``; t = ``cache["index"]``. u_t: [B, D] → h_t: [B, D_out]."""
        B_, L = cache["u"].shape[:2]
        check_step_input(self, cache, u_t, B_, L)
        t = cache["index"]
        dt = u_t.dtype
        Bf = self.B[...].astype(dt)
        v_BxHxDo = jnp.einsum("hde,be->bhd", self.A[...].astype(dt), u_t, precision=_HI)
        u_BxLxD = jax.lax.dynamic_update_slice_in_dim(cache["u"], u_t[:, None].astype(cache["u"].dtype), t, axis=1)
        v_BxLxHxDo = jax.lax.dynamic_update_slice_in_dim(
            cache["v"], v_BxHxDo[:, None].astype(cache["v"].dtype), t, axis=1)
        s_BxHxL = jnp.einsum("bd,hde,bje->bhj", u_t, Bf, u_BxLxD.astype(dt), precision=_HI)
        pi_BxHxL = self._step_pi(s_BxHxL, t, dt)
        h_BxDo = jnp.einsum("bhj,bjhd->bd", pi_BxHxL, v_BxLxHxDo.astype(dt), precision=_HI)
        return h_BxDo, {"u": u_BxLxD, "v": v_BxLxHxDo, "index": t + 1}

    @classmethod
    def from_weights(cls, B: Array, A: Array, *, mask: MaskKind = "causal") -> BilinearAttention:
        """Build from B [H, D, D] and A [H, D_out, D]."""
        if B.ndim != 3 or B.shape[1] != B.shape[2]:
            raise ValueError(f"B must have shape [H, D, D], got {B.shape}")
        if A.ndim != 3 or A.shape[0] != B.shape[0] or A.shape[2] != B.shape[1]:
            raise ValueError(f"A must have shape [H={B.shape[0]}, D_out, D={B.shape[1]}], got {A.shape}")
        m = cls(B.shape[1], mask=mask, rngs=nnx.Rngs(0), num_heads=B.shape[0], d_out=A.shape[1], dtype=B.dtype)
        m.B[...] = B
        m.A[...] = A
        return m

    def factorize(self, head_dim: int | None = None, value_dim: int | None = None, rtol: float = 1e-7) -> Attention:
        """The standard W_q, W_k, W_v, W_o with the same map (exact up to rounding).

        B_h = U S Vᵀ gives W_q = U √S K^{1/4}, W_k = V √S K^{1/4}, so W_q W_kᵀ / √K = B_h. Raises if
        rank(B_h) > ``head_dim`` or rank(A_h) > ``value_dim`` (ranks counted at relative tolerance
        ``rtol``). Defaults: the largest rank over heads.
        """
        B = np.asarray(self.B[...], dtype=np.float64)
        A = np.asarray(self.A[...], dtype=np.float64)
        D, Do = self.d_in, self.d_out

        def rank(s):
            return int(np.sum(s > rtol * max(s.max(), 1e-300)))

        UB, SB, VBt = np.linalg.svd(B)  # [H, D, D], [H, D], [H, D, D]
        UA, SA, VAt = np.linalg.svd(np.swapaxes(A, 1, 2))  # A_hᵀ = W_v W_o: [H, D, Do]
        rB = max(rank(s) for s in SB)
        rA = max(rank(s) for s in SA)
        K = rB if head_dim is None else head_dim
        Kv = rA if value_dim is None else value_dim
        K, Kv = max(K, 1), max(Kv, 1)
        if rB > K:
            raise ValueError(f"head_dim={K} is smaller than rank(B_h)={rB}; B cannot be factorized as W_q W_kᵀ/√K")
        if rA > Kv:
            raise ValueError(f"value_dim={Kv} is smaller than rank(A_h)={rA}; A cannot be factorized as (W_v W_o)ᵀ")
        if K > D or Kv > min(D, Do):
            raise ValueError(f"head_dim={K} must be ≤ D={D} and value_dim={Kv} ≤ min(D, D_out)={min(D, Do)}")
        sB = np.sqrt(SB[:, :K]) * K**0.25
        wq = np.einsum("hdk,hk->dhk", UB[:, :, :K], sB)
        wk = np.einsum("hkd,hk->dhk", VBt[:, :K, :], sB)
        sA = np.sqrt(SA[:, :Kv])
        wv = np.einsum("hdk,hk->dhk", UA[:, :, :Kv], sA)
        wo = np.einsum("hke,hk->hke", VAt[:, :Kv, :], sA)
        dt = self.B[...].dtype
        return Attention.from_weights(*(jnp.asarray(w, dt) for w in (wq, wk, wv, wo)), mask=self.mask)


@register("attention")
class Attention(SoftmaxBilinearAttention):
    """Standard multi-head attention, W_q, W_k [D, H, K], W_v [D, H, K_v], W_o [H, K_v, D_out].

    ``implementation``: ``"einsum"`` (hand-written, fastest on few CPU cores at short T), ``"blockwise"``
    (:func:`tvvar.decompositions.blockwise.blockwise_attention`: online softmax by ``block_size`` tiles, no
    [T, T] array forward or backward, any backend and dtype), ``"xla"`` or ``"cudnn"``
    (``jax.nn.dot_product_attention``; cuDNN only on a GPU backend — elsewhere a ValueError, no silent
    fallback — and it raises on unsupported shapes). That kernel forms its scores in float32, so float64
    input runs the einsum path for ``"xla"``/``"cudnn"``. ``"auto"`` (default) is ``"blockwise"`` on CPU for
    T ≥ ``BLOCKWISE_MIN_LENGTH`` and ``"einsum"`` otherwise. ``coefficients`` and ``pi`` are the same
    whatever the implementation.

    ``window``: sliding-window attention (Mistral), S(i) = {i − window + 1, …, i} — a TV-VAR with a banded
    support; π and A[i, j] are exactly 0 outside the band, ``support(T)`` says so (the decomposition kit checks
    it), and the blockwise path never visits the key blocks left of every row's window.

    ``score_scale`` (Gemma 2's query_pre_attn_scalar^(-1/2)) replaces the score scale 1/√K; ``logit_softcap`` = c
    soft-caps the scores, s ↦ c·tanh(s/c), before the mask and the softmax (Gemma 2): π is then no bilinear form —
    the form methods (``bilinear_forms``, ``relative_bilinear_forms``, ``affine_relative_forms``, ``to_bilinear``)
    refuse — but A[i, j] = Σ_h π^h[i, j] A_h still holds, with ``scores`` the capped scores. A soft-capped layer
    runs the einsum path (``"auto"`` chooses it; ``"blockwise"``/``"xla"``/``"cudnn"`` are refused).
    """

    def __init__(
        self,
        d_model: int,
        *,
        mask: MaskKind = "causal",
        rngs: nnx.Rngs,
        num_heads: int = 4,
        head_dim: int | None = None,
        value_dim: int | None = None,
        d_out: int | None = None,
        dtype: DType = jnp.float32,
        implementation: Implementation = "auto",
        block_size: int = 256,
        num_kv_heads: int | None = None,
        qk_bias: bool = False,
        rotary: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        window: int | None = None,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        rotary_dim: int | None = None,
        score_scale: float | None = None,
        logit_softcap: float | None = None,
    ):
        if num_heads < 1:
            raise ValueError(f"num_heads must be ≥ 1, got {num_heads}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window (a sliding window, in keys) must be an int ≥ 1 or None, got {window!r}")
        if window is not None and mask != "causal":
            raise ValueError(f"window (a sliding window) needs mask='causal', got mask={mask!r}")
        self.window = window
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if not (isinstance(num_kv_heads, int) and num_kv_heads >= 1 and num_heads % num_kv_heads == 0):
            raise ValueError(f"num_kv_heads must be an int ≥ 1 dividing num_heads={num_heads}, got {num_kv_heads!r}")
        if not (isinstance(rope_theta, (int, float)) and math.isfinite(rope_theta) and rope_theta > 0):
            raise ValueError(f"rope_theta must be a finite number > 0, got {rope_theta!r}")
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}; pass head_dim")
            head_dim = d_model // num_heads
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.block_size = check_block_size(block_size)
        self.d_in, self.d_out, self.mask = d_model, d_out or d_model, mask
        self.num_heads, self.head_dim = num_heads, head_dim
        self.value_dim = value_dim or head_dim
        self.implementation = implementation
        # partial rotary (GPT-NeoX / Pythia): only the first rotary_dim channels of each head rotate, the rest pass
        if rotary_dim is not None and not (isinstance(rotary_dim, int) and not isinstance(rotary_dim, bool)
                                           and 2 <= rotary_dim <= head_dim and rotary_dim % 2 == 0):
            raise ValueError(f"rotary_dim must be an even int in [2, head_dim={head_dim}] or None, got {rotary_dim!r}")
        if rotary_dim is not None and not rotary:
            raise ValueError("rotary_dim needs rotary=True (it says how many channels of a head rotate)")
        if rotary and rotary_dim is None and head_dim % 2:
            raise ValueError(f"rotary=True needs an even head_dim, got {head_dim}")
        self.rotary_dim = head_dim if rotary_dim is None else rotary_dim
        # Gemma 2: scores q·k · score_scale (query_pre_attn_scalar^(-1/2)) in place of 1/√K, and soft-capped,
        # s ↦ c·tanh(s/c) with c = logit_softcap, before the mask and the softmax
        for name, v in (("score_scale", score_scale), ("logit_softcap", logit_softcap)):
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                      and v > 0):
                raise ValueError(f"{name} must be a finite number > 0 or None, got {v!r}")
        if logit_softcap is not None and implementation in ("blockwise", "xla", "cudnn"):
            raise ValueError(f"logit_softcap needs implementation 'einsum' or 'auto' (the {implementation!r} path has "
                             "no soft-capping)")
        self.score_scale = None if score_scale is None else float(score_scale)
        self.logit_softcap = None if logit_softcap is None else float(logit_softcap)
        self.num_kv_heads, self.qk_bias, self.rotary, self.rope_theta = num_kv_heads, qk_bias, rotary, float(rope_theta)
        self.rope_scaling = check_rope_scaling(rope_scaling)
        if self.rope_scaling is not None and not rotary:
            raise ValueError("rope_scaling needs rotary=True (it rescales the rotary frequencies)")
        D, H, K, Kv, Do = d_model, num_heads, head_dim, self.value_dim, self.d_out
        G = num_kv_heads
        keys = jax.random.split(rngs.params(), 4)
        self.wq = param(lecun_normal(keys[0], (D, H, K), D, dtype), "embed", "heads", "kv")
        self.wk = param(lecun_normal(keys[1], (D, G, K), D, dtype), "embed", "heads", "kv")
        self.wv = param(lecun_normal(keys[2], (D, G, Kv), D, dtype), "embed", "heads", "kv")
        self.wo = param(lecun_normal(keys[3], (H, Kv, Do), H * Kv, dtype), "heads", "kv", "embed")
        # query/key biases move only the scores, so A[i, j] = Σ_h π^h[i, j] A_h keeps its form (the value and
        # output biases are the constant Σ_h W_o^hᵀ b_v^h + b_o, which the model adds after the mixer)
        self.bq = param(jnp.zeros((H, K), dtype), "heads", "kv") if qk_bias else None
        self.bk = param(jnp.zeros((G, K), dtype), "heads", "kv") if qk_bias else None
        # QK-norm (OLMo 2): RMSNorm over the whole query width H·K and key width G·K, gains per channel, before the
        # rotation; π is then no bilinear form (the scores read q/‖q‖), but A[i, j] = Σ_h π^h[i, j] A_h holds
        if not isinstance(qk_norm, bool):
            raise TypeError(f"qk_norm must be a bool, got {qk_norm!r}")
        if not (isinstance(qk_norm_eps, (int, float)) and math.isfinite(qk_norm_eps) and qk_norm_eps > 0):
            raise ValueError(f"qk_norm_eps must be a finite number > 0, got {qk_norm_eps!r}")
        self.qk_norm, self.qk_norm_eps = qk_norm, float(qk_norm_eps)
        self.q_norm = param(jnp.ones((H, K), dtype), "heads", "kv") if qk_norm else None
        self.k_norm = param(jnp.ones((G, K), dtype), "heads", "kv") if qk_norm else None

    def _per_head(self, w: Array) -> Array:
        """Key/value weights [D, G, ·] (grouped-query attention) repeated to one per query head [D, H, ·];
        query head h reads key/value group h // (H / G)."""
        rep = self.num_heads // self.num_kv_heads
        return w if rep == 1 else jnp.repeat(w, rep, axis=1)

    def _rope(self, x_BxTxHxK: Array, positions: Array) -> Array:
        """Rotary embedding R(p) x at positions p [T]: the first ``rotary_dim`` = r channels rotate in pairs
        (k, k + r/2) by p θ^{-2k/r}; the others pass unchanged (partial rotary, GPT-NeoX)."""
        K, r = self.head_dim, self.rotary_dim
        ft = float32_or_better(x_BxTxHxK.dtype)
        inv_freq = rope_inv_freq(r, self.rope_theta, self.rope_scaling, ft)
        ang = positions.astype(ft)[:, None] * inv_freq[None, :]  # [T, r/2]
        ang = jnp.concatenate([ang, ang], axis=-1)[None, :, None, :]
        cos, sin = jnp.cos(ang).astype(x_BxTxHxK.dtype), jnp.sin(ang).astype(x_BxTxHxK.dtype)
        x_rot, x_pass = x_BxTxHxK[..., :r], x_BxTxHxK[..., r:]
        half = jnp.concatenate([-x_rot[..., r // 2:], x_rot[..., : r // 2]], axis=-1)
        out = x_rot * cos + half * sin
        return out if r == K else jnp.concatenate([out, x_pass], axis=-1)

    def rotation(self, positions: Array) -> Array:
        """The rotary matrices R(p) [len(p), K, K] with rope(x, p) = R(p) x; R(i)ᵀ R(j) = R(j − i)."""
        positions = jnp.asarray(positions)
        K = self.head_dim
        eye = jnp.eye(K, dtype=float32_or_better(self.wq[...].dtype))
        cols = self._rope(jnp.broadcast_to(eye, (1, positions.shape[0], K, K)), positions)  # [1, T, k, :] = R e_k
        return jnp.swapaxes(cols[0], -1, -2)

    def relative_bilinear_forms(self, T: int) -> Array:
        """B_h(Δ) = W_q^h R(−Δ) W_k^hᵀ / √K for Δ = 0..T−1: [H, T, D, D], so that with rotary embeddings the
        score of row i and key j ≤ i is u_iᵀ B_h(i − j) u_j (Theorem 5 with a relative-position form)."""
        if self.qk_bias:
            raise ValueError("relative_bilinear_forms needs qk_bias=False: a query bias adds the j-dependent "
                             "term b_qᵀ W_kᵀ u_j, which is not a bilinear form")
        self._refuse_qk_norm("relative_bilinear_forms")
        self._refuse_softcap("relative_bilinear_forms")
        wq, wk = self.wq[...], self._per_head(self.wk[...])
        R = self.rotation(-jnp.arange(T)) if self.rotary else jnp.broadcast_to(
            jnp.eye(self.head_dim, dtype=wq.dtype), (T, self.head_dim, self.head_dim))
        return jnp.einsum("dhk,tkl,ehl->htde", wq, R.astype(wq.dtype), wk, precision=_HI) * self.scale

    def affine_relative_forms(self, T: int) -> Array:
        """B̄_h(Δ) = W̄_q^h R(−Δ) W̄_k^hᵀ / √K for Δ = 0..T−1: [H, T, D + 1, D + 1], with W̄ = [W; bᵀ] the projection
        and its bias (zero without ``qk_bias``), so that the score of row i and key j ≤ i is ū_iᵀ B̄_h(i − j) ū_j,
        ū = [u; 1] — with or without biases and rotary (Theorem 5 with an affine, relative-position form).

        The blocks: [:D, :D] is :meth:`relative_bilinear_forms`; the last row b_qᵀ R(−Δ) W_kᵀ u_j depends on j
        and changes π; the last column u_iᵀ W_q R(−Δ) b_k and the corner b_qᵀ R(−Δ) b_k are constant in j — and
        cancel in the softmax — only without rotary: with it (Qwen2's q/k biases are added before the rotation)
        they vary with Δ = i − j and change π too."""
        self._refuse_qk_norm("affine_relative_forms")
        self._refuse_softcap("affine_relative_forms")
        H, K = self.num_heads, self.head_dim
        wq, wk = self.wq[...], self._per_head(self.wk[...])
        bq = self.bq[...] if self.qk_bias else jnp.zeros((H, K), wq.dtype)
        bk = self._per_head(self.bk[...][None])[0] if self.qk_bias else jnp.zeros((H, K), wq.dtype)
        wq_bar = jnp.concatenate([wq, bq[None]], axis=0)                     # [D + 1, H, K]
        wk_bar = jnp.concatenate([wk, bk[None]], axis=0)
        R = self.rotation(-jnp.arange(T)) if self.rotary else jnp.broadcast_to(
            jnp.eye(K, dtype=wq.dtype), (T, K, K))
        return jnp.einsum("dhk,tkl,ehl->htde", wq_bar, R.astype(wq.dtype), wk_bar, precision=_HI) * self.scale

    @property
    def scale(self) -> float:
        """The score scale: ``score_scale`` if set (Gemma 2's query_pre_attn_scalar^(-1/2)), else 1/√K."""
        return 1.0 / math.sqrt(self.head_dim) if self.score_scale is None else self.score_scale

    def _softcap(self, s: Array) -> Array:
        """Scores s ↦ c·tanh(s/c) (``logit_softcap`` = c, Gemma 2), in float32 or better; s itself without a cap."""
        if self.logit_softcap is None:
            return s
        c = self.logit_softcap
        return c * jnp.tanh(s.astype(float32_or_better(s.dtype)) / c)

    def _refuse_softcap(self, what: str) -> None:
        if self.logit_softcap is not None:
            raise ValueError(f"{what}: with logit_softcap the score is c·tanh(u_iᵀ B u_j / c), which is no bilinear "
                             "form; pi() and coefficients() are exact (A[i, j] = Σ_h π^h[i, j] A_h still holds)")

    def _refuse_qk_norm(self, what: str) -> None:
        if self.qk_norm:
            raise ValueError(f"{what}: with qk_norm=True the scores read q/‖q‖ and k/‖k‖, which is no bilinear form; "
                             "pi() and coefficients() are exact (A[i, j] = Σ_h π^h[i, j] A_h still holds)")

    def _check_position_free(self, what: str) -> None:
        self._refuse_qk_norm(what)
        self._refuse_softcap(what)
        if self.rotary or self.qk_bias:
            field = "rotary" if self.rotary else "qk_bias"
            raise ValueError(f"{what} needs a position-free bilinear form, but {field}=True; use "
                             "relative_bilinear_forms(T) (B_h(Δ) for rotary) or pi()/coefficients(), which are exact")

    def bilinear_forms(self) -> Array:
        """B_h = W_q^h W_k^hᵀ / √K: [H, D, D] (the 1/√K scale made explicit). Without rotary or biases only."""
        self._check_position_free("bilinear_forms()")
        return jnp.einsum("dhk,ehk->hde", self.wq[...], self._per_head(self.wk[...]), precision=_HI) * self.scale

    def value_maps(self) -> Array:
        """A_h = (W_v^h W_o^h)ᵀ: [H, D_out, D]."""
        return jnp.einsum("dhk,hke->hed", self._per_head(self.wv[...]), self.wo[...], precision=_HI)

    def _project(self, u: Array, positions: Array) -> tuple[Array, Array, Array]:
        """q, k, v [B, T, H, ·] for inputs u [B, T, D] at ``positions`` [T] (biases, rotary, grouped heads)."""
        w = lambda p: p[...].astype(u.dtype)  # noqa: E731
        q_BxTxHxK = jnp.einsum("btd,dhk->bthk", u, w(self.wq), precision=_HI)
        k_BxTxGxK = jnp.einsum("btd,dhk->bthk", u, w(self.wk), precision=_HI)
        v_BxTxGxK = jnp.einsum("btd,dhk->bthk", u, w(self.wv), precision=_HI)
        if self.qk_bias:
            q_BxTxHxK = q_BxTxHxK + w(self.bq)[None, None]
            k_BxTxGxK = k_BxTxGxK + w(self.bk)[None, None]
        if self.qk_norm:
            q_BxTxHxK, k_BxTxGxK = self._width_norm(q_BxTxHxK, self.q_norm), self._width_norm(k_BxTxGxK, self.k_norm)
        if self.rotary:
            q_BxTxHxK, k_BxTxGxK = self._rope(q_BxTxHxK, positions), self._rope(k_BxTxGxK, positions)
        rep = self.num_heads // self.num_kv_heads
        if rep > 1:
            k_BxTxGxK, v_BxTxGxK = jnp.repeat(k_BxTxGxK, rep, axis=2), jnp.repeat(v_BxTxGxK, rep, axis=2)
        return q_BxTxHxK, k_BxTxGxK, v_BxTxGxK

    def _width_norm(self, x_BxTxHxK: Array, gain: nnx.Param) -> Array:
        """RMSNorm of each position's whole projection (all heads together), statistics and gain in float32."""
        x32 = x_BxTxHxK.astype(jnp.promote_types(x_BxTxHxK.dtype, jnp.float32))
        ms = jnp.mean(jnp.square(x32), axis=(-2, -1), keepdims=True)
        return (x32 * jax.lax.rsqrt(ms + self.qk_norm_eps) * gain[...].astype(x32.dtype)[None, None]).astype(
            x_BxTxHxK.dtype)

    def check_context(self, length: int) -> None:
        """Refuse ``length`` positions beyond the original context of a ``dynamic`` rope scaling (where its
        frequencies would start to depend on the length); a no-op otherwise."""
        rs = self.rope_scaling
        if rs is not None and rs["rope_type"] == "dynamic" and length > rs["original_max_position_embeddings"]:
            raise ValueError(f"rope_scaling of type 'dynamic' is implemented up to its original context "
                             f"original_max_position_embeddings={rs['original_max_position_embeddings']} (beyond it "
                             f"the frequencies change with the length); got {length} positions")

    def _qkv(self, u: Array) -> tuple[Array, Array, Array]:
        self.check_context(u.shape[1])
        return self._project(u, jnp.arange(u.shape[1]))

    def scores(self, u: Array) -> Array:
        q, k, _ = self._qkv(u)
        return self._softcap(jnp.einsum("bihk,bjhk->bhij", q, k, precision=_HI) * self.scale)

    def __call__(self, u: Array) -> Array:
        check_u(u, self.d_in)
        q, k, v = self._qkv(u)
        # jax.nn.dot_product_attention computes its scores in float32 whatever the input dtype, so float64
        # runs take the einsum path: the same map, exact in float64
        impl = self.implementation
        if impl == "auto" and self.logit_softcap is not None:
            impl = "einsum"  # the soft-capped scores are formed in full (blockwise attention has no cap)
        if impl == "auto":
            impl = "blockwise" if jax.default_backend() == "cpu" and u.shape[1] >= BLOCKWISE_MIN_LENGTH else "einsum"
        if impl == "cudnn" and jax.default_backend() != "gpu":
            raise ValueError(f"implementation='cudnn' needs a GPU backend, this one is {jax.default_backend()!r}; "
                             "use 'blockwise', 'einsum' or 'xla'")
        if impl == "blockwise":
            o_BxTxHxK = blockwise_attention(q, k, v, scale=self.scale, causal=self.mask == "causal",
                                            block_size=self.block_size, window=self.window)
        elif impl == "einsum" or u.dtype == jnp.float64:
            s_BxHxTxT = self._softcap(jnp.einsum("bihk,bjhk->bhij", q, k, precision=_HI) * self.scale)
            pi = self._pi(s_BxHxTxT, u.dtype)
            o_BxTxHxK = jnp.einsum("bhij,bjhk->bihk", pi, v, precision=_HI)
        else:
            if self.value_dim != self.head_dim:
                raise ValueError("implementation='xla'/'cudnn' needs value_dim == head_dim")
            o_BxTxHxK = jax.nn.dot_product_attention(
                q, k, v, scale=self.scale, is_causal=self.mask == "causal", implementation=impl,
                local_window_size=None if self.window is None else (self.window - 1, 0))
        return jnp.einsum("bihk,hke->bie", o_BxTxHxK, self.wo[...].astype(u.dtype), precision=_HI)

    def head_outputs(self, pi: Array, u: Array) -> Array:
        """Σ_j π^h[i, j] A_h u_j through the factors: (π^h V^h) W_o^h with V^h = u W_v^h — [B, H, T, D_out]."""
        v_BxHxTxKv = jnp.einsum("btd,dhk->bhtk", u, self._per_head(self.wv[...]).astype(u.dtype), precision=_HI)
        o_BxHxTxKv = jnp.einsum("bhij,bhjk->bhik", pi.astype(u.dtype), v_BxHxTxKv, precision=_HI)
        return jnp.einsum("bhik,hke->bhie", o_BxHxTxKv, self.wo[...].astype(u.dtype), precision=_HI)

    # ---- decoding protocol (tvvar.generate): the KV cache ---------------------------------------

    def init_cache(self, batch_size: int, max_len: int, dtype: DType = jnp.float32) -> dict:
        """{"k": [B, L, H, K], "v": [B, L, H, K_v], "index": int32 t} — keys W_kᵀu_j and values W_vᵀu_j."""
        check_cache_args(self, batch_size, max_len)
        self.check_context(max_len)
        return {"k": jnp.zeros((batch_size, max_len, self.num_heads, self.head_dim), dtype),
                "v": jnp.zeros((batch_size, max_len, self.num_heads, self.value_dim), dtype),
                "index": jnp.zeros((), jnp.int32)}

    def step(self, cache: dict, u_t: Array) -> tuple[Array, dict]:
        """Row t = ``cache["index"]`` of ``self(u)``: the query u_t against the cached keys j ≤ t.

        u_t: [B, D] → h_t: [B, D_out]. Always the einsum path (one query row), whatever ``implementation``.
        """
        B_, L = cache["k"].shape[:2]
        check_step_input(self, cache, u_t, B_, L)
        t = cache["index"]
        dt = u_t.dtype
        w = lambda p: p[...].astype(dt)  # noqa: E731
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxKv = self._project(u_t[:, None], jnp.reshape(t, (1,)))
        q_BxHxK, k_BxHxK, v_BxHxKv = q_BxTxHxK[:, 0], k_BxTxHxK[:, 0], v_BxTxHxKv[:, 0]
        k_BxLxHxK = jax.lax.dynamic_update_slice_in_dim(
            cache["k"], k_BxHxK[:, None].astype(cache["k"].dtype), t, axis=1)
        v_BxLxHxKv = jax.lax.dynamic_update_slice_in_dim(
            cache["v"], v_BxHxKv[:, None].astype(cache["v"].dtype), t, axis=1)
        s_BxHxL = self._softcap(jnp.einsum("bhk,bjhk->bhj", q_BxHxK, k_BxLxHxK.astype(dt), precision=_HI) * self.scale)
        pi_BxHxL = self._step_pi(s_BxHxL, t, dt)
        o_BxHxKv = jnp.einsum("bhj,bjhk->bhk", pi_BxHxL, v_BxLxHxKv.astype(dt), precision=_HI)
        h_BxDo = jnp.einsum("bhk,hke->be", o_BxHxKv, w(self.wo), precision=_HI)
        return h_BxDo, {"k": k_BxLxHxK, "v": v_BxLxHxKv, "index": t + 1}

    @classmethod
    def from_weights(cls, wq: Array, wk: Array, wv: Array, wo: Array, *, mask: MaskKind = "causal", **kw) -> Attention:
        """Build from W_q [D, H, K], W_k [D, G, K], W_v [D, G, K_v], W_o [H, K_v, D_out] (G = H, or the
        number of key/value groups of grouped-query attention)."""
        if wq.ndim != 3 or wk.ndim != 3 or wk.shape[0] != wq.shape[0] or wk.shape[2] != wq.shape[2]:
            raise ValueError(f"wq must have shape [D, H, K] and wk [D, G, K], got {wq.shape} and {wk.shape}")
        D, H, K = wq.shape
        G = wk.shape[1]
        if wv.ndim != 3 or wv.shape[:2] != (D, G):
            raise ValueError(f"wv must have shape [D={D}, G={G}, K_v], got {wv.shape}")
        if wo.ndim != 3 or wo.shape[:2] != (H, wv.shape[2]):
            raise ValueError(f"wo must have shape [H={H}, K_v={wv.shape[2]}, D_out], got {wo.shape}")
        kw.setdefault("num_kv_heads", G)
        m = cls(D, mask=mask, rngs=nnx.Rngs(0), num_heads=H, head_dim=K, value_dim=wv.shape[2],
                d_out=wo.shape[2], dtype=wq.dtype, **kw)
        m.wq[...], m.wk[...], m.wv[...], m.wo[...] = wq, wk, wv, wo
        return m

    def to_bilinear(self) -> BilinearAttention:
        """The same map in the paper's parameters (B_h, A_h) — Theorem 5. Grouped-query heads are expanded
        (one B_h, A_h per query head); with rotary or biases there is no single B_h (ValueError): use
        :meth:`relative_bilinear_forms`."""
        self._check_position_free("to_bilinear()")
        return BilinearAttention.from_weights(self.bilinear_forms(), self.value_maps(), mask=self.mask)
