"""Modern continuous Hopfield networks (Ramsauer et al. 2020, "Hopfield Networks is All You Need"),
attention as their retrieval, and a Hopfield layer in place of Ψ (Bai, arXiv:2511.01202, Section V-E).

Stored patterns are the rows of X [N, d] (Ramsauer's X is d × N, its columns our rows); the state
(query) pattern is ξ [d]. With M = max_i |x_i| and lse(β, z) = β⁻¹ log Σ_i exp(β z_i):

    E(ξ) = −lse(β, Xξ) + ½ ξᵀξ + β⁻¹ log N + ½ M²                 (Ramsauer Eq. 2)
    ξ_new = Xᵀ softmax(β X ξ)                                       (Ramsauer Eq. 3, the update)

The update is the CCCP step of E, so E never increases; iterated, ξ converges to a fixed point that
is near one pattern, a metastable average over a subset, or the global average. With separation
Δ_i = x_iᵀx_i − max_{j≠i} x_iᵀx_j, Theorem 3 (storage capacity) and Theorem 5 (one-step retrieval
error) are implemented as :func:`theorem3_constants` / :func:`theorem3_storage_condition` and
:func:`theorem5_bound`.

Attention is retrieval (Section V-E; Theorem 5 of Bai): one update is the π-weighted sum of the
attention decomposition with bilinear form B = β·I and value map A = I, the stored patterns as the
keys/values and the state as the query row — :func:`hopfield_update_via_attention` computes it through
:class:`tvvar.decompositions.attention.BilinearAttention`.

Softmax and log-sum-exp run in float32 (float64 under x64) whatever the input dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import special

from tvvar.core import float32_or_better, param, sphere
from tvvar.model import register_psi
from tvvar.typing import Array, DType, PRNGKey

__all__ = [
    "check_beta",
    "modern_energy",
    "hopfield_update",
    "hopfield_retrieve",
    "separation",
    "classify_fixed_point",
    "FIXED_POINT_KINDS",
    "theorem3_constants",
    "theorem3_storage_condition",
    "theorem5_bound",
    "sphere_patterns",
    "retrieval_sweep",
    "hopfield_update_via_attention",
    "HopfieldPsi",
]

FIXED_POINT_KINDS = ("single", "metastable", "global")


_f32 = float32_or_better  # likelihood dtype (DESIGN numerics)


def check_beta(beta) -> float:
    if isinstance(beta, jax.core.Tracer):
        return beta
    b = float(np.asarray(beta))
    if not (np.isfinite(b) and b > 0):
        raise ValueError(f"beta (the inverse temperature β) must be a finite number > 0, got {beta!r}")
    return beta


def _check_X(X: Array, name: str = "X") -> None:
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name} (stored patterns as rows) must have shape [N, d], got shape {shape}")
    if shape[0] < 1:
        raise ValueError(f"{name} must hold at least one pattern, got shape {tuple(shape)}")
    if shape[1] < 2:
        raise ValueError(f"{name} must have dimension d ≥ 2 (its last axis), got d = {shape[1]}")


def _check_xi(xi: Array, d: int) -> None:
    shape = getattr(xi, "shape", None)
    if shape is None or len(shape) < 1 or shape[-1] != d:
        raise ValueError(f"xi (the state pattern) must have shape [..., d={d}], got shape {shape}")


def _logits(X, xi, beta, mask):
    """β X ξ in float32 (or float64), padded patterns (mask 0) at finfo.min: [..., N]."""
    dt = _f32(jnp.result_type(X.dtype, xi.dtype))
    z = beta * jnp.einsum("nd,...d->...n", X.astype(dt), xi.astype(dt), precision=jax.lax.Precision.HIGHEST)
    if mask is not None:
        z = jnp.where(mask > 0, z, jnp.finfo(dt).min)
    return z


def modern_energy(X: Array, xi: Array, beta, mask: Array | None = None) -> Array:
    """E(ξ) = −lse(β, Xξ) + ½ξᵀξ + β⁻¹ log N + ½M² (Ramsauer Eq. 2). ξ may be batched [..., d]."""
    _check_X(X)
    _check_xi(xi, X.shape[1])
    check_beta(beta)
    z = _logits(X, xi, beta, mask)
    dt = z.dtype
    N = X.shape[0] if mask is None else jnp.sum(mask > 0)
    sq = jnp.sum(jnp.square(X.astype(dt)), axis=-1)
    M2 = jnp.max(sq if mask is None else jnp.where(mask > 0, sq, 0.0))
    xi = xi.astype(dt)
    return (-jax.nn.logsumexp(z, axis=-1) / beta + 0.5 * jnp.sum(xi * xi, axis=-1)
            + jnp.log(N) / beta + 0.5 * M2)


def hopfield_update(X: Array, xi: Array, beta, mask: Array | None = None) -> Array:
    """One update ξ_new = Xᵀ softmax(β X ξ) (Ramsauer Eq. 3). ξ: [..., d] → [..., d] in ξ's dtype."""
    _check_X(X)
    _check_xi(xi, X.shape[1])
    check_beta(beta)
    return _update(X, xi, beta, mask)


def _update(X, xi, beta, mask=None):
    p = jax.nn.softmax(_logits(X, xi, beta, mask), axis=-1)
    out = jnp.einsum("...n,nd->...d", p, X.astype(p.dtype), precision=jax.lax.Precision.HIGHEST)
    return out.astype(xi.dtype)


def hopfield_retrieve(X: Array, xi: Array, beta, *, max_iter: int = 100, tol: float = 1e-6,
                      mask: Array | None = None) -> tuple[Array, Array]:
    """Iterate the update until |ξ_{t+1} − ξ_t| ≤ tol·max(1, M) or ``max_iter`` updates (one ξ [d]).

    Returns (ξ*, number of updates)."""
    _check_X(X)
    _check_xi(xi, X.shape[1])
    check_beta(beta)
    if xi.ndim != 1:
        raise ValueError(f"xi must be a single state [d] here (vmap for batches), got shape {xi.shape}")
    scale = jnp.maximum(1.0, jnp.sqrt(jnp.max(jnp.sum(jnp.square(X), axis=-1))))

    def cond(c):
        _, t, moved = c
        return moved & (t < max_iter)

    def body(c):
        x, t, _ = c
        new = _update(X, x, beta, mask)
        return new, t + 1, jnp.linalg.norm(new - x) > tol * scale

    x, t, _ = jax.lax.while_loop(cond, body, (xi, jnp.int32(0), jnp.bool_(True)))
    return x, t


def separation(X: Array) -> Array:
    """Δ_i = x_iᵀx_i − max_{j≠i} x_iᵀx_j (Ramsauer Def. 1): [N] (+∞ when N = 1)."""
    _check_X(X)
    G = jnp.einsum("id,jd->ij", X, X, precision=jax.lax.Precision.HIGHEST)
    off = jnp.where(jnp.eye(X.shape[0], dtype=bool), -jnp.inf, G)
    return jnp.diagonal(G) - jnp.max(off, axis=1)


def classify_fixed_point(X: Array, xi: Array, beta, *, single: float = 1.5, global_frac: float = 0.9) -> Array:
    """Kind of a fixed point ξ*: 0 ``single`` pattern, 1 ``metastable`` (average over a subset), 2
    ``global`` average (Ramsauer Sec. 2). Read from the participation ratio n_eff = 1/Σ_i p_i² of
    p = softmax(β X ξ*): n_eff < ``single`` → single; n_eff ≥ ``global_frac``·N → global; else
    metastable. Index :data:`FIXED_POINT_KINDS` with the result."""
    _check_X(X)
    _check_xi(xi, X.shape[1])
    check_beta(beta)
    p = jax.nn.softmax(_logits(X, xi, beta, None), axis=-1)
    n_eff = 1.0 / jnp.sum(p * p, axis=-1)
    N = X.shape[0]
    return jnp.where(n_eff < single, 0, jnp.where((N > 1) & (n_eff >= global_frac * N), 2, 1))


def theorem3_constants(beta: float, K: float, d: int, p: float) -> dict:
    """Ramsauer Theorem 3 (storage capacity): patterns uniform on the sphere of radius M = K√(d−1),
    failure probability p. With

        a = 2/(d−1) · (1 + ln(2βK²p(d−1))),   b = 2K²β/5,   c = b / W₀(exp(a + ln b))

    (W₀ the upper branch of Lambert W), and provided c ≥ (2/√p)^{4/(d−1)}, with probability 1 − p
    N ≥ √p · c^{(d−1)/4} random patterns can be stored. Returns a, b, c, the bound ``N`` and ``valid``
    (the proviso on c)."""
    check_beta(beta)
    if not (np.isfinite(K) and K > 0):
        raise ValueError(f"K (pattern radius M = K√(d−1)) must be > 0, got {K!r}")
    if not (isinstance(d, (int, np.integer)) and d >= 2):
        raise ValueError(f"d (the pattern dimension) must be an integer ≥ 2, got {d!r}")
    if not (0 < p <= 1):
        raise ValueError(f"p (the failure probability) must lie in (0, 1], got {p!r}")
    a = 2.0 / (d - 1) * (1.0 + math.log(2.0 * beta * K * K * p * (d - 1)))
    b = 2.0 * K * K * beta / 5.0
    c = b / float(np.real(special.lambertw(math.exp(a + math.log(b)), 0)))
    N = math.sqrt(p) * c ** ((d - 1) / 4.0)
    valid = c >= (2.0 / math.sqrt(p)) ** (4.0 / (d - 1))
    return {"a": a, "b": b, "c": c, "N": N, "valid": bool(valid), "M": K * math.sqrt(d - 1)}


def theorem3_storage_condition(X: Array, beta) -> Array:
    """Whether each pattern is "well separated" in the sense of Ramsauer Theorem 2/3:

        Δ_i ≥ 2/(βN) + (1/β) ln(2(N−1)NβM²),

    the condition under which a fixed point near x_i exists and attracts the sphere S_i. Theorem 3
    bounds the probability that it fails for random patterns. Returns bool [N]."""
    _check_X(X)
    check_beta(beta)
    N = X.shape[0]
    if N < 2:
        raise ValueError("theorem3_storage_condition needs N ≥ 2 patterns")
    M2 = jnp.max(jnp.sum(jnp.square(X), axis=-1))
    need = 2.0 / (beta * N) + jnp.log(2.0 * (N - 1) * N * beta * M2) / beta
    return separation(X) >= need


def theorem5_bound(X: Array, xi: Array, i, beta, *, x_star: Array | None = None) -> Array:
    """Ramsauer Theorem 5 (error of one-step retrieval): with ε = (N−1) exp(−β(Δ_i − 2 r M)),

        |f(ξ) − x_i| ≤ 2 ε M,       r = max(|ξ − x_i|, |x*_i − x_i|).

    The proof only uses r ≥ |ξ − x_i| (p_j/p_i ≤ exp(−β(Δ_i − 2M|ξ − x_i|)) for j ≠ i and
    f(ξ) − x_i = Σ_{j≠i} p_j (x_j − x_i)), so without ``x_star`` the tighter r = |ξ − x_i| is used;
    the bound then holds for every ξ. Returns the bound (a scalar)."""
    _check_X(X)
    _check_xi(xi, X.shape[1])
    check_beta(beta)
    N = X.shape[0]
    M = jnp.sqrt(jnp.max(jnp.sum(jnp.square(X), axis=-1)))
    r = jnp.linalg.norm(xi - X[i])
    if x_star is not None:
        r = jnp.maximum(r, jnp.linalg.norm(x_star - X[i]))
    eps = (N - 1) * jnp.exp(-beta * (separation(X)[i] - 2.0 * r * M))
    return 2.0 * eps * M


def sphere_patterns(key: PRNGKey, N: int, d: int, radius: float, dtype=jnp.float32) -> Array:
    """N patterns uniform on the sphere of the given radius in R^d: [N, d]."""
    return radius * sphere(jax.random.normal(key, (N, d), dtype))


def retrieval_sweep(key: PRNGKey, d: int, Ns, beta, *, trials: int, noise: float, K: float = 1.0,
                    tol: float = 0.1) -> dict:
    """One-step retrieval accuracy vs the number of stored patterns N.

    Each trial draws max(Ns) patterns uniform on the sphere of radius M = K√(d−1) (Theorem 3's
    setting), the query ξ = x_0 + noise·M·ẑ (ẑ a random unit vector), and for every N in ``Ns``
    (the first N patterns stored) counts a success when |ξ_new − x_0| ≤ tol·M. Vectorized with vmap
    over trials and N (padded patterns masked out), jitted. Returns ``accuracy`` [len(Ns)] and the
    per-trial ``success`` [len(Ns), trials]."""
    check_beta(beta)
    if not (isinstance(d, (int, np.integer)) and d >= 2):
        raise ValueError(f"d (the pattern dimension) must be an integer ≥ 2, got {d!r}")
    Ns = np.asarray(Ns, dtype=np.int64)
    if Ns.ndim != 1 or Ns.size == 0 or np.any(Ns < 1):
        raise ValueError(f"Ns must be a non-empty list of pattern counts ≥ 1, got {Ns!r}")
    Nmax = int(Ns.max())
    M = K * math.sqrt(d - 1)

    order = np.argsort(Ns)
    Ns_sorted = Ns[order]
    # Ns are nested prefixes of one pattern array: split the patterns into the segments between
    # consecutive N, reduce each segment once (max logit, Σ e^{z−max}, Σ e^{z−max} x), and merge the
    # segments of every prefix with a stable log-sum-exp. One pass over max(Ns) patterns per trial
    # instead of one per N.
    seg_of = jnp.asarray(np.searchsorted(Ns_sorted, np.arange(Nmax), side="right"))
    S = len(Ns_sorted)
    upto = jnp.asarray(np.arange(S)[None, :] <= np.arange(S)[:, None])  # [N index k, segment s]: s ≤ k

    @jax.jit
    def run(keys):
        def trial(key):
            kx, kz = jax.random.split(key)
            X = sphere_patterns(kx, Nmax, d, M)
            xi = X[0] + noise * M * sphere(jax.random.normal(kz, (d,)))
            z = beta * (X @ xi)
            m_S = jax.ops.segment_max(z, seg_of, num_segments=S)
            w = jnp.exp(z - m_S[seg_of])
            sum_S = jax.ops.segment_sum(w, seg_of, num_segments=S)
            vec_SxD = jax.ops.segment_sum(w[:, None] * X, seg_of, num_segments=S)
            top_K = jnp.max(jnp.where(upto, m_S[None, :], -jnp.inf), axis=1)
            scale_KxS = jnp.where(upto, jnp.exp(m_S[None, :] - top_K[:, None]), 0.0)
            xi = (scale_KxS @ vec_SxD) / (scale_KxS @ sum_S)[:, None]  # [K, d]: one state per N
            return jnp.linalg.norm(xi - X[0][None, :], axis=1) <= tol * M

        return jax.vmap(trial)(keys)

    success_sorted = np.asarray(run(jax.random.split(key, trials))).T  # [len(Ns), trials] in sorted order
    success = np.empty_like(success_sorted)
    success[order] = success_sorted
    return {"Ns": Ns, "accuracy": success.mean(axis=1), "success": success, "M": M}


# --------------------------------------------------------------------------------------------------
# Attention is retrieval
# --------------------------------------------------------------------------------------------------


def hopfield_update_via_attention(X: Array, xi: Array, beta) -> Array:
    """One Hopfield update computed by the attention decomposition of Theorem 5 (Bai, Eqs. 45–53).

    The sequence is u = (x_1, …, x_N, ξ) with the causal mask, so the query row (the last) sees every
    stored pattern as a key/value, through :class:`~tvvar.decompositions.attention.BilinearAttention`
    with B = β·I on the pattern coordinates and value map A = I, and π read by its ``pi`` method.

    Self-attention always lets a query also see itself, while the Hopfield update sums over the
    stored patterns only; a softmax restricted to a subset is the full softmax renormalized on that
    subset, so ξ_new = Σ_{j<N} π[N, j] A u_j / Σ_{j<N} π[N, j] exactly. One extra coordinate,
    c = √max(0, β|ξ|² − max_j βξᵀx_j) on the query and 0 on the patterns, with B = −1 on it, keeps
    the query's self-score at most the best pattern score, so Σ_{j<N} π[N, j] ≥ ½ and the
    renormalization loses no precision. ξ: [d] or [B, d].
    """
    from tvvar.decompositions.attention import BilinearAttention

    _check_X(X)
    _check_xi(xi, X.shape[1])
    check_beta(beta)
    batched = xi.ndim == 2
    xi_BxD = xi if batched else xi[None]
    if xi_BxD.ndim != 2:
        raise ValueError(f"xi must have shape [d] or [B, d], got {xi.shape}")
    N, d = X.shape
    dt = _f32(jnp.result_type(X.dtype, xi.dtype))
    X, xi_BxD = X.astype(dt), xi_BxD.astype(dt)
    Bsz = xi_BxD.shape[0]
    best = jnp.max(jnp.einsum("bd,nd->bn", xi_BxD, X, precision=jax.lax.Precision.HIGHEST), axis=-1)
    c_B = jnp.sqrt(jnp.maximum(0.0, beta * (jnp.sum(xi_BxD * xi_BxD, axis=-1) - best)))
    keys_BxNxD1 = jnp.broadcast_to(jnp.concatenate([X, jnp.zeros((N, 1), dt)], axis=1)[None], (Bsz, N, d + 1))
    query_Bx1xD1 = jnp.concatenate([xi_BxD, c_B[:, None]], axis=1)[:, None, :]
    u_BxTxD1 = jnp.concatenate([keys_BxNxD1, query_Bx1xD1], axis=1)  # T = N + 1
    B = jnp.zeros((1, d + 1, d + 1), dt).at[0, :d, :d].set(beta * jnp.eye(d, dtype=dt)).at[0, d, d].set(-1.0)
    A = jnp.eye(d, d + 1, dtype=dt)[None]  # [H=1, D_out=d, D_in=d+1]: A u_j = x_j
    attn = BilinearAttention.from_weights(B, A, mask="causal")
    pi_BxN1 = attn.pi(u_BxTxD1)[:, 0, N, :]  # the query row
    v_BxTxD = jnp.einsum("de,bte->btd", attn.value_maps()[0], u_BxTxD1, precision=jax.lax.Precision.HIGHEST)
    w_BxN = pi_BxN1[:, :N]
    out = jnp.einsum("bn,bnd->bd", w_BxN, v_BxTxD[:, :N], precision=jax.lax.Precision.HIGHEST)
    out = out / jnp.sum(w_BxN, axis=-1, keepdims=True)
    out = out.astype(xi.dtype)
    return out if batched else out[0]


# --------------------------------------------------------------------------------------------------
# The Hopfield layer in place of Ψ
# --------------------------------------------------------------------------------------------------


@register_psi("hopfield")
class HopfieldPsi(nnx.Module):
    """Ψ as a modern Hopfield network (Bai Section V-E; Ramsauer et al. "Hopfield layer"): learned
    stored patterns X [N_P, D] and ``steps`` updates ξ ← Xᵀ softmax(β X ξ) applied to every position's
    vector independently. β defaults to 1/√D (the attention scale); softmax in float32.

    Options: ``num_patterns`` (N_P, default 4·D), ``beta``, ``steps`` (default 1).
    """

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, dtype: DType = jnp.float32,
                 num_patterns: int | None = None, beta: float | None = None, steps: int = 1):
        if not (isinstance(d_model, int) and d_model >= 2):
            raise ValueError(f"d_model must be an int ≥ 2, got {d_model!r}")
        num_patterns = 4 * d_model if num_patterns is None else num_patterns
        if not (isinstance(num_patterns, int) and num_patterns >= 1):
            raise ValueError(f"num_patterns (N_P) must be an int ≥ 1, got {num_patterns!r}")
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an int ≥ 1, got {steps!r}")
        self.beta = float(check_beta(1.0 / math.sqrt(d_model) if beta is None else beta))
        self.steps = steps
        self.d_model = d_model
        self.patterns = param(jax.random.normal(rngs.params(), (num_patterns, d_model), dtype), "mlp", "embed")

    def __call__(self, x: Array) -> Array:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must have width D={self.d_model} in its last axis, got shape {x.shape}")
        X_PxD = self.patterns[...]
        for _ in range(self.steps):
            x = _update(X_PxD, x, self.beta)
        return x
