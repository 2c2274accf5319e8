"""Mutants of experiments.llada: the forward process and the Eq. 79 loss (tvvar.diffusion), the NELBO
estimators (a) 1/τ, (b) L/ℓ and (c) enumeration, the reverse-process sampler, the causal mask of the AR
baseline and the experiment's own exact source likelihood."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import betainc, comb

from experiments.llada import Config
from mutants import Mutant


def tiny() -> Config:
    # L = 5 (15 mask sets), one small layer; every check still runs (the variance figure at one size)
    return Config(d_model=16, num_layers=1, num_heads=2, seq_len=5, steps_ar=150, steps_llada=300, batch_size=32,
                  eval_sequences=32, mc_samples=64, var_sequences=2, var_repeats=2, var_sizes=(2,), gen_prompts=256,
                  gen_steps=(1, 4), loss_draws=64)


# Three parts share nothing but the source: the LLaDA model (its estimators, bound, training, samples and Eq. 79
# loss), the AR baseline (its Gibbs row) and the exact denoiser (the source's own posterior, no model). A mutant
# whose bug shows in one part runs that part alone; every row killed at tiny() is still killed by some mutant.
SIZES = {
    "llada": lambda cfg: dataclasses.replace(cfg, ar=False, variance=False),
    "ar": lambda cfg: dataclasses.replace(cfg, llada=False),
    "exact_denoiser": lambda cfg: dataclasses.replace(cfg, ar=False, llada=False),
}


def _mask_not_written(orig):
    def mask_tokens(key, x, p_mask, mask_id, *, prompt_mask=None):
        _, masked = orig(key, x, p_mask, mask_id, prompt_mask=prompt_mask)
        return x, masked  # the masked positions keep their token: M is never written

    return mask_tokens


def _mask_flipped(orig):
    from tvvar import diffusion as D

    def mask_tokens(key, x, p_mask, mask_id, *, prompt_mask=None):
        B, L = x.shape
        masked = jax.random.uniform(key, (B, L), jnp.float32) > p_mask[:, None].astype(jnp.float32)  # > for <
        masked = masked & ~D._prompt_mask(prompt_mask, (B, L))
        return jnp.where(masked, jnp.asarray(mask_id, x.dtype), x), masked

    return mask_tokens


def _loss_per_masked(orig):
    from tvvar import diffusion as D

    def weighted_masked_loss(logits, x, masked, p_mask, *, prompt_mask=None):
        nll = D.masked_token_nll(logits, x, masked)
        w = jnp.where(masked, nll / p_mask.astype(nll.dtype)[:, None], 0.0)
        return jnp.sum(w) / jnp.maximum(jnp.sum(masked), 1)  # ÷ masked count instead of B·L

    return weighted_masked_loss


def _beta_off_by_one(orig):
    def subset_weights(L, eps=0.0):
        m = np.arange(1, L + 1)
        w = 1.0 / ((L + 1) * comb(L, m, exact=False))  # ∫ t^m (1 − t)^{L−m}: exponent m for m − 1
        if eps > 0:
            w = w * (1.0 - betainc(m + 1, L - m + 1, eps)) / (1.0 - eps)
        return np.concatenate([[0.0], w])

    return subset_weights


def _count_weight_full_length(orig):
    from tvvar import diffusion as D

    def body(key, x, start, ell_all, mask_id, P):
        B, L = x.shape
        pm = jnp.arange(L) < P
        xs, x_t, masked = D._per_draw(lambda k, xx, n: D.mask_exactly(k, xx, n, mask_id, prompt_mask=pm), key, x,
                                      start, ell_all)
        ell = jnp.repeat(ell_all, B)
        return xs, x_t, jnp.where(masked, (L / ell.astype(jnp.float32))[:, None], 0.0)  # L/ℓ, prompt counted

    jitted = jax.jit(body, static_argnums=(4, 5))

    def _count_draw(key, x, start, ell_all, *, mask_id, P):
        return jitted(key, x, start, ell_all, mask_id, P)

    return _count_draw


def _mc_weight_missing(orig):
    from tvvar import diffusion as D

    def body(key, x, start, p_all, mask_id, P):
        L = x.shape[1]
        pm = jnp.arange(L) < P
        xs, x_t, masked = D._per_draw(lambda k, xx, p: D.mask_tokens(k, xx, p, mask_id, prompt_mask=pm), key, x,
                                      start, p_all)
        return xs, x_t, jnp.where(masked, 1.0, 0.0)  # the 1/p (1/τ) weight of Eq. 79 forgotten

    jitted = jax.jit(body, static_argnums=(4, 5))

    def _mc_draw(key, x, start, p_all, *, mask_id, P):
        return jitted(key, x, start, p_all, mask_id, P)

    return _mc_draw


def _least_confident(orig):
    from tvvar.core import argsoftmax

    def body(x, logits, key, step, lo, hi, *, n_reveal, temperature, remasking, mask_id):
        k_g, k_r = jax.random.split(jax.random.fold_in(key, step))
        logits32 = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        x0 = argsoftmax(k_g, logits32, temperature).astype(x.dtype)
        if remasking == "low_confidence":
            prob = jax.nn.softmax(logits32, axis=-1)
            conf = -jnp.take_along_axis(prob, x0[..., None].astype(jnp.int32), axis=-1)[..., 0]  # sign flipped
        else:
            conf = jax.random.uniform(k_r, x.shape, logits32.dtype)
        pos = jnp.arange(x.shape[1])
        eligible = (x == mask_id) & ((pos >= lo) & (pos < hi))[None, :]
        conf = jnp.where(eligible, conf, -jnp.inf)
        _, idx = jax.lax.top_k(conf, n_reveal)
        chosen = jnp.zeros(x.shape, bool).at[jnp.arange(x.shape[0])[:, None], idx].set(True) & eligible
        return jnp.where(chosen, x0, x)

    return jax.jit(body, static_argnames=("n_reveal", "temperature", "remasking", "mask_id"))


def _no_gumbel(orig):
    def argsoftmax(key, logits, temperature=1.0, **kw):
        return jnp.argmax(logits, axis=-1)  # the Gumbel noise dropped: greedy at every temperature

    return argsoftmax


def _source_transposed(orig):
    def _source_nll(src, x):
        logP = np.log(src.P)
        return -np.sum(logP[x[:, 1:], x[:, :-1]], axis=1)  # P[next, prev] for P[prev, next]

    return _source_nll


def _causal_leak(orig):
    def support_mask(mask, T, S=None):
        S = T if S is None else S
        if mask == "bidirectional":
            return jnp.ones((T, S), dtype=bool)
        return jnp.arange(S)[None, :] <= jnp.arange(T)[:, None] + 1  # j ≤ i + 1: off by one

    return support_mask


MUTANTS = (
    Mutant("mask_token_not_written", "tvvar.diffusion:mask_tokens", _mask_not_written,
           "the forward process returns the clean tokens: masked positions never get M",
           size="llada"),
    Mutant("mask_probability_flipped", "tvvar.diffusion:mask_tokens", _mask_flipped,
           "u > p for u < p: each position masked with probability 1 − p",
           size="llada"),
    Mutant("loss_divided_by_masked_count", "tvvar.diffusion:weighted_masked_loss", _loss_per_masked,
           "Eq. 79 normalised by the number of masked tokens instead of B·L",
           size="llada"),
    Mutant("nelbo_weight_beta_off_by_one", "tvvar.diffusion:subset_weights", _beta_off_by_one,
           "the mask-set weight ∫ t^m (1 − t)^{L−m} for ∫ t^{m−1} (1 − t)^{L−m} (1/((L+1)C(L,m)) for 1/(m C(L,m)))",
           size="llada"),
    Mutant("count_weight_counts_prompt", "tvvar.diffusion:_count_draw", _count_weight_full_length,
           "estimator (b) weighted L/ℓ with the prompt counted in L (not (L − P)/ℓ)",
           size="llada"),
    Mutant("mc_weight_missing", "tvvar.diffusion:_mc_draw", _mc_weight_missing,
           "estimator (a) without its 1/τ weight",
           size="llada"),
    Mutant("remask_most_confident", "tvvar.diffusion:_reveal", _least_confident,
           "low-confidence remasking reveals the least confident proposals (sign of the confidence flipped)",
           size="exact_denoiser"),
    Mutant("gumbel_noise_dropped", "tvvar.core:argsoftmax", _no_gumbel,
           "the sampler's Gumbel noise dropped: argmax at every temperature",
           size="exact_denoiser"),
    Mutant("source_likelihood_transposed", "experiments.llada:_source_nll", _source_transposed,
           "the exact source likelihood reads P[x_{i+1}, x_i] for P[x_i, x_{i+1}]",
           size="exact_denoiser"),
    Mutant("causal_mask_off_by_one", "tvvar.core:support_mask", _causal_leak,
           "causal support j ≤ i + 1: the AR baseline sees the token it predicts",
           size="ar"),
)
