"""LLaDA: masked diffusion with a bidirectional TV-VAR (Bai, arXiv:2511.01202, Section V-G-2, Eq. 79).

LLaDA keeps the TV-VAR core of Eq. 44 and drops the causal mask: every position sees every other one,
S(i) = all j. A token x_i that is hidden behind the mask token M is predicted from the unmasked ones,

    L(Φ) = −E_{τ, U^τ, U^0} [ (1/τ) Σ_t 1(U^τ_t = M) log P(U^0_t | U^τ; Φ) ]          (Eq. 79)

where U^0 = x is a clean sequence and U^τ masks each position independently with probability τ.

What is here, in the order of the docstrings below:

1. **The wrapper** :class:`MaskedDiffusionLM` around :class:`tvvar.model.TVVARModel` (any registered
   decomposition run with ``mask="bidirectional"``), and the functional interface every other function
   uses: a *denoiser* ``logits_fn(ids [B, L]) -> logits [B, L, V]`` where ids take values in
   {0..V−1} ∪ {M = V}.
2. **The forward process** — τ ~ U(0, 1), p_mask = (1 − ε)τ + ε, independent Bernoulli(p_mask) masking,
   stratified τ across the batch as an option; the Eq. 79 loss and its conditional (SFT) variant.
3. **Likelihoods** — upper bounds on −log p(x): (a) the Monte Carlo 1/τ estimator; (b) the
   low-variance estimator (exactly ℓ ~ U{1..L} positions masked, weight L/ℓ); (c) the exact negative
   ELBO by enumeration of all mask sets (small L); and the any-order autoregressive reference.
4. **Samplers** — the reverse process with semi-autoregressive blocks, low-confidence or random
   remasking, Gumbel temperature, and classifier-free guidance.

Index convention. Unlike the causal model (DESIGN.md: row i predicts token i + 1), the diffusion
wrapper's logits row i is the distribution of the token *at* position i: position i holds M and the
bidirectional mixer reads every position, so there is no shift.

The mask token's logit is never predicted: the inner model has V + 1 token vectors (the last one is
ũ_M, the input embedding of the mask) and the wrapper returns the first V readout logits only, so the
softmax runs over the real vocabulary and P(M) is exactly 0.

Positions: a bidirectional attention mixer is permutation-equivariant, so without position vectors it
cannot tell positions apart. Give the model config a ``max_len`` (learned absolute positions), or use a
position-aware decomposition (e.g. ``"dense"``); the wrapper warns otherwise.
"""

from __future__ import annotations

import inspect
import math
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy.special import betainc, comb

from tvvar.core import LRUCache, argsoftmax, check_token_ids, log_softmax32
from tvvar.model import ModelConfig, TVVARModel
from tvvar.typing import Array, PRNGKey

__all__ = [
    "DEFAULT_EPS",
    "REMASKING",
    "LogitsFn",
    "MaskedDiffusionLM",
    "as_denoiser",
    "sample_mask_probs",
    "mask_tokens",
    "mask_exactly",
    "masked_token_nll",
    "weighted_masked_loss",
    "diffusion_loss",
    "Likelihood",
    "nelbo_mc",
    "nelbo_count",
    "nelbo_exact",
    "subset_weights",
    "any_order_nll",
    "reveal_schedule",
    "generate",
    "llada_objective",
    "llada_model_config",
    "MaskTokenSource",
]

DEFAULT_EPS = 1e-3
REMASKING = ("low_confidence", "random")
LogitsFn = Callable[[Array], Array]
_LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------------
# 1. The wrapper: a bidirectional TV-VAR with one extra input token (the mask)
# --------------------------------------------------------------------------------------------------


class MaskedDiffusionLM(nnx.Module):
    """The LLaDA denoiser: ids [B, L] in {0..V} (V is the mask M) → logits [B, L, V] (float32).

    ``cfg`` describes the model over the real vocabulary (``cfg.vocab_size`` = V); the inner
    :class:`TVVARModel` is built with ``vocab_size=V+1`` and ``mask="bidirectional"``, whatever ``cfg.mask``
    says. The readout logit of M is dropped (sliced away), so the mask is never predicted.
    Row i of the logits is the prediction of the token at position i (no causal shift).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg must be a tvvar.model.ModelConfig, got {type(cfg).__name__}")
        if cfg.max_len is None and cfg.decomposition != "dense":
            warnings.warn(
                "MaskedDiffusionLM: cfg.max_len is None, so the model has no position vectors and a "
                "bidirectional attention mixer cannot tell positions apart; set max_len.",
                stacklevel=2,
            )
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.mask_id = cfg.vocab_size
        self.inner = TVVARModel(cfg.replace(vocab_size=cfg.vocab_size + 1, mask="bidirectional"), rngs=rngs)

    def __call__(self, ids: Array) -> Array:
        return self.inner(ids)[..., : self.vocab_size]


def as_denoiser(model) -> tuple[LogitsFn, int]:
    """(logits_fn, V) for a :class:`MaskedDiffusionLM` or a bidirectional :class:`TVVARModel`.

    A bare TVVARModel must be bidirectional; its last token id is taken as the mask and its logit is
    sliced away exactly as in the wrapper (so its data vocabulary is ``cfg.vocab_size − 1``).
    """
    if isinstance(model, MaskedDiffusionLM):
        return model, model.vocab_size
    if isinstance(model, TVVARModel):
        if model.cfg.mask != "bidirectional":
            raise ValueError("model must be bidirectional (ModelConfig(mask='bidirectional')) to act as a LLaDA "
                             f"denoiser, got mask={model.cfg.mask!r}")
        V = model.cfg.vocab_size - 1
        return (lambda ids: model(ids)[..., :V]), V
    raise TypeError(f"model must be a MaskedDiffusionLM or a bidirectional TVVARModel, got {type(model).__name__}")


# --------------------------------------------------------------------------------------------------
# 2. The forward process and the loss of Eq. 79
# --------------------------------------------------------------------------------------------------


def _check_eps(eps: float) -> float:
    if not (isinstance(eps, (int, float)) and 0.0 <= eps < 1.0):
        raise ValueError(f"eps must be a number in [0, 1), got {eps!r}")
    return float(eps)


def _check_ids(x: Array, name: str = "x", *, vocab_size: int | None = None) -> None:
    """x: integer [B, L]; with ``vocab_size`` (= the mask id M) concrete values must lie in [0, M]."""
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"{name} must have shape [B, L] (rank 2), got shape {getattr(x, 'shape', None)}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array of token ids, got dtype {x.dtype}")
    if vocab_size is not None:
        check_token_ids(x, vocab_size, name=name, ndim=2)


def _check_mask_id(mask_id: int) -> int:
    if not (isinstance(mask_id, (int, np.integer)) and not isinstance(mask_id, bool) and mask_id >= 1):
        raise ValueError(f"mask_id must be an int ≥ 1 (the mask token M = V, one past the data vocabulary), "
                         f"got {mask_id!r}")
    return int(mask_id)


def _check_clean(x: Array, mask_id: int, name: str = "x") -> int:
    """Clean sequences for a likelihood: integer [B, L] with concrete ids in [0, V = mask_id) (no mask)."""
    mask_id = _check_mask_id(mask_id)
    _check_ids(x, name, vocab_size=mask_id)
    return mask_id


def _check_rates(p: Array, B: int, *, name: str, low_open: bool) -> None:
    """Masking probabilities [B]: concrete values must lie in [0, 1] ((0, 1] when they divide the loss)."""
    if getattr(p, "shape", None) != (B,):
        raise ValueError(f"{name} must have shape [B={B}], got {getattr(p, 'shape', None)}")
    if isinstance(p, jax.core.Tracer):
        return
    a = np.asarray(p, np.float64)
    lo_ok = a > 0 if low_open else a >= 0
    if not np.all(np.isfinite(a) & lo_ok & (a <= 1)):
        bad = a[~(np.isfinite(a) & lo_ok & (a <= 1))][:3].tolist()
        rng = "(0, 1] (it divides the loss: 1/p)" if low_open else "[0, 1]"
        raise ValueError(f"{name} must lie in {rng}, got e.g. {bad}")


def sample_mask_probs(key: PRNGKey, n: int, *, eps: float = DEFAULT_EPS, stratified: bool = False) -> Array:
    """p_mask = (1 − ε)τ + ε for n draws of τ ~ U(0, 1): float32 [n].

    ``stratified=True``: τ_b = frac(U + b/n) with one U ~ U(0, 1) — every τ_b is still U(0, 1), but the n
    values are evenly spread over [0, 1) (a low-discrepancy / antithetic draw, lower variance of the
    batch mean). ε keeps 1/p_mask bounded (the 1/τ weight of Eq. 79 has infinite variance at ε = 0).
    """
    eps = _check_eps(eps)
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be an int ≥ 1, got {n!r}")
    if stratified:
        u = jax.random.uniform(key, (), jnp.float32)
        tau = jnp.mod(u + jnp.arange(n, dtype=jnp.float32) / n, 1.0)
    else:
        tau = jax.random.uniform(key, (n,), jnp.float32)
    return (1.0 - eps) * tau + eps


def _prompt_mask(prompt_mask: Array | None, shape: tuple[int, int]) -> Array:
    if prompt_mask is None:
        return jnp.zeros(shape, bool)
    pm = jnp.asarray(prompt_mask)
    if pm.dtype != jnp.bool_:
        raise TypeError(f"prompt_mask must be a boolean array (True = prompt, never masked), got dtype {pm.dtype}")
    if pm.ndim == 1:
        pm = pm[None, :]
    if pm.ndim != 2 or pm.shape[1] != shape[1] or pm.shape[0] not in (1, shape[0]):
        raise ValueError(f"prompt_mask must have shape [B={shape[0]}, L={shape[1]}] or [L], got {prompt_mask.shape}")
    return jnp.broadcast_to(pm, shape)


def mask_tokens(key: PRNGKey, x: Array, p_mask: Array, mask_id: int, *, prompt_mask: Array | None = None):
    """The forward process: each non-prompt position of x [B, L] is replaced by M independently with
    probability p_mask[b]. Returns (x_t [B, L], masked bool [B, L])."""
    _check_ids(x)
    B, L = x.shape
    _check_rates(p_mask, B, name="p_mask", low_open=False)
    masked = jax.random.uniform(key, (B, L), jnp.float32) < p_mask[:, None].astype(jnp.float32)
    masked = masked & ~_prompt_mask(prompt_mask, (B, L))
    return jnp.where(masked, jnp.asarray(mask_id, x.dtype), x), masked


def mask_exactly(key: PRNGKey, x: Array, num_masked: Array, mask_id: int, *, prompt_mask: Array | None = None):
    """Mask exactly ``num_masked[b]`` positions of row b, a uniformly random subset of its non-prompt
    positions. Returns (x_t, masked)."""
    _check_ids(x)
    B, L = x.shape
    if getattr(num_masked, "shape", None) != (B,):
        raise ValueError(f"num_masked must have shape [B={B}], got {getattr(num_masked, 'shape', None)}")
    pm = _prompt_mask(prompt_mask, (B, L))
    # a random ranking of the maskable positions; prompt positions rank last and are never chosen
    scores = jnp.where(pm, jnp.inf, jax.random.uniform(key, (B, L), jnp.float32))
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    masked = (rank < num_masked[:, None]) & ~pm
    return jnp.where(masked, jnp.asarray(mask_id, x.dtype), x), masked


def masked_token_nll(logits: Array, x: Array, masked: Array) -> Array:
    """−log q(x_i | x_t) on masked positions, 0 elsewhere: [B, L] in float32 (float64 for float64 logits)."""
    if logits.ndim != 3 or logits.shape[:2] != x.shape:
        raise ValueError(f"logits must have shape [B, L, V] with [B, L] = {x.shape}, got {logits.shape}")
    logp = log_softmax32(logits)
    nll = -jnp.take_along_axis(logp, x[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.where(masked, nll, 0.0)


def weighted_masked_loss(logits: Array, x: Array, masked: Array, p_mask: Array, *,
                         prompt_mask: Array | None = None) -> Array:
    """The Monte Carlo value of Eq. 79 for one draw: the masked cross-entropies weighted by 1/p_mask.

    Without a prompt (pre-training):  (1 / (B·L)) Σ_b Σ_i 1[masked_bi] (−log q(x_bi | x_t)) / p_b.
    With ``prompt_mask`` (SFT, the prompt is never masked and never scored):
        (1 / B) Σ_b (1 / L^ans_b) Σ_i 1[masked_bi ∧ ¬prompt_bi] (−log q(x_bi | x_t)) / p_b,
    L^ans_b = the number of non-prompt positions of row b (rows without an answer contribute 0).
    """
    _check_ids(x)
    B, L = x.shape
    _check_rates(p_mask, B, name="p_mask", low_open=True)
    nll = masked_token_nll(logits, x, masked)
    # a traced p = 0 masks nothing (u < 0 never holds): its row contributes 0, not 0/0
    p = p_mask.astype(nll.dtype)[:, None]
    w = jnp.where(masked, nll / jnp.where(p > 0, p, 1.0), 0.0)
    if prompt_mask is None:
        return jnp.sum(w) / (B * L)
    pm = _prompt_mask(prompt_mask, (B, L))
    answer_len = jnp.sum(~pm, axis=-1).astype(nll.dtype)
    per_row = jnp.sum(jnp.where(pm, 0.0, w), axis=-1) / jnp.maximum(answer_len, 1.0)
    return jnp.mean(per_row)


def diffusion_loss(logits_fn: LogitsFn, x: Array, key: PRNGKey, *, mask_id: int, eps: float = DEFAULT_EPS,
                   stratified: bool = False, prompt_mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """One Monte Carlo draw of the LLaDA loss (Eq. 79) on clean sequences x [B, L].

    τ ~ U(0, 1) per row (stratified across the batch if asked), p = (1 − ε)τ + ε, Bernoulli(p) masking of
    the non-prompt positions, one denoiser call, :func:`weighted_masked_loss`. Returns (loss, metrics).
    """
    _check_ids(x)
    k_t, k_m = jax.random.split(key)
    p = sample_mask_probs(k_t, x.shape[0], eps=eps, stratified=stratified)
    x_t, masked = mask_tokens(k_m, x, p, mask_id, prompt_mask=prompt_mask)
    logits = logits_fn(x_t)
    loss = weighted_masked_loss(logits, x, masked, p, prompt_mask=prompt_mask)
    n_masked = jnp.sum(masked)
    nll = masked_token_nll(logits, x, masked)
    metrics = {
        "loss": loss,
        "masked_fraction": n_masked / masked.size,
        "masked_token_nll": jnp.sum(nll) / jnp.maximum(n_masked, 1),
        "masked_token_accuracy": jnp.sum((jnp.argmax(logits, -1) == x) & masked) / jnp.maximum(n_masked, 1),
    }
    return loss, metrics


# --------------------------------------------------------------------------------------------------
# 3. Likelihoods: upper bounds on −log p(x) (the negative ELBO)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Likelihood:
    """A negative-ELBO estimate (an upper bound on −log p; in expectation for the MC estimators).

    ``nats`` [B]: the bound on −log q(x_b) (total over the scored positions, the answer if a prompt);
    ``samples`` [S, B]: the per-draw values (None for the exact bound); ``num_tokens``: scored
    positions per sequence. Per-token figures average over the batch and its tokens.
    """

    nats: np.ndarray
    num_tokens: int
    samples: np.ndarray | None = None
    method: str = ""

    @property
    def nats_per_token(self) -> float:
        return float(np.mean(self.nats)) / self.num_tokens

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / _LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token)

    @property
    def stderr_nats_per_token(self) -> float:
        """Standard error of ``nats_per_token`` (0 for the exact bound). For stratified draws this is the
        i.i.d. formula and so conservative."""
        if self.samples is None:
            return 0.0
        S = self.samples.shape[0]
        if S < 2:
            return float("nan")
        per_draw = np.mean(self.samples, axis=1) / self.num_tokens  # [S]
        return float(np.std(per_draw, ddof=1) / math.sqrt(S))

    def summary(self) -> dict[str, float]:
        return {"nats_per_token": self.nats_per_token, "bits_per_token": self.bits_per_token,
                "perplexity": self.perplexity, "stderr_nats_per_token": self.stderr_nats_per_token,
                "num_tokens": self.num_tokens}


def _check_prompt_length(prompt_length: int, L: int) -> int:
    if not (isinstance(prompt_length, (int, np.integer)) and 0 <= prompt_length < L):
        raise ValueError(f"prompt_length must be an int in [0, L={L}) (at least one scored position), "
                         f"got {prompt_length!r}")
    return int(prompt_length)


def _check_samples(num_samples: int, chunk: int | None) -> int:
    if not (isinstance(num_samples, (int, np.integer)) and num_samples >= 1):
        raise ValueError(f"num_samples must be an int ≥ 1, got {num_samples!r}")
    if chunk is not None and not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be an int ≥ 1 or None, got {chunk!r}")
    return int(num_samples)


def _per_draw(mask_fn, key, x, start, per_draw):
    """Draw s (global index) masks x with ``fold_in(key, s)``, so a draw never depends on which chunk holds
    it: ([n·B, L] clean, masked input, mask), draw-major rows (row s·B + b)."""
    B, L = x.shape
    n = per_draw.shape[0]
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(start + jnp.arange(n))
    x_t, masked = jax.vmap(lambda k, v: mask_fn(k, x, jnp.broadcast_to(v, (B,))))(keys, per_draw)
    return jnp.tile(x, (n, 1)), x_t.reshape(n * B, L), masked.reshape(n * B, L)


@partial(jax.jit, static_argnames=("mask_id", "P"))
def _mc_draw(key, x, start, p_all, *, mask_id, P):
    """Draws start..start+n−1 of estimator (a) for every row of x [B, L] at once: ([n·B, L] x_t, weight)."""
    B, L = x.shape
    pm = jnp.arange(L) < P
    xs, x_t, masked = _per_draw(lambda k, xx, p: mask_tokens(k, xx, p, mask_id, prompt_mask=pm), key, x, start, p_all)
    p = jnp.repeat(p_all, B)
    return xs, x_t, jnp.where(masked, 1.0 / p[:, None], 0.0)


@partial(jax.jit, static_argnames=("mask_id", "P"))
def _count_draw(key, x, start, ell_all, *, mask_id, P):
    """The same for estimator (b): exactly ℓ answer positions masked, weight (L − P)/ℓ."""
    B, L = x.shape
    pm = jnp.arange(L) < P
    xs, x_t, masked = _per_draw(lambda k, xx, n: mask_exactly(k, xx, n, mask_id, prompt_mask=pm), key, x, start,
                                ell_all)
    ell = jnp.repeat(ell_all, B)
    return xs, x_t, jnp.where(masked, ((L - P) / ell.astype(jnp.float32))[:, None], 0.0)


@jax.jit
def _weighted_nll(logits, xs, weight):
    return jnp.sum(masked_token_nll(logits, xs, weight > 0) * weight, axis=-1)


def _draw_estimates(logits_fn: LogitsFn, x: Array, key: PRNGKey, per_draw: Array, chunk: int | None,
                    draw: Callable) -> np.ndarray:
    """[S, B]: for each chunk of c draws, ``draw(key, x, start, per_draw[start:start+c])`` masks the tiled
    batch; each value is Σ_i weight_i · (−log q(x_i | x_t)), one ``logits_fn`` call per chunk."""
    B = x.shape[0]
    S = per_draw.shape[0]
    c = S if chunk is None else min(chunk, S)
    out = []
    for start in range(0, S, c):
        xs, x_t, weight = draw(key, x, start, per_draw[start:start + c])
        out.append(np.asarray(_weighted_nll(logits_fn(x_t), xs, weight)).reshape(-1, B))
    return np.concatenate(out, axis=0)


def nelbo_mc(logits_fn: LogitsFn, x: Array, key: PRNGKey, *, mask_id: int, num_samples: int,
             eps: float = DEFAULT_EPS, stratified: bool = False, prompt_length: int = 0,
             chunk: int | None = None) -> Likelihood:
    """Estimator (a): the 1/τ Monte Carlo estimator of the negative ELBO (Eq. 79 as a likelihood bound).

    Each draw: τ ~ U(0, 1), p = (1 − ε)τ + ε, Bernoulli(p) masking of the answer positions,
    value (1/p) Σ_{i masked} −log q(x_i | x_t). Its expectation is Σ_M w_ε(|M|) Σ_{i∈M} −log q(x_i | x_{−M})
    with w_ε of :func:`subset_weights` (→ the exact NELBO as ε → 0; the difference is O(ε)).
    ``stratified``: the S draws of τ are evenly spread (:func:`sample_mask_probs`), per sequence.
    ``chunk``: draws per denoiser call (memory); the values do not depend on it (draw s uses the key
    ``fold_in(key, s)`` whatever chunk holds it).
    """
    mask_id = _check_clean(x, mask_id)
    B, L = x.shape
    P = _check_prompt_length(prompt_length, L)
    S = _check_samples(num_samples, chunk)
    k_t, k_m = jax.random.split(key)
    # one (stratified) set of S mask rates, shared by every sequence (indexed by the draw number)
    p_all = sample_mask_probs(k_t, S, eps=eps, stratified=stratified)
    draw = partial(_mc_draw, mask_id=int(mask_id), P=P)
    samples = _draw_estimates(logits_fn, x, k_m, p_all, chunk, draw)
    return Likelihood(samples.mean(axis=0), L - P, samples, "mc_1/tau" + ("_stratified" if stratified else ""))


def nelbo_count(logits_fn: LogitsFn, x: Array, key: PRNGKey, *, mask_id: int, num_samples: int,
                stratified: bool = True, prompt_length: int = 0, chunk: int | None = None) -> Likelihood:
    """Estimator (b), the low-variance one: ℓ ~ U{1..L}, exactly ℓ positions masked (a uniform random
    subset), value (L/ℓ) Σ_{i masked} −log q(x_i | x_t). Unbiased for the exact NELBO:
    Σ_ℓ (1/L)(L/ℓ) C(L, ℓ)⁻¹ Σ_{|M|=ℓ} Σ_{i∈M} = Σ_M 1/(|M| C(L, |M|)) Σ_{i∈M}.

    ``stratified`` (default, as LLaDA evaluates): ℓ_s = ((k + ⌊s·L/S⌋) mod L) + 1 with one k ~ U{0..L−1},
    so each ℓ_s is still uniform but the S draws cover 1..L evenly. L is the answer length with a prompt.
    ``chunk``: draws per denoiser call; as for :func:`nelbo_mc`, the values do not depend on it.
    """
    mask_id = _check_clean(x, mask_id)
    B, L = x.shape
    P = _check_prompt_length(prompt_length, L)
    S = _check_samples(num_samples, chunk)
    La = L - P
    k_l, k_m = jax.random.split(key)
    if stratified:
        k0 = jax.random.randint(k_l, (), 0, La)
        ell_all = (k0 + (jnp.arange(S) * La) // S) % La + 1
    else:
        ell_all = jax.random.randint(k_l, (S,), 1, La + 1)
    draw = partial(_count_draw, mask_id=int(mask_id), P=P)
    samples = _draw_estimates(logits_fn, x, k_m, ell_all, chunk, draw)
    return Likelihood(samples.mean(axis=0), La, samples, "count_L/l" + ("_stratified" if stratified else ""))


def subset_weights(L: int, eps: float = 0.0) -> np.ndarray:
    """w[m] (m = 0..L, w[0] = 0): the weight of each mask set M with |M| = m in the negative ELBO.

    ε = 0: w(m) = ∫₀¹ t^{m−1}(1 − t)^{L−m} dt = 1 / (m · C(L, m)) — the exact NELBO.
    ε > 0: w_ε(m) = E_{τ~U(0,1)}[p^{m−1}(1 − p)^{L−m}], p = (1 − ε)τ + ε — the expectation of
    estimator (a) with that ε, = B(m, L−m+1)(1 − I_ε(m, L−m+1)) / (1 − ε) (regularized incomplete beta).
    """
    eps = _check_eps(eps)
    m = np.arange(1, L + 1)
    w = 1.0 / (m * comb(L, m, exact=False))
    if eps > 0:
        w = w * (1.0 - betainc(m, L - m + 1, eps)) / (1.0 - eps)
    return np.concatenate([[0.0], w])


def _all_masks(L: int, P: int) -> np.ndarray:
    """Every non-empty subset of the answer positions {P..L−1} as a bool [2^(L−P) − 1, L]."""
    La = L - P
    codes = np.arange(1, 2**La)
    bits = ((codes[:, None] >> np.arange(La)[None, :]) & 1).astype(bool)
    return np.concatenate([np.zeros((len(codes), P), bool), bits], axis=1)


def nelbo_exact(logits_fn: LogitsFn, x: Array, *, mask_id: int, prompt_length: int = 0, eps: float = 0.0,
                max_answer_length: int = 16, chunk: int = 4096) -> Likelihood:
    """Estimator (c): the exact negative ELBO by enumeration of all 2^L − 1 mask sets,

        NELBO(x) = Σ_{∅≠M⊆[L]} 1/(|M|·C(L, |M|)) Σ_{i∈M} −log q(x_i | x_{−M}),

    (M ranges over subsets of the answer positions with a prompt; L is then the answer length).
    It equals the any-order autoregressive loss averaged over all L! orders (:func:`any_order_nll`)
    for any denoiser. ``eps > 0`` gives the exact expectation of estimator (a) instead (see
    :func:`subset_weights`). Refuses answers longer than ``max_answer_length``.
    """
    mask_id = _check_clean(x, mask_id)
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be an int ≥ 1, got {chunk!r}")
    B, L = x.shape
    P = _check_prompt_length(prompt_length, L)
    La = L - P
    if La > max_answer_length:
        raise ValueError(f"nelbo_exact enumerates 2^{La} mask sets; the answer length L−prompt_length={La} exceeds "
                         f"max_answer_length={max_answer_length}")
    masks = _all_masks(L, P)
    nM = len(masks)
    w = jnp.asarray(subset_weights(La, eps)[masks.sum(axis=1)])  # [nM]
    masks_j = jnp.asarray(masks)
    totals = []
    if nM >= chunk:  # one sequence at a time, its mask sets in chunks
        for b in range(B):
            tot = 0.0
            for s in range(0, nM, chunk):
                xs, x_t, m = _enumerate_draw(x[b:b + 1], masks_j[s:s + chunk], mask_id=int(mask_id))
                tot = tot + jnp.sum(_weighted_nll(logits_fn(x_t), xs, m.astype(w.dtype) * w[s:s + chunk][:, None]))
            totals.append(jnp.reshape(tot, (1,)))
    else:  # several sequences per denoiser call
        g = max(1, chunk // nM)
        for b in range(0, B, g):
            xb = x[b:b + g]
            xs, x_t, m = _enumerate_draw(xb, masks_j, mask_id=int(mask_id))
            wt = jnp.tile(w, xb.shape[0])[:, None] * m.astype(w.dtype)
            totals.append(jnp.sum(_weighted_nll(logits_fn(x_t), xs, wt).reshape(xb.shape[0], nM), axis=1))
    return Likelihood(np.asarray(jnp.concatenate(totals)), La, None, "exact" if eps == 0 else f"exact_eps={eps:g}")


@partial(jax.jit, static_argnames=("mask_id",))
def _enumerate_draw(x, masks, *, mask_id):
    """Every row of x [g, L] under every mask set [n, L]: ([g·n, L] clean, masked input, mask)."""
    g, L = x.shape
    xs = jnp.repeat(x, masks.shape[0], axis=0)
    m = jnp.tile(masks, (g, 1))
    return xs, jnp.where(m, jnp.asarray(mask_id, x.dtype), xs), m


def any_order_nll(logits_fn: LogitsFn, x: Array, *, mask_id: int, prompt_length: int = 0,
                  max_answer_length: int = 7) -> np.ndarray:
    """Reference: the any-order autoregressive loss averaged over all orders σ of the answer positions,

        (1/L!) Σ_σ Σ_{k=1}^{L} −log q(x_{σ(k)} | x_{σ(<k)})    [B] (nats per sequence),

    where q(· | x_S) is the denoiser with every position outside S (and the prompt) masked. Plain
    loops over permutations, for small L (tests).
    """
    import itertools

    mask_id = _check_clean(x, mask_id)
    B, L = x.shape
    P = _check_prompt_length(prompt_length, L)
    La = L - P
    if La > max_answer_length:
        raise ValueError(f"any_order_nll loops over {La}! orders; answer length {La} exceeds "
                         f"max_answer_length={max_answer_length}")
    total = np.zeros(B)
    orders = list(itertools.permutations(range(P, L)))
    for order in orders:
        masked = np.zeros(L, bool)
        masked[P:] = True
        for i in order:
            x_t = jnp.where(jnp.asarray(masked)[None], jnp.asarray(mask_id, x.dtype), x)
            logp = log_softmax32(logits_fn(x_t))
            total = total - np.asarray(logp[jnp.arange(B), i, x[:, i]], np.float64)
            masked[i] = False
    return total / len(orders)


# --------------------------------------------------------------------------------------------------
# 4. Samplers: the reverse process
# --------------------------------------------------------------------------------------------------


def reveal_schedule(num_masked: int, steps: int) -> tuple[int, ...]:
    """How many tokens each of ``steps`` steps reveals: equal shares, the remainder to the earliest steps
    (e.g. 10 tokens in 4 steps → (3, 3, 2, 2))."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an int ≥ 1, got {steps!r}")
    base, rem = divmod(num_masked, steps)
    return tuple(base + (1 if s < rem else 0) for s in range(steps))


def _reveal_body(x: Array, logits: Array, key: PRNGKey, step: Array, lo: Array, hi: Array, *, n_reveal: int,
                 temperature: float, remasking: str, mask_id: int) -> Array:
    """One reverse step: propose x̂_i for every masked position, keep n_reveal of those in [lo, hi)."""
    k_g, k_r = jax.random.split(jax.random.fold_in(key, step))
    logits32 = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    x0 = argsoftmax(k_g, logits32, temperature).astype(x.dtype)  # Gumbel-max in float32+
    if remasking == "low_confidence":
        prob = jax.nn.softmax(logits32, axis=-1)
        conf = jnp.take_along_axis(prob, x0[..., None].astype(jnp.int32), axis=-1)[..., 0]
    else:
        conf = jax.random.uniform(k_r, x.shape, logits32.dtype)
    pos = jnp.arange(x.shape[1])
    eligible = (x == mask_id) & ((pos >= lo) & (pos < hi))[None, :]
    conf = jnp.where(eligible, conf, -jnp.inf)
    _, idx = jax.lax.top_k(conf, n_reveal)  # [B, n_reveal]
    chosen = jnp.zeros(x.shape, bool).at[jnp.arange(x.shape[0])[:, None], idx].set(True) & eligible
    return jnp.where(chosen, x0, x)


def generate(logits_fn: LogitsFn, prompt: Array, key: PRNGKey | None, *, mask_id: int, steps: int,
             gen_length: int, block_length: int | None = None, temperature: float = 0.0,
             remasking: str = "low_confidence", cfg_scale: float = 0.0, jit_step: bool = False) -> Array:
    """LLaDA's reverse process: fill ``gen_length`` masked positions after ``prompt`` [B, P] in ``steps``
    denoiser calls. Returns [B, P + gen_length].

    * Blocks (semi-autoregressive): the answer is split into gen_length / block_length blocks, filled left
      to right; each block gets steps / num_blocks steps, and only positions of the current block can be
      revealed (the later blocks stay masked but are visible to the bidirectional mixer as M).
    * A step: one call of ``logits_fn`` on the current sequence; for every still-masked position a
      proposal x̂_i = argmax(logits_i / temperature + Gumbel) (greedy at temperature 0; noise in float32).
      Exactly n_s of the masked positions of the block are then *revealed* (set to x̂_i for good), with
      n_s from :func:`reveal_schedule` (equal shares per step, the remainder to the earliest steps).
    * **Remasking** is what happens to the other proposals: they are discarded and those positions stay
      M (are "remasked") for the next step. ``"low_confidence"`` reveals the n_s positions whose proposal
      has the largest softmax probability q(x̂_i | x_t) (at temperature 1 logits, i.e. before the
      temperature) and remasks the least confident ones; ``"random"`` reveals n_s positions chosen
      uniformly at random. Revealed tokens (and the prompt) are never changed again.
    * Classifier-free guidance (``cfg_scale`` = s > 0): the same call also evaluates the sequence with
      the prompt masked; logits = un + (s + 1)(cond − un). Both go through one batched call [2B, ...],
      so the denoiser is still called exactly ``steps`` times.
    * ``jit_step=True`` traces ``logits_fn`` into one jitted function per step (denoiser call, guidance
      and reveal fused; ``logits_fn`` must then be JAX-traceable and is cached by identity). Same tokens
      as the default path, which calls ``logits_fn`` eagerly once per step (countable from Python).
    """
    _check_ids(prompt, "prompt")
    B, P = prompt.shape
    for name, v in (("steps", steps), ("gen_length", gen_length)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be an int ≥ 1, got {v!r}")
    block_length = gen_length if block_length is None else block_length
    if not (isinstance(block_length, int) and block_length >= 1):
        raise ValueError(f"block_length must be an int ≥ 1, got {block_length!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} must be divisible by block_length={block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps={steps} must be divisible by the number of blocks "
                         f"gen_length/block_length={num_blocks}")
    if steps > gen_length:
        raise ValueError(f"steps={steps} must be ≤ gen_length={gen_length} (each step reveals at least one token)")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise ValueError(f"temperature must be a number ≥ 0, got {temperature!r}")
    if not (isinstance(cfg_scale, (int, float)) and cfg_scale >= 0):
        raise ValueError(f"cfg_scale must be a number ≥ 0, got {cfg_scale!r}")
    if key is None and (temperature > 0 or remasking == "random"):
        raise ValueError("key must be a PRNG key when temperature > 0 or remasking='random'")
    mask_id = _check_mask_id(mask_id)
    if P and not isinstance(prompt, jax.core.Tracer):
        lo_id, hi_id = int(jnp.min(prompt)), int(jnp.max(prompt))
        if lo_id < 0 or hi_id >= mask_id:
            raise ValueError(f"prompt must hold token ids in [0, V={mask_id}) (no mask tokens), "
                             f"got values in [{lo_id}, {hi_id}]")
    key = jax.random.key(0) if key is None else key
    x = jnp.concatenate([prompt, jnp.full((B, gen_length), mask_id, prompt.dtype)], axis=1)
    opts = dict(temperature=float(temperature), remasking=remasking, mask_id=int(mask_id), P=P,
                cfg_scale=float(cfg_scale))
    if jit_step:
        fused = _fused_step_fn(logits_fn, opts)
    spb = steps // num_blocks
    schedule = reveal_schedule(block_length, spb)
    step = 0
    for blk in range(num_blocks):
        lo, hi = P + blk * block_length, P + (blk + 1) * block_length
        for n_reveal in schedule:
            if jit_step:
                x = fused(x, key, step, lo, hi, n_reveal=n_reveal)
            else:
                if cfg_scale > 0:
                    logits = _cfg_combine(logits_fn(_cfg_inputs(x, mask_id=int(mask_id), P=P)), cfg_scale)
                else:
                    logits = logits_fn(x)
                x = _reveal(x, logits, key, step, lo, hi, n_reveal=n_reveal, temperature=float(temperature),
                            remasking=remasking, mask_id=int(mask_id))
            step += 1
    return x


# One jitted step per (denoiser, options). The denoiser is held weakly, so a cached step never keeps a
# model alive: its entry is dropped when the denoiser is collected, and at most maxsize entries live.
_STEP_CACHE = LRUCache(4)


def _weak(fn: Callable) -> Callable[[], Callable | None]:
    if inspect.ismethod(fn):
        return weakref.WeakMethod(fn)
    try:
        return weakref.ref(fn)
    except TypeError:  # not weak-referenceable: held strongly, still bounded by the LRU
        return lambda: fn


def _fused_step_fn(logits_fn: LogitsFn, opts: dict) -> Callable:
    opt_key = tuple(sorted(opts.items()))
    ref = _weak(logits_fn)
    if isinstance(ref, weakref.ref):
        # the callback runs once the denoiser is gone and frees the compiled step (and its constants)
        ref = (weakref.WeakMethod if isinstance(ref, weakref.WeakMethod) else weakref.ref)(
            logits_fn, lambda r: _STEP_CACHE.pop((r, opt_key)))
        key = (ref, opt_key)
    else:
        key = (logits_fn, opt_key)

    def make():
        return jax.jit(partial(_fused_step_weak, ref, **opts), static_argnames=("n_reveal",))

    return _STEP_CACHE.get_or_create(key, make)


def _fused_step_weak(ref, *args, **kw):
    return _fused_step(ref(), *args, **kw)


_reveal = jax.jit(_reveal_body, static_argnames=("n_reveal", "temperature", "remasking", "mask_id"))


@partial(jax.jit, static_argnames=("mask_id", "P"))
def _cfg_inputs(x: Array, *, mask_id: int, P: int) -> Array:
    """[x; x with the prompt masked]: both halves of classifier-free guidance in one batch [2B, L]."""
    un = jnp.where((jnp.arange(x.shape[1]) < P)[None, :], jnp.asarray(mask_id, x.dtype), x)
    return jnp.concatenate([x, un], axis=0)


@partial(jax.jit, static_argnames=("scale",))
def _cfg_combine(both: Array, scale: float) -> Array:
    """un + (s + 1)(cond − un), in float32 or better."""
    B = both.shape[0] // 2
    both = both.astype(jnp.promote_types(both.dtype, jnp.float32))
    cond, unc = both[:B], both[B:]
    return unc + (scale + 1.0) * (cond - unc)


def _fused_step(logits_fn, x, key, step, lo, hi, *, n_reveal, temperature, remasking, mask_id, P, cfg_scale):
    if cfg_scale > 0:
        logits = _cfg_combine(logits_fn(_cfg_inputs(x, mask_id=mask_id, P=P)), cfg_scale)
    else:
        logits = logits_fn(x)
    return _reveal_body(x, logits, key, step, lo, hi, n_reveal=n_reveal, temperature=temperature,
                        remasking=remasking, mask_id=mask_id)


# --------------------------------------------------------------------------------------------------
# The training objective (tvvar.train protocol)
# --------------------------------------------------------------------------------------------------


def llada_model_config(cfg: ModelConfig) -> ModelConfig:
    """The :class:`TVVARModel` config a LLaDA run trains with :mod:`tvvar.train`: ``cfg`` (over the data
    vocabulary V) with ``vocab_size = V + 1`` (the last id is the mask M) and ``mask="bidirectional"``."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a tvvar.model.ModelConfig, got {type(cfg).__name__}")
    return cfg.replace(vocab_size=cfg.vocab_size + 1, mask="bidirectional")


class MaskTokenSource:
    """A data source seen by a LLaDA run: the same batches, ``vocab_size`` one larger (the mask id V is
    part of the model's token set, never of the data). :func:`tvvar.train.train` checks that the data
    and model vocabularies agree, and a LLaDA model has V + 1 tokens."""

    def __init__(self, source):
        self.source = source
        self.vocab_size = source.vocab_size + 1
        self.mask_id = source.vocab_size

    def batch(self, key, batch_size, seq_len, split="train"):
        return self.source.batch(key, batch_size, seq_len, split)

    def sample_batch(self, key, batch_size, seq_len, split="train"):
        return self.source.sample_batch(key, batch_size, seq_len, split)

    @property
    def has_entropy(self) -> bool:
        return getattr(self.source, "has_entropy", False)

    def info(self) -> dict:
        return {**self.source.info(), "mask_token": self.mask_id}


def llada_objective(model, batch: dict, rng: PRNGKey, *, eps: float = DEFAULT_EPS, stratified: bool = True):
    """``fn(model, batch, rng) -> (loss, metrics)`` for :mod:`tvvar.train` (registered as ``"llada"``):
    Eq. 79 on the input tokens ``batch["tokens"][:, :-1]`` [B, T] — the same tokens a causal model reads
    and within ``TrainConfig.seq_len`` ≤ ``max_len`` (the diffusion model has no shift, so the last
    target column is unused) — with stratified τ across the batch. The SFT variant when ``batch`` has a
    boolean ``"prompt_mask"`` [B, T]. ``model``: a :class:`MaskedDiffusionLM` or a bidirectional
    :class:`TVVARModel` (see :func:`as_denoiser`)."""
    logits_fn, V = as_denoiser(model)
    if "tokens" not in batch:
        raise KeyError(f"batch must contain 'tokens' [B, T + 1]; got keys {sorted(batch)}")
    x = jnp.asarray(batch["tokens"])[:, :-1]
    return diffusion_loss(logits_fn, x, rng, mask_id=V, eps=eps, stratified=stratified,
                          prompt_mask=batch.get("prompt_mask"))


def _register() -> None:
    from tvvar.train import register_objective  # tvvar.train is below this module: no circle

    register_objective("llada")(llada_objective)


_register()
