"""Mutants of the Theorem 8 experiment: one realistic bug each in tvvar.theory.transformer.rademacher (the loss, the
paper's Eq. 72 terms, the rigorous bound, the empirical Rademacher complexities, the ERM fit, the exact law
of the TV-VAR source at one position)."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from experiments.rademacher import Config
from mutants import Mutant

RD = "tvvar.theory.transformer.rademacher"


def tiny() -> Config:
    """Two sample sizes a decade apart (the middle-term ratio needs one), 20 repeats, one δ beside 0.05;
    Part B with its 150 training steps (fewer leave the held-out Hoeffding bound above ln V) and 20 repeats."""
    return Config(Ms=(316, 3162), R=20, steps=50, n_sigma=4, n_fresh=2**12, deltas=(0.05, 0.2),
                  tv_Ms=(100, 1000, 10000), tv_R=20, tv_rc_repeats=2, tv_rc_sigma=8)


# Part A (the linear-softmax class) and Part B (the trained TV-VAR) share no code path but the loss and the bound
# helpers: a mutant whose rows all lie in one part runs that part alone. The cross-entropy mutant kills rows of
# both; it runs at "linear", the only place two of its rows are killed by nothing else.
SIZES = {
    "linear": lambda cfg: dataclasses.replace(cfg, tv=False),
    "tvvar": lambda cfg: dataclasses.replace(cfg, linear=False),
}


def _ce_bits(original):
    def cross_entropy(logits, targets):  # log base 2 where nats are meant
        from tvvar.core import log_softmax32

        return -jnp.take_along_axis(log_softmax32(logits), targets[:, None], axis=-1)[:, 0] / math.log(2.0)

    return cross_entropy


def _rc_sup_sqrt(original):
    def linear_rc_sup(sigma_MxV, X_MxD, Lam):  # Λ/√M instead of Λ/M in front of ‖σᵀX‖_F
        return original(sigma_MxV, X_MxD, Lam) * math.sqrt(X_MxD.shape[0])

    return linear_rc_sup


def _jensen_no_V(original):
    def linear_rc_jensen(X_MxD, V, Lam):  # (Λ/M)√(Σ‖x‖²): the factor V of E‖σᵀX‖² dropped
        return Lam / X_MxD.shape[0] * jnp.sqrt(jnp.sum(jnp.square(X_MxD)))

    return linear_rc_jensen


def _rigorous_unit_range(original):
    from tvvar.theory.transformer.rademacher import RIGOROUS_RC_FACTOR, Bound, confidence_term

    def rigorous_bound(empirical, vector_rc, M, delta, B):  # confidence term for a loss in [0, 1]: B dropped
        comp = RIGOROUS_RC_FACTOR * jnp.asarray(vector_rc)
        conf = confidence_term(M, delta)
        emp = jnp.asarray(empirical)
        return Bound(emp, comp, conf, emp + comp + conf)

    return rigorous_bound


def _range_one_c(original):
    def loss_range(V, logit_bound):  # ln V + c: the max_k z_k − z_y ≤ 2c step read as c
        return math.log(V) + float(logit_bound)

    return loss_range


def _fit_early(original):
    def fit_linear_softmax(X_MxD, y_M, V, Lam, *, steps=100, lr=2.0):  # projected GD stopped after 5 steps
        return original(X_MxD, y_M, V, Lam, steps=min(steps, 5), lr=lr)

    return fit_linear_softmax


def _hoeffding_lower(original):
    def hoeffding_bound(empirical, M, delta, B):  # L̂ − B√(log(1/δ)/2M): the lower confidence limit
        b = original(empirical, M, delta, B)
        return b._replace(total=b.empirical - b.confidence)

    return hoeffding_bound


def _finite_rc_counts(original):
    def finite_context_rc(context_ids, V, c):  # (cV/M) Σ_κ n_κ: the square root of the counts dropped
        ids = np.asarray(context_ids)
        _, counts = np.unique(ids, return_counts=True)
        return float(c) * V / ids.size * float(np.sum(counts))

    return finite_context_rc


def _law_lag(original):
    from tvvar.core import log_softmax32
    from tvvar.theory.transformer.rademacher import enumerate_contexts

    def position_law(logits_KxLxV, t):  # log P(κ) reads rows 1..t instead of 0..t−1 (off-by-one lag)
        K, L, V = logits_KxLxV.shape
        ctx = jnp.asarray(enumerate_contexts(V, t))
        logp = log_softmax32(logits_KxLxV)
        steps = jnp.take_along_axis(logp[:, 1:t + 1, :], ctx[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(steps, axis=1) - jnp.log(jnp.asarray(V, logp.dtype)), logp[:, t, :]

    return position_law


def _paper_term_twice_normalised(original):
    def linear_trial(key, W_star, X_fresh, *, M, **kw):  # (2√2/M)·mean|z^ħ|: the 1/M applied twice
        out = original(key, W_star, X_fresh, M=M, **kw)
        return {**out, "paper_logit": out["paper_logit"] / M}

    return linear_trial


MUTANTS = (
    Mutant("ce_in_bits", f"{RD}:cross_entropy", _ce_bits, "per-sample cross-entropy in bits (log₂) instead of nats",
           size="linear"),
    Mutant("rc_sup_sqrt_M", f"{RD}:linear_rc_sup", _rc_sup_sqrt,
           "exact sup of the linear class scaled by Λ/√M instead of Λ/M", size="linear"),
    Mutant("jensen_missing_V", f"{RD}:linear_rc_jensen", _jensen_no_V,
           "certified R̂ (Λ/M)√(Σ‖x‖²): the V classes of σ forgotten", size="linear"),
    Mutant("rigorous_conf_without_B", f"{RD}:rigorous_bound", _rigorous_unit_range,
           "rigorous bound's confidence term without the loss range B (as if ℓ ∈ [0, 1])", size="linear"),
    Mutant("loss_range_c", f"{RD}:loss_range", _range_one_c, "loss range B = ln V + c instead of ln V + 2c",
           size="linear"),
    Mutant("fit_5_steps", f"{RD}:fit_linear_softmax", _fit_early, "projected gradient descent stopped after 5 steps",
           size="linear"),
    Mutant("hoeffding_sign", f"{RD}:hoeffding_bound", _hoeffding_lower,
           "Hoeffding bound with the confidence term subtracted (sign flipped)", size="tvvar"),
    Mutant("finite_rc_no_sqrt", f"{RD}:finite_context_rc", _finite_rc_counts,
           "finite-context R̂ bound Σ_κ n_κ instead of Σ_κ √n_κ", size="tvvar"),
    Mutant("law_off_by_one", f"{RD}:position_law", _law_lag,
           "exact law of the context: the log-probabilities read one row late (rows 1..t, not 0..t−1)", size="tvvar"),
    Mutant("paper_term_double_mean", f"{RD}:linear_trial", _paper_term_twice_normalised,
           "Eq. 72's middle term divided by M twice (mean, then /M)", size="linear"),
)
