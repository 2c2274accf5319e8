"""Section IV of Bai (arXiv:2511.01202): semantic compression by random projections (Lemma 1, Theorems 3–4).

A projection P: R^N → R^m (m < N) compresses a semantic space when it preserves inner products. Every
projection here is scaled so that E‖Px‖² = ‖x‖² for every x:

* ``"gaussian"``  — Lemma 1 (Johnson–Lindenstrauss, Eq. 35): P = G/√m, G_ij ~ N(0, 1).
* ``"sparse"``    — Achlioptas (2003): P_ij = √(3/m) · {+1 w.p. 1/6, 0 w.p. 2/3, −1 w.p. 1/6}.
* ``"dct"``       — Theorem 3 (Eqs. 36–38): P = √(N/m) R F D_σ, F the orthonormal DCT-II
                    (``jax.scipy.fft.dct(norm="ortho")``), D_σ random signs, R m rows drawn without
                    replacement.
* ``"srht"``      — the subsampled randomised Hadamard transform P = √(N'/m) R H D_σ with H the
                    orthonormal Walsh–Hadamard matrix, applied by :func:`fwht` in O(N log N). N' = N when N
                    is a power of two; otherwise x is ZERO-PADDED to the next power of two N' (norms and
                    inner products unchanged) and a warning says so.

Rows are points: ``project(x)`` maps x [..., N] → [..., m].

Two different ε (do not mix them):

* the Dasgupta–Gupta ε, for SQUARED DISTANCES: m ≥ 4 ln M / (ε²/2 − ε³/3) keeps every pairwise squared
  distance of M points within a factor 1 ± ε (with probability ≥ 1 − 1/M for the Gaussian projection;
  :func:`jl_dimension`, :func:`jl_epsilon` its inverse);
* Eq. 35's ε, for INNER PRODUCTS of unit vectors: |⟨Px_i, Px_j⟩ − ⟨x_i, x_j⟩| ≤ ε. By polarisation,
  4⟨x, y⟩ = ‖x + y‖² − ‖x − y‖², the squared-distance guarantee on the 2M points {±x_i} gives it with the
  same ε (the error is at most ε(‖x + y‖² + ‖x − y‖²)/4 = ε): :func:`jl_inner_product_epsilon` (M, m) =
  :func:`jl_epsilon` (2M, m).

Theorem 4's distortion of a compression, two ways:

* :func:`eq39_distortion` — Eq. 39 as printed: the compressed inner products are sᵀPᵀPs′ (the projected
  points as they are, not put back on the sphere), compared with sᵀs′ at the correspondence s ↦ Ps:
  Σ_ij μ_i μ_j (⟨s_i, s_j⟩ − ⟨Ps_i, Ps_j⟩)² ≤ ε², with ε the max inner-product error (Eq. 35's ε);
* :func:`compression_distortion` — the RENORMALISED-COSINE VARIANT: d_s²(S, S') of Eq. 34 by GW between S
  and S' = {Ps/‖Ps‖} (:func:`compress`, a semantic space on S^{m−1}), compared with the renormalised cosines'
  max error; it is the distortion of the readout :func:`compressed_logits` uses, not Eq. 39.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import fft as jfft

from tvvar.theory.space.semantic import SemanticSpace, gromov_wasserstein, gw_objective
from tvvar.typing import Array, PRNGKey

__all__ = [
    "KINDS",
    "Projection",
    "random_projection",
    "fwht",
    "next_power_of_two",
    "jl_dimension",
    "jl_epsilon",
    "jl_inner_product_epsilon",
    "random_sphere_points",
    "max_inner_product_error",
    "compress",
    "compression_distortion",
    "eq39_distortion",
    "compressed_logits",
]

KINDS = ("gaussian", "sparse", "dct", "srht")


def next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def fwht(x: Array, axis: int = -1) -> Array:
    """Unnormalised fast Walsh–Hadamard transform along ``axis``: H_N x with H_N = scipy.linalg.hadamard(N).

    Sylvester order, H_2N = [[H_N, H_N], [H_N, −H_N]]: log₂N butterfly stages, each one reshape and one
    add/subtract, so O(N log N) work and differentiable (the transform is linear; its VJP is H_N itself).
    N must be a power of two (refused otherwise; :func:`random_projection` pads for you).
    """
    x = jnp.asarray(x)
    x = jnp.moveaxis(x, axis, -1)
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length along axis {axis}, got {n} (zero-pad to "
                         f"{next_power_of_two(n)})")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        # [..., blocks, 2, h]: entry (b, 0, :) and (b, 1, :) are the butterfly's two halves
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = jnp.stack([a + b, a - b], axis=-2).reshape(*lead, n)
        h *= 2
    return jnp.moveaxis(x, -1, axis)


@dataclass(frozen=True)
class Projection:
    """P: R^N → R^m of one kind (see the module docstring), with E‖Px‖² = ‖x‖²."""

    kind: str
    n: int  # N, the input dimension
    m: int  # the output dimension
    matrix_or_none: Array | None  # [m, N] for "gaussian" and "sparse"
    signs: Array | None  # D_σ [N'] for "dct" and "srht"
    rows: Array | None  # R: the m kept row indices for "dct" and "srht"
    padded_n: int  # N' (= N except for "srht" with N not a power of two)

    def __call__(self, x: Array) -> Array:
        x = jnp.asarray(x)
        if x.shape[-1] != self.n:
            raise ValueError(f"x must have last dimension N={self.n} (the projection's input), got shape {x.shape}")
        if self.matrix_or_none is not None:
            return x @ self.matrix_or_none.T.astype(x.dtype)
        if self.padded_n != self.n:
            x = jnp.concatenate([x, jnp.zeros((*x.shape[:-1], self.padded_n - self.n), x.dtype)], axis=-1)
        y = x * self.signs.astype(x.dtype).reshape((1,) * (x.ndim - 1) + (-1,))
        if self.kind == "dct":
            y = jfft.dct(y, type=2, norm="ortho", axis=-1)
        else:
            y = fwht(y) / math.sqrt(self.padded_n)
        return jnp.take(y, self.rows, axis=-1) * math.sqrt(self.padded_n / self.m)

    def matrix(self, dtype=jnp.float32) -> Array:
        """The explicit [m, N] matrix (P applied to the identity)."""
        return self(jnp.eye(self.n, dtype=dtype)).T


def _check_dims(n, m) -> None:
    for name, v in (("n", n), ("m", m)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool):
            raise TypeError(f"{name} must be an integer, got {v!r}")
    if n < 2:
        raise ValueError(f"n (the input dimension N) must be ≥ 2, got {n}")
    if not 1 <= m < n:
        raise ValueError(f"m (the compressed dimension) must satisfy 1 ≤ m < N={n}, got m={m}")


def random_projection(key: PRNGKey, kind: str, n: int, m: int, *, dtype=jnp.float32) -> Projection:
    """A random P: R^n → R^m of ``kind`` in :data:`KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    _check_dims(n, m)
    k_mat, k_sign, k_rows = jax.random.split(key, 3)
    if kind == "gaussian":
        P = jax.random.normal(k_mat, (m, n), dtype) / math.sqrt(m)
        return Projection(kind, n, m, P, None, None, n)
    if kind == "sparse":
        # ±1 with probability 1/6 each, 0 with 2/3 (Achlioptas), by thresholds on one uniform draw (a categorical
        # draw compiles a larger program for every shape)
        u = jax.random.uniform(k_mat, (m, n), dtype)
        entry = (u < 1.0 / 6.0).astype(dtype) - (u >= 5.0 / 6.0).astype(dtype)
        return Projection(kind, n, m, entry * math.sqrt(3.0 / m), None, None, n)
    n_pad = n
    if kind == "srht" and n & (n - 1):
        n_pad = next_power_of_two(n)
        warnings.warn(f"random_projection(kind='srht'): N={n} is not a power of two; inputs are zero-padded to "
                      f"N'={n_pad} (norms and inner products unchanged)", stacklevel=2)
    signs = jax.random.rademacher(k_sign, (n_pad,), dtype)
    # = jax.random.choice(k_rows, n_pad, (m,), replace=False) draw for draw, compiled once per n_pad, not per m
    rows = jax.random.permutation(k_rows, n_pad)[:m]
    return Projection(kind, n, m, None, signs, rows, n_pad)


# --------------------------------------------------------------------------------------------------
# Lemma 1: the Johnson–Lindenstrauss dimension
# --------------------------------------------------------------------------------------------------


def jl_dimension(num_points: int, eps: float) -> int:
    """⌈4 ln M / (ε²/2 − ε³/3)⌉ (Dasgupta & Gupta 2003): M = 1000, ε = 0.5 → 332. ε is the relative error of
    SQUARED DISTANCES (1 ± ε)‖x_i − x_j‖², not Eq. 35's inner-product ε (:func:`jl_inner_product_epsilon`)."""
    if not isinstance(num_points, int | np.integer) or num_points < 2:
        raise ValueError(f"num_points (M) must be an integer ≥ 2, got {num_points!r}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps!r}")
    return math.ceil(4.0 * math.log(num_points) / (eps**2 / 2 - eps**3 / 3))


def jl_epsilon(num_points: int, m: int) -> float:
    """Dasgupta–Gupta's ε for a given m: the root in (0, 1) of m (ε²/2 − ε³/3) = 4 ln M — the relative error of
    the M points' pairwise SQUARED DISTANCES, (1 ± ε)‖x_i − x_j‖² (the inverse of :func:`jl_dimension`). It is
    not Eq. 35's ε on inner products: that is :func:`jl_inner_product_epsilon`. Refuses m too small for any
    ε < 1, i.e. m ≤ 24 ln M."""
    if not isinstance(num_points, int | np.integer) or num_points < 2:
        raise ValueError(f"num_points (M) must be an integer ≥ 2, got {num_points!r}")
    target = 4.0 * math.log(num_points)
    # ε²/2 − ε³/3 increases on (0, 1) to 1/6, so a root exists iff m/6 > 4 ln M
    if not m / 6.0 > target:
        raise ValueError(f"m={m} is below 24 ln M = {6 * target:.1f}: Lemma 1 gives no ε < 1 for M={num_points}")
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if m * (mid**2 / 2 - mid**3 / 3) < target else (lo, mid)
    return 0.5 * (lo + hi)


def jl_inner_product_epsilon(num_points: int, m: int) -> float:
    """Eq. 35's ε for M unit vectors: |⟨Px_i, Px_j⟩ − ⟨x_i, x_j⟩| ≤ ε for every pair, from Dasgupta–Gupta's
    squared-distance guarantee on the 2M points {±x_i} by polarisation (4⟨x, y⟩ = ‖x + y‖² − ‖x − y‖², so the
    error is at most ε(‖x + y‖² + ‖x − y‖²)/4 = ε on the sphere): ``jl_epsilon(2M, m)``. Refuses m ≤ 24 ln 2M."""
    if not isinstance(num_points, int | np.integer) or num_points < 2:
        raise ValueError(f"num_points (M) must be an integer ≥ 2, got {num_points!r}")
    return jl_epsilon(2 * int(num_points), m)


# --------------------------------------------------------------------------------------------------
# Measurement: the inner-product error of a compression (the JL table) and Theorem 4's distortion
# --------------------------------------------------------------------------------------------------


def random_sphere_points(key: PRNGKey, num_points: int, dim: int, dtype=jnp.float32) -> Array:
    """M points uniform on S^{dim−1}: [M, dim]."""
    x = jax.random.normal(key, (num_points, dim), dtype)
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def max_inner_product_error(x: Array, px: Array) -> float:
    """max_{i<j} |⟨Px_i, Px_j⟩ − ⟨x_i, x_j⟩| over all distinct pairs of rows (the JL table's number)."""
    if x.ndim != 2 or px.ndim != 2 or x.shape[0] != px.shape[0]:
        raise ValueError(f"x [M, N] and px [M, m] must be matrices with the same rows, got {x.shape}, {px.shape}")
    err = jnp.abs(px @ px.T - x @ x.T)
    off_diagonal = ~jnp.eye(x.shape[0], dtype=bool)
    return float(jnp.max(jnp.where(off_diagonal, err, 0.0)))


def compress(space: SemanticSpace, projection: Projection) -> SemanticSpace:
    """S' = ({Pu_i/‖Pu_i‖}, μ): the compressed space, back on the sphere S^{m−1} (the measure is kept).

    A point that P sends to 0 has no direction: refused (SemanticSpace.from_matrix raises).
    """
    if projection.n != space.dim:
        raise ValueError(f"projection input N={projection.n} must equal the space's dimension m={space.dim}")
    pu = np.asarray(projection(space.points))
    norms = np.linalg.norm(pu, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("the projection sends a point to 0: its compression has no direction on the sphere")
    return SemanticSpace(pu / norms, np.asarray(space.measure))


def _lemma_epsilons(n: int, m: int) -> dict:
    """The two ε a random projection to m dimensions guarantees for n points (None where none < 1 exists)."""
    return {"dasgupta_gupta_epsilon": jl_epsilon(n, m) if n >= 2 and m > 24 * math.log(n) else None,
            "inner_product_epsilon": (jl_inner_product_epsilon(n, m) if n >= 2 and m > 24 * math.log(2 * n)
                                      else None)}


def eq39_distortion(space: SemanticSpace, projection: Projection) -> dict:
    """Theorem 4's distortion as Eq. 39 prints it, in float64: the compressed inner products are sᵀPᵀPs′ (the
    projected points as they are, NOT put back on the sphere), compared with sᵀs′ at the correspondence s ↦ Ps,

        D₃₉ = Σ_{i,j} μ_i μ_j (⟨s_i, s_j⟩ − ⟨Ps_i, Ps_j⟩)²  ≤  ε̂²,  ε̂ = max_{i,j} |⟨Ps_i, Ps_j⟩ − ⟨s_i, s_j⟩|,

    (a μ⊗μ-weighted mean of squares is at most the largest square), and ε̂ ≤ Eq. 35's ε with high probability.
    The diagonal (i = j: ‖Ps_i‖² − 1) is part of the sum, as in Eq. 34 at this coupling.

    Returns {"m", "eq39": D₃₉, "max_inner_product_error": ε̂ (over all i, j), "dasgupta_gupta_epsilon",
    "inner_product_epsilon" (see :func:`jl_inner_product_epsilon`; None where m is too small)}.
    """
    if not isinstance(space, SemanticSpace):
        raise TypeError(f"space must be a SemanticSpace, got {type(space).__name__}")
    if not isinstance(projection, Projection):
        raise TypeError(f"projection must be a Projection, got {type(projection).__name__}")
    if projection.n != space.dim:
        raise ValueError(f"projection input N={projection.n} must equal the space's dimension m={space.dim}")
    s = np.asarray(space.points, np.float64)
    ps = np.asarray(projection(jnp.asarray(space.points)), np.float64)
    mu = np.asarray(space.measure, np.float64)
    diff = ps @ ps.T - s @ s.T
    return {"m": projection.m, "eq39": float(mu @ (diff**2) @ mu), "max_inner_product_error": float(np.abs(diff).max()),
            **_lemma_epsilons(space.n, projection.m)}


def compression_distortion(space: SemanticSpace, projection: Projection, *, epsilon: float = 1e-3,
                           on_unconverged: str = "raise") -> dict:
    """Theorem 4 measured, RENORMALISED-COSINE VARIANT (not Eq. 39 as printed: that is :func:`eq39_distortion`):
    d_s²(S, S') of Eq. 34 between a space and its compression put back on the sphere, S' = {Ps/‖Ps‖}
    (:func:`compress`), the distortion of the readout :func:`compressed_logits` uses.

    Returns {"m", "gw": d_s² by entropic GW started from the identity correspondence (None if unconverged and
    flagged), "identity_coupling": Eq. 34 at π = diag(μ) (a feasible coupling, so an exact upper bound on d_s²),
    "max_cosine_error": ε̂ = max_{i,j} |cos' − cos| of the renormalised cosines (so identity coupling ≤ ε̂²),
    "dasgupta_gupta_epsilon": Dasgupta–Gupta's ε for the N points' SQUARED DISTANCES at this m,
    "inner_product_epsilon": Eq. 35's ε for their inner products (both None where m is too small for an
    ε < 1), "converged", "result" (the GWResult)}.
    """
    compressed = compress(space, projection)
    # point i's compression is point i: start from that correspondence (an upper bound GW can only lower)
    result = gromov_wasserstein(space, compressed, epsilon=epsilon, on_unconverged=on_unconverged,
                                init_coupling=jnp.diag(space.measure))
    G, G2 = space.inner_products(), compressed.inner_products()
    identity = float(gw_objective(G, G2, jnp.diag(space.measure)))
    return {
        "m": projection.m,
        **_lemma_epsilons(space.n, projection.m),
        "gw": result.objective if result.converged else None,
        "identity_coupling": identity,
        "max_cosine_error": float(jnp.max(jnp.abs(G2 - G))),
        "converged": result.converged,
        "result": result,
    }


def compressed_logits(model, ids: Array, projection: Projection) -> Array:
    """The next-token logits of a trained model with its readout compressed from D to m (issue 15 item 5).

    logits_v = ⟨Pũ_v / ‖Pũ_v‖, P h⟩ / Ξ: the readout's token vectors ũ_v (Eq. 44, on S^{D−1}) compressed and
    put back on the sphere S^{m−1} (:func:`compress`), the hidden vector h = ``model.hidden(ids)`` projected by
    the same P. With E‖Px‖² = ‖x‖² the compressed logits are unbiased up to the renormalisation; the loss
    of cross-entropy against m is the dimension–distortion curve. ids [B, T] → [B, T, V] float32.
    """
    readout = getattr(model, "readout", None)
    if readout is None or not callable(getattr(model, "hidden", None)):
        raise TypeError(f"model must be a TVVARModel (with .hidden and .readout), got {type(model).__name__}")
    if not isinstance(projection, Projection):
        raise TypeError(f"projection must be a Projection, got {type(projection).__name__}")
    U = readout.embedding.vectors()
    if projection.n != U.shape[1]:
        raise ValueError(f"projection input N={projection.n} must equal the model width D={U.shape[1]}")
    h = model.hidden(ids).astype(jnp.float32)
    pu = projection(U.astype(jnp.float32))
    norms = jnp.linalg.norm(pu, axis=1, keepdims=True)
    if not isinstance(norms, jax.core.Tracer) and bool(jnp.any(norms == 0)):
        raise ValueError("the projection sends a token vector to 0: its compression has no direction")
    return jnp.einsum("...m,vm->...v", projection(h), pu / norms) / jnp.asarray(readout.xi, jnp.float32)
