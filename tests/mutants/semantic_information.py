"""Mutants of the code experiments.semantic_information verifies: tvvar/theory/information/directed.py (flow,
Doob parts, the Bayes marginal, KL, the model's conditionals) and tvvar/theory/information/capacity.py
(Blahut–Arimoto, R_pre, R_post)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import lambertw

from mutants import Mutant


def tiny():
    from experiments.semantic_information import Config

    return dataclasses.replace(Config.quick(), vocab_size=4, prompt_len=2, num_prompts=4, cont_len=3, d_model=16,
                               num_layers=1, steps=80, eval_every=40, paths=300, one_step_steps=60, lambdas=(3.0,),
                               rate_tol=0.04, eq18_tol=0.01)


# The experiment's parts: the exact rows that need no model (source, R_pre solver, BSC/BEC, R_post), the
# cross-entropy model (its rows and the trained model's capacity), the flow analysis on its paths, and the Eq. 18
# models. A mutant runs at the narrowest part that kills a row of its bug; together they still kill every row the
# whole of tiny() was killed at (the Corollary 3 row only by posterior_one_token_late, hence its "flow" size; the
# reward-constrained capacity row only by capacity_kl_in_bits, hence its "ce" size).
SIZES = {
    "exact": lambda cfg: dataclasses.replace(cfg, ce=False, eq18=False),
    "ce": lambda cfg: dataclasses.replace(cfg, flow=False, eq18=False),
    "flow": lambda cfg: dataclasses.replace(cfg, eq18=False),
    "eq18": lambda cfg: dataclasses.replace(cfg, ce=False),
}


# ---- tvvar.theory.information.directed ----------------------------------------------------------------------


def _kl_in_bits(original):
    def kl_rows(logp, logq):
        return original(logp, logq) / math.log(2.0)

    return kl_rows


def _posterior_one_token_late(original):
    from tvvar.theory.information import directed as I

    def marginal_log_conditionals(log_cond, log_prior, u):
        post = I.prompt_posterior(log_cond, log_prior, u)[:, :, 1:]          # P(s | u_≤t) instead of P(s | u_<t)
        return jax.nn.logsumexp(post[..., None] + log_cond, axis=1)

    return marginal_log_conditionals


def _exclusive_flow(original):
    from tvvar.theory.information import directed as I

    def flow(log_cond, log_prior, u, k, log_marginal=None):
        d = I.information_density(log_cond, log_prior, u, k, log_marginal)
        return jnp.cumsum(d, axis=-1) - d                                    # i_t without ι_t

    return flow


def _predictable_part_lagged(original):
    def doob(log_cond, log_prior, u, k):
        d = original(log_cond, log_prior, u, k)
        A = jnp.concatenate([jnp.zeros_like(d["A"][:, :1]), d["A"][:, :-1]], axis=-1)   # Σ_{τ<t} KL_τ
        return {**d, "A": A, "M": d["flow"] - A}

    return doob


def _variance_lagged(original):
    def doob(log_cond, log_prior, u, k):
        d = original(log_cond, log_prior, u, k)
        V = jnp.concatenate([jnp.zeros_like(d["V"][:, :1]), d["V"][:, :-1]], axis=-1)   # Σ_{τ<t} Var(ι_τ | past)
        return {**d, "V": V}

    return doob


def _continuation_before_prompt(original):
    def all_prompt_ids(prompts, u):
        B, T = u.shape
        K, n = prompts.shape
        return jnp.concatenate([jnp.broadcast_to(u[:, None, :], (B, K, T)),
                                jnp.broadcast_to(prompts[None], (B, K, n))], axis=-1).reshape(B * K, n + T)

    return all_prompt_ids


# ---- tvvar.theory.information.capacity -------------------------------------------------------------------------


def _ba_five_iterations(original):
    def ba(W, wbar, mu, tol, max_iter, p0):
        return original(W, wbar, mu, tol, 5, p0)

    return ba


def _multiplier_bracket_60(original):
    def q_given_r(P, r, beta):                                               # the code before issue 29 §3.1
        K, V = P.shape
        lo, hi = np.full(K, -60.0), np.full(K, 60.0)

        def q_of(c):
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                arg = np.where(P > 0, beta * P / r[None, :] * np.exp(c[:, None]), 0.0)
                z = np.real(lambertw(arg))
                return np.where(P > 0, beta * P / np.where(z > 0, z, 1.0), r[None, :] * np.exp(-c[:, None]))

        for _ in range(80):
            mid = 0.5 * (lo + hi)
            s = q_of(mid).sum(1)
            lo, hi = np.where(s > 1, mid, lo), np.where(s > 1, hi, mid)
        Q = q_of(0.5 * (lo + hi))
        s = Q.sum(1, keepdims=True)
        return Q / s, float(np.max(np.abs(s - 1)))

    return q_given_r


def _slope_inverted(original):
    def rate_distortion_one_step(prior, P, beta, **kw):
        return original(prior, P, 1.0 / beta, **kw)                          # slope read as −1/β

    return rate_distortion_one_step


def _rate_reward_marginal_frozen(original):
    def rate_reward_beta(p, w, beta, tol, max_iter):
        logQ = beta * w                                                      # r(y) left out: Q ∝ e^{βw}
        Q = np.exp(logQ - logQ.max(1, keepdims=True))
        return Q / Q.sum(1, keepdims=True)

    return rate_reward_beta


def _capacity_kl_in_bits(original):
    def kl_rows(P, Q):
        return original(P, Q) / math.log(2.0)

    return kl_rows


MUTANTS = (
    Mutant("kl_in_bits", "tvvar.theory.information.directed:_kl_rows", _kl_in_bits,
           "KL rows in bits (log2) where the information functions mean nats", size="exact"),
    Mutant("posterior_one_token_late", "tvvar.theory.information.directed:marginal_log_conditionals",
           _posterior_one_token_late, "Bayes marginal at step t uses P(s | u_≤t) (off by one: it has seen u_t)",
           size="flow"),
    Mutant("flow_exclusive_cumsum", "tvvar.theory.information.directed:flow", _exclusive_flow,
           "information flow i_t summed over τ < t (exclusive cumsum, off by one)", size="ce"),
    Mutant("doob_A_lagged", "tvvar.theory.information.directed:doob", _predictable_part_lagged,
           "Doob's predictable part A_t summed up to t − 1 (off by one), so M = i − A is not centred", size="ce"),
    Mutant("doob_variance_lagged", "tvvar.theory.information.directed:doob", _variance_lagged,
           "predictable quadratic variation V_t summed up to t − 1 (off by one, as a 'predictable' index suggests)",
           size="ce"),
    Mutant("continuation_before_prompt", "tvvar.theory.information.directed:_all_prompt_ids",
           _continuation_before_prompt,
           "model input built as [u ‖ s] instead of [s ‖ u] for the per-prompt conditionals", size="ce"),
    Mutant("ba_5_iterations", "tvvar.theory.information.capacity:_ba_lagrangian", _ba_five_iterations,
           "Blahut–Arimoto stopped after 5 iterations", size="ce"),
    Mutant("rpre_bracket_60", "tvvar.theory.information.capacity:_q_given_r", _multiplier_bracket_60,
           "one-step R_pre multiplier bisected in a fixed [−60, 60] (rows rescaled silently at β ≳ 60)", size="exact"),
    Mutant("rpre_slope_inverted", "tvvar.theory.information.capacity:rate_distortion_one_step", _slope_inverted,
           "R_pre point computed at β = 1/λ (slope −1/β, as the old docstring said)", size="eq18"),
    Mutant("rate_reward_r_frozen", "tvvar.theory.information.capacity:_rate_reward_beta", _rate_reward_marginal_frozen,
           "R_post channel Q ∝ e^{βw} without the output marginal r (alternating step skipped)", size="exact"),
    Mutant("capacity_kl_in_bits", "tvvar.theory.information.capacity:_kl_rows", _capacity_kl_in_bits,
           "capacity's KL rows in bits (log2) where Blahut–Arimoto and the rates mean nats", size="ce"),
)
