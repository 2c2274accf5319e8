"""Directed information and semantic information flow of a prompted model (Section III, Defs. 2 and 8).

Every quantity here is computed from one array, the per-prompt next-token law of a source or a model,

    log_cond[b, k, t, v] = log P(U_t = v | U_{<t} = u_{b,<t}, S = s_k)       [B, K, T, V]

(``u[:, t]`` is the paper's U_{n+1+t}; t = 0 is the first output token) and a prompt law ``log_prior``
[K]. For a model it comes from :func:`model_log_conditionals` — one batched, jitted forward over all K·B
[prompt ‖ continuation] sequences — and for :class:`tvvar.sources.PromptedSource` from its exact
``log_conditionals``; so the same calls serve every registered decomposition (and a model loaded from
disk). The prompt-free law is the exact Bayes marginal over the prompt set:

    P(s_k | u_{<t}) ∝ p(s_k) Π_{τ<t} P(u_τ | u_{<τ}, s_k)                          :func:`prompt_posterior`
    P(U_t = v | u_{<t}) = Σ_k P(s_k | u_{<t}) P(U_t = v | u_{<t}, s_k)            :func:`marginal_log_conditionals`

From these:

* information density ι_t = log P(u_t | u_{<t}, s) − log P(u_t | u_{<t}) and the semantic information flow
  i(S → U_{n+1:t}) = Σ_{τ≤t} ι_τ = log P(u_{≤t} | s) / P(u_{≤t}) (Def. 8, Eqs. 22–24):
  :func:`information_density`, :func:`flow`;
* the conditional drift of the flow (Theorem 2): E[ι_t | u_{<t}, s] = KL(P(·|u_{<t}, s) ‖ P(·|u_{<t})) ≥ 0,
  :func:`drift` (closed form) and :func:`drift_by_enumeration` (the expectation of the sequence-level flow
  increment over the next token, the identity's other side);
* the Doob decomposition i_t = A_t + M_t, A_t = Σ_{τ≤t} KL_τ predictable and non-decreasing, M_t a
  martingale with M_0 = 0 (Eqs. 26–28), and the predictable quadratic variation V_t = Σ Var(ι_τ | past)
  used by Freedman's inequality (Corollary 2, Eq. 30): :func:`doob`;
* the directed information I(S → U) = Σ_t I(S; U_t | U_{<t}) (Def. 2, Eq. 10), exactly by enumeration of
  all V^T continuations (:func:`directed_information`, which also returns the sequence-level I(S; U) that
  the chain rule says it equals) or by Monte-Carlo with exact densities and a standard error
  (:func:`directed_information_mc`);
* the prompt-free estimators the interpretability literature uses instead of the Bayes marginal — drop the
  prompt, a null prompt, a truncated context window — as log-conditionals of the same shape
  (:func:`heuristic_log_marginals`), so their drift from the exact flow is one subtraction;
* at model scale (V in the tens of thousands), the density and flow from the sampled tokens' log-likelihoods
  alone, [B, K, T]: :func:`model_token_logliks` runs the K·B forwards in chunks of bounded memory, split
  across the processes of ``jax.distributed``, and :func:`token_information_density` / :func:`token_flow` /
  :func:`model_information_density` read them (the measures that need whole next-token rows — drift, Doob,
  I(S → U), Eq. 18 — still take ``log_cond``).

Logs are natural (nats); :data:`NATS_PER_BIT` converts. Probabilities that are exactly 0 (the source's
absorbing end token) contribute 0 to every expectation (0 · log 0 = 0), never NaN. Three edge cases are
defined, not left to rounding:

* KL(P ‖ Q) = +∞ when Q(v) = 0 < P(v) (so :func:`drift` and :func:`directed_distortion` are +∞ there);
* a path of probability 0 under its own prompt (P(u_t | u_{<t}, s_k) = 0 at some t: its information density
  log 0 − log P(u_t | u_{<t}) is undefined) is **refused** by every function that takes paths and prompt
  indices (:func:`information_density`, :func:`flow`, :func:`sequence_flow`, :func:`drift`,
  :func:`drift_by_enumeration`, :func:`doob`, :func:`directed_information_mc`) with a ``ValueError`` that
  names the path, its prompt and the position — when the arrays are concrete. Under ``jax.jit`` no value can
  be inspected; such a path then gives −inf or NaN from that position on (pass only possible paths);
* ``log_cond`` rows must be normalised: a concrete row whose probabilities do not sum to 1 (within
  :data:`ROW_TOL`, or 64 ulp of its dtype if larger) is refused (shifted logits are not a law, and they
  would give I = 0 silently).

**A bidirectional (masked-diffusion, LLaDA) model** — a :class:`tvvar.diffusion.MaskedDiffusionLM`, or a
bidirectional :class:`tvvar.model.TVVARModel` read as a denoiser the way :func:`tvvar.diffusion.as_denoiser`
does (its last token id is the mask M) — has no causal rows, but it defines a left-to-right conditional: the
sequence [s ‖ u_{<t} ‖ M … M] of fixed length n + T, every position from t on masked, and its row n + t,

    Q_T(U_t = v | S = s, U_{<t} = u_{<t}) = softmax(denoiser([s, u_0..u_{t−1}, M^{T−t}]))_{n+t}[v].

These are the conditionals of LLaDA's sampler run one token per step from left to right
(``tvvar.diffusion.generate(..., steps=T, gen_length=T, block_length=1, temperature=1)``: each block is one
position, so remasking never chooses). :func:`model_log_conditionals` returns them (one jitted forward over
all T·K·B masked sequences), and every quantity above — I(S → U), the flow, drift, Doob parts, the
distortion, Eq. 18 — is then that of the joint Q_T(u | s) = Π_t Q_T(u_t | s, u_{<t}) *defined by this
decoding order*, which is a proper law on [0, V)^T for every prompt (so the chain rule, Theorem 2's drift
identity and the Doob parts hold exactly for it). What they do NOT mean: a masked-diffusion model does not
define one joint law; the products over other unmasking orders (any-order / low-confidence / random
remasking, several tokens per step) are in general different laws — the model's conditionals need not be
consistent — so the numbers are not "the" directed information of the model, only of this order. They also
depend on the length T (the number of masked positions after the prompt is part of the input), and none of
them is the model's ELBO (:func:`tvvar.diffusion.nelbo_exact`), which averages over orders.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tvvar.core import check_token_ids
from tvvar.diffusion import MaskedDiffusionLM
from tvvar.model import TVVARModel
from tvvar.typing import Array, PRNGKey

__all__ = [
    "NATS_PER_BIT",
    "check_log_prior",
    "check_prompts",
    "prompt_posterior",
    "marginal_log_conditionals",
    "information_density",
    "flow",
    "sequence_flow",
    "drift",
    "drift_by_enumeration",
    "doob",
    "model_log_conditionals",
    "model_conditional_fn",
    "model_token_logliks",
    "token_information_density",
    "token_flow",
    "token_sequence_flow",
    "model_information_density",
    "model_flow",
    "CHUNK_ELEMENTS",
    "sample_model",
    "all_continuations",
    "directed_information",
    "directed_information_mc",
    "directed_distortion",
    "eq18_loss",
    "eq18_objective",
    "check_lambda",
    "heuristic_log_marginals",
    "stopped",
    "ROW_TOL",
]

NATS_PER_BIT = math.log(2.0)
_PROB_TOL = 1e-6
#: how far a concrete ``log_cond`` row's total probability may be from 1 (float64; float32 rows get 64 ulp)
ROW_TOL = 1e-6


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def check_log_prior(log_prior: Any) -> Array:
    """The prompt law as log-probabilities [K]: non-empty, no NaN, not all −inf, summing to 1."""
    lp = jnp.asarray(log_prior)
    if lp.ndim != 1 or lp.shape[0] < 1:
        raise ValueError(f"log_prior must be a non-empty vector [K] of prompt log-probabilities (an empty prompt "
                         f"set has no law), got shape {tuple(lp.shape)}")
    if not jnp.issubdtype(lp.dtype, jnp.floating):
        raise TypeError(f"log_prior must be a float array, got dtype {lp.dtype}")
    if isinstance(lp, jax.core.Tracer):
        return lp
    a = np.asarray(lp, np.float64)
    if np.any(np.isnan(a)) or np.any(a == np.inf):
        raise ValueError("log_prior must not hold NaN or +inf")
    if not np.any(np.isfinite(a)):
        raise ValueError("log_prior gives every prompt probability 0 (a zero-probability prompt set)")
    total = np.exp(a).sum()
    if abs(total - 1.0) > _PROB_TOL:
        raise ValueError(f"log_prior must be log-probabilities summing to 1, sums to {total:.8g}")
    return lp


def check_prompts(prompts: Any, vocab_size: int, max_context: int | None = None, cont_len: int = 1, *,
                  causal: bool = True) -> Array:
    """Prompt token ids [K, n] in [0, V); with ``max_context``, the model's input must fit in it: n + T − 1
    tokens for a causal model (the last token is never read), n + T for a masked-diffusion one."""
    p = jnp.asarray(prompts)
    check_token_ids(p, vocab_size, name="prompts", ndim=2)
    need = p.shape[1] + cont_len - (1 if causal else 0)
    if max_context is not None and need > max_context:
        form = "n + T − 1" if causal else "n + T (masked diffusion: the whole sequence)"
        raise ValueError(f"prompts of length n={p.shape[1]} with a continuation of T={cont_len} need a context of "
                         f"{form} = {need} tokens, longer than the model's max_len={max_context}")
    return p


def _check_ids(ids: Any, vocab_size: int, name: str) -> None:
    """:func:`tvvar.core.check_token_ids` for [B, T] ids, with the value range read by NumPy (so that a concrete
    array closed over inside a trace, where a jnp reduction would itself be traced, is still checked)."""
    if isinstance(ids, jax.core.Tracer):
        check_token_ids(ids, vocab_size, name=name, ndim=2)
        return
    a = np.asarray(ids)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array of token ids, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape [B, T] (rank 2), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must hold at least one token (T ≥ 1, B ≥ 1), got shape {a.shape}")
    if a.min() < 0 or a.max() >= vocab_size:
        raise ValueError(f"{name} must lie in [0, V={vocab_size}), got values in [{a.min()}, {a.max()}]")


def _check_cond(log_cond: Array, log_prior: Array, u: Array | None = None) -> None:
    if log_cond.ndim != 4:
        raise ValueError(f"log_cond must have shape [B, K, T, V], got shape {tuple(log_cond.shape)}")
    if log_cond.shape[1] != log_prior.shape[0]:
        raise ValueError(f"log_cond has K={log_cond.shape[1]} prompts but log_prior has {log_prior.shape[0]}")
    if u is not None:
        _check_ids(u, log_cond.shape[-1], "continuation")
        if tuple(u.shape) != tuple(log_cond.shape[:1] + log_cond.shape[2:3]):
            want = tuple(log_cond.shape[:1] + log_cond.shape[2:3])
            raise ValueError(f"continuation must have shape [B, T] = {want}, got {tuple(u.shape)}")
    if isinstance(log_cond, jax.core.Tracer):
        return
    a = np.asarray(log_cond)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"log_cond must be a float array of log-probabilities, got dtype {a.dtype}")
    if np.any(np.isnan(a)) or np.any(a == np.inf):
        raise ValueError("log_cond must not hold NaN or +inf (it is log P(U_t = v | u_<t, s_k))")
    a64 = a.astype(np.float64)
    mx = np.max(a64, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        total = np.exp(mx[..., 0]) * np.sum(np.exp(a64 - np.where(np.isfinite(mx), mx, 0.0)), axis=-1)
    tol = max(ROW_TOL, 64 * float(np.finfo(a.dtype).eps))
    bad = np.abs(total - 1.0) > tol
    if np.any(bad):
        b, kk, t = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(f"log_cond rows must be normalised log-probabilities (Σ_v exp = 1 within {tol:.1e}); "
                         f"row [b={b}, k={kk}, t={t}] sums to {total[b, kk, t]:.8g} ({int(bad.sum())} such rows): "
                         "apply log_softmax to logits")


def _check_paths(own_ll: Array, k: Array) -> None:
    """Refuse (when concrete) a path that has probability 0 under its own prompt: own_ll [B, T] =
    log P(u_t | u_{<t}, s_{k_b}) (module docstring)."""
    if isinstance(own_ll, jax.core.Tracer) or isinstance(k, jax.core.Tracer):
        return
    a = np.asarray(own_ll)
    if np.any(np.isneginf(a)):
        b, t = (int(x) for x in np.argwhere(np.isneginf(a))[0])
        raise ValueError(f"path b={b} has probability 0 under its prompt k={int(np.asarray(k)[b])} at output position "
                         f"t={t} (P(u_t | u_<t, s_k) = 0): its information density and flow are undefined; pass only "
                         "paths that are possible under their prompt")


def _require(ok: Any, message: str) -> None:
    """Raise ``ValueError(message)`` if ``ok`` is False: at once when concrete; under tracing, when the compiled
    computation runs (a host callback; the error then arrives wrapped in JAX's runtime error, with this text)."""
    if isinstance(ok, jax.core.Tracer):
        def _raise(flag):
            if not bool(flag):
                raise ValueError(message)

        jax.debug.callback(_raise, ok)
    elif not bool(ok):
        raise ValueError(message)


def _safe_sub(a: Array, b: Array) -> Array:
    """a − b with −inf − (−inf) := −inf (an impossible event stays impossible, never NaN)."""
    return jnp.where(jnp.isneginf(b), -jnp.inf, a - b)


# --------------------------------------------------------------------------------------------------
# Bayes over the prompt set
# --------------------------------------------------------------------------------------------------


def _token_logliks(log_cond: Array, u: Array) -> Array:
    """log P(u_t | u_{<t}, s_k): [B, K, T]."""
    B, K, T, _ = log_cond.shape
    idx = jnp.broadcast_to(u[:, None, :, None], (B, K, T, 1))
    return jnp.take_along_axis(log_cond, idx, axis=-1)[..., 0]


def _cumulative(log_cond: Array, u: Array) -> Array:
    """log P(u_{<t} | s_k) for t = 0..T: [B, K, T + 1]."""
    ll = _token_logliks(log_cond, u)
    return jnp.concatenate([jnp.zeros_like(ll[..., :1]), jnp.cumsum(ll, axis=-1)], axis=-1)


def prompt_posterior(log_cond: Array, log_prior: Array, u: Array) -> Array:
    """log P(s_k | u_{<t}) for t = 0..T (t = 0 is the prior, t = T after the whole continuation): [B, K, T + 1]."""
    log_prior = check_log_prior(log_prior)
    _check_cond(log_cond, log_prior, u)
    joint = log_prior[None, :, None] + _cumulative(log_cond, u)
    return _safe_sub(joint, jax.nn.logsumexp(joint, axis=1, keepdims=True))


def marginal_log_conditionals(log_cond: Array, log_prior: Array, u: Array) -> Array:
    """The exact prompt-free law log P(U_t = v | u_{<t}) = log Σ_k P(s_k | u_{<t}) P(v | u_{<t}, s_k): [B, T, V]."""
    post = prompt_posterior(log_cond, log_prior, u)[:, :, :-1]
    return jax.nn.logsumexp(post[..., None] + log_cond, axis=1)


def _prompt_rows(x: Array, k: Array) -> Array:
    """x[b, k_b, ...] for x [B, K, ...] and prompt indices k [B]."""
    k = jnp.asarray(k)
    if k.ndim != 1 or k.shape[0] != x.shape[0]:
        raise ValueError(f"prompt index must have shape [B={x.shape[0]}], got {tuple(k.shape)}")
    if not isinstance(k, jax.core.Tracer):
        a = np.asarray(k)
        if a.min() < 0 or a.max() >= x.shape[1]:
            raise ValueError(f"prompt index must lie in [0, K={x.shape[1]}), got values in [{a.min()}, {a.max()}]")
    return jnp.take_along_axis(x, k.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]


def _concrete(*xs: Any) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _check_path_args(log_cond: Array, log_prior: Any, u: Array, k: Array) -> Array:
    """The value checks a trace cannot run, on concrete input, before a jitted core: the prompt law, the
    normalised rows, the prompt indices and the possibility of every path under its prompt."""
    lp = check_log_prior(log_prior)
    _check_cond(log_cond, lp, u)
    a, kk = np.asarray(u), np.asarray(k)
    if kk.ndim != 1 or kk.shape[0] != a.shape[0] or not np.issubdtype(kk.dtype, np.integer):
        raise ValueError(f"prompt index must be an integer array [B={a.shape[0]}], got shape {kk.shape}")
    if kk.min() < 0 or kk.max() >= log_cond.shape[1]:
        raise ValueError(f"prompt index must lie in [0, K={log_cond.shape[1]}), got values in [{kk.min()}, {kk.max()}]")
    own = np.take_along_axis(np.asarray(log_cond)[np.arange(a.shape[0]), kk], a[..., None], axis=-1)[..., 0]
    _check_paths(own, kk)
    return lp


def _eager_or_jit(core: Callable, jitted: Callable, log_cond: Array, log_prior: Any, u: Array, k: Array,
                  *rest: Any) -> Any:
    """Concrete input: checked, then the jitted core (one compiled program instead of many eager ops); inside a
    trace (a loss, a jitted caller): the core itself."""
    if _concrete(log_cond, log_prior, u, k, *rest):
        lp = _check_path_args(log_cond, log_prior, u, k)
        return jitted(jnp.asarray(log_cond), lp, jnp.asarray(u), jnp.asarray(k), *rest)
    return core(log_cond, log_prior, u, k, *rest)


def _density_core(log_cond, log_prior, u, k, log_marginal=None):
    m = marginal_log_conditionals(log_cond, log_prior, u) if log_marginal is None else log_marginal
    own = _prompt_rows(_token_logliks(log_cond, u), k)
    _check_paths(own, k)
    lm = jnp.take_along_axis(m, u[..., None], axis=-1)[..., 0]
    return own - lm


_density_jit = jax.jit(lambda lc, lp, u, k, lm=None: _density_core(lc, lp, u, k, lm))


def information_density(log_cond: Array, log_prior: Array, u: Array, k: Array,
                        log_marginal: Array | None = None) -> Array:
    """ι_t = log P(u_t | u_{<t}, s_k) − log P(u_t | u_{<t}) for each path b under prompt k_b: [B, T].

    ``log_marginal`` [B, T, V] replaces the exact Bayes marginal (e.g. by a heuristic estimator)."""
    extra = () if log_marginal is None else (jnp.asarray(log_marginal),)
    return _eager_or_jit(_density_core, _density_jit, log_cond, log_prior, u, k, *extra)


def flow(log_cond: Array, log_prior: Array, u: Array, k: Array, log_marginal: Array | None = None) -> Array:
    """The semantic information flow i(S → U_{n+1:t}) = Σ_{τ≤t} ι_τ for t = 1..T (Def. 8, Eq. 24): [B, T]."""
    return jnp.cumsum(information_density(log_cond, log_prior, u, k, log_marginal), axis=-1)


def _sequence_flow_core(log_cond, log_prior, u, k):
    log_prior = check_log_prior(log_prior)
    _check_cond(log_cond, log_prior, u)
    _check_paths(_prompt_rows(_token_logliks(log_cond, u), k), k)
    L = _cumulative(log_cond, u)
    logm = jax.nn.logsumexp(log_prior[None, :, None] + L, axis=1)
    return _prompt_rows(L, k) - logm


_sequence_flow_jit = jax.jit(lambda lc, lp, u, k: _sequence_flow_core(lc, lp, u, k))


def sequence_flow(log_cond: Array, log_prior: Array, u: Array, k: Array) -> Array:
    """The same flow from sequence probabilities, log P(u_{≤t} | s_k) − log Σ_j p_j P(u_{≤t} | s_j), t = 0..T:
    [B, T + 1] (no per-step Bayes predictive; the chain rule makes it equal :func:`flow`)."""
    return _eager_or_jit(_sequence_flow_core, _sequence_flow_jit, log_cond, log_prior, u, k)


def _kl_rows(logp: Array, logq: Array) -> Array:
    """KL(p ‖ q) along the last axis as Σ_v [p log(p/q) − p + q]⁺: each term is ≥ 0 in exact arithmetic, so the
    clamp only removes rounding and the result is never negative; p = 0 terms give q (their limit), and a term
    with q = 0 < p is +∞ (p is not absolutely continuous w.r.t. q)."""
    p, q = jnp.exp(logp), jnp.exp(logq)
    term = jnp.where(p > 0, p * _safe_sub(logp, logq) - p + q, q)
    term = jnp.where((p > 0) & jnp.isneginf(logq), jnp.inf, term)
    return jnp.sum(jnp.maximum(term, 0), axis=-1)


def _drift_core(log_cond, log_prior, u, k):
    m = marginal_log_conditionals(log_cond, log_prior, u)
    _check_paths(_prompt_rows(_token_logliks(log_cond, u), k), k)
    return _kl_rows(_prompt_rows(log_cond, k), m)


_drift_jit = jax.jit(lambda lc, lp, u, k: _drift_core(lc, lp, u, k))


def drift(log_cond: Array, log_prior: Array, u: Array, k: Array) -> Array:
    """Theorem 2's drift E[ι_t | u_{<t}, s_k] = KL(P(·|u_{<t}, s_k) ‖ P(·|u_{<t})) ≥ 0 per path and step: [B, T]."""
    return _eager_or_jit(_drift_core, _drift_jit, log_cond, log_prior, u, k)


def _drift_enum_core(log_cond, log_prior, u, k):
    log_prior = check_log_prior(log_prior)
    _check_cond(log_cond, log_prior, u)
    _check_paths(_prompt_rows(_token_logliks(log_cond, u), k), k)
    L = _cumulative(log_cond, u)[:, :, :-1]                                   # log P(u_{<t} | s_j): [B, K, T]
    L_next = L[..., None] + log_cond                                          # log P(u_{<t} v | s_j): [B, K, T, V]
    logm = jax.nn.logsumexp(log_prior[None, :, None] + L, axis=1)             # [B, T]
    logm_next = jax.nn.logsumexp(log_prior[None, :, None, None] + L_next, axis=1)
    f_prev = _prompt_rows(L, k) - logm
    f_next = _prompt_rows(L_next, k) - logm_next
    p = jnp.exp(_prompt_rows(log_cond, k))
    return jnp.sum(jnp.where(p > 0, p * (f_next - f_prev[..., None]), 0), axis=-1)


_drift_enum_jit = jax.jit(lambda lc, lp, u, k: _drift_enum_core(lc, lp, u, k))


def drift_by_enumeration(log_cond: Array, log_prior: Array, u: Array, k: Array) -> Array:
    """E_v[i(u_{<t} v) − i(u_{<t})] over the next token v ~ P(·|u_{<t}, s_k), each flow from sequence
    probabilities (:func:`sequence_flow`): the left side of Theorem 2's identity, [B, T]."""
    return _eager_or_jit(_drift_enum_core, _drift_enum_jit, log_cond, log_prior, u, k)


def _doob_core(log_cond, log_prior, u, k):
    m = marginal_log_conditionals(log_cond, log_prior, u)
    own = _prompt_rows(log_cond, k)
    _check_paths(_prompt_rows(_token_logliks(log_cond, u), k), k)
    kl = _kl_rows(own, m)
    i = flow(log_cond, log_prior, u, k, m)
    p = jnp.exp(own)
    dens = _safe_sub(own, m)                                                  # ι(v) per next token
    centred = jnp.where(p > 0, dens - kl[..., None], 0)
    var = jnp.sum(jnp.where(p > 0, p * centred**2, 0), axis=-1)
    sup = jnp.max(jnp.where(p > 0, centred, -jnp.inf), axis=-1)
    A = jnp.cumsum(kl, axis=-1)
    return {"flow": i, "A": A, "M": i - A, "drift": kl, "V": jnp.cumsum(var, axis=-1), "increment_sup": sup}


_doob_jit = jax.jit(lambda lc, lp, u, k: _doob_core(lc, lp, u, k))


def doob(log_cond: Array, log_prior: Array, u: Array, k: Array) -> dict[str, Array]:
    """Doob decomposition of the flow (Eqs. 26–28), per path, t = 1..T, each [B, T]:

    ``flow`` i_t, ``A`` = Σ_{τ≤t} KL_τ (predictable, non-decreasing), ``M`` = i_t − A_t (martingale, mean 0),
    ``drift`` KL_t, ``V`` = Σ_{τ≤t} Var(ι_τ | past) (the predictable quadratic variation of M) and
    ``increment_sup`` = max_v (ι_τ(v) − KL_τ) over the possible next tokens (a bound c on M's increments)."""
    return _eager_or_jit(_doob_core, _doob_jit, log_cond, log_prior, u, k)


def stopped(x: Array, u: Array, end_token: int) -> tuple[Array, Array]:
    """(x_{t∧τ}, τ) for x [B, T] indexed t = 1..T and τ = the first step with u_t = ◁ (T if none): Corollary 3's
    process stopped at the end token. τ is 1-based (the number of output tokens up to and including ◁)."""
    T = u.shape[1]
    hit = u == end_token
    tau = jnp.where(jnp.any(hit, axis=1), jnp.argmax(hit, axis=1) + 1, T)
    t = jnp.arange(1, T + 1)[None, :]
    idx = jnp.minimum(t, tau[:, None]) - 1
    return jnp.take_along_axis(x, idx, axis=1), tau


# --------------------------------------------------------------------------------------------------
# a model as the channel: one batched forward over all prompts
# --------------------------------------------------------------------------------------------------


def _all_prompt_ids(prompts: Array, u: Array) -> Array:
    """[s_k ‖ u_b] for every continuation b and prompt k: [B·K, n + T] (b major)."""
    B, T = u.shape
    K, n = prompts.shape
    return jnp.concatenate([jnp.broadcast_to(prompts[None], (B, K, n)),
                            jnp.broadcast_to(u[:, None, :], (B, K, T))], axis=-1).reshape(B * K, n + T)


def _causal_log_cond(model, prompts: Array, u: Array) -> Array:
    B, T = u.shape
    n = prompts.shape[1]
    logits = model(_all_prompt_ids(prompts, u)[:, :-1])[:, n - 1:]              # rows predicting u_0..u_{T-1}
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return jax.nn.log_softmax(z, axis=-1).reshape(B, prompts.shape[0], T, -1)


def _lr_rows(denoise: Callable[[Array], Array], ctx: Array, u: Array, mask_id: int) -> Array:
    """Left-to-right masked-diffusion conditionals: row t is the denoiser's law at position P + t of
    [ctx ‖ u_{<t} ‖ M^{T−t}] (every later position masked), for ctx [N, P] and u [N, T]: [N, T, V].
    One forward over the N·T masked sequences of length P + T."""
    N, T = u.shape
    P = ctx.shape[1]
    pos = jnp.arange(T)
    cont = jnp.where(pos[None, :] < pos[:, None], u[:, None, :], jnp.asarray(mask_id, u.dtype))   # [N, T(t), T]
    ids = jnp.concatenate([jnp.broadcast_to(ctx[:, None, :], (N, T, P)), cont], axis=-1).reshape(N * T, P + T)
    logits = denoise(ids).reshape(N, T, P + T, -1)
    rows = jnp.take_along_axis(logits, (P + pos)[None, :, None, None], axis=2)[:, :, 0]
    z = rows.astype(jnp.promote_types(rows.dtype, jnp.float32))[..., :mask_id]
    return jax.nn.log_softmax(z, axis=-1)


def _diffusion_log_cond(model, prompts: Array, u: Array, mask_id: int) -> Array:
    B, T = u.shape
    K, n = prompts.shape
    ids = _all_prompt_ids(prompts, u)
    lc = _lr_rows(model, ids[:, :n], ids[:, n:], mask_id)
    return lc.reshape(B, K, T, -1)


def _is_diffusion(model: Any) -> bool:
    return isinstance(model, MaskedDiffusionLM) or (
        isinstance(model, TVVARModel) and getattr(model.cfg, "mask", "causal") == "bidirectional")


def _log_cond_any(model, prompts: Array, u: Array) -> Array:
    """Per-prompt log-conditionals of a causal model, or the left-to-right ones of a masked-diffusion model."""
    if _is_diffusion(model):
        return _diffusion_log_cond(model, prompts, u, _model_meta(model)[0])
    return _causal_log_cond(model, prompts, u)


@nnx.jit
def _forward_all_prompts(model, prompts: Array, u: Array) -> Array:
    return _log_cond_any(model, prompts, u)


def _model_meta(model: Any) -> tuple[int, int | None]:
    """(V, max_len) of the data vocabulary: a causal TVVARModel-like module, a MaskedDiffusionLM (V = its
    vocab_size; the mask id is V), or a bidirectional TVVARModel read as a denoiser (V = vocab_size − 1)."""
    if isinstance(model, MaskedDiffusionLM):
        return int(model.vocab_size), model.inner.cfg.max_len
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "vocab_size"):
        raise TypeError(f"model must be a TVVARModel-like module with a .cfg (vocab_size, max_len) or a "
                        f"tvvar.diffusion.MaskedDiffusionLM, got {type(model).__name__}")
    mask = getattr(cfg, "mask", "causal")
    if mask == "bidirectional":
        if not isinstance(model, TVVARModel):
            raise TypeError(f"a bidirectional model must be a tvvar TVVARModel (read as a LLaDA denoiser, last id = "
                            f"mask) or a MaskedDiffusionLM, got {type(model).__name__}")
        if cfg.vocab_size < 2:
            raise ValueError("a bidirectional TVVARModel read as a denoiser needs vocab_size ≥ 2 (the last id is the "
                             f"mask M), got {cfg.vocab_size}")
        return int(cfg.vocab_size) - 1, getattr(cfg, "max_len", None)
    if mask != "causal":
        raise ValueError(f"model.cfg.mask must be 'causal' or 'bidirectional', got {mask!r}")
    return int(cfg.vocab_size), getattr(cfg, "max_len", None)


def model_log_conditionals(model: Any, prompts: Any, u: Any) -> Array:
    """log Q(U_t = v | u_{<t}, s_k; Φ) for every continuation b and prompt k: [B, K, T, V].

    Causal model: one jitted forward of the K·B sequences [s_k ‖ u_b][:-1]; row n − 1 + t predicts u_t (DESIGN
    index convention). Masked-diffusion model (module docstring): the left-to-right conditionals
    Q_T(u_t | s_k, u_{<t}) of the sequence [s_k ‖ u_{<t} ‖ M^{T−t}], one jitted forward over the T·K·B masked
    sequences of length n + T. Bad input (ids outside [0, V), a prompt + continuation longer than ``max_len``)
    raises."""
    V, max_len = _model_meta(model)
    u = jnp.asarray(u)
    check_token_ids(u, V, name="continuation", ndim=2)
    p = check_prompts(prompts, V, max_len, u.shape[1], causal=not _is_diffusion(model))
    return _forward_all_prompts(model, p.astype(jnp.int32), u.astype(jnp.int32))


def model_conditional_fn(model: Any, prompts: Any) -> Callable[[Array], Array]:
    """``u -> model_log_conditionals(model, prompts, u)``, the form :func:`directed_information` takes."""
    return lambda u: model_log_conditionals(model, prompts, u)


# --------------------------------------------------------------------------------------------------
# model scale: only the sampled tokens' log-likelihoods, in chunks, split across processes
# --------------------------------------------------------------------------------------------------

#: default working-set budget of one chunk, in elements of its [chunk, length, V] logits (2^26: 256 MiB float32)
CHUNK_ELEMENTS = 1 << 26


@partial(nnx.jit, static_argnames=("n", "mask_id"))
def _chunk_token_logliks(model, ids: Array, *, n: int, mask_id: int | None) -> Array:
    """log P(u_t | s, u_{<t}) of one chunk of [s ‖ u] pairs ids [c, n + T]: [c, T] (the [c, T, V] rows are
    an intermediate of this one compiled call, never an output)."""
    cont = ids[:, n:]
    if mask_id is None:
        z = model(ids[:, :-1])[:, n - 1:]
        z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
        return jnp.take_along_axis(z, cont[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(z, axis=-1)
    lc = _lr_rows(model, ids[:, :n], cont, mask_id)
    return jnp.take_along_axis(lc, cont[..., None], axis=-1)[..., 0]


def _chunk_size(chunk: int | None, N: int, length: int, V: int) -> int:
    """The pairs per chunk: ``chunk`` (≥ 1), or the most that keep [chunk, length, V] within
    :data:`CHUNK_ELEMENTS`; then evened out over the same number of chunks (least padding)."""
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // max(1, length * V))
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer (pairs per forward) or None, got {chunk!r}")
    chunk = min(int(chunk), N)
    return math.ceil(N / math.ceil(N / chunk))


def model_token_logliks(model: Any, prompts: Any, u: Any, *, chunk: int | None = None,
                        processes: bool = True) -> Array:
    """log Q(u_{b,t} | u_{b,<t}, s_k; Φ) of the sampled tokens only, for every continuation b and prompt k:
    [B, K, T] — :func:`model_log_conditionals` gathered at ``u`` (``_token_logliks``), without its [B, K, T, V]
    array (6.6 GB at V 50257, K 16, B 64, T 32 in float32).

    The K·B [s_k ‖ u_b] pairs (b major) are run ``chunk`` pairs per compiled forward (one compiled shape; the
    last chunk is padded), so the peak working set is O(chunk · (n + T) · V) — O(chunk · T · (n + T) · V) for a
    masked-diffusion model, whose pair is T masked sequences — whatever K·B is. ``chunk=None`` picks the largest
    chunk whose logits fit :data:`CHUNK_ELEMENTS`. Under ``jax.distributed`` (``jax.process_count() > 1``) and
    ``processes=True``, process p computes the p-th contiguous share of the chunks and the shares are gathered
    (``multihost_utils.process_allgather``), so every process returns the whole array; every process must then
    call it with the same arguments. Its values are what :func:`information_density`, :func:`flow`,
    :func:`sequence_flow` and :func:`prompt_posterior` read (:func:`token_information_density`,
    :func:`token_flow`, :func:`token_sequence_flow`); :func:`drift`, :func:`doob`, the directed information and
    Eq. 18 need whole rows (the Bayes marginal law of every next token), which this does not keep."""
    V, max_len = _model_meta(model)
    u = jnp.asarray(u)
    check_token_ids(u, V, name="continuation", ndim=2)
    diffusion = _is_diffusion(model)
    p = check_prompts(prompts, V, max_len, u.shape[1], causal=not diffusion).astype(jnp.int32)
    B, T = u.shape
    K, n = p.shape
    ids = np.asarray(_all_prompt_ids(p, u.astype(jnp.int32)))                    # [B·K, n + T], b major
    N = B * K
    c = _chunk_size(chunk, N, (n + T) * (T if diffusion else 1), V)
    P, pid = (jax.process_count(), jax.process_index()) if processes else (1, 0)
    per = math.ceil(math.ceil(N / c) / P)                                     # chunks per process
    pad = per * P * c - N
    ids = np.concatenate([ids, np.broadcast_to(ids[:1], (pad, n + T))]) if pad else ids
    mask_id = V if diffusion else None
    mine = [_chunk_token_logliks(model, jnp.asarray(ids[(pid * per + j) * c:(pid * per + j + 1) * c]),
                                 n=n, mask_id=mask_id) for j in range(per)]
    local = jnp.concatenate(mine, axis=0)                                     # [per · c, T]
    if P > 1:
        from jax.experimental import multihost_utils
        local = jnp.asarray(multihost_utils.process_allgather(local, tiled=True))
    return local[:N].reshape(B, K, T)


def _check_token_args(token_ll: Any, log_prior: Any, k: Any) -> tuple[Array, Array, Array]:
    lp = check_log_prior(log_prior)
    ll = jnp.asarray(token_ll)
    if ll.ndim != 3:
        raise ValueError(f"token log-likelihoods must have shape [B, K, T], got shape {tuple(ll.shape)}")
    if ll.shape[1] != lp.shape[0]:
        raise ValueError(f"token log-likelihoods have K={ll.shape[1]} prompts but log_prior has {lp.shape[0]}")
    if not jnp.issubdtype(ll.dtype, jnp.floating):
        raise TypeError(f"token log-likelihoods must be floats, got dtype {ll.dtype}")
    kk = jnp.asarray(k)
    if _concrete(ll):
        a = np.asarray(ll)
        if np.any(np.isnan(a)) or np.any(a == np.inf):
            raise ValueError("token log-likelihoods must be log-probabilities (not NaN or +inf)")
    if _concrete(kk):
        kn = np.asarray(kk)
        if kn.ndim != 1 or kn.shape[0] != ll.shape[0] or not np.issubdtype(kn.dtype, np.integer):
            raise ValueError(f"prompt index must be an integer array [B={ll.shape[0]}], got shape {kn.shape}")
        if kn.min() < 0 or kn.max() >= ll.shape[1]:
            raise ValueError(f"prompt index must lie in [0, K={ll.shape[1]}), got values in [{kn.min()}, {kn.max()}]")
    _check_paths(_prompt_rows(ll, kk), kk)
    return ll, lp, kk


def _token_density_core(ll, log_prior, k):
    joint = log_prior[None, :, None] + jnp.concatenate([jnp.zeros_like(ll[..., :1]), jnp.cumsum(ll, axis=-1)], -1)
    post = _safe_sub(joint, jax.nn.logsumexp(joint, axis=1, keepdims=True))[..., :-1]   # log P(s_k | u_{<t})
    lm = jax.nn.logsumexp(post + ll, axis=1)                                  # log P(u_t | u_{<t}): [B, T]
    return _prompt_rows(ll, k) - lm


_token_density_jit = jax.jit(_token_density_core)


def token_information_density(token_ll: Any, log_prior: Any, k: Any) -> Array:
    """:func:`information_density` (the summand ι_t of Eq. 24) from the sampled tokens' log-likelihoods
    ``token_ll`` [B, K, T] (e.g. :func:`model_token_logliks`): the prompt-free log P(u_t | u_{<t}) =
    log Σ_j P(s_j | u_{<t}) P(u_t | u_{<t}, s_j) needs nothing else. [B, T]."""
    ll, lp, kk = _check_token_args(token_ll, log_prior, k)
    return (_token_density_jit if _concrete(ll, lp, kk) else _token_density_core)(ll, lp, kk)


def token_flow(token_ll: Any, log_prior: Any, k: Any) -> Array:
    """:func:`flow` (Def. 8, Eq. 24) from ``token_ll`` [B, K, T]: the cumulative information density, [B, T]."""
    return jnp.cumsum(token_information_density(token_ll, log_prior, k), axis=-1)


def token_sequence_flow(token_ll: Any, log_prior: Any, k: Any) -> Array:
    """:func:`sequence_flow` from ``token_ll`` [B, K, T]: log P(u_{≤t} | s_k) − log Σ_j p_j P(u_{≤t} | s_j),
    t = 0..T, [B, T + 1]."""
    ll, lp, kk = _check_token_args(token_ll, log_prior, k)
    L = jnp.concatenate([jnp.zeros_like(ll[..., :1]), jnp.cumsum(ll, axis=-1)], axis=-1)
    return _prompt_rows(L, kk) - jax.nn.logsumexp(lp[None, :, None] + L, axis=1)


def model_information_density(model: Any, prompts: Any, log_prior: Any, u: Any, k: Any, *,
                              chunk: int | None = None, processes: bool = True) -> Array:
    """:func:`information_density` of a model's paths at model scale: :func:`model_token_logliks` (chunked,
    split across processes) then :func:`token_information_density`. [B, T]."""
    return token_information_density(model_token_logliks(model, prompts, u, chunk=chunk, processes=processes),
                                     log_prior, k)


def model_flow(model: Any, prompts: Any, log_prior: Any, u: Any, k: Any, *, chunk: int | None = None,
               processes: bool = True) -> Array:
    """:func:`flow` (Def. 8, Eq. 24) of a model's paths at model scale (:func:`model_information_density`,
    summed). [B, T]."""
    return jnp.cumsum(model_information_density(model, prompts, log_prior, u, k, chunk=chunk,
                                                processes=processes), axis=-1)


def sample_model(model: Any, prompts: Any, log_prior: Any, key: PRNGKey, batch_size: int,
                 cont_len: int) -> tuple[Array, Array]:
    """(k [B], u [B, T]): k ~ p, then u_t ~ Q(· | u_{<t}, s_k; Φ) ancestrally (a causal model reads a fixed-length
    buffer, so one compiled shape serves all T steps)."""
    V, max_len = _model_meta(model)
    log_prior = check_log_prior(log_prior)
    diffusion = _is_diffusion(model)
    p = check_prompts(prompts, V, max_len, cont_len, causal=not diffusion).astype(jnp.int32)
    return _sample(model, p, log_prior, key, int(batch_size), int(cont_len), V if diffusion else None)


@partial(nnx.jit, static_argnames=("B", "T", "mask_id"))
def _sample(model, prompts, log_prior, key, B: int, T: int, mask_id: int | None):
    """Causal (mask_id None): row n − 1 + t of buf[:, :-1]. Masked diffusion: buf starts [s ‖ M^T] and step t
    reads row n + t of the whole buffer, whose positions ≥ n + t are still M (left-to-right unmasking)."""
    n = prompts.shape[1]
    kk, ku = jax.random.split(key)
    k = jax.random.categorical(kk, jnp.broadcast_to(log_prior, (B, log_prior.shape[0]))).astype(jnp.int32)
    buf = jnp.concatenate([prompts[k], jnp.full((B, T), 0 if mask_id is None else mask_id, jnp.int32)], axis=1)

    def step(buf, t):
        if mask_id is None:
            logits = model(buf[:, :-1])
            row = jax.lax.dynamic_index_in_dim(logits, n - 1 + t, axis=1, keepdims=False)
        else:
            row = jax.lax.dynamic_index_in_dim(model(buf), n + t, axis=1, keepdims=False)[..., :mask_id]
        x = jax.random.categorical(jax.random.fold_in(ku, t), row.astype(jnp.float32)).astype(jnp.int32)
        return jax.lax.dynamic_update_index_in_dim(buf, x[:, None], n + t, axis=1), None

    buf, _ = jax.lax.scan(step, buf, jnp.arange(T))
    return k, buf[:, n:]


# --------------------------------------------------------------------------------------------------
# directed information: exact by enumeration, Monte-Carlo with exact densities
# --------------------------------------------------------------------------------------------------


def all_continuations(vocab_size: int, cont_len: int, max_count: int = 1 << 16) -> Array:
    """Every continuation in [0, V)^T, int32 [V^T, T] (refuses more than ``max_count``)."""
    if vocab_size**cont_len > max_count:
        raise ValueError(f"enumerating V^T = {vocab_size}^{cont_len} = {vocab_size ** cont_len} continuations exceeds "
                         f"max_count={max_count}; use directed_information_mc")
    return jnp.asarray(np.array(list(itertools.product(range(vocab_size), repeat=cont_len)), np.int32))


def _di_chunk(lc, log_prior, u):
    """(Σ_t contributions to I(S; U_t | U_<t), contribution to I(S; U)) of one chunk of continuations."""
    L = _cumulative(lc, u)                                                    # [N, K, T + 1]
    joint = log_prior[None, :] + L[..., -1]                                   # log p(s_k) P(u | s_k): [N, K]
    w = jnp.exp(joint)
    logm = jax.nn.logsumexp(joint, axis=1)                                    # log P(u): [N]
    mutual = jnp.sum(jnp.where(w > 0, w * (L[..., -1] - logm[:, None]), 0))
    m = marginal_log_conditionals(lc, log_prior, u)                           # [N, T, V]
    kl = _kl_rows(lc, m[:, None])                                            # [N, K, T]
    return jnp.sum(jnp.where(w[..., None] > 0, w[..., None] * kl, 0), axis=(0, 1)), mutual


_di_chunk_jit = jax.jit(lambda lc, lp, u: _di_chunk(lc, lp, u))


def directed_information(cond_fn: Callable[[Array], Array], log_prior: Any, vocab_size: int, cont_len: int,
                         chunk: int = 4096) -> dict[str, Any]:
    """Exact I(S → U) by enumeration of all V^T continuations (Def. 2, Eq. 10), in nats.

    Returns ``per_step`` [T] = I(S; U_t | U_{<t}) = E[KL_t], ``directed`` = Σ_t per_step, and ``mutual`` =
    I(S; U) = E[log P(U | S) − log P(U)] from sequence probabilities (the chain rule: equal to ``directed``
    when the prompt is given in full before the output), plus ``H_S`` = H(S) (its upper bound)."""
    log_prior = check_log_prior(log_prior)
    us = all_continuations(vocab_size, cont_len)
    per_step = 0.0
    mutual = 0.0
    for lo in range(0, us.shape[0], chunk):
        u = us[lo:lo + chunk]
        lc = cond_fn(u)
        _check_cond(lc, log_prior, u)
        run = _di_chunk_jit if _concrete(lc, log_prior) else _di_chunk
        ps, mu = run(jnp.asarray(lc), log_prior, u)
        per_step, mutual = per_step + ps, mutual + mu
    H_S = -jnp.sum(jnp.where(log_prior > -jnp.inf, jnp.exp(log_prior) * log_prior, 0))
    return {"per_step": per_step, "directed": jnp.sum(per_step), "mutual": mutual, "H_S": H_S}


def directed_information_mc(log_cond: Array, log_prior: Any, u: Array, k: Array) -> dict[str, Any]:
    """Monte-Carlo I(S → U) from B paths (k_b, u_b) drawn from the law the log-conditionals describe, with
    exact densities: ``flow`` = mean of i(S → U_{n+1:T}) (unbiased) and ``rao_blackwell`` = mean of Σ_t KL_t
    (unbiased, lower variance), each with its standard error ``*_se``, and ``per_step`` [T] = mean KL_t."""
    log_prior = check_log_prior(log_prior)
    d = doob(log_cond, log_prior, u, k)
    B = u.shape[0]
    f, a = d["flow"][:, -1], d["A"][:, -1]
    se = (lambda x: jnp.std(x, ddof=1) / math.sqrt(B)) if B > 1 else (lambda x: jnp.asarray(jnp.nan))
    return {"flow": jnp.mean(f), "flow_se": se(f), "rao_blackwell": jnp.mean(a), "rao_blackwell_se": se(a),
            "per_step": jnp.mean(d["drift"], axis=0)}


def _dd_chunk(lp, lq, log_prior, u):
    w = jnp.exp(log_prior[None, :] + _cumulative(lp, u)[..., -1])              # P^ħ(s_k, u): [N, K]
    kl = _kl_rows(lp, lq)                                                     # [N, K, T]
    return jnp.sum(jnp.where(w[..., None] > 0, w[..., None] * kl, 0), axis=(0, 1))


_dd_chunk_jit = jax.jit(lambda lp, lq, lprior, u: _dd_chunk(lp, lq, lprior, u))


def directed_distortion(true_fn: Callable[[Array], Array], model_fn: Callable[[Array], Array], log_prior: Any,
                        vocab_size: int, cont_len: int, chunk: int = 4096) -> dict[str, Any]:
    """Theorem 1's distortion by enumeration: ``per_step`` [T] = E_{P^ħ}[KL(P^ħ(·|U_{<t}, S) ‖ Q^Φ(·|U_{<t}, S))]
    and ``D`` = (1/T) Σ_t per_step, the expectation over prompts and pasts drawn from the true source."""
    log_prior = check_log_prior(log_prior)
    us = all_continuations(vocab_size, cont_len)
    per_step = 0.0
    for lo in range(0, us.shape[0], chunk):
        u = us[lo:lo + chunk]
        lp, lq = true_fn(u), model_fn(u)
        _check_cond(lp, log_prior, u)
        _check_cond(lq, log_prior, u)
        run = _dd_chunk_jit if _concrete(lp, lq, log_prior) else _dd_chunk
        per_step = per_step + run(jnp.asarray(lp), jnp.asarray(lq), log_prior, u)
    return {"per_step": per_step, "D": jnp.mean(per_step)}


# --------------------------------------------------------------------------------------------------
# the prompt-free estimators used instead of the Bayes marginal
# --------------------------------------------------------------------------------------------------


@nnx.jit
def _fwd_log_softmax(model, ids: Array) -> Array:
    return jax.nn.log_softmax(model(ids).astype(jnp.float32), axis=-1)


@partial(nnx.jit, static_argnames=("mask_id",))
def _lr_rows_jit(model, ctx: Array, u: Array, mask_id: int) -> Array:
    return _lr_rows(model, ctx, u, mask_id)


def heuristic_log_marginals(model: Any, path_prompts: Any, u: Any, *, null_token: int = 0,
                            window: int | None = None) -> dict[str, Array]:
    """Prompt-free next-token laws that replace the Bayes marginal in the literature, each [B, T, V]:

    ``drop_prompt`` — the model rerun on u alone (for a causal model u_0, which then has no context, gets the
    uniform law; a masked-diffusion model predicts it from the all-masked sequence);
    ``null_prompt`` — the prompt replaced by n copies of ``null_token``;
    ``truncated`` — context-length probing: each row sees only its last ``window`` tokens (default n), so the
    prompt falls out of the context after ``window`` output tokens (and not before);
    ``masked_prompt`` (masked-diffusion models only) — the prompt replaced by n mask tokens, the
    "unconditional" law of LLaDA's classifier-free guidance.

    For a masked-diffusion model every law is the left-to-right one of the module docstring: the context
    (whatever replaces the prompt, then u_{<t}) followed by M for every remaining output position.
    ``path_prompts`` [B, n] is the prompt each path b was generated under (``prompts[k]``)."""
    V, max_len = _model_meta(model)
    diffusion = _is_diffusion(model)
    u = jnp.asarray(u).astype(jnp.int32)
    check_token_ids(u, V, name="continuation", ndim=2)
    p = check_prompts(path_prompts, V, max_len, u.shape[1], causal=not diffusion)
    if p.shape[0] != u.shape[0]:
        raise ValueError(f"path_prompts must have one prompt per path, shape [B={u.shape[0]}, n], got {tuple(p.shape)}")
    if not (isinstance(null_token, (int, np.integer)) and 0 <= null_token < V):
        raise ValueError(f"null_token must be a token id in [0, V={V}), got {null_token!r}")
    B, T = u.shape
    n = p.shape[1]
    w = n if window is None else window
    if not (isinstance(w, (int, np.integer)) and w >= 1):
        raise ValueError(f"window must be an int ≥ 1, got {window!r}")
    x = jnp.concatenate([p.astype(jnp.int32), u], axis=1)
    if diffusion:
        def rows(ctx):
            return _lr_rows_jit(model, ctx, u, V)

        # truncated: step t sees x[n + t − w : n + t] then M for the T − t positions still to come
        trunc = []
        for t in range(T):
            ctx = x[:, max(0, n + t - w):n + t]
            trunc.append(_lr_rows_jit(model, ctx, jnp.full((B, T - t), V, jnp.int32), V)[:, 0])  # row 0: all M
        return {"drop_prompt": rows(jnp.zeros((B, 0), jnp.int32)),
                "null_prompt": rows(jnp.full((B, n), null_token, jnp.int32)),
                "truncated": jnp.stack(trunc, axis=1),
                "masked_prompt": rows(jnp.full((B, n), V, jnp.int32))}
    uniform = jnp.full((B, 1, V), -math.log(V), jnp.float32)
    drop = jnp.concatenate([uniform, _fwd_log_softmax(model, u[:, :-1])], axis=1) if T > 1 else uniform
    null = _fwd_log_softmax(model, jnp.concatenate([jnp.full((B, n), null_token, jnp.int32), u], axis=1)[:, :-1])
    trunc = jnp.stack([_fwd_log_softmax(model, x[:, max(0, n + t - w):n + t])[:, -1] for t in range(T)], axis=1)
    return {"drop_prompt": drop, "null_prompt": null[:, n - 1:], "truncated": trunc}


# --------------------------------------------------------------------------------------------------
# Eq. 18: the directed rate–distortion training objective
# --------------------------------------------------------------------------------------------------


def _log_cond_traced(model: Any, prompts: Array, u: Array) -> Array:
    """:func:`model_log_conditionals` without the jit boundary or the value checks (for use inside a loss)."""
    return _log_cond_any(model, prompts, u)


def check_lambda(lam: Any) -> float:
    """λ of Eq. 18 as a float: a finite number ≥ 0 (a concrete 0-d array is read as its value)."""
    if isinstance(lam, (jax.Array, np.ndarray)) and not isinstance(lam, jax.core.Tracer) and lam.shape == () \
            and jnp.issubdtype(lam.dtype, jnp.floating):
        lam = float(lam)
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam (λ, the weight of the cross-entropy in Eq. 18) must be a finite number ≥ 0, got {lam!r}")
    return float(lam)


def _require_all(conditions: list[tuple[Any, str]]) -> None:
    """Each (ok, message): concrete ones raise ``ValueError(message)`` at once; the traced ones are checked
    together by one host callback when the compiled computation runs (see :func:`_require`)."""
    traced = []
    for ok, message in conditions:
        if isinstance(ok, jax.core.Tracer):
            traced.append((ok, message))
        elif not bool(ok):
            raise ValueError(message)
    if traced:
        messages = [m for _, m in traced]

        def _raise(flags):
            for f, m in zip(np.asarray(flags).reshape(-1), messages, strict=True):
                if not bool(f):
                    raise ValueError(m)

        jax.debug.callback(_raise, jnp.stack([jnp.asarray(ok, bool) for ok, _ in traced]))


def _check_eq18_args(model: Any, prompts: Array, log_prior: Any, u: Array, k: Array, lam: Any,
                     weights: Any) -> tuple[Array, Any, Array]:
    """Validate Eq. 18's arguments at the API boundary: concrete values at once (before the model is traced),
    traced ones (a batch inside a jitted training step) by one runtime check. Returns (log_prior, λ, weights)."""
    V, max_len = _model_meta(model)
    if prompts.ndim != 2 or not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError(f"prompts must be an integer array [K, n] of token ids, got shape {tuple(prompts.shape)} "
                         f"and dtype {prompts.dtype}")
    if u.ndim != 2 or not jnp.issubdtype(u.dtype, jnp.integer):
        raise ValueError(f"continuation u must be an integer array [B, T], got shape {tuple(u.shape)}, dtype {u.dtype}")
    if k.shape != (u.shape[0],) or not jnp.issubdtype(k.dtype, jnp.integer):
        raise ValueError(f"prompt index k must be an integer array [B={u.shape[0]}], got shape {tuple(k.shape)} "
                         f"and dtype {k.dtype}")
    K, B = prompts.shape[0], u.shape[0]
    causal = not _is_diffusion(model)
    conds: list[tuple[Any, str]] = []
    need = prompts.shape[1] + u.shape[1] - (1 if causal else 0)
    if max_len is not None and need > max_len:
        raise ValueError(f"prompts of length n={prompts.shape[1]} with a continuation of T={u.shape[1]} need a "
                         f"context of {need} tokens, longer than the model's max_len={max_len}")
    # concrete values are read with NumPy (a jnp reduction inside a trace would itself be traced)
    for name, x, hi in (("prompts", prompts, V), ("continuation u", u, V), ("prompt index k", k, K)):
        what = f"{name} must hold {'token ids' if hi == V else 'prompt indices'} in [0, {hi})"
        if isinstance(x, jax.core.Tracer):
            conds.append((jnp.all((x >= 0) & (x < hi)), what))
        else:
            a = np.asarray(x)
            conds.append((bool(np.all((a >= 0) & (a < hi))), f"{what}, got values in [{a.min()}, {a.max()}]"))
    lp = jnp.asarray(log_prior)
    if lp.shape != (K,):
        raise ValueError(f"log_prior must have shape [K={K}] (one log-probability per prompt), got {tuple(lp.shape)}")
    if isinstance(lp, jax.core.Tracer):
        conds.append((~jnp.any(jnp.isnan(lp)) & (jnp.abs(jnp.exp(jax.nn.logsumexp(lp)) - 1) <= 1e-4),
                      "log_prior must be log-probabilities summing to 1 (no NaN)"))
    else:
        lp = check_log_prior(lp)
    if isinstance(lam, jax.core.Tracer):
        if lam.shape != ():
            raise ValueError(f"lam (λ of Eq. 18) must be a scalar, got shape {tuple(lam.shape)}")
        conds.append((jnp.isfinite(lam) & (lam >= 0),
                      "lam (λ, the weight of the cross-entropy in Eq. 18) must be a finite number ≥ 0"))
    else:
        lam = check_lambda(lam)
    if weights is not None:
        w = jnp.asarray(weights)
        if w.shape != (B,) or not jnp.issubdtype(w.dtype, jnp.floating):
            raise ValueError(f"weights must be a float array [B={B}] (one per path), got shape {tuple(w.shape)}")
        if isinstance(w, jax.core.Tracer):
            conds.append((jnp.all(w >= 0) & (jnp.abs(jnp.sum(w) - 1) <= 1e-4), "weights must be ≥ 0 and sum to 1"))
        else:
            a = np.asarray(w, np.float64)
            if not np.all(np.isfinite(a)) or np.any(a < 0) or abs(a.sum() - 1) > _PROB_TOL:
                raise ValueError(f"weights must be finite, ≥ 0 and sum to 1 (a law over the paths), sum {a.sum():.8g}")
        weights = w
    _require_all(conds)
    return lp, lam, weights


def eq18_loss(model: Any, prompts: Array, log_prior: Array, u: Array, k: Array, lam: float, *,
              weights: Array | None = None) -> tuple[Array, dict]:
    """Eq. 18 averaged over output steps and over the given paths: I(S; U_t | U_{<t}; Φ) + λ H(P^ħ_t, Q^Φ_t).

    **What it averages over.** The paths (k_b, u_b) are the *source's*: they are drawn from (or enumerate,
    with ``weights``) the law P^ħ, so the prompt S and the past U_{<t} follow P^ħ, not the model's own joint
    Q(s, u) = p(s) Q(u | s; Φ). Given each path the two terms are exact over the finite prompt set:

    * information: KL(Q(·|u_{<t}, s_k) ‖ Σ_j Q(s_j|u_{<t}) Q(·|u_{<t}, s_j)), the model's own Bayes marginal
      (the model's conditional mutual information *at the source's past*); its mean over the paths is the
      model's I(S; U_t | U_{<t}; Φ) only where the past does not matter (t = 0: one-step outputs, and any t
      at which P^ħ and Q give the past the same law);
    * cross-entropy: −log Q(u_t | u_{<t}, s_k).

    The mean is the plain average over the B paths (a Monte-Carlo estimate of the P^ħ expectation), or the
    ``weights`` [B] (≥ 0, summing to 1: for example p(s_k) P^ħ(u | s_k) over an enumeration, which makes it
    exact). Both terms are differentiable in Φ. Returns (loss, {"information", "ce"}).

    Validation (at this boundary, before the model is traced): λ must be a finite number ≥ 0 (NaN and λ < 0
    are refused), ``log_prior`` a law over the K prompts, ``prompts`` [K, n] and ``u`` token ids in [0, V),
    ``k`` in [0, K), ``weights`` a law. Concrete values raise ``ValueError`` at once; values traced inside a
    jitted step are checked by one runtime check, whose failure arrives as JAX's runtime error carrying the
    same message."""
    prompts, u, k = jnp.asarray(prompts), jnp.asarray(u), jnp.asarray(k)
    lp, lam, w = _check_eq18_args(model, prompts, log_prior, u, k, lam, weights)
    lc = _log_cond_traced(model, prompts.astype(jnp.int32), u.astype(jnp.int32))
    per_path_info = jnp.mean(drift(lc, lp, u, k), axis=-1)                  # [B]
    per_path_ce = -jnp.mean(_prompt_rows(_token_logliks(lc, u), k), axis=-1)
    if w is None:
        info, ce = jnp.mean(per_path_info), jnp.mean(per_path_ce)
    else:
        info, ce = jnp.sum(w * per_path_info), jnp.sum(w * per_path_ce)
    return info + lam * ce, {"information": info, "ce": ce}


def eq18_objective(prompts: Any, log_prior: Any, lam: float = 1.0) -> Callable:
    """A :mod:`tvvar.train` objective ``(model, batch, rng) -> (loss, metrics)`` for Eq. 18 on batches of
    :class:`tvvar.sources.PromptedSource` (``"tokens"`` = [prompt ‖ continuation], ``"prompt"`` = k).
    λ, the prompt law and the prompts are validated here, before any tracing (see :func:`eq18_loss`)."""
    lam = check_lambda(lam)
    p = jnp.asarray(prompts)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1 or not jnp.issubdtype(p.dtype, jnp.integer) \
            or int(p.min()) < 0:
        raise ValueError(f"prompts must be a non-empty integer array [K, n] of token ids ≥ 0, got shape "
                         f"{tuple(p.shape)} and dtype {p.dtype}")
    p = p.astype(jnp.int32)
    lp = check_log_prior(log_prior)
    if lp.shape[0] != p.shape[0]:
        raise ValueError(f"log_prior has {lp.shape[0]} entries but there are K={p.shape[0]} prompts")
    n = p.shape[1]

    def objective(model, batch, rng):
        tokens = batch["tokens"]
        return eq18_loss(model, p, lp, tokens[:, n:], batch["prompt"], lam)

    return objective


def _registered_eq18(model: Any, batch: dict, rng: PRNGKey) -> tuple[Array, dict]:
    """Eq. 18 with the prompt set carried by the batch: ``"prompt_set"`` [K, n], ``"prompt_log_prior"`` [K],
    optional ``"lambda"`` (default 1), besides ``"tokens"`` and ``"prompt"``."""
    for key in ("prompt_set", "prompt_log_prior", "prompt"):
        if key not in batch:
            raise ValueError(f"objective 'semantic_rd' (Eq. 18) needs batch[{key!r}] (the finite prompt set, its law "
                             "and each path's prompt index); build it with eq18_objective(prompts, log_prior, lam) "
                             "for a PromptedSource instead")
    p = batch["prompt_set"]
    lam = batch.get("lambda", 1.0)
    return eq18_loss(model, p, batch["prompt_log_prior"], batch["tokens"][:, p.shape[1]:], batch["prompt"], lam)


#: what a batch needs besides "tokens": the train CLI, whose batches are token streams, does not offer it
_registered_eq18.batch_keys = ("prompt_set", "prompt_log_prior", "prompt")


def _register() -> None:
    from tvvar.train import register_objective

    register_objective("semantic_rd")(_registered_eq18)


_register()
