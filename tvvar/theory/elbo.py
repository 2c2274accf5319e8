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
laid out (query i, head h, key j). Cost of the exact terms: O(B·H·T·(T + V)·D) for the pure TV-VAR
(the conditional does not depend on i), O(B·T·H·T·V) with a residual stream, and the last Ψ applied to
B·T·H·T vectors when Ψ is not the identity (small T only). All likelihood terms run in float32 (float64
under x64), masked entries are ``finfo.min``, and 0·log 0 = 0.

Training objectives (:func:`make_objective`; importing this module registers them with
``tvvar.train.register_objective``): ``"elbo"`` (−ELBO with Q = π, uniform prior — Theorem 6),
``"marginal"`` (−log P(U), uniform prior), ``"marginal_attention"`` (−log P(U) with the attention as
prior) and ``"soft"`` (the soft-attention loss of ``"cross_entropy"``, reporting the latent-model metrics
as well). Note: with the uniform prior, log P(U) does not depend on B (the scores), so ``"marginal"``
trains A and the embeddings only; the ELBO reaches B through Q = π.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.core import check_token_ids, masked_fill_value, float32_or_better
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


def latent_features(model, ids: Array) -> LatentFeatures:
    """Q, P(U | J) and P_soft for every row of ``ids`` [B, T] under ``model`` (see the module docstring).

    The last layer must be attention (any ``SoftmaxBilinearAttention``); earlier layers are run as the
    deterministic feature map that produces the last mixer's input z.
    """
    from tvvar.model import Identity

    mixer = _last_attention(model)
    x = model.embed_tokens(ids)
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    z = last.norm1(x) if last.norm1 is not None else x
    H = mixer.num_heads
    ld = _f32(z.dtype)

    log_pi = _log_pi(mixer, z)  # [B, H, T, T]
    fill = masked_fill_value(ld)
    allowed = mixer.support(z.shape[1])
    log_q = jnp.where(allowed[None, None], log_pi - jnp.log(jnp.asarray(H, ld)), fill)
    log_q = jnp.einsum("bhij->bihj", log_q)

    A = mixer.value_maps().astype(z.dtype)  # [H, D_out, D]
    # H·A_h z_j: the mixer output if all of row i's attention sat on (h, j)
    m_BxHxTxD = H * jnp.einsum("hed,bjd->bhje", A, z, precision=jax.lax.Precision.HIGHEST)
    # E_Q[H A_h z_j] = Σ_h Σ_j π^h[i, j] A_h z_j is the mixer's own output (Theorem 5): its fast path
    m_soft_BxTxD = mixer(z)

    def after_mixer(m: Array, x_res: Array) -> Array:
        y = x_res + m if last.residual else m
        if not isinstance(last.psi, Identity):
            y = last._sub(last.psi, last.norm2, y)
        if model.final_norm is not None:
            y = model.final_norm(y)
        return jax.nn.log_softmax(model.readout(y.astype(ld)).astype(ld), axis=-1)

    soft_logp = after_mixer(m_soft_BxTxD, x)
    if last.residual or not isinstance(last.psi, Identity) or model.final_norm is not None:
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
        raise ValueError("prior must be finite and ≥ 0 (probabilities P(J | context)); got negative or non-finite entries")
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


def position_terms(log_lik: Array, log_q: Array, log_prior_: Array, support: Array, soft_ll: Array | None = None) -> PositionTerms:
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


def elbo_terms(model, ids: Array, targets: Array, prior: Any = "uniform", q: Array | None = None) -> PositionTerms:
    """All Theorem 6 quantities for rows i of ``ids`` [B, T] predicting ``targets`` [B, T] (= x_{i+1}).

    ``q``: an optional variational distribution [B, T, H, T] to use instead of Q = π/H (for the
    identity ELBO(Q) = log P − KL(Q ‖ posterior) with arbitrary Q); it must vanish outside S(i).
    """
    if getattr(targets, "shape", None) != getattr(ids, "shape", None):
        raise ValueError(f"targets must have the shape of ids {getattr(ids, 'shape', None)}, got {getattr(targets, 'shape', None)}")
    check_token_ids(targets, model.cfg.vocab_size, name="targets")
    mixer = _last_attention(model)
    H, support = mixer.num_heads, mixer.support(ids.shape[1])
    # explicit arrays are validated before any model compute, so bad input fails fast
    prior = _checked_prior(prior, support, H)
    qj = None if q is None else validate_prior(q, support, H)
    return terms_from_features(latent_features(model, ids), targets, prior, qj)


def terms_from_features(f: LatentFeatures, targets: Array, prior: Any = "uniform", q: Array | None = None) -> PositionTerms:
    """:class:`PositionTerms` from precomputed :class:`LatentFeatures` (priors/Q already validated)."""
    H = f.log_q.shape[2]
    ld = f.log_q.dtype
    lp = log_prior(prior, f.support, H, log_q=f.log_q, dtype=ld)
    log_q = f.log_q
    if q is not None:
        inside = f.support[None, :, None, :]
        log_q = jnp.where(inside & (q > 0), jnp.log(jnp.where(q > 0, q, 1)).astype(ld), masked_fill_value(ld))
    log_lik = _gather(f.cond_logp, targets)
    soft = jnp.take_along_axis(f.soft_logp, targets[..., None], axis=-1)[..., 0]
    return position_terms(log_lik, log_q, lp, f.support, soft)


# --------------------------------------------------------------------------------------------------
# Theorem 7: decoding by the ELBO
# --------------------------------------------------------------------------------------------------


def vocab_scores(model, ids: Array, prior: Any = "uniform") -> dict[str, Array]:
    """Scores of every candidate next token v at every row, [B, T, V] each (Theorem 7, Eqs. 63–67):

    ``elbo``: ELBO(v) = E_Q[log P(v | J)] − KL(Q ‖ P(J));  ``log_p``: log P(v) = log Σ_J P(J) P(v | J);
    ``soft``: log P_soft(v) (Eq. 54).

    When the readout after the mixer is affine (the pure TV-VAR), E_Q[log softmax(z_J)_v] =
    (E_Q z_J)_v − E_Q[logsumexp z_J], so ELBO(v) − log P_soft(v) does not depend on v and
    argmax_v ELBO(v) = argmax_v P_soft(v) exactly: greedy soft-attention decoding *is* ELBO decoding.
    """
    mixer = _last_attention(model)
    prior = _checked_prior(prior, mixer.support(ids.shape[1]), mixer.num_heads)
    f = latent_features(model, ids)
    H = f.log_q.shape[2]
    ld = f.log_q.dtype
    lp = log_prior(prior, f.support, H, log_q=f.log_q, dtype=ld)
    inside = f.support[None, :, None, :]
    q = jnp.where(inside, jnp.exp(f.log_q), 0)
    e_loglik = jnp.einsum("bihj,bihjv->biv", q, jnp.broadcast_to(f.cond_logp, q.shape + f.cond_logp.shape[-1:]))
    elbo = e_loglik - kl(f.log_q, lp, inside)[..., None]
    log_joint = jnp.where(inside[..., None], (lp[..., None] + f.cond_logp), masked_fill_value(ld))
    log_p = jax.nn.logsumexp(log_joint, axis=(2, 3))
    return {"elbo": elbo, "log_p": log_p, "soft": f.soft_logp}


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
        f = latent_features(model, tokens[:, :-1])
        t = terms_from_features(f, tokens[:, 1:], "uniform")
        log_p_att = terms_from_features(f, tokens[:, 1:], "attention").log_p
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
    (idempotent; ``tvvar.train`` imports this module by name to find ``"elbo"`` and ``"marginal"``)."""
    from tvvar import train

    for kind in OBJECTIVE_KINDS:
        try:
            train.register_objective(kind)(make_objective(kind))
        except ValueError:
            # already registered by an earlier import of this module (e.g. a reload) is fine;
            # a different owner of the name is a real conflict
            if getattr(train.get_objective(kind), "__module__", None) != __name__:
                raise

register_objectives()
