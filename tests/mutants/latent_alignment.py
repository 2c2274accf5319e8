"""Mutants of the latent-alignment experiment's code under test: the alignment source's exact quantities (π,
log P(x_{i+1} | x_{≤i}), the conditional law, the posterior over J, the sampler's entropy field), the soft
source's entropy field, and the closed-form terms of tvvar.theory.transformer.elbo the four objectives train on and
the models are scored by (log P under the uniform and the attention prior, the ELBO's KL term)."""

import dataclasses
import math

import jax
import jax.numpy as jnp

from experiments.latent_alignment import Config
from mutants import Mutant, edited
from tvvar.core import masked_fill_value


def tiny() -> Config:
    # 2 seeds as at quick size, a shorter training and sequence
    return dataclasses.replace(Config.quick(), steps=150, seq_len=16, eval_every=150, heldout_batches=4)


# The alignment source's own rows (E[−log p] = H, the posterior's calibration) need no model; each source's floor
# row (Gibbs) holds for any normalised model, so the entropy-field mutants train the soft objective alone on one
# source (no ordering row runs there, they need every objective). The closed-form mutants train only the objectives
# whose rows they break: the attention prior and the ELBO alone on the alignment source (its Q-vs-posterior and
# decoding rows), the uniform-prior objectives beside soft on both sources (their orderings).
SIZES = {
    "source": lambda cfg: dataclasses.replace(cfg, train_alignment=False, train_soft=False),
    "alignment_floor": lambda cfg: dataclasses.replace(cfg, train_soft=False, objectives=("soft",)),
    "soft_floor": lambda cfg: dataclasses.replace(cfg, train_alignment=False, objectives=("soft",)),
    "alignment_elbo": lambda cfg: dataclasses.replace(cfg, train_soft=False, objectives=("elbo",)),
    "alignment_attention": lambda cfg: dataclasses.replace(cfg, train_soft=False,
                                                           objectives=("soft", "marginal_attention")),
    "uniform_prior": lambda cfg: dataclasses.replace(cfg, objectives=("soft", "marginal", "elbo")),
}


def _log_pi_over_queries(orig):
    def _log_pi(self, ids, dt):
        T = ids.shape[1]
        S = jnp.asarray(self.scores, dt)
        s = S[ids[:, :, None], ids[:, None, :]]
        causal = jnp.tril(jnp.ones((T, T), bool))[None]
        fill = masked_fill_value(dt)
        lp = jax.nn.log_softmax(jnp.where(causal, s, fill), axis=-2)  # normalised over rows i, not keys j
        return jnp.where(causal, lp, fill)
    return _log_pi


def _emission_transposed(orig):
    def _log_joint(self, ids, targets, dt):
        T = ids.shape[1]
        logE = jnp.log(jnp.asarray(self.emissions, dt))
        causal = jnp.tril(jnp.ones((T, T), bool))[None]
        # E[x_{i+1}, x_j] where E[x_j, x_{i+1}] is meant
        return jnp.where(causal, self._log_pi(ids, dt) + logE[targets[:, :, None], ids[:, None, :]], -jnp.inf)
    return _log_joint


def _conditional_emission_transposed(orig):
    def _conditional(self, log_pi, ids, dt):
        T = ids.shape[1]
        pi = jnp.where(jnp.tril(jnp.ones((T, T), bool))[None], jnp.exp(log_pi), 0)
        E_BxTxV = jnp.asarray(self.emissions, dt).T[ids]  # columns of E (P(x_j | v)) instead of its rows
        return jnp.einsum("bij,bjv->biv", pi, E_BxTxV, precision=jax.lax.Precision.HIGHEST)
    return _conditional


def _posterior_is_prior(orig):
    def posterior(self, ids, targets, dtype=None):
        self._check_pair(ids, targets)
        ids = jnp.asarray(ids)
        T = ids.shape[1]
        lp = self._log_pi(ids, self._dtype(dtype))  # Bayes' rule without the emission likelihood E[x_j, x_{i+1}]
        return jnp.where(jnp.tril(jnp.ones((T, T), bool))[None], jnp.exp(lp), 0)
    return posterior


def _entropy_field_bits(orig):
    def batch(self, key, batch_size, seq_len, split="train"):
        out = orig(self, key, batch_size, seq_len, split)
        return {**out, "entropy": out["entropy"] / math.log(2)}  # H in bits where nats are meant
    return batch


def _attention_prior_dropped(orig):
    def closed_form_terms(model, ids, targets, priors=("uniform",)):
        return orig(model, ids, targets, tuple("uniform" for _ in priors))  # every prior read as uniform
    return closed_form_terms


def _prefix_inclusive(original):  # the closed-form uniform-prior log P: the prefix over blocks inclusive, not exclusive
    return edited(original, "before = jnp.pad(jnp.cumsum(totals[:, :-1], axis=1), [(0, 0), (1, 0), (0, 0), (0, 0)])",
                   "before = jnp.cumsum(totals, axis=1)")


def _log_p_shift_dropped(original):  # log P = log Σ_h Σ_j P(h, j) p_jh[U] without adding back the shift c_h[U]
    return edited(original, "return jax.nn.logsumexp(jnp.log(w_t) + c_t, axis=-1) - log_h",
                   "return jax.nn.logsumexp(jnp.log(w_t), axis=-1) - log_h")


def _kl_sign(original):
    def closed_form_terms(model, ids, targets, priors=("uniform",)):  # ELBO = E_Q log P(U|J) + KL(Q ‖ P(J))
        out = original(model, ids, targets, priors)
        return tuple(t._replace(elbo=t.e_loglik + t.kl_prior, gap=t.log_p - t.e_loglik - t.kl_prior) for t in out)
    return closed_form_terms


MUTANTS = (
    Mutant("alignment_softmax_over_queries", "tvvar.sources.alignment:LatentAlignmentSource._log_pi",
           _log_pi_over_queries,
           "the source's exact π normalised over the query axis i instead of the key axis j", size="source"),
    Mutant("alignment_emission_transposed", "tvvar.sources.alignment:LatentAlignmentSource._log_joint",
           _emission_transposed, "exact log P reads E[x_{i+1}, x_j] (emission matrix transposed)", size="source"),
    Mutant("posterior_is_prior", "tvvar.sources.alignment:LatentAlignmentSource.posterior", _posterior_is_prior,
           "posterior over J without the emission likelihood (returns the prior π)", size="source"),
    Mutant("alignment_entropy_in_bits", "tvvar.sources.alignment:LatentAlignmentSource.batch", _entropy_field_bits,
           "the sampler's exact entropy field in bits (log2) where nats are meant", size="alignment_floor"),
    Mutant("soft_source_entropy_in_bits", "tvvar.sources.synthetic:TVVARSource.batch", _entropy_field_bits,
           "the soft source's exact entropy field in bits (log2) where nats are meant", size="soft_floor"),
    Mutant("attention_prior_dropped", "tvvar.theory.transformer.elbo:closed_form_terms", _attention_prior_dropped,
           "closed-form terms ignore the prior argument: the attention prior is read as uniform",
           size="alignment_attention"),
    Mutant("conditional_emission_transposed", "tvvar.sources.alignment:LatentAlignmentSource._conditional",
           _conditional_emission_transposed, "P(x_{i+1} = v | x_≤i) mixes columns of E instead of rows",
           size="alignment_elbo"),
    Mutant("prefix_sum_inclusive", "tvvar.theory.transformer.elbo:_causal_sum_at", _prefix_inclusive,
           "closed-form log P (uniform prior): the prefix over blocks inclusive (the own block and later positions "
           "summed in)", size="uniform_prior"),
    Mutant("log_p_shift_dropped", "tvvar.theory.transformer.elbo:closed_form_terms", _log_p_shift_dropped,
           "closed-form log P: the per-head shift c_h[U] = max_j log P(U | h, j) not added back after the sum"),
    Mutant("elbo_kl_sign", "tvvar.theory.transformer.elbo:closed_form_terms", _kl_sign,
           "closed-form ELBO adds KL(Q ‖ P(J)) instead of subtracting it", size="alignment_elbo"),
)
