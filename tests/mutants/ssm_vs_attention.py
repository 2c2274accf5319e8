"""Mutants of the Eq. 78 code beside Theorem 5: the SSD kernels, the SSM's materialised coefficients, the Mamba
block's short convolution and attention's value maps."""

import dataclasses

import jax.numpy as jnp

from experiments.ssm_vs_attention import Config
from mutants import Mutant


def tiny() -> Config:
    return dataclasses.replace(Config.quick(), T=8, d_model=8, vocab_size=16, num_heads=2, state_size=4, chunk_size=4)


def _segsum_with_diagonal(orig):
    def segsum(x):
        T = x.shape[-1]
        idx = jnp.arange(T)
        upto = (idx[None, :] <= idx[:, None]).astype(x.dtype)
        after = jnp.where(idx[:, None] <= idx[None, :], x[..., None, :], 0)  # k ≥ j: one decay too many
        s = jnp.einsum("ik,...jk->...ij", upto, after)
        return jnp.where(idx[:, None] >= idx[None, :], s, -jnp.inf)
    return segsum


def _segsum_unmasked(orig):
    def segsum(x):
        T = x.shape[-1]
        idx = jnp.arange(T)
        upto = (idx[None, :] <= idx[:, None]).astype(x.dtype)
        after = jnp.where(idx[:, None] < idx[None, :], x[..., None, :], 0)
        return jnp.einsum("ik,...jk->...ij", upto, after)  # j > i left at 0, so exp(·) = 1 instead of 0
    return segsum


def _read_before_write(orig):
    def ssd_step(state, x_t, la_t, B_t, C_t):
        y_t = jnp.einsum("bhpn,bn->bhp", state, C_t)  # y_t = C_t state_{t-1}: read out before the update
        state = jnp.exp(la_t)[:, :, None, :] * state + x_t[..., None] * B_t[:, None, None, :]
        return y_t, state
    return ssd_step


def _conv_looks_ahead(orig):
    def causal_conv(z, w, buffer=None):
        K = w.shape[0]
        Bsz, T, Cc = z.shape
        if buffer is None:
            buffer = jnp.zeros((Bsz, K - 1, Cc), z.dtype)
        zp = jnp.concatenate([buffer.astype(z.dtype), z, jnp.zeros((Bsz, 1, Cc), z.dtype)], axis=1)
        out = sum(w[k][None, None, :] * zp[:, K - k : K - k + T] for k in range(K))  # z_{t−k+1}: one ahead
        return out, zp[:, T : T + K - 1]
    return causal_conv


def _dt_of_row(orig):
    def mixing_matrix(self, u):
        L = orig(self, u)
        eye = jnp.eye(u.shape[1], dtype=L.dtype)[None, None]
        skip = self.D[...].astype(L.dtype)[None, :, None, None] * eye if self.skip else 0.0
        dt = jnp.moveaxis(self._selective(u)[0], 1, 2)  # [B, H, T]
        return (L - skip) * dt[:, :, :, None] / dt[:, :, None, :] + skip  # Δ_i where Eq. 78 has Δ_j
    return mixing_matrix


MUTANTS = (
    Mutant("segsum_one_decay_too_many", "tvvar.decompositions.ssm_kernels:segsum", _segsum_with_diagonal,
           "segment sum Σ_{k=j..i} instead of Σ_{k=j+1..i} (off by one in the chunked decay)"),
    Mutant("segsum_future_unmasked", "tvvar.decompositions.ssm_kernels:segsum", _segsum_unmasked,
           "segment sum without the −inf above the diagonal: exp gives decay 1 to future positions"),
    Mutant("ssd_step_reads_before_update", "tvvar.decompositions.ssm_kernels:ssd_step", _read_before_write,
           "the recurrent step reads y_t = C_t state_{t−1} before adding B_t x_t"),
    Mutant("conv_looks_one_ahead", "tvvar.decompositions.ssm_kernels:causal_conv", _conv_looks_ahead,
           "the short convolution's window is shifted by one: out_t mixes z_{t+1}"),
    Mutant("coefficients_with_row_step", "tvvar.decompositions.ssm:SelectiveSSM.mixing_matrix", _dt_of_row,
           "L[i, j] scaled by the row's Δ_i instead of the column's Δ_j"),
    Mutant("value_map_untransposed", "tvvar.decompositions.attention:Attention.value_maps",
           lambda orig: lambda self: jnp.swapaxes(orig(self), 1, 2), "A_h = W_v^h W_o^h instead of its transpose"),
)
