"""Section IV of Bai (arXiv:2511.01202): the semantic vector space and the distance between two of them.

A semantic vector space (Definition 11) is a finite set of token vectors on the unit sphere with a
probability measure,

    S = (U, μ),   U = {u_1, …, u_N} ⊂ S^{m−1},   μ_i ≥ 0,  Σ_i μ_i = 1,

with cosine similarity cos(u_i, u_j) = ⟨u_i, u_j⟩ and squared Euclidean distance
‖u_i − u_j‖² = 2 − 2⟨u_i, u_j⟩ (Def. 11). The distance between two spaces (Definition 12, Eq. 34) is a
Gromov–Wasserstein problem on inner products: with G_ij = ⟨u_i, u_j⟩ and G'_kl = ⟨u'_k, u'_l⟩,

    d_s²(S, S') = min_{π ∈ Π(μ, μ')} Σ_{i,j,k,l} (G_ij − G'_kl)² π_ik π_jl                   (Eq. 34)

which is 0 exactly when the spaces are the same up to a rotation and a measure-preserving relabelling.

Index convention: points are rows, ``points[i]`` = u_i of shape [N, m]; a coupling ``π[i, k]`` matches
point i of the first space with point k of the second.

Off-sphere input: ``SemanticSpace(points, measure)`` REFUSES points that are not unit vectors (within
``unit_tolerance``); :meth:`SemanticSpace.from_matrix` NORMALISES the rows and warns when any was not
already a unit vector (a zero row cannot be normalised and is refused).

Distance: solved with ott-jax's entropic Gromov–Wasserstein. The reported value is the objective of Eq. 34
evaluated in closed form at the returned coupling, in the original units (no entropy term, no cost
scaling), so it never depends on the solver's internal conventions; an unconverged solve is refused as a
distance (:class:`GWConvergenceError`) unless asked to be returned with its flag.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.typing import Array

__all__ = [
    "SemanticSpace",
    "GWResult",
    "GWConvergenceError",
    "cosine_similarity",
    "token_frequencies",
    "gw_objective",
    "tlb_cost",
    "gromov_wasserstein",
]


class GWConvergenceError(RuntimeError):
    """The Gromov–Wasserstein solver did not converge: its value is not a distance."""


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _default_tolerance(dtype) -> float:
    # float32 rows renormalised by `sphere` are unit to a few ulps; 1e-5 leaves room, float64 far tighter
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def _check_points(points, name: str = "points") -> np.ndarray:
    if isinstance(points, jax.core.Tracer):
        raise TypeError(f"{name} must be a concrete array (validate before jit), got a tracer")
    x = np.asarray(points)
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise TypeError(f"{name} must be a real floating array [N, m], got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape [N, m] with N ≥ 1 and m ≥ 1, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(x)))} NaN/inf entries")
    return x


def _check_measure(measure, n: int, name: str = "measure", tolerance: float = 1e-6) -> np.ndarray:
    if isinstance(measure, jax.core.Tracer):
        raise TypeError(f"{name} must be a concrete array (validate before jit), got a tracer")
    mu = np.asarray(measure)
    if mu.dtype.kind not in "fiu" or mu.dtype == np.bool_:
        raise TypeError(f"{name} must be a real array of N={n} masses, got dtype {mu.dtype}")
    if mu.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one mass per point), got shape {mu.shape}")
    if not np.all(np.isfinite(mu)):
        raise ValueError(f"{name} must be finite, got {mu}")
    if np.any(mu < 0):
        raise ValueError(f"{name} must be non-negative, got min mass {float(mu.min())!r}")
    total = float(np.sum(mu, dtype=np.float64))
    if abs(total - 1.0) > tolerance:
        raise ValueError(f"{name} must sum to 1 (a probability measure) within {tolerance:g}, got sum {total!r}")
    return mu


def cosine_similarity(a: Array, b: Array) -> Array:
    """cos(a_i, b_j) = ⟨a_i, b_j⟩ / (‖a_i‖ ‖b_j‖) for rows a [N, m], b [M, m] → [N, M].

    Zero rows have no direction: refused (concrete input) rather than a silent 0 or NaN.
    """
    a, b = _check_points(a, "a"), _check_points(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same width m, got a {a.shape} and b {b.shape}")
    for name, x in (("a", a), ("b", b)):
        if np.any(np.linalg.norm(x, axis=1) == 0):
            raise ValueError(f"{name} has a zero row: the cosine similarity of a zero vector is undefined")
    a, b = jnp.asarray(a), jnp.asarray(b)
    a = a / jnp.linalg.norm(a, axis=1, keepdims=True)
    b = b / jnp.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def token_frequencies(token_ids, vocab_size: int) -> np.ndarray:
    """μ_v = (count of token v) / (number of tokens): the corpus measure of Def. 11, shape [V] (float64)."""
    if not isinstance(vocab_size, int | np.integer) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer ≥ 1, got {vocab_size!r}")
    ids = np.asarray(token_ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"token_ids must be an integer array, got dtype {ids.dtype}")
    ids = ids.reshape(-1)
    if ids.size == 0:
        raise ValueError("token_ids is empty: a measure needs at least one token")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token_ids must lie in [0, {vocab_size}), got values in [{ids.min()}, {ids.max()}]")
    counts = np.bincount(ids, minlength=vocab_size).astype(np.float64)
    return counts / counts.sum()


# --------------------------------------------------------------------------------------------------
# Definition 11: the semantic vector space
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemanticSpace:
    """S = (U, μ): N unit vectors u_i ∈ S^{m−1} (rows of ``points`` [N, m]) and a probability measure μ [N].

    The constructor refuses points off the sphere (|‖u_i‖ − 1| > ``unit_tolerance``, by default 1e-5 in
    float32 and 1e-10 in float64) and measures that are negative or do not sum to 1 (within
    ``measure_tolerance``); ``measure=None`` is the uniform measure 1/N. Use :meth:`from_matrix` to
    normalise arbitrary rows.
    """

    points: Array
    measure: Array

    def __init__(self, points, measure=None, *, unit_tolerance: float | None = None,
                 measure_tolerance: float = 1e-6):
        x = _check_points(points)
        if x.dtype.kind != "f":
            raise TypeError(f"points must be floating (unit vectors), got dtype {x.dtype}")
        tol = _default_tolerance(x.dtype) if unit_tolerance is None else float(unit_tolerance)
        norms = np.linalg.norm(x.astype(np.float64), axis=1)
        worst = int(np.argmax(np.abs(norms - 1.0)))
        if abs(norms[worst] - 1.0) > tol:
            raise ValueError(
                f"points must lie on the unit sphere S^{{m−1}} (Def. 11) within {tol:g}: row {worst} has norm "
                f"{norms[worst]!r}; use SemanticSpace.from_matrix to normalise the rows")
        n = x.shape[0]
        mu = np.full((n,), 1.0 / n) if measure is None else _check_measure(measure, n, tolerance=measure_tolerance)
        # float64 input is kept only under x64; otherwise JAX's canonical float32, without its truncation warning
        dtype = jax.dtypes.canonicalize_dtype(x.dtype)
        object.__setattr__(self, "points", jnp.asarray(x.astype(dtype)))
        object.__setattr__(self, "measure", jnp.asarray(mu.astype(dtype)))

    @classmethod
    def from_matrix(cls, x, measure=None, *, unit_tolerance: float | None = None) -> SemanticSpace:
        """Rows of any real matrix [N, m] projected onto the sphere; warns if any row was not a unit vector."""
        x = _check_points(x, "x")
        if x.dtype.kind != "f":
            x = x.astype(np.float32)
        norms = np.linalg.norm(x.astype(np.float64), axis=1)
        if np.any(norms == 0):
            raise ValueError(f"x has zero rows {np.flatnonzero(norms == 0)[:8].tolist()}: a zero vector has no "
                             "direction on the sphere")
        tol = _default_tolerance(x.dtype) if unit_tolerance is None else float(unit_tolerance)
        if np.any(np.abs(norms - 1.0) > tol):
            warnings.warn(f"SemanticSpace.from_matrix: {int(np.sum(np.abs(norms - 1.0) > tol))} of {len(norms)} "
                          "rows were not unit vectors and were normalised onto the sphere", stacklevel=2)
        u = (x.astype(np.float64) / norms[:, None]).astype(x.dtype)
        return cls(u, measure, unit_tolerance=unit_tolerance)

    @classmethod
    def from_model(cls, model, token_ids=None) -> SemanticSpace:
        """The token vectors ũ_{1:V} of a trained model (a ``TVVARModel`` or a ``SphereEmbedding``).

        ``token_ids`` given → μ is the token frequency in that corpus (Def. 11); otherwise uniform.
        """
        embedding = getattr(model, "embed", model)
        if not callable(getattr(embedding, "vectors", None)):
            raise TypeError(f"model must be a TVVARModel or a SphereEmbedding (with .vectors()), got {type(model)}")
        u = np.asarray(embedding.vectors())
        measure = None if token_ids is None else token_frequencies(token_ids, u.shape[0])
        return cls(u, measure)

    @property
    def n(self) -> int:
        """N, the number of points."""
        return self.points.shape[0]

    @property
    def dim(self) -> int:
        """m, the ambient dimension (the points lie on S^{m−1})."""
        return self.points.shape[1]

    def inner_products(self) -> Array:
        """G_ij = ⟨u_i, u_j⟩ [N, N], the matrix Eq. 34 compares."""
        return self.points @ self.points.T

    def cosine_similarity(self) -> Array:
        """cos(u_i, u_j) [N, N]; on the sphere this is the inner-product matrix."""
        return self.inner_products()

    def squared_distances(self) -> Array:
        """‖u_i − u_j‖² = 2 − 2⟨u_i, u_j⟩ [N, N] (Def. 11), clipped at 0 against rounding."""
        return jnp.maximum(2.0 - 2.0 * self.inner_products(), 0.0)


# --------------------------------------------------------------------------------------------------
# Definition 12 / Eq. 34: the Gromov–Wasserstein distance on inner products
# --------------------------------------------------------------------------------------------------


def gw_objective(G: Array, G2: Array, coupling: Array) -> Array:
    """Σ_{ijkl} (G_ij − G'_kl)² π_ik π_jl in closed form, O(N²M + NM²) instead of O(N²M²).

    Expanding the square with a = π1, b = πᵀ1: aᵀ(G∘G)a + bᵀ(G'∘G')b − 2⟨π, G π G'⟩ (G, G' symmetric).
    The marginals of π are used as they are, so the value is exact for the coupling given.
    """
    a, b = coupling.sum(axis=1), coupling.sum(axis=0)
    cross = jnp.sum(coupling * (G @ coupling @ G2))
    return a @ (G * G) @ a + b @ (G2 * G2) @ b - 2.0 * cross


@dataclass(frozen=True)
class GWResult:
    """An entropic GW solve. ``distance2`` = d_s² of Eq. 34 (raises unless ``converged``)."""

    objective: float  # Eq. 34 evaluated at ``coupling``: reported whether or not the solver converged
    coupling: Array  # π [N, M]
    converged: bool
    n_iterations: int
    marginal_error: float  # ‖π1 − μ‖₁ + ‖πᵀ1 − μ'‖₁

    @property
    def distance2(self) -> float:
        if not self.converged:
            raise GWConvergenceError(
                f"Gromov–Wasserstein did not converge after {self.n_iterations} outer iterations (marginal error "
                f"{self.marginal_error:.2e}); its objective {self.objective:.3e} is not a distance. Raise "
                "max_iterations, or raise epsilon")
        return self.objective

    @property
    def distance(self) -> float:
        """d_s = √(d_s²)."""
        return math.sqrt(max(self.distance2, 0.0))

    def matching(self) -> np.ndarray:
        """k(i) = argmax_k π_ik: the point of the second space each point of the first is sent to."""
        return np.asarray(jnp.argmax(self.coupling, axis=1))


def _quantiles(G: np.ndarray, mu: np.ndarray, num: int) -> np.ndarray:
    """Row i → the quantile function of the law of ⟨u_i, u_j⟩ under j ~ μ, at ``num`` levels: [N, num]."""
    order = np.argsort(G, axis=1)
    values = np.take_along_axis(G, order, axis=1)
    cdf = np.cumsum(mu[order], axis=1)
    levels = (np.arange(num) + 0.5) / num
    idx = np.stack([np.searchsorted(c, levels, side="left") for c in cdf])
    return np.take_along_axis(values, np.minimum(idx, G.shape[1] - 1), axis=1)


def tlb_cost(G: np.ndarray, mu: np.ndarray, G2: np.ndarray, nu: np.ndarray, num: int = 128) -> np.ndarray:
    """C_ik = W₂²(law of G_i·, law of G'_k·): Mémoli's third lower bound cost [N, M].

    Invariant to rotations and relabellings of either space, so its coupling is a start for Eq. 34 that
    already points to the right matches; from the product coupling (ott's default) the solver stalls in a
    poor local minimum even for a slightly noisy copy (measured: d² 0.095 vs 0.015 at σ = 0.1, N = 32).
    """
    q1, q2 = _quantiles(G, mu, num), _quantiles(G2, nu, num)
    return np.mean((q1[:, None, :] - q2[None, :, :]) ** 2, axis=-1)


@functools.partial(jax.jit, static_argnames=("epsilon", "max_iterations", "threshold", "sinkhorn_threshold",
                                             "sinkhorn_max_iterations"))
def _solve(G, G2, a, b, C0, *, epsilon, max_iterations, threshold, sinkhorn_threshold, sinkhorn_max_iterations):
    """ott's entropic GW from the start linearisation C0 → (π, outer costs, last Sinkhorn converged).

    The ott objects are built inside the jit: passed in as pytrees, their auxiliary data differs from call
    to call and every solve recompiled (measured: 7–9 s each); built here, one size and configuration
    compile once.
    """
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.problems.quadratic import quadratic_problem
    from ott.solvers.linear import sinkhorn as ott_sinkhorn
    from ott.solvers.quadratic import gromov_wasserstein as ott_gw

    prob = quadratic_problem.QuadraticProblem(geometry.Geometry(cost_matrix=G), geometry.Geometry(cost_matrix=G2),
                                              a=a, b=b)
    init = linear_problem.LinearProblem(geometry.Geometry(cost_matrix=C0, epsilon=1e-2), a=a, b=b)
    sinkhorn = ott_sinkhorn.Sinkhorn(max_iterations=sinkhorn_max_iterations, threshold=sinkhorn_threshold)
    solver = ott_gw.GromovWasserstein(sinkhorn, epsilon=epsilon, max_iterations=max_iterations, threshold=threshold)
    out = solver(prob, init=init)
    return out.matrix, out.costs, out.linear_state.converged


def gromov_wasserstein(
    S: SemanticSpace,
    S2: SemanticSpace,
    *,
    epsilon: float = 1e-3,
    max_iterations: int = 50,
    threshold: float = 1e-6,
    sinkhorn_threshold: float = 1e-4,
    sinkhorn_max_iterations: int = 5000,
    on_unconverged: Literal["raise", "flag"] = "raise",
    init_coupling: Array | None = None,
) -> GWResult:
    """d_s²(S, S') of Eq. 34 by entropic Gromov–Wasserstein (ott-jax), with its coupling and convergence.

    epsilon: the entropic regularisation, relative to the mean absolute inner product of both spaces (one
    common scale, see below). threshold: the outer loop stops when the regularised cost changes by less
    than this (relative); sinkhorn_threshold: the marginal error each Sinkhorn solve must reach.
    on_unconverged="raise" (default) raises :class:`GWConvergenceError`; "flag" returns the result with
    ``converged=False`` (its ``distance2`` still raises; ``objective`` is the value at the coupling reached).

    Start: Eq. 34 is non-convex and the solver descends to a local minimum from its start. By default the
    start is the matching of Mémoli's third lower bound (:func:`tlb_cost`), invariant to rotations and
    relabellings; ``init_coupling`` [N, M] starts instead from the linearisation at a known correspondence
    (e.g. diag(μ) between a space and its compression, whose objective is then an upper bound the solver
    can only improve on). ``converged`` means the iterations converged, not that the minimum is global.

    Scaling: ott's ``scale_cost="mean"`` divides EACH cost matrix by ITS OWN mean, which changes the
    problem whenever the two means differ (a space and its compression) — and the mean of an inner-product
    matrix can be ≈ 0. Dividing both by one common positive scale s is a pure change of units,
    GW(G/s, G'/s) = GW(G, G')/s², so it keeps the conditioning the issue asks for (ε = 1e-3 converges)
    without altering the minimiser. The returned value is evaluated in the original units anyway.

    Avoided ott-jax 0.6.0 paths: the online ``batch_size`` cost evaluation (and ``"max_cost"`` scaling through
    it) calls ``jax.interpreters.batching.is_vmappable``, gone in jax ≥ 0.9 (AttributeError). Explicit
    [N, N] cost matrices never take that path, so no shim is needed;
    tests/test_semantic_space.py::test_ott_batch_size_path_still_broken fails once a fixed ott-jax is installed.
    """
    for name, sp in (("S", S), ("S2", S2)):
        if not isinstance(sp, SemanticSpace):
            raise TypeError(f"{name} must be a SemanticSpace, got {type(sp).__name__}")
    for name, v in (("epsilon", epsilon), ("threshold", threshold), ("sinkhorn_threshold", sinkhorn_threshold)):
        if not (isinstance(v, int | float) and v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    for name, v in (("max_iterations", max_iterations), ("sinkhorn_max_iterations", sinkhorn_max_iterations)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be an integer ≥ 1, got {v!r}")
    if on_unconverged not in ("raise", "flag"):
        raise ValueError(f"on_unconverged must be one of ['raise', 'flag'], got {on_unconverged!r}")

    dtype = jnp.promote_types(S.points.dtype, S2.points.dtype)
    G, G2 = S.inner_products().astype(dtype), S2.inner_products().astype(dtype)
    mu, nu = S.measure.astype(dtype), S2.measure.astype(dtype)
    # Zero-mass points carry no cost in Eq. 34 and give log 0 inside Sinkhorn: solve on the support only.
    keep1, keep2 = np.flatnonzero(np.asarray(mu) > 0), np.flatnonzero(np.asarray(nu) > 0)
    Gs, G2s = G[np.ix_(keep1, keep1)], G2[np.ix_(keep2, keep2)]
    s = float(0.5 * (jnp.mean(jnp.abs(Gs)) + jnp.mean(jnp.abs(G2s))))

    if init_coupling is None:
        C0 = tlb_cost(np.asarray(Gs, np.float64), np.asarray(mu[keep1], np.float64),
                      np.asarray(G2s, np.float64), np.asarray(nu[keep2], np.float64))
    else:
        T0 = np.asarray(init_coupling, np.float64)
        if T0.shape != (S.n, S2.n) or not np.all(np.isfinite(T0)) or np.any(T0 < 0):
            raise ValueError(f"init_coupling must be a finite non-negative [{S.n}, {S2.n}] matrix, got shape "
                             f"{T0.shape}")
        # the GW gradient at T0 is −4 G T0 G' up to row/column constants, which Sinkhorn absorbs
        G64, G264 = np.asarray(G, np.float64), np.asarray(G2, np.float64)
        C0 = -(G64 @ T0 @ G264)[np.ix_(keep1, keep2)]
        C0 = C0 - C0.min()
    C0 = jnp.asarray(C0 / max(C0.mean(), 1e-30), dtype)
    # ott-jax broadcasts with implicit rank promotion, which the suite's strict setting would refuse
    with jax.numpy_rank_promotion("allow"):
        matrix, costs, last_converged = _solve(
            Gs / s, G2s / s, mu[keep1], nu[keep2], C0, epsilon=float(epsilon), max_iterations=max_iterations,
            threshold=float(threshold), sinkhorn_threshold=float(sinkhorn_threshold),
            sinkhorn_max_iterations=int(sinkhorn_max_iterations))

    coupling = jnp.zeros((S.n, S2.n), dtype).at[np.ix_(keep1, keep2)].set(matrix.astype(dtype))
    objective = float(gw_objective(G, G2, coupling))
    marginal_error = float(jnp.sum(jnp.abs(coupling.sum(1) - mu)) + jnp.sum(jnp.abs(coupling.sum(0) - nu)))
    # ott's own flag also demands that every intermediate Sinkhorn converged; the first one (from the start
    # linearisation) often does not at small ε, which says nothing about the fixed point returned.
    # Converged here = the outer loop stopped on its cost criterion before max_iterations, the last
    # Sinkhorn solve converged and the coupling is finite.
    n_outer = int(jnp.sum(costs != -1))
    converged = (n_outer < max_iterations and bool(last_converged)
                 and bool(jnp.all(jnp.isfinite(coupling))))
    result = GWResult(objective=objective, coupling=coupling, converged=converged,
                      n_iterations=n_outer, marginal_error=marginal_error)
    if not converged and on_unconverged == "raise":
        result.distance2  # noqa: B018 — raises GWConvergenceError with the diagnostics
    return result
