"""The ELBO of the Transformer (Bai, arXiv:2511.01202, Section V-C, Theorems 6 and 7, Eqs. 54–67).

The latent-position model
-------------------------
Attention writes the mixer output of row i as an expectation over a latent source position,

    h_i = Σ_h Σ_{j∈S(i)} π^h[i, j] A_h u_j = E_{(h,j)~Q_i}[ H A_h u_j ],   Q_i(h, j) = π^h[i, j] / H   (Eqs. 54–55)

so we take as latent variable the pair J = (h, j) of a head and an admissible position (one latent per
row i; with H = 1 it is the paper's J = j and Q(J = j) = π_tj, Eq. 55). The factor H makes the
soft-attention model the expectation *inside* the readout (Eq. 54):

    P(U = v | J = (h, j)) = softmax_v( f_i( H A_h z_j ) ),     P_soft(U = v) = softmax_v( f_i( E_Q[H A_h z_j] ) )

where, for a model of L layers, z = norm₁(x_{L−1}) is the input of the *last* layer's mixer (the
earlier layers are a deterministic feature map of the context) and f_i(m) is everything after that
mixer at row i: the residual x_{L−1,i} + m (if the model has residuals), the last Ψ, the final norm and
the readout ũᵀ · /Ξ (Eq. 44). For the pure TV-VAR (``ModelConfig.pure``: one layer, no norm, no
residual, Ψ = id) f_i(m) = ũᵀ m / Ξ and the conditional is exactly the issue's
P(U_t = v | J = j) = softmax(ũᵀ A u_j / Ξ)_v, the same for every query row. The joint is completed by a
prior P(J | context) (:func:`log_prior`): uniform over admissible (h, j) by default, a recency prior,
the model's own attention (a learned, context-dependent prior, Deng et al. 2018's "exact marginal"),
or an explicit, validated array.

Per row i, by enumerating J (``position_terms``):

    log P(U)      = log Σ_J P(J) P(U | J)                                   (marginal likelihood)
    ELBO(Q)       = E_Q[log P(U | J)] − KL(Q ‖ P(J))                         (Theorem 6, Eqs. 56–62)
                  = log P(U) − KL(Q ‖ P(J | U))                              (the gap is the posterior KL)
    P(J | U)      = P(J) P(U | J) / P(U)
    log P_soft(U) = log softmax(f_i(E_Q[H A_h z_j]))_U                      (Eq. 54)

and E_Q[log P(U | J)] ≤ log P_soft(U) whenever f_i is affine (Jensen: log-softmax is concave in the
logits) — true for the pure TV-VAR, not for a last layer with a nonlinear Ψ or a final norm.
Theorem 7 (Eqs. 63–67): decoding picks argmax_v ELBO(v); since KL(Q ‖ P(J)) does not depend on v this
is argmax_v E_Q[log P(v | J)]; :func:`vocab_scores` and :func:`decode_agreement` compare it with
argmax_v log P(v) and argmax_v log P_soft(v). For an affine f_i, ELBO(v) − log P_soft(v) is the same for
every v, so ELBO decoding and greedy soft decoding coincide exactly (tested in float64).

Shapes: B batch, T rows (queries) and keys, H heads, V vocabulary; per-latent arrays are [B, T, H, T]
laid out (query i, head h, key j). Two ways to the same numbers (``elbo_terms(method=...)``):
enumeration (:func:`latent_features` + :func:`terms_from_features`, the reference, any model and any Q:
O(B·T·H·T·V) with a residual stream, the last Ψ applied to B·T·H·T vectors when Ψ is not the
identity — small T only), and, when the conditional does not depend on the query row and the readout
is linear (:func:`row_independent`, e.g. the pure TV-VAR), :func:`closed_form_terms`: every sum over
J becomes a product over j of size [T, T]·[T, V] or less, about 1.2× the forward pass at T = 256
(``experiments.benchmark --only elbo``), equal to enumeration at 1e-10 in float64 (tested). Where the closed
form does not apply and T·H·T·V numbers do not fit, :func:`chunked_terms` is the same enumeration in tiles of b
query rows × b source positions (b from a memory budget, :func:`enumeration_block`): O(B·b²·H·V) memory, the
same O(B·T²·H·D·V) work (halved when causal), equal at 1e-10 in float64 (tested). All likelihood
terms run in float32 (float64 under x64), masked entries are ``finfo.min``, and 0·log 0 = 0.

Training objectives (:func:`make_objective`; importing this module registers them with
``tvvar.train.register_objective``): ``"elbo"`` (−ELBO with Q = π, uniform prior — Theorem 6),
``"marginal"`` (−log P(U), uniform prior), ``"marginal_attention"`` (−log P(U) with the attention as
prior) and ``"soft"`` (the soft-attention loss of ``"cross_entropy"``, reporting the latent-model metrics
as well). Note: with the uniform prior, log P(U) does not depend on B (the scores), so ``"marginal"``
trains A and the embeddings only; the ELBO reaches B through Q = π.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.core import check_token_ids, float32_or_better, masked_fill_value
from tvvar.typing import Array

__all__ = [
    "Recency",
    "PRIOR_KINDS",
    "LatentFeatures",
    "PositionTerms",
    "latent_features",
    "log_prior",
    "validate_prior",
    "position_terms",
    "elbo_terms",
    "vocab_scores",
    "decode_agreement",
    "kl",
    "terms_from_features",
    "closed_form_terms",
    "row_independent",
    "chunked_terms",
    "enumeration_block",
    "DEFAULT_MEMORY_BUDGET",
    "METHODS",
    "make_objective",
    "register_objectives",
    "OBJECTIVE_KINDS",
]

PRIOR_KINDS = ("uniform", "recency", "attention")


_f32 = float32_or_better  # likelihood dtype (DESIGN numerics)


# --------------------------------------------------------------------------------------------------
# The model side: Q = π, the conditional P(U | J) and the soft model, from a TVVARModel
# --------------------------------------------------------------------------------------------------


class LatentFeatures(NamedTuple):
    """What the latent-position model needs from a network on one batch of contexts.

    log_q:     [B, T, H, T]  log Q_i(h, j) = log π^h[i, j] − log H, ``finfo.min`` for j ∉ S(i) (Eq. 55)
    cond_logp: [B, 1 or T, H, T, V]  log P(U = v | J = (h, j)) at row i (axis 1 has size 1 when the
               conditional does not depend on the query row, as in the pure TV-VAR)
    soft_logp: [B, T, V]  log P_soft(U = v) of Eq. 54 (equal to the model's own log-softmax)
    support:   [T, T] bool, j ∈ S(i)
    """

    log_q: Array
    cond_logp: Array
    soft_logp: Array
    support: Array


def _last_attention(model):
    from tvvar.decompositions.attention import SoftmaxBilinearAttention

    if not hasattr(model, "blocks") or not hasattr(model, "embed_tokens"):
        raise TypeError(f"model must be a tvvar.model.TVVARModel, got {type(model).__name__}")
    mixer = model.blocks[-1].mixer
    if not isinstance(mixer, SoftmaxBilinearAttention):
        raise TypeError(
            "the latent-position model needs an attention-decomposed last layer (A[i, j] = Σ_h π^h[i, j] A_h, "
            f"Theorem 5); model's last mixer is {type(mixer).__name__} ({getattr(mixer, 'name', '?')!r})"
        )
    return mixer


def _log_pi(mixer, z: Array) -> Array:
    """log π^h[i, j] = log_softmax_{j∈S(i)}(z_iᵀ B_h z_j): [B, H, T, T], ``finfo.min`` outside S(i)."""
    s = mixer.scores(z).astype(_f32(z.dtype))
    allowed = mixer.support(z.shape[1])[None, None]
    fill = masked_fill_value(s.dtype)
    lp = jax.nn.log_softmax(jnp.where(allowed, s, fill), axis=-1)
    return jnp.where(allowed, lp, fill)


def _check_ids_and_targets(model, ids: Any, targets: Any) -> None:
    """``ids`` [B, T] and ``targets`` of the same shape, both token ids of ``model``'s vocabulary (errors name them)."""
    check_token_ids(ids, model.cfg.vocab_size, name="ids", ndim=2)
    if getattr(targets, "shape", None) != getattr(ids, "shape", None):
        raise ValueError(f"targets must have the shape of ids {getattr(ids, 'shape', None)}, "
                         f"got {getattr(targets, 'shape', None)}")
    check_token_ids(targets, model.cfg.vocab_size, name="targets")


def _last_mixer_input(model, ids: Array):
    """(last attention mixer, last block, its input x, the mixer's input z = norm₁(x))."""
    mixer = _last_attention(model)
    x = model.embed_tokens(ids)
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    z = last.mixer_input(x)
    return mixer, last, x, z


def _mixer_bias(block, dtype) -> Array | None:
    """The block's intercept b added after its mixer ([D], or None without one)."""
    b = getattr(block, "mixer_bias", None)
    return None if b is None else b[...].astype(dtype)


def row_independent(model) -> bool:
    """True when P(U | J) does not depend on the query row and the readout after the mixer is linear:
    no residual around the last mixer, Ψ = id, no norm after the mixer (post or sandwich norms), no final norm
    and no logit soft-cap (the pure TV-VAR of Eq. 44 on top of any earlier layers). Then the closed forms of
    :func:`closed_form_terms` apply."""
    from tvvar.model import Identity

    last = model.blocks[-1]
    return ((not last.residual) and isinstance(last.psi, Identity) and model.final_norm is None
            and not (last.post_norm and last.norm1 is not None) and getattr(last, "norm1_out", None) is None
            and getattr(model.cfg, "logit_softcap", None) is None)


def _after_mixer_logits(model, last, bias: Array | None, ld, m: Array, x_res: Array) -> Array:
    """f_i(m) before the softmax: the logits [..., V] of the mixer output ``m`` [..., D] at a row whose residual
    stream is ``x_res`` (broadcast against m; ignored without a residual) — the intercept, a norm after the mixer
    (post-norm, or a sandwich's norm1_out), the residual, the last Ψ (beside the mixer, on x_res, in a parallel
    block), the final norm, the readout and the logit soft-cap: the rest of ``Block.__call__`` and
    ``TVVARModel.__call__`` with the mixer's output replaced by ``m``, in the likelihood dtype ``ld``."""
    from tvvar.model import Identity

    if bias is not None:
        m = m + bias.reshape((1,) * (m.ndim - 1) + (-1,))
    if last.post_norm and last.norm1 is not None:
        m = last.norm1(m)
    if getattr(last, "norm1_out", None) is not None:
        m = last.norm1_out(m)
    y = x_res + m if last.residual else m
    if last.parallel:  # x + mixer(norm₁ x) + Ψ(norm₂ x): Ψ reads the layer's input, not the mixer's output
        y = y + last.psi(last.norm2(x_res) if last.norm2 is not None else x_res)
    elif not isinstance(last.psi, Identity):
        y = last._sub(last.psi, last.norm2, y, getattr(last, "norm2_out", None))
    if model.final_norm is not None:
        y = model.final_norm(y)
    logits = model.readout(y.astype(ld)).astype(ld)
    cap = getattr(model.cfg, "logit_softcap", None)  # TVVARModel._capped, read from the config (analyze's truncation)
    return logits if cap is None else cap * jnp.tanh(logits / cap)


def _log_q(mixer, z: Array) -> tuple[Array, Array]:
    """(log Q [B, T, H, T] = log π − log H, ``finfo.min`` outside S(i); the support [T, T])."""
    H = mixer.num_heads
    ld = _f32(z.dtype)
    log_pi = _log_pi(mixer, z)  # [B, H, T, T]
    fill = masked_fill_value(ld)
    allowed = mixer.support(z.shape[1])
    log_q = jnp.where(allowed[None, None], log_pi - jnp.log(jnp.asarray(H, ld)), fill)
    return jnp.einsum("bhij->bihj", log_q), allowed


def latent_features(model, ids: Array) -> LatentFeatures:
    """Q, P(U | J) and P_soft for every row of ``ids`` [B, T] under ``model`` (see the module docstring).

    The last layer must be attention (any ``SoftmaxBilinearAttention``); earlier layers are run as the
    deterministic feature map that produces the last mixer's input z. A block intercept
    (``Block.mixer_bias`` b, GPT-2's folded value/output biases) is part of every latent's output: the mixer
    output under J = (h, j) is H A_h z_j + b, and E_Q[H A_h z_j + b] = mixer(z) + b is the block's own
    (Σ_{h,j} Q = 1), so P_soft stays the model's softmax.
    """
    check_token_ids(ids, model.cfg.vocab_size, name="ids", ndim=2)

    mixer, last, x, z = _last_mixer_input(model, ids)
    H = mixer.num_heads
    ld = _f32(z.dtype)
    log_q, allowed = _log_q(mixer, z)

    A = mixer.value_maps().astype(z.dtype)  # [H, D_out, D]
    # H·A_h z_j: the mixer output if all of row i's attention sat on (h, j)
    m_BxHxTxD = H * jnp.einsum("hed,bjd->bhje", A, z, precision=jax.lax.Precision.HIGHEST)
    # E_Q[H A_h z_j] = Σ_h Σ_j π^h[i, j] A_h z_j is the mixer's own output (Theorem 5): its fast path
    m_soft_BxTxD = mixer(z)
    bias = _mixer_bias(last, z.dtype)

    def after_mixer(m: Array, x_res: Array) -> Array:
        return jax.nn.log_softmax(_after_mixer_logits(model, last, bias, ld, m, x_res), axis=-1)

    soft_logp = after_mixer(m_soft_BxTxD, x)
    if not row_independent(model):
        # the conditional depends on the query row through the residual stream / nonlinear head
        cond = after_mixer(m_BxHxTxD[:, None], x[:, :, None, None, :])  # [B, T, H, T, V]
    else:
        cond = after_mixer(m_BxHxTxD, jnp.zeros((), z.dtype))[:, None]  # [B, 1, H, T, V]
    return LatentFeatures(log_q=log_q, cond_logp=cond, soft_logp=soft_logp, support=allowed)


# --------------------------------------------------------------------------------------------------
# Priors P(J | context)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recency:
    """Recency prior P(h, j | i) ∝ exp(−rate·|i − j|) on S(i), uniform over heads."""

    rate: float = 0.5

    def __post_init__(self):
        if not (isinstance(self.rate, (int, float)) and np.isfinite(self.rate) and self.rate >= 0):
            raise ValueError(f"Recency.rate must be a finite number ≥ 0, got {self.rate!r}")


def _prior_tolerance(dtype) -> float:
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def validate_prior(prior: Array, support: Array, num_heads: int) -> Array:
    """Check an explicit prior and return it as probabilities [B or 1, T, H, T].

    ``prior`` is P(j | i) as [T, T] (heads uniform: P(h, j | i) = P(j | i)/H) or the joint P(h, j | i)
    as [B, T, H, T] (B may be 1). It must be finite, ≥ 0, exactly 0 for j ∉ S(i), and sum to 1 over
    the admissible latents of every row (tolerance 1e-5, 1e-9 in float64). Values are checked whenever
    the array is concrete (not under ``jit``); shapes always.
    """
    prior = jnp.asarray(prior)
    T = support.shape[0]
    if not jnp.issubdtype(prior.dtype, jnp.floating):
        raise TypeError(f"prior must be a floating array of probabilities, got dtype {prior.dtype}")
    if prior.shape == (T, T):
        joint = jnp.broadcast_to(prior[None, :, None, :] / num_heads, (1, T, num_heads, T))
    elif prior.ndim == 4 and prior.shape[1:] == (T, num_heads, T):
        joint = prior
    else:
        raise ValueError(
            f"prior must have shape [T, T] = {(T, T)} (P(j | i)) or [B, T, H, T] = [B, {T}, {num_heads}, {T}] "
            f"(P(h, j | i)), got shape {prior.shape}"
        )
    if isinstance(prior, jax.core.Tracer):
        return joint
    p = np.asarray(joint, np.float64)
    inside = np.broadcast_to(np.asarray(support)[None, :, None, :], p.shape)
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("prior must be finite and ≥ 0 (probabilities P(J | context)); "
                         "got negative or non-finite entries")
    outside_mass = np.where(inside, 0.0, p)
    if np.any(outside_mass != 0):
        b, i, h, j = np.argwhere(outside_mass != 0)[0]
        raise ValueError(
            f"prior puts mass {p[b, i, h, j]:.3g} on inadmissible position j={j} for row i={i} (head {h}); "
            f"P(J | context) must be 0 for j ∉ S(i)"
        )
    sums = p.sum(axis=(2, 3))  # [B, T]
    tol = _prior_tolerance(prior.dtype)
    if np.any(np.abs(sums - 1.0) > tol):
        b, i = np.argwhere(np.abs(sums - 1.0) > tol)[0]
        raise ValueError(
            f"prior must sum to 1 over the admissible latents of every row (tolerance {tol:g}); "
            f"row i={i} (batch {b}) sums to {sums[b, i]:.10g}"
        )
    return joint


def _checked_prior(prior: Any, support: Array, num_heads: int) -> Any:
    """Validate a prior spec up front: strings and Recency pass through, arrays become joint [B|1, T, H, T]."""
    if isinstance(prior, str):
        if prior not in PRIOR_KINDS:
            raise ValueError(f"prior must be one of {PRIOR_KINDS}, a Recency(rate) or an array, got {prior!r}")
        return prior
    if isinstance(prior, Recency):
        return prior
    return validate_prior(prior, support, num_heads)


def log_prior(prior: Any, support: Array, num_heads: int, log_q: Array | None = None, dtype=jnp.float32) -> Array:
    """log P(J = (h, j) | context) as [B or 1, T, H, T], ``finfo.min`` for j ∉ S(i).

    ``prior``: ``"uniform"`` (1/(H·|S(i)|)), ``"recency"`` or :class:`Recency` (∝ exp(−rate·|i−j|)),
    ``"attention"`` (the model's own attention, P(J) = Q = π/H — a learned, context-dependent prior;
    needs ``log_q``), or an explicit array checked by :func:`validate_prior`.
    """
    T = support.shape[0]
    fill = masked_fill_value(dtype)
    if isinstance(prior, str):
        if prior not in PRIOR_KINDS:
            raise ValueError(f"prior must be one of {PRIOR_KINDS}, a Recency(rate) or an array, got {prior!r}")
        if prior == "recency":
            prior = Recency()
        elif prior == "uniform":
            prior = Recency(0.0)
        else:
            if log_q is None:
                raise ValueError("prior='attention' needs log_q (the model's attention Q = π/H)")
            return log_q.astype(dtype)
    if isinstance(prior, Recency):
        i, j = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
        s = jnp.where(support, -prior.rate * jnp.abs(i - j).astype(dtype), fill)
        lp = jax.nn.log_softmax(s, axis=-1) - jnp.log(jnp.asarray(num_heads, dtype))
        lp = jnp.where(support, lp, fill)
        return jnp.broadcast_to(lp[None, :, None, :], (1, T, num_heads, T))
    joint = validate_prior(prior, support, num_heads).astype(dtype)
    inside = support[None, :, None, :]
    return jnp.where(inside & (joint > 0), jnp.log(jnp.where(joint > 0, joint, 1)), fill)


# --------------------------------------------------------------------------------------------------
# The exact per-position quantities (enumeration over J)
# --------------------------------------------------------------------------------------------------


class PositionTerms(NamedTuple):
    """Per-row quantities, each [B, T] unless stated (all in nats).

    log_p:    log P(U) = log Σ_J P(J) P(U | J)
    elbo:     E_Q[log P(U | J)] − KL(Q ‖ P(J))                     (Theorem 6)
    e_loglik: E_Q[log P(U | J)]
    kl_prior: KL(Q ‖ P(J))
    gap:      KL(Q ‖ P(J | U)) = Σ_J Q (log Q − log P(J, U)) + log P(U)  (= log P(U) − ELBO)
    soft_ll:  log P_soft(U)                                         (Eq. 54)
    log_post: [B, T, H, T] log P(J | U), ``finfo.min`` outside S(i)
    """

    log_p: Array
    elbo: Array
    e_loglik: Array
    kl_prior: Array
    gap: Array
    soft_ll: Array
    log_post: Array


def kl(log_q: Array, log_p: Array, inside: Array, axis=(-2, -1)) -> Array:
    """KL(Q ‖ P) = Σ Q (log Q − log P) over ``axis``, restricted to ``inside``, with 0·log 0 = 0."""
    q = jnp.where(inside, jnp.exp(log_q), 0)
    safe = jnp.where(inside & (q > 0), log_q - log_p, 0)
    return jnp.sum(q * safe, axis=axis)


def position_terms(log_lik: Array, log_q: Array, log_prior_: Array, support: Array,
                   soft_ll: Array | None = None) -> PositionTerms:
    """Enumerate J for every row: the quantities of :class:`PositionTerms` from plain arrays.

    log_lik [B, T, H, T] = log P(U_i | J = (h, j)) at the observed token (finite everywhere), log_q and
    log_prior_ broadcastable to it, ``finfo.min`` outside S(i) (arbitrary Q allowed: any normalized
    distribution over S(i)), support [T, T].

    The gap uses Σ_J Q(J) = 1: KL(Q ‖ P(J | U)) = Σ_J Q (log Q − log P(J, U)) + log P(U), which needs
    no pass over the materialized posterior (the posterior itself is still returned).
    """
    inside = jnp.broadcast_to(support[None, :, None, :], log_lik.shape)
    fill = masked_fill_value(log_lik.dtype)
    log_joint = jnp.where(inside, log_prior_ + log_lik, fill)
    log_p = jax.nn.logsumexp(log_joint, axis=(-2, -1))
    q = jnp.where(inside, jnp.exp(log_q), 0)
    # 0·log 0 = 0: rows of Q may have exact zeros (underflow, or a given Q) where log Q = finfo.min
    live = inside & (q > 0)
    e_loglik = jnp.sum(q * log_lik, axis=(-2, -1))
    kl_prior = jnp.sum(q * jnp.where(live, log_q - log_prior_, 0), axis=(-2, -1))
    gap = jnp.sum(q * jnp.where(live, log_q - log_joint, 0), axis=(-2, -1)) + log_p
    log_post = jnp.where(inside, log_joint - log_p[..., None, None], fill)
    soft = jnp.full_like(log_p, jnp.nan) if soft_ll is None else soft_ll
    return PositionTerms(log_p, e_loglik - kl_prior, e_loglik, kl_prior, gap, soft, log_post)


def _gather(logp: Array, targets: Array) -> Array:
    """logp [B, 1|T, H, T, V] at the target of each row → [B, T, H, T] (axis 1 broadcasts)."""
    return jnp.take_along_axis(logp, targets[:, :, None, None, None], axis=-1)[..., 0]


METHODS = ("auto", "closed_form", "enumerate")


def _closed_form_applies(model, prior: Any, q: Any) -> bool:
    return q is None and isinstance(prior, (str, Recency)) and row_independent(model)


def elbo_terms(
    model, ids: Array, targets: Array, prior: Any = "uniform", q: Array | None = None, method: str = "auto"
) -> PositionTerms:
    """All Theorem 6 quantities for rows i of ``ids`` [B, T] predicting ``targets`` [B, T] (= x_{i+1}).

    ``q``: an optional variational distribution [B, T, H, T] to use instead of Q = π/H (for the
    identity ELBO(Q) = log P − KL(Q ‖ posterior) with arbitrary Q); it must vanish outside S(i).
    ``method``: ``"enumerate"`` — the reference, every latent J = (h, j) of every row materialized
    ([B, T, H, T] arrays, :func:`terms_from_features`); ``"closed_form"`` — :func:`closed_form_terms`,
    the same numbers by matrix products over j (needs :func:`row_independent` model, Q = π and a
    named prior); ``"auto"`` — closed form when it applies, else enumeration.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _check_ids_and_targets(model, ids, targets)
    mixer = _last_attention(model)
    H, support = mixer.num_heads, mixer.support(ids.shape[1])
    # explicit arrays are validated before any model compute, so bad input fails fast
    prior = _checked_prior(prior, support, H)
    qj = None if q is None else validate_prior(q, support, H)
    closed = _closed_form_applies(model, prior, qj)
    if method == "closed_form" and not closed:
        raise ValueError(
            "method='closed_form' needs Q = π (q=None), a named prior ('uniform', 'recency', 'attention' or "
            "Recency) and a row-independent model (last block without residual, Ψ = identity, no final norm); "
            "use method='enumerate' or 'auto'"
        )
    if closed and method != "enumerate":
        return closed_form_terms(model, ids, targets, (prior,))[0]
    return terms_from_features(latent_features(model, ids), targets, prior, qj)


def terms_from_features(f: LatentFeatures, targets: Array, prior: Any = "uniform",
                        q: Array | None = None) -> PositionTerms:
    """:class:`PositionTerms` from precomputed :class:`LatentFeatures` (priors/Q already validated)."""
    return _terms_from_log_lik(f.log_q, _gather(f.cond_logp, targets), f.soft_logp, f.support, targets, prior, q)


def _terms_from_log_lik(log_q: Array, log_lik: Array, soft_logp: Array, support: Array, targets: Array,
                        prior: Any, q: Array | None) -> PositionTerms:
    """:class:`PositionTerms` from log Q, log P(U_i | h, j) [B, T, H, T] and P_soft [B, T, V]."""
    H = log_q.shape[2]
    ld = log_q.dtype
    lp = log_prior(prior, support, H, log_q=log_q, dtype=ld)
    if q is not None:
        inside = support[None, :, None, :]
        log_q = jnp.where(inside & (q > 0), jnp.log(jnp.where(q > 0, q, 1)).astype(ld), masked_fill_value(ld))
    soft = jnp.take_along_axis(soft_logp, targets[..., None], axis=-1)[..., 0]
    return position_terms(log_lik, log_q, lp, support, soft)


# --------------------------------------------------------------------------------------------------
# Enumeration in tiles: the same numbers with a bounded working set
# --------------------------------------------------------------------------------------------------

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of one tile's working set in chunked_terms (1 GiB)


def enumeration_block(batch: int, num_heads: int, vocab_size: int, d_model: int, T: int, dtype=jnp.float32,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """The tile side b of :func:`chunked_terms` for a working set of about ``memory_budget`` bytes: a tile holds
    the logits of b query rows × H heads × b source positions, [B, b, H, b, V], about three such arrays live at
    once (logits, shifted, exp) plus the Ψ activations, so b = ⌊√(budget / (B·H·itemsize·(3V + 16D)))⌋, at least
    1 and at most T."""
    if not (isinstance(memory_budget, (int, float)) and memory_budget > 0):
        raise ValueError(f"memory_budget must be a number of bytes > 0, got {memory_budget!r}")
    itemsize = jnp.dtype(_f32(jnp.dtype(dtype))).itemsize
    per_pair = batch * num_heads * itemsize * (3 * vocab_size + 16 * d_model)
    return int(max(1, min(T, math.isqrt(int(memory_budget // per_pair)))))


def chunked_terms(model, ids: Array, targets: Array, prior: Any = "uniform", q: Array | None = None, *,
                  block: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> PositionTerms:
    """Theorem 6 (Eqs. 56–62) as ``elbo_terms(..., method="enumerate")`` computes it, without the [B, T, H, T, V]
    conditional: the same :class:`PositionTerms` (equal at 1e-10 in float64, values and gradients; tested), any
    model and any Q.

    Only log P(U_i | h, j) at the observed token is needed downstream ([B, T, H, T]); it is computed in square
    tiles of ``block`` query rows × ``block`` source positions (``lax.map``, each tile rematerialised under
    differentiation): per tile the mixer outputs H A_h z_j + b of its columns go through f_i of its rows (the
    residual, Ψ, the final norm and the readout), a log-sum-exp over V and a gather at U_i — peak memory
    O(B·block²·H·V) instead of O(B·T²·H·V), and tiles wholly outside the support (above the diagonal when
    causal, outside a window's band) are skipped, which halves the work when causal. ``block`` defaults to
    :func:`enumeration_block` of ``memory_budget`` bytes; T need not be a multiple (the last tile is padded).
    Everything of size [B, T, H, T] (log Q, the prior, the posterior) is still formed whole."""
    _check_ids_and_targets(model, ids, targets)
    mixer = _last_attention(model)
    Bsz, T = ids.shape
    H = mixer.num_heads
    with jax.ensure_compile_time_eval():
        support_np = np.asarray(mixer.support(T))
    prior = _checked_prior(prior, jnp.asarray(support_np), H)
    qj = None if q is None else validate_prior(q, jnp.asarray(support_np), H)

    mixer, last, x, z = _last_mixer_input(model, ids)
    ld = _f32(z.dtype)
    log_q, allowed = _log_q(mixer, z)
    bias = _mixer_bias(last, z.dtype)
    soft_logp = jax.nn.log_softmax(_after_mixer_logits(model, last, bias, ld, mixer(z), x), axis=-1)
    A = mixer.value_maps().astype(z.dtype)  # [H, D_out, D]
    m = H * jnp.einsum("hed,bjd->bhje", A, z, precision=jax.lax.Precision.HIGHEST)  # [B, H, J, D_out]

    if block is None:
        block = enumeration_block(Bsz, H, model.cfg.vocab_size, m.shape[-1], T, ld, memory_budget)
    if not (isinstance(block, (int, np.integer)) and not isinstance(block, bool) and block >= 1):
        raise ValueError(f"block must be an int ≥ 1, got {block!r}")
    b = int(min(block, T))
    nb = -(-T // b)
    pad = nb * b - T
    m_p = jnp.pad(m, [(0, 0), (0, 0), (0, pad), (0, 0)])
    x_p = jnp.pad(x, [(0, 0), (0, pad), (0, 0)])
    tg_p = jnp.pad(targets, [(0, 0), (0, pad)])
    sup_p = np.pad(support_np, [(0, pad), (0, pad)])
    tiles = [(r, c) for r in range(nb) for c in range(nb) if sup_p[r * b:(r + 1) * b, c * b:(c + 1) * b].any()]
    rows, cols = (jnp.asarray(a, jnp.int32) for a in zip(*tiles, strict=True))
    row_dependent = not row_independent(model)

    @jax.checkpoint
    def tile(rc):
        r, c = rc
        m_t = jax.lax.dynamic_slice_in_dim(m_p, c * b, b, axis=2)  # [B, H, b, D]
        tg = jax.lax.dynamic_slice_in_dim(tg_p, r * b, b, axis=1)  # [B, b]
        if row_dependent:
            x_t = jax.lax.dynamic_slice_in_dim(x_p, r * b, b, axis=1)  # [B, b, D]
            logits = _after_mixer_logits(model, last, bias, ld, m_t[:, None], x_t[:, :, None, None, :])
        else:  # [B, 1, H, b, V]: the same conditional for every row
            logits = _after_mixer_logits(model, last, bias, ld, m_t, jnp.zeros((), z.dtype))[:, None]
        # log_softmax(logits) at U_i, as jax.nn.log_softmax computes it
        shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
        lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))  # [B, 1|b, H, b]
        return jnp.take_along_axis(shifted, tg[:, :, None, None, None], axis=-1)[..., 0] - lse  # [B, b, H, b]

    out = jax.lax.map(tile, (rows, cols))  # [n_tiles, B, b, H, b]
    full = jnp.zeros((nb, nb) + out.shape[1:], ld).at[rows, cols].set(out)  # tiles never computed stay 0
    log_lik = jnp.transpose(full, (2, 0, 3, 4, 1, 5)).reshape(Bsz, nb * b, H, nb * b)[:, :T, :, :T]
    return _terms_from_log_lik(log_q, log_lik, soft_logp, allowed, targets, prior, qj)


# --------------------------------------------------------------------------------------------------
# Closed forms for a row-independent conditional (no enumeration of J)
# --------------------------------------------------------------------------------------------------

# Below this, a shifted likelihood sum has lost relative precision to float underflow: fall back to
# enumeration (log-sum-exp over every latent), which cannot underflow.
_UNDERFLOW = {jnp.dtype(jnp.float32): 1e-30, jnp.dtype(jnp.float64): 1e-290}


def _is_uniform(prior: Any) -> bool:
    return (isinstance(prior, str) and prior == "uniform") or (isinstance(prior, Recency) and prior.rate == 0)


def _causal_sum_at(p: Array, targets: Array, block: int = 16) -> Array:
    """Σ_{j ≤ i} p[b, j, h, targets[b, i]] for p [B, J, H, V] ≥ 0 → [B, I = J, H], without a [J, J]
    product or a cumulative sum over all V columns: the sums of whole blocks of ``block`` positions
    before i (an exclusive prefix over block totals, read at targets[b, i]) plus the ≤ ``block`` terms of
    i's own block, gathered at targets[b, i]. O(B·J·H·(V + block)) work."""
    Bsz, J, H, V = p.shape
    nb = -(-J // block)
    pb = jnp.pad(p, [(0, 0), (0, nb * block - J), (0, 0), (0, 0)]).reshape(Bsz, nb, block, H, V)
    totals = jnp.sum(pb, axis=2)  # [B, nb, H, V]
    # exclusive prefix over blocks as a sum of whole totals (no cumsum differences: all terms ≥ 0)
    before = jnp.pad(jnp.cumsum(totals[:, :-1], axis=1), [(0, 0), (1, 0), (0, 0), (0, 0)])
    i = jnp.arange(J)
    b_ix, h_ix, t_ix = jnp.arange(Bsz)[:, None, None], jnp.arange(H)[None, None, :], targets[:, :, None]
    from_before = before[b_ix, (i // block)[None, :, None], h_ix, t_ix]  # [B, I, H]
    r = jnp.arange(block)
    own = pb[b_ix[..., None], (i // block)[None, :, None, None], r[None, None, None, :], h_ix[..., None],
             t_ix[..., None]]
    own = jnp.sum(jnp.where(r[None, None, None, :] <= (i % block)[None, :, None, None], own, 0), axis=-1)  # [B, I, H]
    return from_before + own


def closed_form_terms(model, ids: Array, targets: Array, priors: tuple = ("uniform",)) -> tuple[PositionTerms, ...]:
    """:class:`PositionTerms` (Theorem 6, Eqs. 54–62) with Q = π for each named prior, by matrix
    products instead of enumeration.

    Needs :func:`row_independent` (P(v | h, j) = softmax(ℓ_hj)_v with ℓ_hj = ũᵀ(H A_h z_j)/Ξ the same
    for every row, and a linear readout). Then, with s^h the scores, log π^h_ij = s^h_ij − log Z^h_i and
    lse_hj = logsumexp_v ℓ_hj, every per-row sum over J = (h, j) is a product over j or a reduction
    the forward pass makes anyway — nothing of size [B, T, H, T] beyond π itself:

    * E_Q[log P(U_i | J)] = (1/H) Σ_h [ ℓ̄_hi[U_i] − Σ_j π^h_ij lse_hj ], where ℓ̄_hi = ũᵀ(H Σ_j π^h_ij A_h z_j)/Ξ
      is the readout of head h's own output (linearity takes E_Q inside ℓ);
    * KL(Q ‖ P(J)) = (1/H) Σ_h [ Σ_j π^h_ij (s^h_ij − m^h_i − log w_ij) − log Σ_j e^{s^h_ij − m^h_i} ] for a
      prior w(j | i)/H (uniform, recency), m = max_j s (log π = s − m − log Σ e); 0 for the attention
      prior (P(J) = Q);
    * log P(U_i) = log Σ_h Σ_j P(h, j | i) P(U_i | h, j) with P(U_i | h, j) = exp(c_h) · p_jh[U_i],
      p_jh = exp(log P(· | h, j) − c_h), c_h = max_j log P(· | h, j): for the uniform prior a blocked
      prefix sum of p over j ≤ i read at U_i (a plain sum when bidirectional), O(B·T·H·V); for other
      priors the product of their weights [T, T] (or π^h) with p [T, V]. If any per-head sum falls below
      1e-30 (1e-290 in float64) the likelihoods underflowed and this term is recomputed by enumeration
      (``lax.cond``: only then);
    * gap = log P(U) − ELBO (Theorem 6: = KL(Q ‖ P(J | U)); tests check it against the KL computed from
      the returned posterior), log_post by gathering log P(U_i | h, j) (dropped by ``jit`` if unused).

    Equal to :func:`terms_from_features` ∘ :func:`latent_features` (tested in float64 at 1e-10, values
    and gradients); about 1.2× the forward pass at T = 256 with the uniform prior.
    """
    if not row_independent(model):
        raise ValueError("closed_form_terms needs a row-independent model (see row_independent); use elbo_terms")
    mixer, last, _, z = _last_mixer_input(model, ids)
    H, T = mixer.num_heads, ids.shape[1]
    ld = _f32(z.dtype)
    fill = masked_fill_value(ld)
    allowed = mixer.support(T)
    inside = allowed[None, None]  # [1, 1, I, J]
    # the block intercept b: every latent's output is H A_h z_j + b, so each logit gains the constant ũᵀb/Ξ
    bias = _mixer_bias(last, ld)
    bias_logits = None if bias is None else model.readout(bias)  # [V]

    # Q = π/H, from the scores once (the forward pass's own softmax, its statistics kept)
    s = jnp.where(inside, mixer.scores(z).astype(ld), fill)  # [B, H, I, J]
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    e = jnp.exp(s - m)  # exactly 0 outside S(i): s there is finfo.min (S(i) ∋ i is never empty)
    zsum = jnp.sum(e, axis=-1, keepdims=True)
    pi = e / zsum
    log_h = jnp.log(jnp.asarray(H, ld))

    # the soft model (Eq. 54) and each head's own output, through the mixer's factors
    heads = mixer.head_outputs(pi.astype(z.dtype), z).astype(ld)  # [B, H, I, Do]
    m_soft = jnp.sum(heads, axis=1)
    if bias is not None:
        m_soft = m_soft + bias.reshape(1, 1, -1)
    soft_logp = jax.nn.log_softmax(model.readout(m_soft), axis=-1)
    soft_ll = jnp.take_along_axis(soft_logp, targets[..., None], axis=-1)[..., 0]

    # the conditional of each latent, log P(v | h, j) = ℓ_jh,v − lse_jh, laid out [B, J, H, V]
    # (the readout is linear: fold it into A_h first, ℓ_jh = H z_j·(Ũ A_h)ᵀ/Ξ, one [D, H·V] product)
    readout_A = model.readout(jnp.swapaxes(mixer.value_maps(), 1, 2).astype(ld))  # [H, D, V] = (Ũ A_h)ᵀ/Ξ
    ell = H * jnp.einsum("bjd,hdv->bjhv", z.astype(ld), readout_A, precision=jax.lax.Precision.HIGHEST)
    if bias_logits is not None:
        ell = ell + bias_logits.reshape(1, 1, 1, -1)
    lse = jax.nn.logsumexp(ell, axis=-1)  # [B, J, H]
    cond = ell - lse[..., None]  # [B, J, H, V]
    # the readout is linear: Σ_j π^h_ij ℓ_jh[v] is the logit of H·(head h's output), read at U_i
    ell_bar = model.readout.token_logits(H * heads, targets[:, None, :])  # [B, H, I]
    if bias_logits is not None:  # Σ_j π^h_ij = 1: the intercept's logit once
        ell_bar = ell_bar + jnp.take(bias_logits, targets)[:, None, :]
    pi_lse = jnp.einsum("bhij,bjh->bhi", pi, lse, precision=jax.lax.Precision.HIGHEST)
    e_loglik = jnp.mean(ell_bar - pi_lse, axis=1)  # [B, I]

    # log P(U_i | h, j) at the observed tokens, [B, I, H, J] — only for the posterior and the fallback
    def log_lik():
        condT = jnp.transpose(cond, (0, 2, 3, 1))  # [B, H, V, J]
        return jnp.swapaxes(jnp.take_along_axis(condT, targets[:, None, :, None], axis=2), 1, 2)

    c = jax.lax.stop_gradient(jnp.max(cond, axis=1, keepdims=True))  # [B, 1, H, V]
    p_shift = jnp.exp(cond - c)  # [B, J, H, V]
    tiny = _UNDERFLOW[jnp.dtype(ld)]

    def read_at_targets(x_BxIxHxV):  # x[b, i, h, U_i] → [B, I, H] (axis 1 may have size 1)
        return jnp.take_along_axis(x_BxIxHxV, targets[:, :, None, None], axis=-1)[..., 0]

    c_t = read_at_targets(c)  # [B, I, H]
    out = []
    for prior in priors:
        # w_t[b, i, h] = Σ_j P(j | i, h) p_jh[U_i]
        if isinstance(prior, str) and prior == "attention":
            lp = jnp.where(inside, jnp.log(jnp.where(inside, pi, 1)) - log_h, fill)
            lp = jnp.swapaxes(lp, 1, 2)  # [B, I, H, J]
            kl_prior = jnp.zeros(soft_ll.shape, ld)
            w_t = read_at_targets(jnp.einsum("bhij,bjhv->bihv", pi, p_shift, precision=jax.lax.Precision.HIGHEST))
        else:
            lw = log_prior(prior, allowed, 1, dtype=ld)[0, :, 0, :]  # log w(j | i), [I, J]
            if not _is_uniform(prior):
                w = jnp.where(allowed, jnp.exp(lw), 0)
                w_t = read_at_targets(jnp.einsum("ij,bjhv->bihv", w, p_shift, precision=jax.lax.Precision.HIGHEST))
            elif mixer.mask == "causal":  # Σ_{j ≤ i} p_j / (i + 1): a blocked prefix sum
                w_t = _causal_sum_at(p_shift, targets) / jnp.arange(1, T + 1, dtype=ld)[None, :, None]
            else:  # Σ_j p_j / T
                w_t = read_at_targets(jnp.sum(p_shift, axis=1, keepdims=True)) / T
            # KL(Q ‖ P(J)) = (1/H) Σ_h Σ_j π (log π − log w) (the log H of Q and of P(J) cancel),
            # log π = (s − m) − log Σ e: one fused pass over π
            kl_prior = jnp.mean(jnp.sum(pi * jnp.where(inside, s - m - lw[None, None], 0), axis=-1)
                                - jnp.log(zsum[..., 0]), axis=1)
            lp = log_prior(prior, allowed, H, dtype=ld)  # [1, I, H, J]

        def direct(w_t=w_t):
            return jax.nn.logsumexp(jnp.log(w_t) + c_t, axis=-1) - log_h

        def enumerate_(lp=lp):
            return jax.nn.logsumexp(jnp.where(allowed[None, :, None, :], lp + log_lik(), fill), axis=(-2, -1))

        log_p = jax.lax.cond(jnp.any(w_t < tiny), enumerate_, direct)
        log_post = jnp.where(allowed[None, :, None, :], lp + log_lik() - log_p[..., None, None], fill)
        elbo = e_loglik - kl_prior
        out.append(PositionTerms(log_p, elbo, e_loglik, kl_prior, log_p - elbo, soft_ll, log_post))
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# Theorem 7: decoding by the ELBO
# --------------------------------------------------------------------------------------------------


def vocab_scores(model, ids: Array, prior: Any = "uniform", method: str = "auto") -> dict[str, Array]:
    """Scores of every candidate next token v at every row, [B, T, V] each (Theorem 7, Eqs. 63–67):

    ``elbo``: ELBO(v) = E_Q[log P(v | J)] − KL(Q ‖ P(J));  ``log_p``: log P(v) = log Σ_J P(J) P(v | J);
    ``soft``: log P_soft(v) (Eq. 54).

    When the readout after the mixer is affine (the pure TV-VAR), E_Q[log softmax(z_J)_v] =
    (E_Q z_J)_v − E_Q[logsumexp z_J], so ELBO(v) − log P_soft(v) does not depend on v and
    argmax_v ELBO(v) = argmax_v P_soft(v) exactly: greedy soft-attention decoding *is* ELBO decoding.

    ``method``: ``"enumerate"`` sums over J = (h, j) with a [B, T, H, T, V] array (any model, small T);
    ``"closed_form"`` needs :func:`row_independent` (P(v | h, j) the same for every row i) and never forms
    it: E_Q[log P(v | J)] = Σ_{h,j} Q_i(h, j) log P(v | h, j) is one [T, H·T]·[H·T, V] product, and
    log P(v) = log Σ_h e^{c_hv} Σ_j P(h, j | i) e^{log P(v | h, j) − c_hv} with c_hv = max_j log P(v | h, j)
    is a product of the same shape then a log-sum-exp over h, [B, T, H, V] at most. If a shifted sum
    falls below 1e-30 (1e-290 in float64) the likelihoods underflowed and ``log_p`` is recomputed by
    enumeration one row at a time (``lax.cond`` under jit: only then; [B, H, T, V] per row).
    ``"auto"``: closed form where it applies, else enumeration.
    Both give the same numbers (tested in float64 at 1e-10).
    """
    if method not in ("auto", "closed_form", "enumerate"):
        raise ValueError(f"method must be 'auto', 'closed_form' or 'enumerate', got {method!r}")
    closed = row_independent(model) if method == "auto" else method == "closed_form"
    if closed and not row_independent(model):
        raise ValueError("vocab_scores(method='closed_form') needs a row-independent model (see row_independent); "
                         "use method='enumerate' or 'auto'")
    mixer = _last_attention(model)
    prior = _checked_prior(prior, mixer.support(ids.shape[1]), mixer.num_heads)
    f = latent_features(model, ids)
    H = f.log_q.shape[2]
    ld = f.log_q.dtype
    lp = log_prior(prior, f.support, H, log_q=f.log_q, dtype=ld)
    inside = f.support[None, :, None, :]
    q = jnp.where(inside, jnp.exp(f.log_q), 0)
    kl_q = kl(f.log_q, lp, inside)[..., None]
    if not closed:
        return _vocab_scores_enumerated(f, q, lp, inside, kl_q)
    hi = jax.lax.Precision.HIGHEST
    cond_BxHxTxV = f.cond_logp[:, 0]
    elbo = jnp.einsum("bihj,bhjv->biv", q, cond_BxHxTxV, precision=hi) - kl_q
    w_BxTxHxT = jnp.where(inside, jnp.exp(lp), 0)
    c_BxHxV = jax.lax.stop_gradient(jnp.max(cond_BxHxTxV, axis=2))
    p_BxHxTxV = jnp.exp(cond_BxHxTxV - c_BxHxV[:, :, None])
    s_BxTxHxV = jnp.einsum("bihj,bhjv->bihv", jnp.broadcast_to(w_BxTxHxT, q.shape), p_BxHxTxV, precision=hi)
    floor = 1e-290 if ld == jnp.float64 else 1e-30
    pos = s_BxTxHxV > 0
    log_s = jnp.where(pos, jnp.log(jnp.where(pos, s_BxTxHxV, 1)) + c_BxHxV[:, None], masked_fill_value(ld))

    def closed_log_p():
        return jax.nn.logsumexp(log_s, axis=2)

    def enumerated_log_p():  # one row at a time: [B, H, T, V] at most, never [B, T, H, T, V]
        lp_TxBxHxT = jnp.moveaxis(jnp.broadcast_to(lp, q.shape), 1, 0)

        def row(inp):
            lp_i, inside_i = inp  # [B, H, T], [T]
            log_joint = jnp.where(inside_i[None, None, :, None], lp_i[..., None] + cond_BxHxTxV, masked_fill_value(ld))
            return jax.nn.logsumexp(log_joint, axis=(1, 2))

        return jnp.moveaxis(jax.lax.map(row, (lp_TxBxHxT, f.support)), 0, 1)

    # a row whose every admissible term sits far below its token's maximum over j underflows: enumerate
    ok = jnp.all(jnp.max(s_BxTxHxV, axis=2) > floor)
    if isinstance(ok, jax.core.Tracer):
        log_p = jax.lax.cond(ok, closed_log_p, enumerated_log_p)
    else:  # eager: the enumeration is never built unless it is needed
        log_p = closed_log_p() if bool(ok) else enumerated_log_p()
    return {"elbo": elbo, "log_p": log_p, "soft": f.soft_logp}


def _vocab_scores_enumerated(f: LatentFeatures, q: Array, lp: Array, inside: Array, kl_q: Array) -> dict[str, Array]:
    """:func:`vocab_scores` by enumeration over J = (h, j): a [B, T, H, T, V] array (the reference)."""
    ld = f.log_q.dtype
    e_loglik = jnp.einsum("bihj,bihjv->biv", q, jnp.broadcast_to(f.cond_logp, q.shape + f.cond_logp.shape[-1:]))
    log_joint = jnp.where(inside[..., None], (lp[..., None] + f.cond_logp), masked_fill_value(ld))
    log_p = jax.nn.logsumexp(log_joint, axis=(2, 3))
    return {"elbo": e_loglik - kl_q, "log_p": log_p, "soft": f.soft_logp}


def decode_agreement(scores: dict[str, Array], weights: Array | None = None) -> dict[str, float]:
    """How often greedy decoding agrees between the three rules of Theorem 7 (fraction of rows).

    Keys: ``elbo_vs_log_p``, ``elbo_vs_soft``, ``log_p_vs_soft``, ``all_three``. ``weights`` [B, T]
    (optional) selects / weights rows.
    """
    a = {k: jnp.argmax(v, axis=-1) for k, v in scores.items()}
    w = jnp.ones(a["elbo"].shape, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    if w.shape != a["elbo"].shape:
        raise ValueError(f"weights must have shape {a['elbo'].shape}, got {w.shape}")

    def rate(mask):
        return float(jnp.sum(w * mask) / jnp.sum(w))

    return {
        "elbo_vs_log_p": rate(a["elbo"] == a["log_p"]),
        "elbo_vs_soft": rate(a["elbo"] == a["soft"]),
        "log_p_vs_soft": rate(a["log_p"] == a["soft"]),
        "all_three": rate((a["elbo"] == a["log_p"]) & (a["elbo"] == a["soft"])),
    }


# --------------------------------------------------------------------------------------------------
# Training objectives (the tvvar.train protocol: fn(model, batch, rng) -> (loss, metrics))
# --------------------------------------------------------------------------------------------------


def _metrics(t: PositionTerms, log_p_attention: Array) -> dict[str, Array]:
    return {
        "log_p": jnp.mean(t.log_p),
        "log_p_attention": jnp.mean(log_p_attention),
        "elbo": jnp.mean(t.elbo),
        "e_loglik": jnp.mean(t.e_loglik),
        "soft_ll": jnp.mean(t.soft_ll),
        "gap": jnp.mean(t.gap),
        "kl_prior": jnp.mean(t.kl_prior),
    }


OBJECTIVE_KINDS = ("elbo", "marginal", "marginal_attention", "soft")


def make_objective(kind: str) -> Callable:
    """An objective ``fn(model, batch, rng) -> (loss, metrics)`` for ``batch["tokens"]`` [B, T+1].

    ``"elbo"``: −ELBO(Q = π) with the uniform prior (Theorem 6); ``"marginal"``: −log P(U) with the
    uniform prior; ``"marginal_attention"``: −log P(U) with the attention as (learned) prior, Deng et al.
    2018's exact marginal; ``"soft"``: −log P_soft(U) of Eq. 54 — the same loss as ``"cross_entropy"``.
    Every kind reports the same metrics (per token, nats): log_p (uniform prior), log_p_attention,
    elbo, e_loglik, kl_prior, gap (uniform prior, Q = π), soft_ll, nll (= the loss) and, when the batch
    carries a synthetic source's exact conditional entropies, ``entropy`` and ``excess`` (= nll − H).
    """
    if kind not in OBJECTIVE_KINDS:
        raise ValueError(f"kind must be one of {OBJECTIVE_KINDS}, got {kind!r}")

    def objective(model, batch, rng):
        del rng  # exact enumeration: no sampling
        tokens = batch["tokens"]
        if row_independent(model):
            t, t_att = closed_form_terms(model, tokens[:, :-1], tokens[:, 1:], ("uniform", "attention"))
        else:
            f = latent_features(model, tokens[:, :-1])
            t, t_att = (terms_from_features(f, tokens[:, 1:], p) for p in ("uniform", "attention"))
        log_p_att = t_att.log_p
        per_token = {"elbo": -t.elbo, "marginal": -t.log_p, "marginal_attention": -log_p_att, "soft": -t.soft_ll}[kind]
        loss = jnp.mean(per_token).astype(jnp.float32)
        metrics = {**_metrics(t, log_p_att), "nll": loss}
        if "entropy" in batch:
            H = batch["entropy"].astype(jnp.float32)
            metrics["entropy"] = jnp.mean(H)
            metrics["excess"] = jnp.mean(per_token - H)
        return loss, metrics

    objective.__name__ = f"{kind}_objective"
    return objective


def register_objectives() -> None:
    """Register ``"elbo"``, ``"marginal"``, ``"marginal_attention"`` and ``"soft"`` with ``tvvar.train``
    (idempotent: a reload replaces the same definitions; ``import tvvar`` imports this module)."""
    from tvvar import train

    for kind in OBJECTIVE_KINDS:
        train.register_objective(kind)(make_objective(kind))

register_objectives()
