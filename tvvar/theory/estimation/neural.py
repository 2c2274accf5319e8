"""Neural (variational) mutual-information estimators in JAX: Donsker–Varadhan, NWJ and InfoNCE, and transfer
entropy / directed information as the difference of two DV bounds (issue 14, item 2; Bai, arXiv:2511.01202,
Section V-F, Eq. 77: DI through its KL form with the DV representation, as in TREET).

For samples (a_i, b_i) of a joint law P and a critic T(a, b), with the product of marginals Q = P_a ⊗ P_b
realised by pairing a_i with b_j (i ≠ j) inside a batch of K, the population bounds (for any fixed T) are

* DV (Donsker & Varadhan 1983; MINE)   I ≥ E_P[T] − ln E_Q[e^T];
* NWJ (Nguyen, Wainwright & Jordan 2010)   I ≥ E_P[T] − e^{−1} E_Q[e^T];
* InfoNCE (van den Oord et al. 2018)   I ≥ E[T(a_i, b_i) − ln (1/K) Σ_j e^{T(a_i, b_j)}], and the batch value is
  ≤ ln K always.

What is computed is not always a lower bound:

* :func:`dv_bound` with ``clip`` (the default 10 in :func:`train_mi_estimator` and the token critics, both in
  training and in the held-out evaluation) clips the exponent inside ln E_Q[e^T] only (SMILE, Song & Ermon
  2020), so it is E_P[T] − ln E_Q[e^{clip(T)}] ≥ the DV value of T, and it can exceed I: a constant critic
  T ≡ c > clip gives c − clip > 0 on independent pairs (I = 0).  Without the clip, ln of the batch mean of e^T
  is biased low (Jensen), so the batch DV is biased high by O(1/K).  A DV estimate is therefore an estimate of
  I with an error of either sign, not a certified lower bound.
* NWJ on held-out batches is an unbiased estimate of the NWJ bound of the trained critic, which is ≤ I; the
  InfoNCE batch value is a lower bound in expectation (and ≤ ln K).

The gradient of ln E_Q[e^T] uses a moving average of E_Q[e^T] as its denominator (MINE's bias correction):
the surrogate loss −(E_P[T] − E_Q[e^T] / sg(ema)) has that gradient.

TE and DI: TE_{X→Y} = I(Y_t ; X_past, Y_past) − I(Y_t ; Y_past), each term a DV estimate of its own critic.  A
difference of two bounds is not a bound: the estimate can fall on either side of the truth, and its interval
pairs the two estimates on the same held-out batches (mean ± z·sd/√batches of the per-batch difference).

The critic here is a small MLP on the concatenation [a, b] (:func:`init_mlp_critic`); any function
``critic(params, a, b) -> [K]`` with a params pytree can be passed instead.

A tvvar model as the critic (Section V-F: the Transformer itself estimates DI through Eq. 77's KL form, as in
TREET).  For token streams x, y [B, m] (vocabularies V_x, V_y), :class:`TokenCritic` feeds a causal
:class:`tvvar.model.TVVARModel` one sequence over the joint vocabulary [x tokens | y tokens | BOS]
(V = V_x + V_y + 1):

* full critic     ids = [x_0, y_0, x_1, y_1, …, x_{m−1}]   (length 2m − 1; y_t is id V_x + y_t);  the row at x_t's
  position 2t sees exactly (x^t, y^{t−1});
* reduced critic  ids = [BOS, y_0, …, y_{m−2}]             (length m);  row t sees exactly y^{t−1};

and the score of candidate v for y_t is the model's logit of token V_x + v at that row, T_t(past, v) =
ũ_{V_x+v}ᵀ h_row / Ξ (only those V_y logits are computed).  Per step t the DV bound of
I(Y_t ; past_t) = KL(P(past_t, y_t) ‖ P(past_t) ⊗ P_t(y_t)) takes the positive y_{b,t} and, for the product
measure, every other sample's y_{j,t} (j ≠ b, the time-t marginal) — the same off-diagonal pairs as
:func:`dv_bound` on the K × K score matrix, but summed exactly over the V_y candidates with weights
n_t(v) − 1[v = y_{b,t}] (n_t(v) = how many samples have y_t = v):  Σ_{j≠b} e^{T(b, y_j)} = Σ_v (n_t(v) −
1[v = y_b]) e^{T(b, v)}, O(B·V_y) instead of O(B²), no sampling noise.  Then
I(X^m → Y^m) = Σ_t I(X^t ; Y_t | Y^{t−1}) = Σ_t [I(Y_t ; X^t, Y^{t−1}) − I(Y_t ; Y^{t−1})]
is estimated by :func:`directed_information_dv` as Σ_t [DV_t(full) − DV_t(reduced)].
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
from flax import nnx

from tvvar.core import float32_or_better
from tvvar.model import ModelConfig, TVVARModel
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
    "TokenCritic",
    "token_dv_terms",
    "token_dv_bound",
    "token_dv_surrogate",
    "make_token_dv_step",
    "directed_information_dv",
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
    """E_P[T] − ln E_Q[e^T] from a score matrix (exponent clipped to [−clip, clip] if given).

    With ``clip`` the value is ≥ the unclipped one and is not a lower bound on I (module docstring)."""
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
    per_step: np.ndarray | None = None  # token critics: the held-out mean of each time step's term, [m]

    @staticmethod
    def from_batches(values: np.ndarray, curve: np.ndarray, z: float = 1.96,
                     per_step: np.ndarray | None = None) -> Estimate:
        v = np.asarray(values, dtype=np.float64)
        se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
        return Estimate(float(v.mean()), se, float(v.mean() - z * se), float(v.mean() + z * se), int(v.size),
                        np.asarray(curve), v, None if per_step is None else np.asarray(per_step, np.float64))


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
    (a, b) and report the bound on disjoint held-out batches of size ``batch`` (mean and 95 % interval).

    For 'dv' the held-out value uses the same ``clip``: an estimate of I that may lie above it (module
    docstring), not a certified lower bound."""
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

    A difference of two DV estimates: not a bound, its error can have either sign.  Returns (te, full,
    restricted); ``te``'s interval comes from the per-batch differences of the two critics on the same
    held-out batches (same seed → same split)."""
    from tvvar.theory.estimation.classical import _te_blocks

    blocks = _te_blocks(source, target, k, ell)  # the same validation and lag embedding as the plug-in TE
    y_now, y_past, x_past = blocks["present"], blocks["target_past"], blocks["source_past"]
    train_kw = {"bound": "dv", **train_kw}
    if train_kw["bound"] != "dv":
        raise ValueError(f"transfer_entropy_dv uses the DV bound, got bound={train_kw['bound']!r}")
    full = train_mi_estimator(y_now, np.concatenate([x_past, y_past], axis=1), **train_kw)
    restricted = train_mi_estimator(y_now, y_past, **train_kw)
    diff = full.batch_values - restricted.batch_values  # same seed → same held-out batches: paired
    return Estimate.from_batches(diff, full.train_curve - restricted.train_curve), full, restricted



# --------------------------------------------------------------------------------------------------
# A tvvar model as the critic of token streams (module docstring, last part)
# --------------------------------------------------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class TokenCritic:
    """The sequence layout of a token-stream critic: x, y [B, m] over V_x, V_y symbols → model ids, and the
    model's output → scores [B, m, V_y] (module docstring).  ``reduced=False``: row of y_t sees (x^t, y^{t−1});
    ``reduced=True``: it sees y^{t−1} only."""

    vocab_x: int
    vocab_y: int
    length: int
    reduced: bool = False

    def __post_init__(self) -> None:
        for name, lo in (("vocab_x", 1), ("vocab_y", 2), ("length", 1)):
            v = getattr(self, name)
            if not (_is_int(v) and v >= lo):
                raise ValueError(f"{name} must be an int ≥ {lo}, got {v!r}")
        if not isinstance(self.reduced, bool):
            raise TypeError(f"reduced must be a bool, got {self.reduced!r}")

    @property
    def vocab_size(self) -> int:
        """V = V_x + V_y + 1: x tokens, then y tokens, then BOS."""
        return self.vocab_x + self.vocab_y + 1

    @property
    def bos(self) -> int:
        return self.vocab_x + self.vocab_y

    @property
    def seq_len(self) -> int:
        return self.length if self.reduced else 2 * self.length - 1

    def config(self, *, d_model: int = 32, num_layers: int = 2, **kw) -> ModelConfig:
        """A causal model over this layout with learned positions for ``seq_len`` tokens (any ModelConfig
        field may be overridden through ``kw``)."""
        return ModelConfig(**{"vocab_size": self.vocab_size, "d_model": d_model, "num_layers": num_layers,
                              "max_len": self.seq_len, **kw})

    def check_config(self, cfg: ModelConfig) -> None:
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"model_cfg must be a tvvar.model.ModelConfig, got {type(cfg).__name__}")
        if cfg.vocab_size != self.vocab_size:
            raise ValueError(f"model_cfg.vocab_size must be V_x + V_y + 1 = {self.vocab_size} "
                             f"(x tokens | y tokens | BOS), got {cfg.vocab_size}")
        if cfg.mask != "causal":
            raise ValueError(f"model_cfg.mask must be 'causal' (a bidirectional critic sees y_t), got {cfg.mask!r}")
        if cfg.max_len is not None and cfg.max_len < self.seq_len:
            raise ValueError(f"model_cfg.max_len = {cfg.max_len} is shorter than the critic's sequence "
                             f"({self.seq_len} tokens)")

    def ids(self, x: Array, y: Array) -> Array:
        """Model input [B, seq_len] (int32): [x_0, V_x+y_0, x_1, …, x_{m−1}] or [BOS, V_x+y_0, …, V_x+y_{m−2}]."""
        x, y = jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32)
        B = y.shape[0]
        y_ids = y + self.vocab_x
        if self.reduced:
            return jnp.concatenate([jnp.full((B, 1), self.bos, jnp.int32), y_ids[:, :-1]], axis=1)
        pairs = jnp.stack([x, y_ids], axis=-1).reshape(B, 2 * self.length)  # x_0, y_0, x_1, y_1, …
        return pairs[:, :-1]

    def scores(self, model: TVVARModel, ids: Array) -> Array:
        """T[b, t, v] = ũ_{V_x+v}ᵀ h[b, row(t)] / Ξ, [B, m, V_y] in float32 or better; row(t) = 2t (full) or t
        (reduced).  Only the V_y candidate logits of the m scoring rows are formed."""
        h_BxTxD = model.hidden(ids)
        h_BxMxD = h_BxTxD if self.reduced else h_BxTxD[:, 0::2]
        dt = float32_or_better(h_BxMxD.dtype)
        U_VxD = model.readout.embedding.vectors()[self.vocab_x: self.vocab_x + self.vocab_y].astype(dt)
        return jnp.einsum("bmd,vd->bmv", h_BxMxD.astype(dt), U_VxD) / jnp.asarray(model.readout.xi, dt)


def token_dv_terms(T_BxMxV: Array, y: Array, clip: float | None = None) -> tuple[Array, Array]:
    """Per step t: (E_P[T_t], ln E_Q[e^{T_t}]), each [m].  E_P averages T[b, t, y_{b,t}]; E_Q averages
    e^{clip(T)} over the B(B−1) pairs (past_b, y_{j,t}), j ≠ b, computed exactly as
    Σ_{b,v} (n_t(v) − 1[v = y_{b,t}]) e^{T[b,t,v]} / (B(B−1))."""
    B, _, V = T_BxMxV.shape
    onehot_BxMxV = jax.nn.one_hot(y, V, dtype=T_BxMxV.dtype)
    joint_M = jnp.mean(jnp.sum(T_BxMxV * onehot_BxMxV, axis=-1), axis=0)
    w_BxMxV = jnp.sum(onehot_BxMxV, axis=0, keepdims=True) - onehot_BxMxV  # off-diagonal pair counts, ≥ 0
    Tq = T_BxMxV if clip is None else jnp.clip(T_BxMxV, -clip, clip)
    logw = jnp.where(w_BxMxV > 0, jnp.log(jnp.maximum(w_BxMxV, 1)), -jnp.inf)
    lme_M = jax.nn.logsumexp(Tq + logw, axis=(0, 2)) - jnp.log(jnp.asarray(B * (B - 1), T_BxMxV.dtype))
    return joint_M, lme_M


def token_dv_bound(T_BxMxV: Array, y: Array, clip: float | None = None) -> Array:
    """The per-step DV bound E_P[T_t] − ln E_Q[e^{T_t}], [m] (sum it for the whole sequence)."""
    joint_M, lme_M = token_dv_terms(T_BxMxV, y, clip)
    return joint_M - lme_M


def token_dv_surrogate(T_BxMxV: Array, y: Array, log_run_M: Array, clip: float | None = 10.0
                       ) -> tuple[Array, tuple[Array, Array]]:
    """The training loss −Σ_t (E_P[T_t] − E_Q[e^{T_t}] / sg(run_t)) with run_t the moving average of E_Q[e^{T_t}]
    (``log_run_M`` its log, −inf before the first step: the batch's own value is used), whose gradient is the
    DV gradient with the moving-average denominator.  Returns (loss, (dv [m], ln E_Q[e^T] [m]))."""
    joint_M, lme_M = token_dv_terms(T_BxMxV, y, clip)
    log_den = jax.lax.stop_gradient(jnp.where(jnp.isfinite(log_run_M), log_run_M, lme_M))
    loss = -jnp.sum(joint_M - jnp.exp(lme_M - log_den))
    return loss, (joint_M - lme_M, jax.lax.stop_gradient(lme_M))


def make_token_dv_step(critic: TokenCritic, graphdef, tx: optax.GradientTransformation, *,
                       clip: float | None = 10.0, ema: float = 0.99) -> Callable:
    """The jitted training step (forward, backward, optax update, moving-average update):
    ``step(params, rest, opt_state, log_run [m], ids [B, seq_len], y [B, m]) -> (params, opt_state, log_run,
    dv [m])`` for a model split as ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``."""

    def loss(params, rest, log_run, ids, y):
        model = nnx.merge(graphdef, params, rest)
        return token_dv_surrogate(critic.scores(model, ids), y, log_run, clip)

    @jax.jit
    def step(params, rest, opt_state, log_run, ids, y):
        (_, (dv_M, lme_M)), g = jax.value_and_grad(loss, has_aux=True)(params, rest, log_run, ids, y)
        upd, opt_state = tx.update(g, opt_state, params)
        mixed = jnp.logaddexp(log_run + math.log(ema), lme_M + math.log1p(-ema)) if ema > 0 else lme_M
        log_run = jnp.where(jnp.isfinite(log_run), mixed, lme_M)
        return optax.apply_updates(params, upd), opt_state, log_run, dv_M

    return step


def _check_streams(x, y, vocab_x, vocab_y) -> tuple[np.ndarray, np.ndarray, int, int]:
    arrs = []
    for name, a in (("x", x), ("y", y)):
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"{name} must be an array of token streams [n, m] with n, m ≥ 1, got shape {a.shape}")
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer tokens, got dtype {a.dtype}")
        arrs.append(a.astype(np.int64))
    x, y = arrs
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape [n, m] (same number of streams and the same length), "
                         f"got {x.shape} and {y.shape}")
    vocabs = []
    for name, a, v in (("x", x, vocab_x), ("y", y, vocab_y)):
        if v is None:
            v = max(int(a.max()) + 1, 2)
        elif not (_is_int(v) and v >= 2):
            raise ValueError(f"vocab_{name} must be an int ≥ 2 or None, got {v!r}")
        if a.min() < 0 or a.max() >= v:
            raise ValueError(f"{name} tokens must lie in [0, vocab_{name}={v}), got range [{a.min()}, {a.max()}]")
        vocabs.append(int(v))
    return x, y, vocabs[0], vocabs[1]


def _train_token_critic(critic: TokenCritic, cfg: ModelConfig, X: Array, Y: Array, tr: np.ndarray,
                        ev: np.ndarray, *, steps: int, batch: int, lr: float, clip, ema: float, seed: int,
                        rng: np.random.Generator) -> Estimate:
    model = TVVARModel(cfg, rngs=nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(lr)
    opt_state = tx.init(params)
    step = make_token_dv_step(critic, graphdef, tx, clip=clip, ema=ema)
    ids_all = critic.ids(X, Y)
    dt = float32_or_better(jnp.dtype(cfg.dtype))
    log_run = jnp.full((critic.length,), -jnp.inf, dt)
    curve = []  # kept on the device until the end: no host sync per step
    for _ in range(steps):
        idx = jnp.asarray(rng.choice(tr, batch, replace=False))
        params, opt_state, log_run, dv_M = step(params, rest, opt_state, log_run, ids_all[idx], Y[idx])
        curve.append(jnp.sum(dv_M))
    curve = np.asarray(jnp.stack(curve), dtype=np.float64)

    nb = ev.size // batch
    idx = jnp.asarray(ev[: nb * batch].reshape(nb, batch))

    @jax.jit
    def evaluate(params, idx):
        model = nnx.merge(graphdef, params, rest)
        return jax.lax.map(lambda i: token_dv_bound(critic.scores(model, ids_all[i]), Y[i], clip), idx)

    per_NxM = np.asarray(evaluate(params, idx), dtype=np.float64)  # [batches, m]
    return Estimate.from_batches(per_NxM.sum(axis=1), curve, per_step=per_NxM.mean(axis=0))


def directed_information_dv(x, y, *, vocab_x: int | None = None, vocab_y: int | None = None,
                            model_cfg: ModelConfig | None = None, d_model: int = 32, num_layers: int = 2,
                            steps: int = 500, batch: int = 256, lr: float = 3e-3, clip: float | None = 10.0,
                            ema: float = 0.99, held_out: float = 0.3, seed: int = 0
                            ) -> tuple[Estimate, Estimate, Estimate]:
    """I(X^m → Y^m) = Σ_t [DV_t(y_t ; x^t, y^{t−1}) − DV_t(y_t ; y^{t−1})] (a difference of two DV estimates, not
    a bound: either sign of error) with two causal tvvar critics
    (:class:`TokenCritic`, full and reduced), each trained with Adam on the stabilised DV surrogate
    (:func:`token_dv_surrogate`: exponent clipped to ±``clip``, moving-average denominator with rate ``ema``).

    x, y: integer token streams [n, m] (row i is one draw of (X^m, Y^m)); vocabularies default to max + 1.
    ``model_cfg`` (vocab_size V_x + V_y + 1, causal) overrides the default ``TokenCritic.config(d_model=…,
    num_layers=…)``; both critics use it (the reduced one reads the first m positions).  The held-out split
    (fraction ``held_out``) is cut into disjoint batches of ``batch`` streams; both critics are evaluated on the
    same ones, so ``di``'s 95 % interval comes from the per-batch paired differences.

    Returns (di, full, reduced): Estimates of the sequence sums (nats); ``per_step`` holds the per-t means."""
    x, y, vx, vy = _check_streams(x, y, vocab_x, vocab_y)
    if not (_is_int(steps) and steps >= 1):
        raise ValueError(f"steps must be an int ≥ 1, got {steps!r}")
    if not (_is_int(batch) and batch >= 2):
        raise ValueError(f"batch must be an int ≥ 2 (the product measure pairs distinct streams), got {batch!r}")
    if not 0 <= ema < 1:
        raise ValueError(f"ema must lie in [0, 1), got {ema}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    n, m = y.shape
    n_train, _ = _split(n, batch, held_out)
    critics = (TokenCritic(vx, vy, m), TokenCritic(vx, vy, m, reduced=True))
    if model_cfg is None:
        model_cfg = critics[0].config(d_model=d_model, num_layers=num_layers)
    for c in critics:
        c.check_config(model_cfg)
    perm = np.random.default_rng(seed).permutation(n)
    tr, ev = perm[:n_train], perm[n_train:]
    X, Y = jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32)
    full, reduced = (_train_token_critic(c, model_cfg, X, Y, tr, ev, steps=steps, batch=batch, lr=lr, clip=clip,
                                         ema=ema, seed=seed + k, rng=np.random.default_rng([seed, k]))
                     for k, c in enumerate(critics))
    di = Estimate.from_batches(full.batch_values - reduced.batch_values, full.train_curve - reduced.train_curve,
                               per_step=full.per_step - reduced.per_step)
    return di, full, reduced
