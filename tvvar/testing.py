"""The decomposition test kit: running it on a mixer is the proof that the mixer is a TV-VAR.

Usage, for any decomposition (built-in or your own)::

    from tvvar.testing import check_decomposition
    check_decomposition(lambda rngs, dtype: MyMixer(16, rngs=rngs, dtype=dtype))

A *factory* ``(rngs, dtype) -> Mixer`` is called once per dtype (float32, then float64 under
``jax.enable_x64``). Every check raises ``AssertionError`` with the largest discrepancy it saw:

* **law**: ``mixer(u) == mix_dense(mixer.coefficients(u), u)`` (DESIGN: the contract);
* **gradients**: the two faces give the same gradients w.r.t. the input and every parameter;
* **support**: ``coefficients`` is exactly zero outside S(i);
* **causality**: ∂h_i/∂u_j is exactly 0 for j ∉ S(i) (causal mode), by a full Jacobian;
* **batch independence**: ∂h[b]/∂u[b'] is exactly 0 for b ≠ b';
* **jit**: jitted == eager.

Tolerances are per dtype: float32 1e-5 (relative to the output scale), float64 1e-10.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tvvar.core import Mixer, mix_dense

__all__ = [
    "Tolerance",
    "TOLERANCES",
    "check_decomposition",
    "check_law",
    "check_gradients",
    "check_support",
    "check_causality",
    "check_batch_independence",
    "check_jit",
    "random_input",
    "plain_attention",
]

MixerFactory = Callable[[nnx.Rngs, jnp.dtype], Mixer]


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


TOLERANCES = {jnp.dtype(jnp.float32): Tolerance(1e-5, 1e-5), jnp.dtype(jnp.float64): Tolerance(1e-10, 1e-10)}


def random_input(mixer: Mixer, B: int, T: int, dtype, seed: int = 0) -> jax.Array:
    """u on the unit sphere (Definition 11), [B, T, D_in]."""
    u = jax.random.normal(jax.random.key(seed), (B, T, mixer.d_in), dtype)
    return u / jnp.linalg.norm(u, axis=-1, keepdims=True)


def _close(name: str, a, b, tol: Tolerance) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shapes differ, {a.shape} vs {b.shape}")
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    if not np.all(np.isfinite(a)) or err > tol.atol * scale + tol.rtol * scale:
        raise AssertionError(f"{name}: max |difference| = {err:.3e} exceeds {tol.atol:.0e}·{scale:.3g} (or non-finite)")
    return err


def _tol(u) -> Tolerance:
    return TOLERANCES.get(jnp.dtype(u.dtype), Tolerance(2e-2, 2e-2))


def check_law(mixer: Mixer, u: jax.Array) -> float:
    """Fast path == reference mixing of the explicit coefficients; returns the largest |difference|."""
    h = mixer(u)
    expect = (u.shape[0], u.shape[1], mixer.d_out)
    if h.shape != expect:
        raise AssertionError(f"law: __call__ returned shape {h.shape}, expected [B, T, D_out] = {expect}")
    A = mixer.coefficients(u)
    expect_A = (u.shape[0], u.shape[1], u.shape[1], mixer.d_out, mixer.d_in)
    if A.shape != expect_A:
        raise AssertionError(f"law: coefficients returned shape {A.shape}, "
                             f"expected [B, T, T, D_out, D_in] = {expect_A}")
    return _close("law: mixer(u) vs mix_dense(coefficients(u), u)", h, mix_dense(A, u), _tol(u))


def check_gradients(mixer: Mixer, u: jax.Array, seed: int = 1) -> float:
    """∇ of ⟨w, h⟩ w.r.t. u and every parameter agrees between the fast path and the definition; returns the
    largest |difference| over them."""
    graphdef, state = nnx.split(mixer)
    w = jax.random.normal(jax.random.key(seed), (u.shape[0], u.shape[1], mixer.d_out), u.dtype)

    def fast(state, u):
        return jnp.sum(w * nnx.merge(graphdef, state)(u))

    def slow(state, u):
        m = nnx.merge(graphdef, state)
        return jnp.sum(w * mix_dense(m.coefficients(u), u))

    # jitted: one compilation is far cheaper than op-by-op differentiation of the eager code
    g_fast = jax.jit(jax.grad(fast, argnums=(0, 1)))(state, u)
    g_slow = jax.jit(jax.grad(slow, argnums=(0, 1)))(state, u)
    leaves_f, leaves_s = jax.tree.leaves(g_fast), jax.tree.leaves(g_slow)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(g_fast)[0]]
    return max((_close(f"gradients: d/d{path}", a, b, _tol(u))
                for path, a, b in zip(paths, leaves_f, leaves_s, strict=True)), default=0.0)


def check_support(mixer: Mixer, u: jax.Array) -> float:
    """coefficients(u)[b, i, j] == 0 exactly for j ∉ S(i); returns the largest |A| outside S(i) (0)."""
    A = np.asarray(mixer.coefficients(u))
    outside = ~np.asarray(mixer.support(u.shape[1]))
    bad = np.abs(A[:, outside]).max() if outside.any() else 0.0
    if bad != 0.0:
        raise AssertionError(f"support: coefficients are nonzero ({bad:.3e}) outside S(i) for mask={mixer.mask!r}")
    return float(bad)


def _jacobian(mixer: Mixer, u: jax.Array) -> np.ndarray:
    """J[b, i, :, c, j, :] = ∂h[b, i] / ∂u[c, j]."""
    graphdef, state = nnx.split(mixer)
    return np.asarray(jax.jit(jax.jacrev(lambda s, x: nnx.merge(graphdef, s)(x), argnums=1))(state, u))


def check_causality(mixer: Mixer, u: jax.Array, J: np.ndarray | None = None) -> float:
    """∂h_i/∂u_j is exactly zero for j ∉ S(i) — through the fast path's gradients (J: a precomputed Jacobian);
    returns the largest |∂h_i/∂u_j| outside S(i) (0)."""
    J = _jacobian(mixer, u) if J is None else J
    T = u.shape[1]
    outside = ~np.asarray(mixer.support(T))
    b = np.arange(u.shape[0])
    same_batch = J[b, :, :, b].transpose(0, 1, 3, 2, 4)  # [B, i, j, D_out, D_in]
    leak = np.abs(same_batch[:, outside]).max() if outside.any() else 0.0
    if leak != 0.0:
        i, j = np.argwhere(outside)[0]
        raise AssertionError(
            f"causality: ∂h_i/∂u_j = {leak:.3e} ≠ 0 for some j ∉ S(i) "
            f"(mask={mixer.mask!r}; e.g. i={i}, j={j} is outside)"
        )
    return float(leak)


def check_batch_independence(mixer: Mixer, u: jax.Array, J: np.ndarray | None = None) -> float:
    """∂h[b]/∂u[c] is exactly zero for b ≠ c (J: a precomputed Jacobian); returns the largest such entry (0)."""
    J = _jacobian(mixer, u) if J is None else J
    B = u.shape[0]
    for b in range(B):
        for c in range(B):
            if b != c and np.abs(J[b, :, :, c]).max() != 0.0:
                raise AssertionError(f"batch independence: output {b} depends on input {c}")
    return 0.0


def check_jit(mixer: Mixer, u: jax.Array) -> float:
    """jit(mixer)(u) == mixer(u) and the same for coefficients; returns the larger |difference|."""
    graphdef, state = nnx.split(mixer)
    call = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    coef = jax.jit(lambda s, x: nnx.merge(graphdef, s).coefficients(x))
    return max(_close("jit: __call__", call(state, u), mixer(u), _tol(u)),
               _close("jit: coefficients", coef(state, u), mixer.coefficients(u), _tol(u)))


def check_decomposition(
    factory: MixerFactory,
    *,
    B: int = 2,
    T: int = 6,
    dtypes=(jnp.float32, jnp.float64),
    seed: int = 0,
    causality: bool = True,
) -> dict[str, dict[str, float]]:
    """Run every check of the kit on ``factory(rngs, dtype)`` for each dtype; an AssertionError names the first
    that fails. Returns the summary ``{dtype name: {check: largest discrepancy}}`` (law, gradients, jit: the
    largest |fast − definition|; support, causality, batch_independence: the largest entry that must be 0).

    ``causality=False`` skips only the causality check (for bidirectional wrappers, where S(i) is all j
    and the check is vacuous); the support check still runs.
    """
    summary: dict[str, dict[str, float]] = {}
    for dtype in dtypes:
        with jax.enable_x64(jnp.dtype(dtype) == jnp.float64):
            mixer = factory(nnx.Rngs(seed), dtype)
            u = random_input(mixer, B, T, dtype, seed=seed + 1)
            row = {"law": check_law(mixer, u), "gradients": check_gradients(mixer, u),
                   "support": check_support(mixer, u)}
            J = _jacobian(mixer, u)
            if causality:
                row["causality"] = check_causality(mixer, u, J)
            row["batch_independence"] = check_batch_independence(mixer, u, J)
            row["jit"] = check_jit(mixer, u)
            summary[jnp.dtype(dtype).name] = row
    return summary


def plain_attention(u, wq, wk, wv, wo, *, causal: bool = True) -> np.ndarray:
    """Textbook multi-head QKV attention in float64 NumPy, written independently of tvvar's code.

    u [B, T, D]; wq, wk [D, H, K]; wv [D, H, K_v]; wo [H, K_v, D_out] → [B, T, D_out]. Used as the
    ground truth for Theorem 5 (the TV-VAR form must reproduce it).
    """
    u = np.asarray(u, np.float64)
    wq, wk, wv, wo = (np.asarray(w, np.float64) for w in (wq, wk, wv, wo))
    Bsz, T, _ = u.shape
    H, K = wq.shape[1], wq.shape[2]
    out = np.zeros((Bsz, T, wo.shape[2]))
    for b in range(Bsz):
        for h in range(H):
            q, k, v = u[b] @ wq[:, h], u[b] @ wk[:, h], u[b] @ wv[:, h]
            s = q @ k.T / np.sqrt(K)
            if causal:
                s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[b] += (p @ v) @ wo[h]
    return out
