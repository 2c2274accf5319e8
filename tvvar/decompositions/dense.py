"""The unconstrained TV-VAR (Definition 13): one learned D_out × D_in matrix A[i, j] per pair.

This is the definition itself — no structure shared across pairs — so its fast path is the reference
mixing on the stored (masked) table, and it exists for small T: analysis, tests, and as the baseline
every structured decomposition is a special case of. Sequences longer than ``max_len`` are refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tvvar.core import Mixer, check_cache_args, check_step_input, check_u, lecun_normal, param, register
from tvvar.typing import Array, DType, MaskKind

__all__ = ["DenseTVVAR"]

_HI = jax.lax.Precision.HIGHEST  # as every other fast path: no reduced-precision (TF32/bf16) passes on GPU/TPU


@register("dense")
class DenseTVVAR(Mixer):
    """A[i, j] = W[i, j] for j ∈ S(i), 0 otherwise; W: [max_len, max_len, D_out, D_in]."""

    def __init__(
        self,
        d_model: int,
        *,
        mask: MaskKind = "causal",
        rngs: nnx.Rngs,
        max_len: int = 64,
        d_out: int | None = None,
        dtype: DType = jnp.float32,
    ):
        if max_len < 1:
            raise ValueError(f"max_len must be ≥ 1, got {max_len}")
        self.d_in, self.d_out, self.mask, self.max_len = d_model, d_out or d_model, mask, max_len
        shape = (max_len, max_len, self.d_out, d_model)
        self.W = param(lecun_normal(rngs.params(), shape, d_model * max_len, dtype), None, None, "embed2", "embed")

    def _table(self, T: int, dtype: DType) -> Array:
        if T > self.max_len:
            raise ValueError(f"sequence length T={T} exceeds the dense decomposition's max_len={self.max_len}")
        W = self.W[...][:T, :T].astype(dtype)
        return jnp.where(self.support(T)[:, :, None, None], W, 0)

    def coefficients(self, u: Array) -> Array:
        check_u(u, self.d_in)
        B, T, _ = u.shape
        return jnp.broadcast_to(self._table(T, u.dtype), (B, T, T, self.d_out, self.d_in))

    def __call__(self, u: Array) -> Array:
        check_u(u, self.d_in)
        return jnp.einsum("ijde,bje->bid", self._table(u.shape[1], u.dtype), u, precision=_HI)

    # ---- decoding protocol (tvvar.generate): cache the token vectors u_j ------------------------

    def init_cache(self, batch_size: int, max_len: int, dtype: DType = jnp.float32) -> dict:
        """{"u": [B, L, D] the vectors u_j seen so far, "index": int32 t}; L ≤ the table's max_len."""
        check_cache_args(self, batch_size, max_len)
        if max_len > self.max_len:
            raise ValueError(f"max_len={max_len} exceeds the dense decomposition's table length max_len={self.max_len}")
        return {"u": jnp.zeros((batch_size, max_len, self.d_in), dtype), "index": jnp.zeros((), jnp.int32)}

    def step(self, cache: dict, u_t: Array) -> tuple[Array, dict]:
        """h_t = Σ_{j≤t} W[t, j] u_j (Definition 13): row t = ``cache["index"]`` of the table."""
        B_, L = cache["u"].shape[:2]
        check_step_input(self, cache, u_t, B_, L)
        t = cache["index"]
        u_BxLxD = jax.lax.dynamic_update_slice_in_dim(cache["u"], u_t[:, None].astype(cache["u"].dtype), t, axis=1)
        W_t = jax.lax.dynamic_index_in_dim(self.W[...], t, axis=0, keepdims=False)[:L].astype(u_t.dtype)
        W_t = jnp.where((jnp.arange(L) <= t)[:, None, None], W_t, 0)
        h_BxDo = jnp.einsum("jde,bje->bd", W_t, u_BxLxD.astype(u_t.dtype), precision=_HI)
        return h_BxDo, {"u": u_BxLxD, "index": t + 1}
