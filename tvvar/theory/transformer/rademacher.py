"""Theorem 8 of Bai (arXiv:2511.01202): a Rademacher generalization bound for the next-token loss,
computed as the paper states it, next to a bound that is actually a theorem, and the truth.

Notation: M samples (x_m, y_m) at one position t; x_m is the context, y_m = ħ_m the true next token;
z_m = logits ∈ R^V of the model at that position (the readout ũᵀh/Ξ of Eq. 44, Ξ included);
ℓ(z, y) = −log softmax(z)_y is the cross-entropy; L̂ = (1/M) Σ_m ℓ(z_m, y_m) (the paper's L̂(A, B));
the true risk is R = E[ℓ(z(X), Y)] = H(P(U_t), Q(U_t)), the cross-entropy of the source's next-token law
P with the model's Q, which is ≥ H(U_t | context) (the conditional entropy floor, equality iff Q = P).

1. The paper's bound (Theorem 8, Eqs. 69–72) — :func:`paper_bound`::

       H(P(U_t), Q(U_t)) ≤ L̂(A, B) + (2√2 / M) Σ_m |z_m^ħ| + 3 √(log(2/δ) / (2M))          (Eq. 72)

   **Reading of z_m^ħ implemented here** (we cannot consult Eqs. 69–71 from this repository): z_m^ħ is
   the logit of the true (target) token ħ_m in sample m, ``z_m^ħ = logits[m, y_m]``, with the model's own
   logits as they come out of the readout (no re-centering).  The derivation reads as Mohri et al.'s
   Theorem 3.3 (factor 2 on R̂_S, the 3√(log(2/δ)/2M) term) with Talagrand's scalar contraction
   (factor √2) applied to the target logit, and the Rademacher average of that logit replaced by the mean
   |z_m^ħ|.  The reading is one switch: ``paper_bound(..., reading="target")``; ``"max_abs"`` uses
   max_v |z_mv| instead.  The formula is computed exactly as written, whatever its validity:

   * Theorem 3.3 needs a loss bounded in [0, 1]; cross-entropy is unbounded (and ≤ ln V + 2 max|z| for
     bounded logits), so the confidence term carries no loss range.
   * Talagrand's lemma is for scalar Lipschitz maps; the cross-entropy is a function of the whole logit
     vector and needs a vector contraction (Maurer 2016).
   * (1/M) Σ |z_m^ħ| does not shrink with M: the bound tends to L̂ + 2√2 E|z^ħ|, not to the risk.
   * It is not invariant to the logit gauge: z ↦ z + c·1 leaves every probability (and L̂) unchanged but
     changes Σ |z_m^ħ| (``gauge="center"`` subtracts the mean logit per sample; ``gauge="logprob"`` uses
     log softmax(z), for which the middle term is 2√2 L̂).

2. A rigorous bound — :func:`rigorous_bound`.  **Theorem** (Mohri, Rostamizadeh, Talwalkar,
   *Foundations of ML*, 2nd ed., Thm 3.3, applied to G/B; Maurer, "A vector-contraction inequality for
   Rademacher complexities", ALT 2016, Cor. 1).  Let F be a class of logit maps f: X → R^V with
   |f_k(x)| ≤ c for all f, x, k, and ℓ the cross-entropy.  Then ℓ∘f ∈ [0, B] with

       B = ln V + 2c           (lse(z) − z_y ≤ ln V + max_k z_k − z_y ≤ ln V + 2c)

   and z ↦ ℓ(z, y) is √2-Lipschitz in ℓ2 (∇ = softmax(z) − e_y, ‖·‖² = (1−p_y)² + Σ_{k≠y} p_k² ≤ 2).
   For any δ ∈ (0, 1), with probability ≥ 1 − δ over S ~ P^M, simultaneously for all f ∈ F:

       R(f) ≤ L̂_S(f) + 2 · √2 · √2 · R̂^vec_S(F) + 3 B √(log(2/δ) / (2M)),
       R̂^vec_S(F) = E_σ sup_{f∈F} (1/M) Σ_m Σ_k σ_mk f_k(x_m),   σ_mk i.i.d. uniform ±1,

   (factor 2 from Thm 3.3, √2 from Maurer's inequality, √2 the Lipschitz constant).  Classes:

   * **linear-softmax** F_Λ = {x ↦ W x : W ∈ R^{V×D}, ‖W‖_F ≤ Λ}, inputs ‖x‖ ≤ r (so c = Λr): the sup
     is exact, sup_{‖W‖_F≤Λ} ⟨W, Σ_m σ_m x_mᵀ⟩ / M = (Λ/M) ‖Σ_m σ_m x_mᵀ‖_F
     (:func:`linear_rc_sup`), and Jensen gives the certified closed form
     R̂^vec_S ≤ (Λ/M) √(V Σ_m ‖x_m‖²) ≤ Λ r √(V/M) (:func:`linear_rc_jensen`, :func:`linear_rc_bound`).
     :func:`linear_rc_mc` estimates the expectation over σ by Monte Carlo; :func:`linear_rc_exact`
     enumerates all 2^{MV} sign patterns (tiny M·V only: the reference).
   * **any model on a finite context set** (a trained TV-VAR at position t: the context is one of V^{t+1}
     token strings): the superclass F_c = {all maps with |f_k(κ)| ≤ c} contains every model whose logits
     are bounded by c; its sup separates over (context, token) and equals c Σ_κ Σ_k |Σ_{m:x_m=κ} σ_mk|, so
     R̂^vec_S(F_c) ≤ (c V / M) Σ_κ √n_κ by Jensen (:func:`finite_context_rc`).  This is a documented
     *upper* bound for an attention model (it ignores everything but the logit range), it is honest
     and certified, and it only tightens once M ≫ V² · #contexts.  c must not depend on S: for a model
     trained on other data and bounded on M held-out samples, c = its largest |logit| over all contexts
     (:func:`enumerate_contexts`) qualifies.

3. The truth — :class:`LinearSoftmaxTeacher`: x uniform on the sphere S^{D−1} (r = 1), y ~ softmax(W* x / Ξ).
   The expected cross-entropy of any model given x is computed exactly over y
   (:meth:`~LinearSoftmaxTeacher.expected_cross_entropy`), and H(Y | X = x) exactly per x, so the true
   risk on a large fresh x-sample carries x-sampling error only and is ≥ the entropy floor per sample.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.core import LRUCache, log_softmax32, sphere
from tvvar.typing import Array, PRNGKey

__all__ = [
    "Bound",
    "THM33_FACTOR",
    "MAURER_FACTOR",
    "CE_LIPSCHITZ",
    "RIGOROUS_RC_FACTOR",
    "PAPER_RC_FACTOR",
    "check_delta",
    "check_num_samples",
    "check_logits",
    "cross_entropy",
    "target_logit",
    "confidence_term",
    "paper_bound",
    "paper_bound_terms",
    "loss_range",
    "rigorous_bound",
    "hoeffding_bound",
    "linear_rc_sup",
    "rademacher_signs",
    "linear_rc_mc",
    "linear_rc_exact",
    "linear_rc_jensen",
    "linear_rc_bound",
    "finite_context_rc",
    "enumerate_contexts",
    "context_id",
    "position_law",
    "sample_position",
    "LinearSoftmaxTeacher",
    "ce_grad_linear",
    "fit_linear_softmax",
    "linear_trial",
    "linear_sweep",
    "linear_sweep_reference",
    "violation_rate",
    "violation_tolerance",
]

THM33_FACTOR = 2.0  # Mohri et al. Thm 3.3: 2 R̂_S(G)
MAURER_FACTOR = math.sqrt(2.0)  # Maurer 2016: E sup Σ σ_i h_i(f(x_i)) ≤ √2 L E sup Σ_ik σ_ik f_k(x_i)
CE_LIPSCHITZ = math.sqrt(2.0)  # ‖softmax(z) − e_y‖₂ ≤ √2
RIGOROUS_RC_FACTOR = THM33_FACTOR * MAURER_FACTOR * CE_LIPSCHITZ  # = 4
PAPER_RC_FACTOR = 2.0 * math.sqrt(2.0)  # Eq. 72: 2√2


class Bound(NamedTuple):
    """A bound split into its terms: total = empirical + complexity + confidence."""

    empirical: Array
    complexity: Array
    confidence: Array
    total: Array


# --------------------------------------------------------------------------------------------------
# Validation: bad input is an error naming the argument, never a silently wrong bound
# --------------------------------------------------------------------------------------------------


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_delta(delta) -> float:
    """δ must be a number in the open interval (0, 1)."""
    if not _concrete(delta):
        return delta
    if isinstance(delta, (str, bytes, bool)):
        raise TypeError(f"delta (the confidence level δ) must be a number in (0, 1), got {delta!r}")
    try:
        d = float(delta)
    except (TypeError, ValueError):
        raise TypeError(f"delta (the confidence level δ) must be a number in (0, 1), got {delta!r}") from None
    if not (0.0 < d < 1.0):
        raise ValueError(f"delta (the confidence level δ) must lie in the open interval (0, 1), got {delta!r}")
    return d


def check_num_samples(M, name: str = "M") -> int:
    """M (the number of samples) must be an integer ≥ 1."""
    if isinstance(M, (bool, np.bool_)) or not isinstance(M, (int, np.integer)):
        raise TypeError(f"{name} (the number of samples) must be an integer ≥ 1, got {M!r}")
    if M < 1:
        raise ValueError(f"{name} (the number of samples) must be ≥ 1, got {M}")
    return int(M)


def check_logits(logits: Array, targets: Array | None = None) -> None:
    """logits: float [M, V] with M ≥ 1, V ≥ 2, finite; targets: int [M] in [0, V)."""
    shape = getattr(logits, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"logits must have shape [M, V] (rank 2), got shape {shape}")
    M, V = shape
    check_num_samples(M, "M (logits.shape[0])")
    if V < 2:
        raise ValueError(f"logits must have V ≥ 2 classes in the last axis, got shape {tuple(shape)}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be a floating array, got dtype {logits.dtype}")
    if _concrete(logits) and not bool(jnp.all(jnp.isfinite(logits))):
        n_nan = int(jnp.sum(jnp.isnan(logits)))
        raise ValueError(f"logits must be finite; got {n_nan} NaN and "
                         f"{int(jnp.sum(jnp.isinf(logits)))} infinite entries")
    if targets is None:
        return
    tshape = getattr(targets, "shape", None)
    if tshape != (M,):
        raise ValueError(f"targets must have shape [M={M}], got shape {tshape}")
    if not jnp.issubdtype(jnp.asarray(targets).dtype, jnp.integer):
        raise TypeError(f"targets must be integer token ids, got dtype {jnp.asarray(targets).dtype}")
    if _concrete(targets):
        lo, hi = int(jnp.min(targets)), int(jnp.max(targets))
        if lo < 0 or hi >= V:
            raise ValueError(f"targets must lie in [0, V={V}), got values in [{lo}, {hi}]")


# --------------------------------------------------------------------------------------------------
# The loss and the paper's bound (Eq. 72)
# --------------------------------------------------------------------------------------------------


def cross_entropy(logits: Array, targets: Array) -> Array:
    """ℓ(z_m, y_m) = −log softmax(z_m)_{y_m} per sample, float32 or better: [M, V], [M] → [M]."""
    logp = log_softmax32(logits)
    return -jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0]


def target_logit(logits: Array, targets: Array, *, reading: str = "target", gauge: str = "raw") -> Array:
    """z_m^ħ of Eq. 72 per sample ([M]).

    reading="target": the logit of the true token, logits[m, y_m] (the reading implemented; see the
    module docstring); "max_abs": max_v |logits[m, v]|.  gauge (all give the same probabilities):
    "raw": the model's logits as they are; "center": minus their mean over the vocabulary;
    "logprob": log softmax(z) (then |z_m^ħ| is the per-sample cross-entropy itself).
    """
    if gauge not in GAUGES:
        raise ValueError(f"gauge must be one of {tuple(GAUGES)}, got {gauge!r}")
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {tuple(READINGS)}, got {reading!r}")
    z = GAUGES[gauge](logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
    return READINGS[reading](z, targets)


# The gauges (same probabilities, different logits) and readings of z_m^ħ, by name.
GAUGES = {
    "raw": lambda z: z,
    "center": lambda z: z - jnp.mean(z, axis=-1, keepdims=True),
    "logprob": lambda z: jax.nn.log_softmax(z, axis=-1),
}
READINGS = {
    "target": lambda z, y: jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0],
    "max_abs": lambda z, y: jnp.max(jnp.abs(z), axis=-1),
}


def confidence_term(M, delta, B=1.0) -> Array:
    """3 B √(log(2/δ) / (2M)) — Mohri et al. Thm 3.3 for losses in [0, B] (the paper's Eq. 72: B = 1)."""
    return 3.0 * B * jnp.sqrt(jnp.log(2.0 / delta) / (2.0 * M))


def paper_bound_terms(logits: Array, targets: Array, delta, *, reading: str = "target", gauge: str = "raw") -> Bound:
    """Eq. 72 without input checks (for use under jit/vmap); see :func:`paper_bound`."""
    M = logits.shape[0]
    emp = jnp.mean(cross_entropy(logits, targets))
    comp = PAPER_RC_FACTOR * jnp.mean(jnp.abs(target_logit(logits, targets, reading=reading, gauge=gauge)))
    conf = confidence_term(M, delta)
    return Bound(emp, comp, conf, emp + comp + conf)


def paper_bound(logits: Array, targets: Array, delta, *, reading: str = "target", gauge: str = "raw") -> Bound:
    """The bound of Theorem 8 exactly as Eq. 72 writes it:

        L̂ + (2√2 / M) Σ_m |z_m^ħ| + 3 √(log(2/δ) / (2M)),    L̂ = (1/M) Σ_m −log softmax(z_m)_{ħ_m}.

    logits: [M, V] (the model's logits at position t for M samples), targets: [M] (the true tokens ħ_m),
    δ ∈ (0, 1).  See the module docstring for the reading of z_m^ħ and what the bound does not assume.
    """
    check_logits(logits, targets)
    check_delta(delta)
    return paper_bound_terms(logits, targets, delta, reading=reading, gauge=gauge)


# --------------------------------------------------------------------------------------------------
# The rigorous bound (Mohri et al. Thm 3.3 + Maurer 2016)
# --------------------------------------------------------------------------------------------------


def loss_range(V: int, logit_bound) -> float:
    """B = ln V + 2c: cross-entropy ∈ [0, B] when every logit satisfies |z_k| ≤ c."""
    if not (isinstance(V, (int, np.integer)) and V >= 2):
        raise ValueError(f"V (the vocabulary size) must be an integer ≥ 2, got {V!r}")
    if _concrete(logit_bound) and not (float(logit_bound) >= 0 and math.isfinite(float(logit_bound))):
        raise ValueError(f"logit_bound (c, with |z_k| ≤ c) must be finite and ≥ 0, got {logit_bound!r}")
    return math.log(V) + 2.0 * logit_bound


def rigorous_bound(empirical, vector_rc, M, delta, B) -> Bound:
    """R(f) ≤ L̂_S(f) + 4 R̂^vec_S(F) + 3 B √(log(2/δ) / (2M)), for all f ∈ F at once, w.p. ≥ 1 − δ.

    empirical: L̂_S(f); vector_rc: R̂^vec_S(F) (or a certified upper bound of it); M: the size of S;
    B: the loss range (:func:`loss_range`).  4 = 2 (Thm 3.3) · √2 (Maurer) · √2 (Lipschitz constant).
    """
    if _concrete(M):
        check_num_samples(M)
    check_delta(delta)
    if _concrete(B) and not (float(B) > 0 and math.isfinite(float(B))):
        raise ValueError(f"B (the loss range) must be finite and > 0, got {B!r}")
    if _concrete(vector_rc) and not bool(jnp.all(jnp.asarray(vector_rc) >= 0)):
        raise ValueError(f"vector_rc (a Rademacher complexity) must be ≥ 0, got {vector_rc!r}")
    comp = RIGOROUS_RC_FACTOR * jnp.asarray(vector_rc)
    conf = confidence_term(M, delta, B)
    emp = jnp.asarray(empirical)
    return Bound(emp, comp, conf, emp + comp + conf)


def hoeffding_bound(empirical, M, delta, B) -> Bound:
    """For ONE model fixed before S is drawn (held-out samples): R ≤ L̂ + B √(log(1/δ) / (2M)).

    Hoeffding's inequality, one-sided; no complexity term because nothing is chosen using S.
    """
    if _concrete(M):
        check_num_samples(M)
    check_delta(delta)
    emp = jnp.asarray(empirical)
    conf = B * jnp.sqrt(jnp.log(1.0 / delta) / (2.0 * M))
    return Bound(emp, jnp.zeros_like(emp), conf, emp + conf)


# --------------------------------------------------------------------------------------------------
# Empirical vector Rademacher complexities
# --------------------------------------------------------------------------------------------------


def linear_rc_sup(sigma_MxV: Array, X_MxD: Array, Lam) -> Array:
    """sup_{‖W‖_F ≤ Λ} (1/M) Σ_m Σ_k σ_mk (W x_m)_k = (Λ/M) ‖σᵀ X‖_F — exact (Cauchy–Schwarz, attained
    at W = Λ G/‖G‖_F with G = σᵀX).  Leading batch axes of sigma are kept."""
    M = X_MxD.shape[0]
    G_VxD = jnp.einsum("...mv,md->...vd", sigma_MxV, X_MxD, precision=jax.lax.Precision.HIGHEST)
    return Lam / M * jnp.sqrt(jnp.sum(jnp.square(G_VxD), axis=(-2, -1)))


def rademacher_signs(key: PRNGKey, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """i.i.d. uniform ±1 of ``shape``, 32 signs per random uint32 word (the sweep is RNG-bound on CPU
    otherwise).  The bits of threefry output are i.i.d. fair, so each sign is too."""
    n = math.prod(shape)
    words = jax.random.bits(key, (-(-n // 32),), jnp.uint32)
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)[None, :]) & jnp.uint32(1)
    return (2.0 * bits.reshape(-1)[:n].astype(dtype) - 1.0).reshape(shape)


def linear_rc_mc(key: PRNGKey, X_MxD: Array, V: int, Lam, n_sigma: int = 32) -> tuple[Array, Array]:
    """Monte Carlo R̂^vec_S(F_Λ) over n_sigma draws of σ ∈ {±1}^{M×V}, exact sup per draw.

    Returns (mean, standard error).  The draws run one at a time (lax.map) so memory is O(M·V).
    """
    M = X_MxD.shape[0]

    def one(k):
        sigma = rademacher_signs(k, (M, V), X_MxD.dtype)
        return linear_rc_sup(sigma, X_MxD, Lam)

    vals = jax.lax.map(one, jax.random.split(key, n_sigma))
    se = jnp.std(vals, ddof=1) / math.sqrt(n_sigma) if n_sigma > 1 else jnp.asarray(jnp.inf, vals.dtype)
    return jnp.mean(vals), se


def linear_rc_exact(X_MxD, V: int, Lam) -> float:
    """E_σ of :func:`linear_rc_sup` by enumerating all 2^{MV} sign patterns (reference; M·V ≤ 20)."""
    X = np.asarray(X_MxD, np.float64)
    M = X.shape[0]
    n = M * V
    if n > 20:
        raise ValueError(f"linear_rc_exact enumerates 2^(M·V) patterns; M·V must be ≤ 20, got {n}")
    bits = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(np.float64)
    sigma = (2.0 * bits - 1.0).reshape(-1, M, V)
    G = np.einsum("smv,md->svd", sigma, X)
    return float(Lam / M * np.mean(np.sqrt(np.sum(G**2, axis=(1, 2)))))


def linear_rc_jensen(X_MxD: Array, V: int, Lam) -> Array:
    """Certified upper bound of R̂^vec_S(F_Λ): (Λ/M) √(E‖σᵀX‖²_F) = (Λ/M) √(V Σ_m ‖x_m‖²) (Jensen)."""
    M = X_MxD.shape[0]
    return Lam / M * jnp.sqrt(V * jnp.sum(jnp.square(X_MxD)))


def linear_rc_bound(M, V: int, Lam, r=1.0) -> float:
    """The distribution-free bound R̂^vec_S(F_Λ) ≤ Λ r √(V/M) for inputs ‖x‖ ≤ r."""
    check_num_samples(M)
    return float(Lam) * float(r) * math.sqrt(V / M)


def finite_context_rc(context_ids, V: int, c) -> float:
    """Certified upper bound of R̂^vec_S(F_c) for F_c = {all f with |f_k(κ)| ≤ c} on a finite context set:

        E_σ sup_{F_c} (1/M) Σ_m Σ_k σ_mk f_k(κ_m) = (c/M) Σ_κ Σ_k E|Σ_{m: κ_m = κ} σ_mk| ≤ (c V / M) Σ_κ √n_κ.

    context_ids: [M] integer id of each sample's context (equal ids = equal contexts).
    """
    ids = np.asarray(context_ids)
    if ids.ndim != 1 or ids.size < 1:
        raise ValueError(f"context_ids must be a non-empty rank-1 array of context ids, got shape {ids.shape}")
    _, counts = np.unique(ids, return_counts=True)
    return float(c) * V / ids.size * float(np.sum(np.sqrt(counts)))


def enumerate_contexts(V: int, t: int) -> np.ndarray:
    """All V^{t+1} contexts (x_0, …, x_t) as int32 [V^{t+1}, t+1]; row κ has id κ = Σ_j x_j V^j."""
    K = V ** (t + 1)
    if K > 2**20:
        raise ValueError(f"V^(t+1) = {K} contexts is too many to enumerate (V={V}, t={t}); at most 2^20")
    return ((np.arange(K)[:, None] // V ** np.arange(t + 1)[None, :]) % V).astype(np.int32)


def context_id(tokens_MxL: Array, V: int) -> Array:
    """The id Σ_j x_j V^j of each row of tokens (the inverse of :func:`enumerate_contexts`)."""
    return jnp.sum(tokens_MxL * (V ** jnp.arange(tokens_MxL.shape[1], dtype=tokens_MxL.dtype))[None, :], axis=1)


def position_law(logits_KxLxV: Array, t: int) -> tuple[Array, Array]:
    """The exact law at position t of an autoregressive source with x_0 ~ Uniform(V).

    logits_KxLxV: the source's next-token logits for every enumerated context (row j predicts x_{j+1},
    the index convention of DESIGN.md), L ≥ t + 1.  Returns (log P(κ) [K], log p(y | κ) [K, V]):
    log P(κ) = −log V + Σ_{j<t} log p(x_{j+1} | x_{≤j}).
    """
    K, L, V = logits_KxLxV.shape
    if L < t + 1:
        raise ValueError(f"logits must cover rows 0..t={t}, got {L} rows")
    ctx = jnp.asarray(enumerate_contexts(V, t))
    if ctx.shape[0] != K:
        raise ValueError(f"logits must have one row per context: V^(t+1) = {ctx.shape[0]}, got K = {K}")
    logp = log_softmax32(logits_KxLxV)
    steps = jnp.take_along_axis(logp[:, :t, :], ctx[:, 1:, None], axis=-1)[..., 0] if t > 0 else jnp.zeros((K, 0))
    return jnp.sum(steps, axis=1) - jnp.log(jnp.asarray(V, logp.dtype)), logp[:, t, :]


def sample_position(key: PRNGKey, log_P_K: Array, log_p_KxV: Array, M: int) -> tuple[Array, Array]:
    """M i.i.d. (context id, next token) pairs from the exact joint law P(κ) p(y | κ)."""
    K, V = log_p_KxV.shape
    flat = jax.random.categorical(key, (log_P_K[:, None] + log_p_KxV).reshape(-1), shape=(M,))
    return (flat // V).astype(jnp.int32), (flat % V).astype(jnp.int32)


# --------------------------------------------------------------------------------------------------
# The truth: a linear-softmax teacher with exact conditional entropy
# --------------------------------------------------------------------------------------------------


class LinearSoftmaxTeacher:
    """x ~ Uniform(S^{D−1}), y | x ~ softmax(W* x / Ξ).  ``W_star`` [V, D], Ξ > 0 (the paper's temperature).

    The teacher is in the linear class F_Λ whenever ‖W*‖_F / Ξ ≤ Λ, so the best risk in the class is the
    entropy floor H(Y | X) itself.
    """

    def __init__(self, W_star: Array, xi: float = 1.0):
        W_star = jnp.asarray(W_star)
        if W_star.ndim != 2 or W_star.shape[0] < 2:
            raise ValueError(f"W_star must have shape [V ≥ 2, D], got shape {W_star.shape}")
        if not xi > 0:
            raise ValueError(f"xi (the temperature Ξ) must be > 0, got {xi}")
        self.W_star, self.xi = W_star, float(xi)
        self.V, self.D = W_star.shape

    @classmethod
    def create(cls, key: PRNGKey, V: int, D: int, norm: float, xi: float = 1.0) -> LinearSoftmaxTeacher:
        """A random teacher whose effective weights W*/Ξ have Frobenius norm ``norm``."""
        W = jax.random.normal(key, (V, D), jnp.float32)
        return cls(W * (norm * xi / jnp.linalg.norm(W)), xi)

    @property
    def weight_norm(self) -> float:
        """‖W*/Ξ‖_F: the smallest Λ whose linear class contains the teacher."""
        return float(jnp.linalg.norm(self.W_star) / self.xi)

    def logits(self, X_MxD: Array) -> Array:
        return X_MxD @ self.W_star.T.astype(X_MxD.dtype) / self.xi

    def sample_x(self, key: PRNGKey, M: int) -> Array:
        return sphere(jax.random.normal(key, (M, self.D), jnp.float32))

    def sample(self, key: PRNGKey, M: int) -> tuple[Array, Array]:
        """(X [M, D] on the sphere, y [M] int32)."""
        kx, ky = jax.random.split(key)
        X = self.sample_x(kx, M)
        return X, jax.random.categorical(ky, self.logits(X), axis=-1).astype(jnp.int32)

    def conditional_entropy(self, X_MxD: Array) -> Array:
        """H(Y | X = x_m) per sample, exact: [M]."""
        logp = log_softmax32(self.logits(X_MxD))
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

    def expected_cross_entropy(self, model_logits_MxV: Array, X_MxD: Array) -> Array:
        """E_{y ~ P(·|x_m)} −log q(y | x_m) per sample, exact over y: [M].  ≥ H(Y | X = x_m)."""
        p = jnp.exp(log_softmax32(self.logits(X_MxD)))
        return -jnp.sum(p * log_softmax32(model_logits_MxV), axis=-1)


# --------------------------------------------------------------------------------------------------
# One trial: fit on S (projected gradient descent in the Λ-ball), measure everything
# --------------------------------------------------------------------------------------------------


def ce_grad_linear(W_VxD: Array, X_MxD: Array, y_M: Array) -> Array:
    """∇_W (1/M) Σ_m ℓ(W x_m, y_m) = (softmax(XWᵀ) − onehot(y))ᵀ X / M (hand-written; tested vs autodiff)."""
    M, V = X_MxD.shape[0], W_VxD.shape[0]
    P_MxV = jax.nn.softmax(X_MxD @ W_VxD.T, axis=-1)
    return (P_MxV - jax.nn.one_hot(y_M, V, dtype=P_MxV.dtype)).T @ X_MxD / M


def _project_ball(W: Array, Lam) -> Array:
    n = jnp.linalg.norm(W)
    return W * jnp.minimum(1.0, Lam / jnp.maximum(n, jnp.finfo(W.dtype).tiny))


def fit_linear_softmax(X_MxD: Array, y_M: Array, V: int, Lam, *, steps: int = 100, lr: float = 2.0) -> Array:
    """Empirical risk minimization over F_Λ by projected gradient descent from W = 0.

    The mean cross-entropy is (r²/2)-smooth in W (softmax covariance ≤ 1/2, ‖x‖ ≤ r = 1), so lr = 2 = 1/L
    is a safe step.  It need not reach the minimizer: the rigorous bound holds for every f ∈ F_Λ.
    """
    W0 = jnp.zeros((V, X_MxD.shape[1]), X_MxD.dtype)

    def step(W, _):
        return _project_ball(W - lr * ce_grad_linear(W, X_MxD, y_M), Lam), None

    return jax.lax.scan(step, W0, None, length=steps)[0]


def linear_trial(key: PRNGKey, W_star: Array, X_fresh: Array, *, M: int, Lam: float, xi: float = 1.0,
                 steps: int = 100, lr: float = 2.0, n_sigma: int = 16) -> dict[str, Array]:
    """One repeat: draw S of size M from the teacher, fit over F_Λ, return the scalars every bound needs.

    Keys: empirical (L̂_S), true_risk (exact over y on X_fresh), floor (H(Y|X) on X_fresh), paper_logit
    ((2√2/M) Σ|z_m^ħ|, raw gauge; projected GD from W = 0 keeps Σ_k W_k = 0, so raw = centered),
    paper_logit_logprob (the log-probability gauge, = 2√2 L̂), rc_mc, rc_mc_se, rc_jensen,
    max_abs_logit (on S), w_norm.
    """
    teacher = LinearSoftmaxTeacher(W_star, xi)
    k_s, k_sigma = jax.random.split(key)
    X, y = teacher.sample(k_s, M)
    W = fit_linear_softmax(X, y, teacher.V, Lam, steps=steps, lr=lr)
    z_MxV = X @ W.T
    rc_mc, rc_se = linear_rc_mc(k_sigma, X, teacher.V, Lam, n_sigma)
    return {
        "empirical": jnp.mean(cross_entropy(z_MxV, y)),
        "true_risk": jnp.mean(teacher.expected_cross_entropy(X_fresh @ W.T, X_fresh)),
        "floor": jnp.mean(teacher.conditional_entropy(X_fresh)),
        "paper_logit": PAPER_RC_FACTOR * jnp.mean(jnp.abs(target_logit(z_MxV, y))),
        "paper_logit_logprob": PAPER_RC_FACTOR * jnp.mean(jnp.abs(target_logit(z_MxV, y, gauge="logprob"))),
        "rc_mc": rc_mc,
        "rc_mc_se": rc_se,
        "rc_jensen": linear_rc_jensen(X, teacher.V, Lam),
        "max_abs_logit": jnp.max(jnp.abs(z_MxV)),
        "w_norm": jnp.linalg.norm(W),
    }


def linear_sweep(key: PRNGKey, teacher: LinearSoftmaxTeacher, X_fresh: Array, *, M: int, R: int, Lam: float,
                 steps: int = 100, lr: float = 2.0, n_sigma: int = 16,
                 batch_size: int | None = None) -> dict[str, Array]:
    """R independent repeats of :func:`linear_trial` at one M in one jitted call, vmapped in chunks of
    ``batch_size`` repeats via lax.map (default: 1 on CPU, where it measured fastest; memory-bounded
    chunks elsewhere).  Returns arrays of shape [R]."""
    check_num_samples(M)
    check_num_samples(R, "R")
    if batch_size is None:
        # measured on 2 CPU cores (M=1000, R=32): sequential repeats inside one jit beat vmapped chunks
        # (0.46 s for 1 vs 0.88 s for 32); accelerators get vmapped chunks bounded by memory.
        batch_size = 1 if jax.default_backend() == "cpu" else max(1, min(R, int(2**22 // max(M * teacher.D, 1))))
    bs = batch_size
    fn = _sweep_fn(M, float(Lam), teacher.xi, steps, float(lr), n_sigma, bs)
    return fn(jax.random.split(key, R), teacher.W_star, X_fresh)


# Jitted sweeps keyed by their static hyperparameters; bounded, since every (M, Λ, …) of a sweep over M
# compiles its own and an unbounded map would keep them all for the life of the process.
_SWEEP_CACHE = LRUCache(8)


def _sweep_fn(M, Lam, xi, steps, lr, n_sigma, bs):
    def make():
        def f(keys, W_star, X_fresh):
            def trial(kk):
                return linear_trial(kk, W_star, X_fresh, M=M, Lam=Lam, xi=xi, steps=steps, lr=lr, n_sigma=n_sigma)

            return jax.lax.map(trial, keys, batch_size=bs)

        return jax.jit(f)

    return _SWEEP_CACHE.get_or_create((M, Lam, xi, steps, lr, n_sigma, bs), make)


def linear_sweep_reference(key: PRNGKey, teacher: LinearSoftmaxTeacher, X_fresh: Array, *, M: int, R: int,
                           Lam: float, steps: int = 100, lr: float = 2.0, n_sigma: int = 16) -> dict[str, Array]:
    """Plain reference for :func:`linear_sweep`: a Python loop over repeats, one trial at a time (no
    vmap, no lax.map chunking; each trial is jitted only so that the reference runs in test time)."""
    ck = ("ref", M, float(Lam), teacher.xi, steps, float(lr), n_sigma)
    xi = teacher.xi  # not the teacher: a cached closure must not keep it alive
    trial = _SWEEP_CACHE.get_or_create(ck, lambda: jax.jit(
        lambda k, W, Xf: linear_trial(k, W, Xf, M=M, Lam=Lam, xi=xi, steps=steps, lr=lr, n_sigma=n_sigma)))
    outs = [trial(k, teacher.W_star, X_fresh) for k in jax.random.split(key, R)]
    return {name: jnp.stack([o[name] for o in outs]) for name in outs[0]}


# --------------------------------------------------------------------------------------------------
# Judging a bound
# --------------------------------------------------------------------------------------------------


def violation_rate(true_risk, bound_total) -> float:
    """Fraction of repeats in which the bound is below the true risk."""
    t, b = np.asarray(true_risk), np.asarray(bound_total)
    if t.shape != b.shape or t.ndim != 1:
        raise ValueError(f"true_risk and bound_total must be rank-1 of equal shape, got {t.shape}, {b.shape}")
    return float(np.mean(t > b))


def violation_tolerance(delta: float, R: int) -> float:
    """δ + 3 √(δ(1−δ)/R): a 3-standard-error allowance on the violation rate of a valid bound."""
    delta = check_delta(delta)
    R = check_num_samples(R, "R")
    return delta + 3.0 * math.sqrt(delta * (1.0 - delta) / R)
