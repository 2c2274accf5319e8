"""Neural (variational) mutual-information estimators in JAX: Donsker–Varadhan, NWJ and InfoNCE, and transfer
entropy / directed information as the difference of two DV bounds (issue 14, item 2; Bai, arXiv:2511.01202,
Section V-F, Eq. 77: DI through its KL form with the DV representation, as in TREET).

For samples (a_i, b_i) of a joint law P and a critic T(a, b), with the product of marginals Q = P_a ⊗ P_b
realised by pairing a_i with b_j (i ≠ j) inside a batch of K:

* DV (Donsker & Varadhan 1983; MINE)   I ≥ E_P[T] − ln E_Q[e^T];
* NWJ (Nguyen, Wainwright & Jordan 2010)   I ≥ E_P[T] − e^{−1} E_Q[e^T];
* InfoNCE (van den Oord et al. 2018)   I ≥ E_i[T(a_i, b_i) − ln (1/K) Σ_j e^{T(a_i, b_j)}] ≤ ln K.

Stabilisations for DV: the exponent is clipped to ``[−clip, clip]`` inside ln E_Q[e^T] (SMILE, Song & Ermon
2020); the gradient of ln E_Q[e^T] uses a moving average of E_Q[e^T] as its denominator (MINE's bias
correction): the surrogate loss −(E_P[T] − E_Q[e^T] / sg(ema)) has that gradient.

TE and DI: TE_{X→Y} = I(Y_t ; X_past, Y_past) − I(Y_t ; Y_past), each term a DV bound of its own critic; the
reported interval pairs the two bounds on the same held-out batches (mean ± z·sd/√batches of the per-batch
difference).

The critic here is a small MLP on the concatenation [a, b] (:func:`init_mlp_critic`); any function
``critic(params, a, b) -> [K]`` with a params pytree can be passed instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tvvar.typing import Array

__all__ = [
    "init_mlp_critic",
    "mlp_critic",
    "score_matrix",
    "dv_bound",
    "nwj_bound",
    "infonce_bound",
    "Estimate",
    "train_mi_estimator",
    "transfer_entropy_dv",
]

BOUNDS = ("dv", "nwj", "infonce")


def init_mlp_critic(key: Array, dim_a: int, dim_b: int, hidden: int = 64, depth: int = 2) -> list[dict]:
    """He-initialised MLP parameters [dim_a + dim_b → hidden (×depth) → 1]."""
    sizes = [dim_a + dim_b] + [hidden] * depth + [1]
    params = []
    for k, (i, o) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:], strict=True),
                         strict=True):
        params.append({"w": jax.random.normal(k, (i, o)) * math.sqrt(2.0 / i), "b": jnp.zeros(o)})
    return params


def mlp_critic(params: list[dict], a: Array, b: Array) -> Array:
    """T(a, b) for row-aligned a [K, da], b [K, db] → [K]."""
    h = jnp.concatenate([a, b], axis=-1)
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"][None])
    return (h @ params[-1]["w"] + params[-1]["b"][None])[..., 0]


def score_matrix(critic: Callable, params, a: Array, b: Array) -> Array:
    """S[i, j] = T(a_i, b_j), [K, K]: the diagonal holds joint pairs, the rest product-of-marginal pairs."""
    K = a.shape[0]
    aa = jnp.repeat(a, K, axis=0)
    bb = jnp.tile(b, (K, 1))
    return critic(params, aa, bb).reshape(K, K)


def _off_diag(S: Array) -> Array:
    K = S.shape[0]
    return S[~np.eye(K, dtype=bool)]  # a concrete mask (K is static), so this works under jit


def dv_bound(S: Array, clip: float | None = None) -> Array:
    """E_P[T] − ln E_Q[e^T] from a score matrix (exponent clipped to [−clip, clip] if given)."""
    off = _off_diag(S)
    if clip is not None:
        off = jnp.clip(off, -clip, clip)
    return jnp.mean(jnp.diag(S)) - (jax.nn.logsumexp(off) - jnp.log(off.size))


def nwj_bound(S: Array) -> Array:
    """E_P[T] − e^{−1} E_Q[e^T] (the optimal critic is 1 + ln dP/dQ)."""
    return jnp.mean(jnp.diag(S)) - jnp.mean(jnp.exp(_off_diag(S) - 1.0))


def infonce_bound(S: Array) -> Array:
    """E_i[S_ii − ln (1/K) Σ_j e^{S_ij}]; never exceeds ln K."""
    K = S.shape[0]
    return jnp.mean(jnp.diag(S) - jax.nn.logsumexp(S, axis=1)) + jnp.log(K)


@dataclass(frozen=True)
class Estimate:
    """A held-out estimate: mean over ``batches`` evaluation batches, its standard error and a z-interval."""

    value: float
    stderr: float
    low: float
    high: float
    batches: int
    train_curve: np.ndarray
    batch_values: np.ndarray

    @staticmethod
    def from_batches(values: np.ndarray, curve: np.ndarray, z: float = 1.96) -> Estimate:
        v = np.asarray(values, dtype=np.float64)
        se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
        return Estimate(float(v.mean()), se, float(v.mean() - z * se), float(v.mean() + z * se), int(v.size),
                        np.asarray(curve), v)


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name, x in (("a", a), ("b", b)):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"{name} must have shape [n] or [n, d], got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} must be finite (found NaN or inf)")
        out.append(x)
    if out[0].shape[0] != out[1].shape[0]:
        raise ValueError(f"a and b must have the same number of samples, got {out[0].shape[0]} and {out[1].shape[0]}")
    return out[0], out[1]


def _split(n: int, batch: int, held_out: float) -> tuple[int, int]:
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must lie in (0, 1), got {held_out}")
    n_eval = int(round(n * held_out))
    if n - n_eval < batch or n_eval < 2 * batch:
        raise ValueError(f"n = {n} samples is too few for batch = {batch} with held_out = {held_out} "
                         f"(need ≥ {batch} training and ≥ {2 * batch} held-out samples)")
    return n - n_eval, n_eval


def train_mi_estimator(a, b, *, bound: str = "dv", steps: int = 500, batch: int = 128, lr: float = 1e-3,
                       hidden: int = 64, clip: float | None = 10.0, ema: float = 0.99, held_out: float = 0.3,
                       seed: int = 0, critic: Callable = mlp_critic, params=None) -> Estimate:
    """Train a critic with Adam on the chosen ``bound`` ('dv', 'nwj', 'infonce') over the training split of
    (a, b) and report the bound on disjoint held-out batches of size ``batch`` (mean and 95 % interval)."""
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    if not 0 <= ema < 1:
        raise ValueError(f"ema must lie in [0, 1), got {ema}")
    a, b = _check_pair(a, b)
    n = a.shape[0]
    n_train, n_eval = _split(n, batch, held_out)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    tr, ev = perm[:n_train], perm[n_train:]
    dtype = jnp.result_type(float)
    A = jnp.asarray(a, dtype)
    B = jnp.asarray(b, dtype)
    key = jax.random.PRNGKey(seed)
    if params is None:
        params = init_mlp_critic(key, a.shape[1], b.shape[1], hidden)
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    def surrogate(p, idx, run):
        S = score_matrix(critic, p, A[idx], B[idx])
        if bound == "dv":
            off = _off_diag(S)
            if clip is not None:
                off = jnp.clip(off, -clip, clip)
            mean_exp = jnp.mean(jnp.exp(off))
            denom = jnp.where(run > 0, run, jax.lax.stop_gradient(mean_exp))
            loss = -(jnp.mean(jnp.diag(S)) - mean_exp / jax.lax.stop_gradient(denom))
            return loss, (dv_bound(S, clip), mean_exp)
        value = nwj_bound(S) if bound == "nwj" else infonce_bound(S)
        return -value, (value, jnp.zeros((), dtype))

    @jax.jit
    def step(p, s, run, idx):
        (_, (value, mean_exp)), g = jax.value_and_grad(surrogate, has_aux=True)(p, idx, run)
        upd, s = tx.update(g, s, p)
        run = jnp.where(run > 0, ema * run + (1 - ema) * jax.lax.stop_gradient(mean_exp),
                        jax.lax.stop_gradient(mean_exp))
        return optax.apply_updates(p, upd), s, run, value

    run = jnp.zeros((), dtype)
    curve = np.zeros(steps)
    for t in range(steps):
        idx = jnp.asarray(rng.choice(tr, batch, replace=False))
        params, opt_state, run, value = step(params, opt_state, run, idx)
        curve[t] = float(value)
    return Estimate.from_batches(_evaluate(critic, params, A, B, ev, batch, bound, clip), curve)


def _evaluate(critic, params, A, B, ev: np.ndarray, batch: int, bound: str, clip) -> np.ndarray:
    nb = ev.size // batch
    idx = jnp.asarray(ev[: nb * batch].reshape(nb, batch))
    fn = {"dv": partial(dv_bound, clip=clip), "nwj": nwj_bound, "infonce": infonce_bound}[bound]
    vals = jax.jit(jax.vmap(lambda i: fn(score_matrix(critic, params, A[i], B[i]))))(idx)
    return np.asarray(vals, dtype=np.float64)


def transfer_entropy_dv(source, target, *, k: int = 1, ell: int = 1, **train_kw) -> tuple[Estimate, Estimate,
                                                                                          Estimate]:
    """TE_{source→target} = DV(target_t ; [source past ℓ, target past k]) − DV(target_t ; target past k).

    Returns (te, full, restricted); ``te``'s interval comes from the per-batch differences of the two critics
    on the same held-out batches (same seed → same split)."""
    from tvvar.theory.estimators import _te_blocks

    blocks = _te_blocks(source, target, k, ell)  # the same validation and lag embedding as the plug-in TE
    y_now, y_past, x_past = blocks["present"], blocks["target_past"], blocks["source_past"]
    train_kw = {"bound": "dv", **train_kw}
    if train_kw["bound"] != "dv":
        raise ValueError(f"transfer_entropy_dv uses the DV bound, got bound={train_kw['bound']!r}")
    full = train_mi_estimator(y_now, np.concatenate([x_past, y_past], axis=1), **train_kw)
    restricted = train_mi_estimator(y_now, y_past, **train_kw)
    diff = full.batch_values - restricted.batch_values  # same seed → same held-out batches: paired
    return Estimate.from_batches(diff, full.train_curve - restricted.train_curve), full, restricted

