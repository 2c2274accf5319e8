"""Both are TV-VARs: the materialized coefficients ‖A_tj‖ of a selective SSM (Eq. 78) beside attention's
(Theorem 5) on the same input.

Attention: A[i, j] = Σ_h π^h[i, j] A_h with the softmax-bilinear π (Eqs. 45–53). Selective SSM (Mamba-2):
A[i, j] = Σ_h L^h[i, j] (W_x^h W_o^h)ᵀ, L^h[i, j] = C_iᵀB_j Δ_j exp(A^h Σ_{k=j+1..i} Δ_k) — a linear
recurrence whose coefficients decay with i − j. The Mamba block (short conv, gates) is shown as well.
All three are random initializations run on the same token vectors u_i = ũ_{x_i} on the unit sphere.

Checks: each model's fast path equals Σ_j A[i, j] u_j on its own materialized coefficients (the law,
float32), the SSMs' exact causality (∂h_i/∂u_j = 0 for j > i, through the fast path), and decoding by
``step`` equals the full forward.

``python -m experiments.ssm_vs_attention [--quick] [--seed S] [--out DIR]``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import plotting
from experiments.common import check, cli, save_figure
from tvvar.core import SphereEmbedding, build, mix_dense


@dataclass(frozen=True)
class Config:
    seed: int = 0
    T: int = 64
    d_model: int = 32
    vocab_size: int = 64
    num_heads: int = 4
    state_size: int = 16
    chunk_size: int = 16
    law_tolerance: float = 1e-4

    @classmethod
    def quick(cls) -> Config:
        return cls(T=24, d_model=16, vocab_size=32, state_size=8, chunk_size=8)

    @classmethod
    def full(cls) -> Config:
        return cls()


def _norms(A: jax.Array) -> np.ndarray:
    """‖A[i, j]‖_F over D_out × D_in: [T, T] (batch 0)."""
    return np.asarray(jnp.sqrt(jnp.sum(jnp.square(A[0]), axis=(-2, -1))), np.float64)


def _causal_leak(mixer, u: jax.Array) -> float:
    """max |∂h_i/∂u_j| over j > i, by the full Jacobian of the fast path (batch 0)."""
    J = np.asarray(jax.jacrev(lambda x: mixer(x))(u[:1]))[0, :, :, 0]  # [i, D_out, j, D_in]
    T = u.shape[1]
    above = np.triu(np.ones((T, T), bool), k=1)
    return float(np.abs(J.transpose(0, 2, 1, 3)[above]).max())


def _decode_gap(mixer, u: jax.Array) -> float:
    cache = mixer.init_cache(u.shape[0], u.shape[1], u.dtype)
    rows = []
    for t in range(u.shape[1]):
        h_t, cache = mixer.step(cache, u[:, t])
        rows.append(h_t)
    return float(jnp.abs(jnp.stack(rows, axis=1) - mixer(u)).max())


def run(config: Config, out: Path) -> dict:
    """Materialize ‖A_tj‖ for attention, a selective SSM and a Mamba block on one input; check the law."""
    c = config
    rngs = nnx.Rngs(c.seed)
    emb = SphereEmbedding(c.vocab_size, c.d_model, rngs=rngs)
    ids = jax.random.randint(jax.random.key(c.seed + 1), (2, c.T), 0, c.vocab_size)
    u = emb(ids)  # [2, T, D], unit vectors (Definition 11)
    models = {
        "attention (Thm 5)": build("attention", c.d_model, rngs=rngs, num_heads=c.num_heads),
        "selective SSM (Eq. 78)": build("ssm", c.d_model, rngs=rngs, num_heads=c.num_heads,
                                        state_size=c.state_size, chunk_size=c.chunk_size),
        "Mamba block": build("mamba", c.d_model, rngs=rngs, num_heads=c.num_heads, state_size=c.state_size,
                             chunk_size=c.chunk_size),
    }
    checks, norms, data = [], {}, {}
    for label, m in models.items():
        A = m.coefficients(u)
        norms[label] = _norms(A)
        gap = float(jnp.abs(m(u) - mix_dense(A, u)).max())
        data[f"law_gap[{label}]"] = gap
        checks.append(check(f"{label}: max |mixer(u) − Σ_j A[i,j](u) u_j| (float32)", gap, c.law_tolerance, "<=",
                            source="DESIGN contract; Theorem 5 / Eq. 78"))
        if "attention" not in label:
            leak = _causal_leak(m, u)
            checks.append(check(f"{label}: max |∂h_i/∂u_j| for j > i (exact causality)", leak, 0.0, "==",
                                source="Eq. 78: state_t depends on s_1..s_t only"))
            gap_dec = _decode_gap(m, u)
            data[f"decode_gap[{label}]"] = gap_dec
            checks.append(check(f"{label}: max |step-by-step decoding − full forward|", gap_dec, 1e-5, "<=",
                                source="decoding protocol"))

    T = c.T
    below = np.tril(np.ones((T, T), bool))
    fig, axes = plotting.subplots(1, len(norms), figsize=(5.0 * len(norms), 4.4), squeeze=False)
    for ax, (label, nrm) in zip(axes[0], norms.items(), strict=True):
        shown = np.where(below, np.log10(np.maximum(nrm, 1e-12)), np.nan)
        vmax = np.nanmax(shown)
        plotting.heatmap(ax, shown, range(T), cbar_label="log10 ‖A[i, j]‖_F", xlabel="j (source position)",
                  ylabel="i (row; predicts token i+1)", vmin=max(np.nanmin(shown), vmax - 6), vmax=vmax)
        ax.set_title(f"{label}\nlog10 ‖A[i, j]‖_F")
    figures = [save_figure(fig, out, "coefficient_norms.png")]

    fig, ax = plotting.subplots(figsize=(6.0, 4.0))
    for label, nrm in norms.items():
        ax.semilogy(np.arange(T), np.maximum(nrm[T - 1], 1e-16), marker=".", label=label)
    plotting.token_axis(ax, "x", label="j (source position)")
    ax.set_ylabel(f"‖A[{T - 1}, j]‖_F")
    ax.set_title("last row: which past tokens the prediction mixes")
    ax.legend()
    figures.append(save_figure(fig, out, "last_row.png"))

    data["norms"] = {k: v.tolist() for k, v in norms.items()}
    data["last_row_decay_ratio"] = {k: float(v[T - 1, 0] / max(v[T - 1, T - 1], 1e-300)) for k, v in norms.items()}
    return {"checks": checks, "figures": figures, "data": data}


main = cli("ssm_vs_attention", Config, run)

if __name__ == "__main__":
    main()
