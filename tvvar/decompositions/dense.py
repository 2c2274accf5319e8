"""The unconstrained TV-VAR (Definition 13): one learned D_out × D_in matrix A[i, j] per pair.

This is the definition itself — no structure shared across pairs — so its fast path is the reference
mixing on the stored (masked) table, and it exists for small T: analysis, tests, and as the baseline
every structured decomposition is a special case of. Sequences longer than ``max_len`` are refused.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from tvvar.core import Mixer, check_u, glorot, param, register
from tvvar.typing import Array, DType, MaskKind

__all__ = ["DenseTVVAR"]


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
        self.W = param(glorot(rngs.params(), shape, d_model * max_len, dtype), None, None, "embed2", "embed")

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
        return jnp.einsum("ijde,bje->bid", self._table(u.shape[1], u.dtype), u)
