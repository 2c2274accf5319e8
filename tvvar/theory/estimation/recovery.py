"""Fitting a TV-VAR to a model's own trajectories and comparing it with the materialised A_tj
(Bai, arXiv:2511.01202, Definition 13 and Section V-G: "the SSM exactly belongs to linear TV-VAR models").

Every mixer computes h_i = Σ_{j ≤ i} A[i, j](u) u_j (DESIGN.md's index convention).  Given B trajectories
(u_b, h_b) — the vectors a layer's mixer reads and the vectors it writes, on B token sequences — the most
general TV-VAR (one free matrix per pair (i, j), Definition 13) is identified by cross-sectional least
squares at every position i:

    (Â[i, i], Â[i, i−1], …, Â[i, i−L]) = argmin Σ_b ‖h_{b,i} − Σ_{l=0..L} Â[i, i−l] u_{b,i−l}‖²

with lags l ≤ min(i, L).  This is the econometric TV-VAR estimator of Section V-G in its unrestricted form:
no smoothness in i is assumed (the kernel estimator of :mod:`tvvar.theory.estimation.kernel_tvvar` adds it), the
sample is the batch.  Two regimes:

* **A linear SSM without gating** (``ssm_lti``, or ``ssm``/``ssm_diagonal`` with ``selective=False``): A[i, j]
  does not depend on u, h is exactly linear in (u_0..u_i), and the fit recovers A[i, j] exactly (to the
  rounding of the solve) once B ≥ the number of regressors; with observation noise h + σε it recovers it up
  to the OLS error, whose standard errors :func:`fit_tvvar_coefficients` reports.
* **Attention** (Theorem 5, A[i, j] = Σ_h π^h_ij(u) A_h): the weights depend on the data, so no fixed matrix
  reproduces h.  The least-squares fit is the best *linear* predictor Â = E[h x̃ᵀ] E[x̃ x̃ᵀ]⁻¹ (x̃ the stacked
  regressors), which is neither E[A(u)] nor any single A(u): :func:`recovery_summary` reports how far it is
  from the batch-mean coefficient E_b A_b[i, j], the unexplained fraction of h (1 − R²), and the part of
  the coefficients' energy that varies with the data, Σ‖A_b − E A‖² / Σ‖A_b‖², which a fixed-coefficient
  TV-VAR cannot represent at all.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.theory.estimation.classical import SingularDesignError
from tvvar.typing import Array

__all__ = ["CoefficientFit", "fit_tvvar_coefficients", "mixer_trajectories", "recovery_summary"]


class CoefficientFit(NamedTuple):
    """Cross-sectional least-squares TV-VAR: ``coefficients[i, j]`` estimates A[i, j] (``[T, T, E, D]``,
    exactly zero outside the fitted set j ≤ i, i − j ≤ ``max_lag``)."""

    coefficients: Array
    stderr: Array      # [T, T, E, D] OLS standard errors (σ̂²_e (X̃ᵀX̃)⁻¹ diagonal), zero outside the set
    intercept: Array   # [T, E] (zeros when fitted without one)
    r2: Array          # [T] 1 − Σ_b‖h_bi − ĥ_bi‖² / Σ_b‖h_bi − h̄_i‖²
    sigma2: Array      # [T, E] residual variance RSS / (B − regressors)
    max_lag: int


def _check_trajectories(u, h) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, a in (("u", u), ("h", h)):
        a = np.asarray(a)
        if a.ndim != 3:
            raise ValueError(f"{name} must have shape [B, T, dim], got {a.shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf")
        arrays.append(a)
    u, h = arrays
    if u.shape[:2] != h.shape[:2]:
        raise ValueError(f"u and h must share [B, T]: got {u.shape[:2]} and {h.shape[:2]} (different lengths)")
    return u, h


def _regressors(u_BxTxD: Array, max_lag: int) -> tuple[Array, Array]:
    """X̃ [T, B, (L+1)·D]: block l holds u_{i−l} (zeros where i − l < 0); present [T, (L+1)·D] marks them."""
    B, T, D = u_BxTxD.shape
    i = jnp.arange(T)[:, None]
    lag = jnp.arange(max_lag + 1)[None, :]
    j = i - lag  # [T, L+1]
    present = j >= 0
    X = jnp.where(present[:, None, :, None], u_BxTxD[:, jnp.clip(j, 0)].transpose(1, 0, 2, 3), 0.0)
    return X.reshape(T, B, (max_lag + 1) * D), jnp.repeat(present, D, axis=1)


@jax.jit
def _solve(X_TxBxP: Array, present_TxP: Array, h_TxBxE: Array, ones: Array):
    """Masked normal equations per position: absent columns get a unit diagonal and zero right-hand side,
    so their coefficient is exactly 0; the present block is the ordinary least-squares solve."""
    Xa = jnp.concatenate([jnp.broadcast_to(ones, X_TxBxP.shape[:2] + (1,)), X_TxBxP], axis=-1)
    pres = jnp.concatenate([ones[:, :1, 0] > 0, present_TxP], axis=-1)  # [T, P+1]
    G = jnp.einsum("tbp,tbq->tpq", Xa, Xa, precision=jax.lax.Precision.HIGHEST)
    G = jnp.where(pres[:, :, None] & pres[:, None, :], G, 0.0) + jnp.eye(G.shape[-1])[None] * (~pres)[:, :, None]
    rhs = jnp.einsum("tbp,tbe->tpe", Xa, h_TxBxE, precision=jax.lax.Precision.HIGHEST)
    rhs = jnp.where(pres[:, :, None], rhs, 0.0)
    chol = jnp.linalg.cholesky(G)
    beta = jax.scipy.linalg.cho_solve((chol, True), rhs)  # [T, P+1, E]
    resid = h_TxBxE - jnp.einsum("tbp,tpe->tbe", Xa, beta, precision=jax.lax.Precision.HIGHEST)
    ginv_diag = jnp.diagonal(jax.scipy.linalg.cho_solve((chol, True), jnp.broadcast_to(jnp.eye(G.shape[-1]),
                                                                                          G.shape)), axis1=1, axis2=2)
    return beta, resid, ginv_diag, jnp.sum(pres, axis=-1), G


def fit_tvvar_coefficients(u, h, *, max_lag: int | None = None, intercept: bool = False) -> CoefficientFit:
    """Least-squares TV-VAR coefficients Â[i, j] from B trajectories u ``[B, T, D]`` → h ``[B, T, E]``.

    ``max_lag`` L (default T − 1: every j ≤ i) bounds i − j; ``intercept`` adds a free c_i per position.
    Needs B > (L + 1)·D (+1) samples — more samples than regressors — and regressors in general position:
    if the trajectories span fewer than (L + 1)·D directions (e.g. V < D tokens on the sphere, or a
    constant coordinate), :class:`~tvvar.theory.estimation.classical.SingularDesignError` names the position.
    Computed in the input's float dtype (use float64 for the exact recovery of a linear SSM).
    """
    u, h = _check_trajectories(u, h)
    B, T, D = u.shape
    if max_lag is None:
        max_lag = T - 1
    if isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer)) or not 0 <= max_lag < T:
        raise ValueError(f"max_lag must be an int in [0, T) = [0, {T}), got {max_lag!r}")
    if not isinstance(intercept, bool):
        raise TypeError(f"intercept must be a bool, got {intercept!r}")
    max_lag = int(max_lag)
    n_reg = (max_lag + 1) * D + int(intercept)
    if B <= n_reg:
        raise ValueError(f"fewer samples than parameters: B = {B} trajectories for {n_reg} regressors per "
                         f"position (max_lag {max_lag}, D {D}{', intercept' if intercept else ''}); need B > {n_reg}")
    dt = jax.dtypes.canonicalize_dtype(np.result_type(u.dtype, h.dtype))
    X, present = _regressors(jnp.asarray(u, dt), max_lag)
    hT = jnp.asarray(h, dt).transpose(1, 0, 2)
    ones = jnp.full((T, 1, 1), 1.0 if intercept else 0.0, dt)
    beta, resid, ginv, n_par, G = _solve(X, present, hT, ones)
    _check_conditioning(np.asarray(G), np.asarray(present), intercept, np.finfo(np.dtype(dt)).eps)
    sigma2 = jnp.sum(resid**2, axis=1) / (B - n_par[:, None])  # [T, E]
    se = jnp.sqrt(jnp.clip(ginv[:, :, None], 0.0) * sigma2[:, None, :])  # [T, P+1, E]
    E = hT.shape[-1]
    A = _band_to_full(beta[:, 1:].reshape(T, max_lag + 1, D, E), T)
    S = _band_to_full(se[:, 1:].reshape(T, max_lag + 1, D, E), T)
    centred = hT - jnp.mean(hT, axis=1, keepdims=True)
    r2 = 1.0 - jnp.sum(resid**2, axis=(1, 2)) / jnp.sum(centred**2, axis=(1, 2))
    return CoefficientFit(A, S, beta[:, 0] if intercept else jnp.zeros((T, E), dt), r2, sigma2, max_lag)


def _check_conditioning(G: np.ndarray, present: np.ndarray, intercept: bool, eps: float) -> None:
    for i in range(G.shape[0]):
        keep = np.concatenate([[intercept], present[i]])
        w = np.linalg.eigvalsh(G[i][np.ix_(keep, keep)])
        if not w[0] > 10 * eps * w[-1] * keep.sum():  # cond(X̃ᵀX̃) < 1/(10 ε n)
            raise SingularDesignError(
                f"u: the regressors at position i = {i} are (numerically) collinear (eigenvalues of X̃ᵀX̃ "
                f"{w[0]:.3g} … {w[-1]:.3g}): the trajectories span fewer than {int(keep.sum())} directions "
                "(too few distinct tokens for D, a constant coordinate, or duplicated sequences)")


def _band_to_full(band_TxLxDxE: Array, T: int) -> Array:
    """[T, L+1, D, E] indexed by lag → [T, T, E, D] indexed by j = i − lag (zero elsewhere)."""
    L1 = band_TxLxDxE.shape[1]
    i = jnp.arange(T)[:, None]
    j = jnp.arange(T)[None, :]
    lag = i - j
    valid = (lag >= 0) & (lag < L1)
    full = band_TxLxDxE[i, jnp.clip(lag, 0, L1 - 1)]  # [T, T, D, E]
    return jnp.where(valid[:, :, None, None], full, 0.0).transpose(0, 1, 3, 2)


def mixer_trajectories(model, ids, layer: int = 0) -> tuple[Array, Array, Array]:
    """(u, h, A) of one layer of a :class:`~tvvar.model.TVVARModel` on token ids ``[B, T]``: the vectors its
    mixer reads (after the block's norm), the mixer's output h = mixer(u) (no folded bias) and the
    materialised coefficients A = mixer.coefficients(u) ``[B, T, T, E, D]`` (O(T²D²): small T)."""
    blocks = model.blocks
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(blocks):
        raise ValueError(f"layer must be an int in [0, {len(blocks)}), got {layer!r}")
    x = model.embed_tokens(ids)
    for b in blocks[:layer]:
        x = b(x)
    blk = blocks[layer]
    u = blk.mixer_input(x)
    return u, blk.mixer(u), blk.mixer.coefficients(u)


def recovery_summary(fit: CoefficientFit, A_BxTxTxExD) -> dict[str, float]:
    """How the fitted TV-VAR compares with the materialised coefficients A_b[i, j] over the fitted set.

    ``rel_error_mean``: ‖Â − E_b A_b‖ / ‖E_b A_b‖; ``data_dependent_fraction``: Σ_b‖A_b − E_b A_b‖² / Σ_b‖A_b‖²
    (0 for a linear SSM: nothing a fixed-coefficient fit cannot represent); ``unexplained``: the mean over
    positions of 1 − R²; ``max_abs_error``: max |Â − E_b A_b|; ``z2``: the mean squared z-score
    (Â − E A)/se over the fitted set where se > 0 (≈ 1 when the truth is fixed and the noise is Gaussian)."""
    A = np.asarray(A_BxTxTxExD, dtype=np.float64)
    est = np.asarray(fit.coefficients, dtype=np.float64)
    if A.ndim != 5 or A.shape[1:] != est.shape:
        raise ValueError(f"A must have shape [B, {', '.join(map(str, est.shape))}], got {A.shape}")
    T = est.shape[0]
    lag = np.arange(T)[:, None] - np.arange(T)[None, :]
    mask = (lag >= 0) & (lag <= fit.max_lag)
    mean = A.mean(axis=0)
    diff = (est - mean)[mask]
    se = np.asarray(fit.stderr, dtype=np.float64)[mask]
    pos = se > 0
    return {
        "rel_error_mean": float(np.linalg.norm(diff) / np.linalg.norm(mean[mask])),
        "max_abs_error": float(np.abs(diff).max()),
        "data_dependent_fraction": float(np.sum((A - mean)[:, mask] ** 2) / np.sum(A[:, mask] ** 2)),
        "unexplained": float(np.mean(1.0 - np.asarray(fit.r2, dtype=np.float64))),
        "z2": float(np.mean((diff[pos] / se[pos]) ** 2)) if pos.any() else float("nan"),
    }
