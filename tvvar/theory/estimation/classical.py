"""Classical information estimators (Bai, arXiv:2511.01202, Sections II-B/C and V-F): Gaussian (log-det)
estimators for continuous streams, plug-in (count) estimators with history k for discrete ones, and the
closed forms they are validated against.

Notation: a stream is an array ``[n]`` or ``[n, d]`` (n time steps, d channels).  For a target X and a source
Y with target history k and source history ℓ (argument ``ell``; Schreiber 2000),

    TE_{Y→X} = I(X_t ; Y_{t-1..t-l} | X_{t-1..t-k})            (nats)

evaluated over the n − max(k, ell) time steps that have a full history.  For jointly Gaussian variables

    I(X; Y | Z) = ½ [ln det Σ_XZ + ln det Σ_YZ − ln det Σ_Z − ln det Σ_XYZ]

with the sample covariance (any common normalisation cancels, the dimensions balance).  Geweke's measure
of linear feedback (Geweke 1982) is F_{Y→X} = ln det Σ_restricted − ln det Σ_full, the log ratio of the
residual covariances of X_t regressed on its own past with and without the source's past; for Gaussian
variables F = 2 TE (Barnett, Barrett, Seth 2009), and with sample moments the identity is exact.

Closed forms: the stationary covariance Γ of a VAR(1) x_t = A x_{t−1} + ε_t, Cov ε = Σ, solves the discrete
Lyapunov equation Γ = A Γ Aᵀ + Σ; the lag-one joint covariance is [[Γ, AΓ], [ΓAᵀ, Γ]], from which the TE
with one-step histories follows by the log-det formula (:func:`var1_transfer_entropy`).  Reference values
(issue 14): X_t = 0.5 X_{t−1} + 0.4 Y_{t−1} + ε, Y_t = 0.6 Y_{t−1} + η, unit noises:
TE_{Y→X} = 0.10207, Geweke 0.20415; AWGN at unit SNR ½ ln 2 = 0.34657; a Gaussian pair with correlation ρ:
−½ ln(1 − ρ²) (ρ = 0.4/√0.52 gives 0.18386).

Plug-in estimators replace probabilities by empirical frequencies: Ĥ = −Σ (c/n) ln(c/n) over the observed
joint states, and every mutual information is a sum of such entropies.  They are biased upward by about
(#cells − 1)/(2n) per entropy (Miller 1955); use n ≫ alphabet^(k+ell+1).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.typing import Array

__all__ = [
    "SingularDesignError",
    "check_stream",
    "check_same_length",
    "check_history",
    "lag_embed",
    "stationary_covariance",
    "gaussian_cmi_from_cov",
    "var1_transfer_entropy",
    "var1_geweke",
    "awgn_mutual_information",
    "gaussian_pair_mutual_information",
    "gaussian_entropy",
    "gaussian_mutual_information",
    "gaussian_conditional_mutual_information",
    "gaussian_transfer_entropy",
    "geweke_causality",
    "plugin_entropy",
    "plugin_mutual_information",
    "plugin_conditional_mutual_information",
    "plugin_transfer_entropy",
]


class SingularDesignError(ValueError):
    """A covariance or design matrix is singular (a constant or collinear series): the estimate is undefined."""


# --------------------------------------------------------------------------------------------------
# Validation: concrete inputs are checked here, before any jit, so a bad stream never becomes a NaN
# --------------------------------------------------------------------------------------------------


def check_stream(x, name: str, *, discrete: bool = False, min_len: int = 2) -> np.ndarray:
    """``x`` as a 2-D host array ``[n, d]`` (a 1-D stream becomes one channel), checked finite and long enough."""
    if isinstance(x, jax.core.Tracer):
        raise TypeError(f"{name} must be a concrete array (validate before jit), got a tracer")
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape [n] or [n, d], got shape {a.shape}")
    if a.shape[1] == 0:
        raise ValueError(f"{name} must have at least one channel, got shape {a.shape}")
    if discrete:
        if a.dtype.kind not in "biu":
            raise TypeError(f"{name} must hold integer symbols (a discrete stream), got dtype {a.dtype}")
        if a.size and a.min() < 0:
            raise ValueError(f"{name} must hold non-negative integer symbols, got minimum {a.min()}")
    else:
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
        if not np.all(np.isfinite(a)):
            bad = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(f"{name} must be finite; found {a[tuple(bad)]} at index {tuple(int(i) for i in bad)}")
    if a.shape[0] < min_len:
        raise ValueError(f"{name} must have at least {min_len} samples, got {a.shape[0]}")
    return a


def check_same_length(**streams: np.ndarray) -> int:
    lengths = {k: v.shape[0] for k, v in streams.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"sequences must have the same length, got lengths {lengths}")
    return next(iter(lengths.values()))


def check_history(k, name: str, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"{name} must be ≥ 1, got {k}")
    if k >= n:
        raise ValueError(f"{name} = {k} must be < the number of samples n = {n}")
    return int(k)


def _check_covariance_full_rank(cov: np.ndarray, name: str) -> None:
    """Refuse a singular sample covariance: a constant channel, or channels that are exact linear combinations."""
    sd = np.sqrt(np.diag(cov))
    flat = np.flatnonzero(sd <= 1e-12 * max(1.0, float(sd.max(initial=0.0))))
    if flat.size:
        raise SingularDesignError(f"{name}: channel(s) {flat.tolist()} are constant (zero variance); "
                                  "the Gaussian estimate needs a non-singular covariance")
    corr = cov / np.outer(sd, sd)
    if np.linalg.eigvalsh(corr)[0] <= 1e-12 * corr.shape[0]:
        raise SingularDesignError(f"{name}: the channels are collinear (singular covariance); "
                                  "drop the redundant channels")


def _float(a: np.ndarray) -> Array:
    return jnp.asarray(a, dtype=jnp.result_type(float))


# --------------------------------------------------------------------------------------------------
# Lag embedding
# --------------------------------------------------------------------------------------------------


def lag_embed(x: Array, k: int, start: int) -> Array:
    """Rows t = start..n−1 of ``[x_{t−1}, …, x_{t−k}]`` for x ``[n, d]``: shape ``[n − start, k d]``, lag-major.

    ``start ≥ k`` so every row has a full history; the row for time t holds lag 1 first.
    """
    n = x.shape[0]
    return jnp.concatenate([x[start - j : n - j] for j in range(1, k + 1)], axis=1)


# --------------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------------


def stationary_covariance(A, Sigma) -> Array:
    """Γ with Γ = A Γ Aᵀ + Σ (discrete Lyapunov), the stationary covariance of x_t = A x_{t−1} + ε_t.

    Solved exactly as vec Γ = (I − A ⊗ A)⁻¹ vec Σ; needs spectral radius ρ(A) < 1 (stationarity).
    """
    A_np, S_np = np.asarray(A, dtype=float), np.asarray(Sigma, dtype=float)
    if A_np.ndim != 2 or A_np.shape[0] != A_np.shape[1]:
        raise ValueError(f"A must be a square matrix [d, d], got shape {A_np.shape}")
    d = A_np.shape[0]
    if S_np.shape != (d, d):
        raise ValueError(f"Sigma must have shape {(d, d)} to match A, got {S_np.shape}")
    if not (np.all(np.isfinite(A_np)) and np.all(np.isfinite(S_np))):
        raise ValueError("A and Sigma must be finite")
    if not np.allclose(S_np, S_np.T) or np.linalg.eigvalsh(S_np)[0] < 0:
        raise ValueError("Sigma must be a symmetric positive semi-definite covariance")
    rho = float(np.max(np.abs(np.linalg.eigvals(A_np))))
    if rho >= 1:
        raise ValueError(f"A must be stable (spectral radius < 1) for a stationary covariance, got {rho:.6g}")
    A_, S_ = _float(A_np), _float(S_np)
    # vec is column-major: vec(A Γ Aᵀ) = (A ⊗ A) vec Γ.
    vec_g = jnp.linalg.solve(jnp.eye(d * d, dtype=A_.dtype) - jnp.kron(A_, A_), S_.T.reshape(-1))
    G = vec_g.reshape(d, d).T
    return 0.5 * (G + G.T)


def _logdet(S: Array) -> Array:
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(S))))


def _sub(S: Array, idx) -> Array:
    idx = np.asarray(idx, dtype=np.int32)  # static under jit: a gather with constant indices
    return S[idx[:, None], idx[None, :]]


def gaussian_cmi_from_cov(S: Array, x_idx, y_idx, z_idx=()) -> Array:
    """I(X; Y | Z) in nats of a Gaussian vector with covariance S, the blocks named by index lists."""
    return _cmi_from_cov(S, tuple(x_idx), tuple(y_idx), tuple(z_idx))


@partial(jax.jit, static_argnames=("x_idx", "y_idx", "z_idx"))
def _cmi_from_cov(S: Array, x_idx, y_idx, z_idx) -> Array:
    x_idx, y_idx, z_idx = list(x_idx), list(y_idx), list(z_idx)
    ld_xyz = _logdet(_sub(S, x_idx + y_idx + z_idx))
    ld_xz = _logdet(_sub(S, x_idx + z_idx))
    ld_yz = _logdet(_sub(S, y_idx + z_idx))
    ld_z = _logdet(_sub(S, z_idx)) if z_idx else jnp.zeros((), S.dtype)
    return 0.5 * (ld_xz + ld_yz - ld_z - ld_xyz)


def _check_index_set(idx, name: str, d: int) -> list[int]:
    idx = [idx] if isinstance(idx, (int, np.integer)) else list(idx)
    if not idx or any(not (0 <= int(i) < d) for i in idx):
        raise ValueError(f"{name} must be a non-empty list of channel indices in [0, {d}), got {idx}")
    return [int(i) for i in idx]


def var1_transfer_entropy(A, Sigma, source, target) -> Array:
    """Closed-form TE_{source→target} (nats, one-step histories) of the stationary VAR(1) x_t = A x_{t−1} + ε_t.

    TE = I(X_t ; Y_{t−1} | X_{t−1}) evaluated on the joint covariance [[Γ, AΓ], [ΓAᵀ, Γ]] of (x_t, x_{t−1}),
    Γ from :func:`stationary_covariance`.  ``source`` and ``target`` are channel indices (int or list).
    """
    G = stationary_covariance(A, Sigma)
    d = G.shape[0]
    src = _check_index_set(source, "source", d)
    tgt = _check_index_set(target, "target", d)
    if set(src) & set(tgt):
        raise ValueError(f"source {src} and target {tgt} must be disjoint channel sets")
    AG = _float(np.asarray(A, dtype=float)) @ G
    joint = jnp.block([[G, AG], [AG.T, G]])  # (x_t, x_{t−1}); Cov(x_t, x_{t−1}) = AΓ
    return gaussian_cmi_from_cov(joint, tgt, [d + i for i in src], [d + i for i in tgt])


def var1_geweke(A, Sigma, source, target) -> Array:
    """Geweke's F_{source→target} = 2 TE for the Gaussian VAR(1) (Barnett, Barrett, Seth 2009)."""
    return 2.0 * var1_transfer_entropy(A, Sigma, source, target)


def awgn_mutual_information(snr) -> float:
    """I(X; X + N) = ½ ln(1 + SNR) nats per use for Gaussian input (the AWGN capacity)."""
    if not snr >= 0:
        raise ValueError(f"snr must be ≥ 0, got {snr}")
    return 0.5 * math.log1p(snr)


def gaussian_pair_mutual_information(rho) -> float:
    """I(X; Y) = −½ ln(1 − ρ²) nats of a bivariate Gaussian with correlation ρ."""
    if not -1 < rho < 1:
        raise ValueError(f"rho must lie in (−1, 1), got {rho}")
    return -0.5 * math.log1p(-rho * rho)


# --------------------------------------------------------------------------------------------------
# Gaussian (log-det) estimators
# --------------------------------------------------------------------------------------------------


@jax.jit
def _sample_cov(Z: Array) -> Array:
    Zc = Z - jnp.mean(Z, axis=0, keepdims=True)
    return Zc.T @ Zc / Z.shape[0]


def _cov_checked(blocks: dict[str, np.ndarray]) -> tuple[Array, dict[str, list[int]]]:
    """Sample covariance of the stacked blocks (validated non-singular) and each block's column indices."""
    idx, start = {}, 0
    for k, b in blocks.items():
        idx[k] = list(range(start, start + b.shape[1]))
        start += b.shape[1]
    Z = np.concatenate(list(blocks.values()), axis=1)
    d = Z.shape[1]
    if Z.shape[0] <= d:
        raise ValueError(f"fewer samples ({Z.shape[0]}) than parameters: a {d}-dimensional covariance "
                         f"needs more than {d} samples")
    S = _sample_cov(_float(Z))
    _check_covariance_full_rank(np.asarray(S), "+".join(blocks))
    return S, idx


def gaussian_entropy(x) -> Array:
    """Differential entropy ½ ln det(2πe Σ̂) of a Gaussian fitted to x ``[n]`` or ``[n, d]`` (nats)."""
    x = check_stream(x, "x")
    S, _ = _cov_checked({"x": x})
    d = x.shape[1]
    return 0.5 * (d * math.log(2 * math.pi * math.e) + _logdet(S))


def gaussian_mutual_information(x, y) -> Array:
    """Gaussian (log-det) estimate of I(X; Y) in nats from paired samples x ``[n, dx]``, y ``[n, dy]``."""
    x, y = check_stream(x, "x"), check_stream(y, "y")
    check_same_length(x=x, y=y)
    S, i = _cov_checked({"x": x, "y": y})
    return gaussian_cmi_from_cov(S, i["x"], i["y"])


def gaussian_conditional_mutual_information(x, y, z) -> Array:
    """Gaussian (log-det) estimate of I(X; Y | Z) in nats from paired samples."""
    x, y, z = check_stream(x, "x"), check_stream(y, "y"), check_stream(z, "z")
    check_same_length(x=x, y=y, z=z)
    S, i = _cov_checked({"x": x, "y": y, "z": z})
    return gaussian_cmi_from_cov(S, i["x"], i["y"], i["z"])


def _te_blocks(source, target, k, ell) -> dict[str, np.ndarray]:
    """Host arrays x_t, X^(k) past, Y^(ell) past over t = max(k, ell)..n−1, after validating the streams."""
    y = check_stream(source, "source")
    x = check_stream(target, "target")
    n = check_same_length(source=y, target=x)
    k = check_history(k, "k (target history)", n)
    ell = check_history(ell, "ell (source history)", n)
    m = max(k, ell)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    return {"present": x[m:], "target_past": np.asarray(lag_embed(xj, k, m)),
            "source_past": np.asarray(lag_embed(yj, ell, m))}


def gaussian_transfer_entropy(source, target, k: int = 1, ell: int = 1) -> Array:
    """Gaussian estimate of TE_{source→target} = I(X_t ; Y^(ell) | X^(k)) in nats (histories k, ell ≥ 1)."""
    b = _te_blocks(source, target, k, ell)
    S, i = _cov_checked(b)
    return gaussian_cmi_from_cov(S, i["present"], i["source_past"], i["target_past"])


@jax.jit
def _residual_logdet(Y: Array, X: Array) -> Array:
    """ln det of the (1/n) residual covariance of Y regressed on [1, X] by least squares."""
    Z = jnp.concatenate([jnp.ones((X.shape[0], 1), X.dtype), X], axis=1)
    Q, _ = jnp.linalg.qr(Z)
    E = Y - Q @ (Q.T @ Y)  # projection on the column space, stabler than the normal equations
    return _logdet(E.T @ E / Y.shape[0])


def geweke_causality(source, target, k: int = 1, ell: int = 1) -> Array:
    """Geweke's F_{source→target} = ln det Σ̂(X_t | X^(k)) − ln det Σ̂(X_t | X^(k), Y^(ell)) by least squares.

    Both regressions carry an intercept; with the 1/n residual covariance it equals 2 × the Gaussian TE
    (:func:`gaussian_transfer_entropy`) exactly.
    """
    b = _te_blocks(source, target, k, ell)
    _cov_checked(b)
    X, Xp, Yp = (_float(b[key]) for key in ("present", "target_past", "source_past"))
    return _residual_logdet(X, Xp) - _residual_logdet(X, jnp.concatenate([Xp, Yp], axis=1))


# --------------------------------------------------------------------------------------------------
# Plug-in (count) estimators for discrete streams
# --------------------------------------------------------------------------------------------------


def _dense_rank(v: Array) -> Array:
    """Ranks 0..(#distinct − 1) of the values of v, equal values sharing a rank."""
    order = jnp.argsort(v)
    s = v[order]
    new = jnp.concatenate([jnp.zeros((1,), jnp.int32), (s[1:] != s[:-1]).astype(jnp.int32)])
    return jnp.zeros_like(v).at[order].set(jnp.cumsum(new).astype(v.dtype))


@jax.jit
def _joint_codes(cols: Array, radices: Array) -> Array:
    """One integer per row of ``cols [n, c]`` naming its joint state.

    Columns are folded in one at a time and re-ranked after each, so the codes stay < n and the radix
    product never overflows, whatever the alphabet and history.
    """
    code = jnp.zeros((cols.shape[0],), jnp.int32)
    for j in range(cols.shape[1]):
        code = _dense_rank(code * radices[j] + cols[:, j])
    return code


@jax.jit
def _code_entropy(code: Array) -> Array:
    n = code.shape[0]
    counts = jnp.zeros((n,), jnp.result_type(float)).at[code].add(1.0)
    p = counts / n
    return -jnp.sum(jnp.where(counts > 0, p * jnp.log(jnp.where(counts > 0, p, 1.0)), 0.0))


def _plugin_entropies(blocks: dict[str, np.ndarray], subsets: list[tuple[str, ...]]) -> list[Array]:
    cols = {k: jnp.asarray(v, jnp.int32) for k, v in blocks.items()}
    radix = {k: tuple(int(r) for r in v.max(axis=0) + 1) for k, v in blocks.items()}
    n = next(iter(blocks.values())).shape[0]
    if n * max(max(r) for r in radix.values()) >= 2**31:
        raise ValueError(f"n × alphabet size must stay below 2^31 for int32 codes, got n = {n}, "
                         f"alphabet {max(max(r) for r in radix.values())}")
    out = []
    for sub in subsets:
        c = jnp.concatenate([cols[k] for k in sub], axis=1)
        out.append(_code_entropy(_joint_codes(c, jnp.asarray(sum((radix[k] for k in sub), ()), jnp.int32))))
    return out


def plugin_entropy(x) -> Array:
    """Plug-in entropy −Σ p̂ ln p̂ (nats) of the joint symbol of each row of x ``[n]`` or ``[n, d]``."""
    (h,) = _plugin_entropies({"x": check_stream(x, "x", discrete=True)}, [("x",)])
    return h


def plugin_mutual_information(x, y) -> Array:
    """Plug-in I(X; Y) = Ĥ(X) + Ĥ(Y) − Ĥ(X, Y) in nats."""
    x, y = check_stream(x, "x", discrete=True), check_stream(y, "y", discrete=True)
    check_same_length(x=x, y=y)
    hx, hy, hxy = _plugin_entropies({"x": x, "y": y}, [("x",), ("y",), ("x", "y")])
    return hx + hy - hxy


def plugin_conditional_mutual_information(x, y, z) -> Array:
    """Plug-in I(X; Y | Z) = Ĥ(X,Z) + Ĥ(Y,Z) − Ĥ(Z) − Ĥ(X,Y,Z) in nats."""
    x, y, z = (check_stream(v, name, discrete=True) for v, name in ((x, "x"), (y, "y"), (z, "z")))
    check_same_length(x=x, y=y, z=z)
    hxz, hyz, hz, hxyz = _plugin_entropies({"x": x, "y": y, "z": z},
                                           [("x", "z"), ("y", "z"), ("z",), ("x", "y", "z")])
    return hxz + hyz - hz - hxyz


def plugin_transfer_entropy(source, target, k: int = 1, ell: int = 1) -> Array:
    """Plug-in TE_{source→target} = I(X_t ; Y^(ell) | X^(k)) in nats from integer symbol streams."""
    y = check_stream(source, "source", discrete=True)
    x = check_stream(target, "target", discrete=True)
    n = check_same_length(source=y, target=x)
    k = check_history(k, "k (target history)", n)
    ell = check_history(ell, "ell (source history)", n)
    m = max(k, ell)
    b = {"present": x[m:], "target_past": np.asarray(lag_embed(jnp.asarray(x), k, m)),
         "source_past": np.asarray(lag_embed(jnp.asarray(y), ell, m))}
    hxz, hyz, hz, hxyz = _plugin_entropies(b, [("present", "target_past"), ("source_past", "target_past"),
                                               ("target_past",), ("present", "source_past", "target_past")])
    return hxz + hyz - hz - hxyz
