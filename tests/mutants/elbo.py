"""Mutants of the Theorems 6–7 experiment: one realistic bug each in tvvar.theory.transformer.elbo (the exact log P by
a blocked prefix sum, the prior over (head, position), Q = π, the closed-form ELBO terms) or in the
objectives the models are trained with."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from experiments.elbo import Config
from mutants import Mutant

EL = "tvvar.theory.transformer.elbo"


def tiny() -> Config:
    """Both sources (synthetic and the committed text corpus), all four objectives, a width-8 two-head
    model trained for 12 steps on batches of 4 sequences of 8 tokens."""
    return Config(D=8, steps=12, batch_size=4, seq_len=8, warmup=2, eval_every=0, eval_batches=1,
                  heldout_batches=1)


# The Theorem 6–7 rows judge the library's closed-form terms on whatever models were trained, so one objective
# per source exercises them; "soft" (plain cross-entropy) is the cheapest to train. Both sources stay, so every
# row these mutants killed at tiny() (synthetic and text alike) is still judged. Only the objective mutant
# needs every objective (each one's training row), so it runs at tiny().
SIZES = {
    "one_objective": lambda cfg: dataclasses.replace(cfg, objectives=("soft",)),
}


def _prefix_leak(original):
    def _causal_sum_at(p, targets, block=16):  # own block summed over r ≤ (i mod block) + 1: position i+1 leaks in
        Bsz, J, H, V = p.shape
        nb = -(-J // block)
        pb = jnp.pad(p, [(0, 0), (0, nb * block - J), (0, 0), (0, 0)]).reshape(Bsz, nb, block, H, V)
        totals = jnp.sum(pb, axis=2)
        before = jnp.pad(jnp.cumsum(totals[:, :-1], axis=1), [(0, 0), (1, 0), (0, 0), (0, 0)])
        i = jnp.arange(J)
        b_ix, h_ix, t_ix = jnp.arange(Bsz)[:, None, None], jnp.arange(H)[None, None, :], targets[:, :, None]
        from_before = before[b_ix, (i // block)[None, :, None], h_ix, t_ix]
        r = jnp.arange(block)
        own = pb[b_ix[..., None], (i // block)[None, :, None, None], r[None, None, None, :], h_ix[..., None],
                 t_ix[..., None]]
        own = jnp.sum(jnp.where(r[None, None, None, :] <= (i % block)[None, :, None, None] + 1, own, 0), axis=-1)
        return from_before + own

    return _causal_sum_at


def _prior_without_heads(original):
    def log_prior(prior, support, num_heads, log_q=None, dtype=jnp.float32):  # P(h, j | i) missing its 1/H
        lp = original(prior, support, num_heads, log_q=log_q, dtype=dtype)
        if isinstance(prior, str) and prior == "attention":
            return lp
        return jnp.where(support[None, :, None, :], lp + jnp.log(jnp.asarray(num_heads, lp.dtype)), lp)

    return log_prior


def _log_pi_wrong_axis(original):
    from tvvar.core import masked_fill_value

    def _log_pi(mixer, z):  # attention normalised over the queries (axis −2) instead of the keys
        s = mixer.scores(z).astype(jnp.promote_types(z.dtype, jnp.float32))
        allowed = mixer.support(z.shape[1])[None, None]
        fill = masked_fill_value(s.dtype)
        lp = jax.nn.log_softmax(jnp.where(allowed, s, fill), axis=-2)
        return jnp.where(allowed, lp, fill)

    return _log_pi


def _closed_form_kl_sign(original):
    def closed_form_terms(model, ids, targets, priors=("uniform",)):  # ELBO = E_Q log P(U|J) + KL(Q ‖ P(J))
        out = original(model, ids, targets, priors)
        return tuple(t._replace(elbo=t.e_loglik + t.kl_prior, gap=t.log_p - t.e_loglik - t.kl_prior) for t in out)

    return closed_form_terms


def _closed_form_heads_twice(original):
    def closed_form_terms(model, ids, targets, priors=("uniform",)):  # E_Q log P(U|J) divided by H twice
        H = model.blocks[-1].mixer.num_heads
        out = original(model, ids, targets, priors)
        return tuple(t._replace(e_loglik=t.e_loglik / H, elbo=t.e_loglik / H - t.kl_prior,
                                gap=t.log_p - (t.e_loglik / H - t.kl_prior)) for t in out)

    return closed_form_terms


def _objective_ascent(original):
    def get_objective(name):  # the latent-model objectives return −loss: training climbs its own loss
        fn = original(name)
        if name not in ("elbo", "marginal", "marginal_attention", "soft"):
            return fn

        def flipped(model, batch, rng):
            loss, metrics = fn(model, batch, rng)
            return -loss, metrics

        return flipped

    return get_objective


MUTANTS = (
    Mutant("prefix_sum_leak", f"{EL}:_causal_sum_at", _prefix_leak,
           "closed-form log P: the causal prefix sum includes position i+1 (off-by-one in the mask)",
           size="one_objective"),
    Mutant("prior_missing_1_over_H", f"{EL}:log_prior", _prior_without_heads,
           "prior over (head, position) normalised over positions only: the 1/H missing", size="one_objective"),
    Mutant("q_softmax_wrong_axis", f"{EL}:_log_pi", _log_pi_wrong_axis,
           "Q = π normalised over the query axis instead of the key axis", size="one_objective"),
    Mutant("elbo_kl_sign", f"{EL}:closed_form_terms", _closed_form_kl_sign,
           "closed-form ELBO adds KL(Q ‖ P(J)) instead of subtracting it", size="one_objective"),
    Mutant("e_loglik_heads_twice", f"{EL}:closed_form_terms", _closed_form_heads_twice,
           "closed-form E_Q log P(U | J): the mean over heads divided by H a second time", size="one_objective"),
    Mutant("objective_ascent", "tvvar.train:get_objective", _objective_ascent,
           "the ELBO / marginal / soft objectives return the negated loss (gradient ascent)"),
)
