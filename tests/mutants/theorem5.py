"""Mutants of the Theorem 5 code: attention's fast path, its bilinear form (B_h, A_h) and the softmax π."""

import dataclasses

import jax
import jax.numpy as jnp

from experiments.theorem5 import Config
from mutants import Mutant
from tvvar.core import masked_fill_value


def tiny() -> Config:
    return dataclasses.replace(Config.quick(), d_model=16, num_heads=2, seq_len=8, batch_size=4, train_steps=4)


def _no_scale(orig):
    return lambda self: orig(self) / self.scale  # B_h = W_q W_kᵀ without the 1/√K


def _transposed(orig):
    return lambda self: jnp.swapaxes(orig(self), 1, 2)  # W_k W_qᵀ: the key and query roles swapped


def _softmax_wrong_axis(orig):
    def _pi(self, s, dtype):
        allowed = self.support(s.shape[-1])
        s = jnp.where(allowed, s, masked_fill_value(s.dtype))
        return jnp.where(allowed, jax.nn.softmax(s, axis=-2), 0).astype(dtype)  # over queries, not keys
    return _pi


def _mask_strict(orig):
    def support_mask(mask, T, S=None):
        S = T if S is None else S
        if mask == "bidirectional":
            return jnp.ones((T, S), dtype=bool)
        return jnp.arange(S)[None, :] < jnp.arange(T)[:, None]  # j < i: the diagonal dropped
    return support_mask


MUTANTS = (
    Mutant("bilinear_form_without_scale", "tvvar.decompositions.attention:Attention.bilinear_forms", _no_scale,
           "B_h = W_q^h W_k^hᵀ with the 1/√K of the scores forgotten"),
    Mutant("bilinear_form_transposed", "tvvar.decompositions.attention:Attention.bilinear_forms", _transposed,
           "B_h = W_k^h W_q^hᵀ (query and key swapped: u_jᵀ B u_i)"),
    Mutant("value_map_untransposed", "tvvar.decompositions.attention:Attention.value_maps",
           lambda orig: lambda self: jnp.swapaxes(orig(self), 1, 2), "A_h = W_v^h W_o^h instead of its transpose"),
    Mutant("softmax_over_queries", "tvvar.decompositions.attention:SoftmaxBilinearAttention._pi",
           _softmax_wrong_axis, "π normalised over the query axis i instead of the key axis j"),
    Mutant("causal_mask_without_diagonal", "tvvar.core:support_mask", _mask_strict,
           "S(i) = {j < i}: the causal mask is off by one and drops j = i"),
)
