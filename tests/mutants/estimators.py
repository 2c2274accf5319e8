"""Mutants of the estimators experiment's code under test: the Gaussian log-det estimators and their lag blocks,
the plug-in entropy and the TE likelihood-ratio test, the Granger F / Wald tests, the DV / NWJ / InfoNCE
bounds and the token (tvvar) critics, the exact categorical DI, the kernel TV-VAR's cross-validation and the
least-squares coefficient recovery."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments.estimators import SECTIONS, Config
from mutants import Mutant


def tiny() -> Config:
    # every row of Config.quick() (same names: the Granger and Haslbeck n index their rows), smaller budgets;
    # 400 null replicates keep the Granger and TE-LR size rows' 3 binomial se (0.033) below the 0.05 that a
    # never- or always-rejecting test moves them by
    return dataclasses.replace(
        Config.quick(), n_dv=3000, dv_steps=150, n_cat=3000, staircase_batches=10, granger_reps=400, lr_reps=400,
        bv_reps=6, neural_ns=(), haslbeck_reps=1, haslbeck_grid_step=3, di_n=8000, di_steps=160,
        rec_train_steps=60, rec_batch=256)


def _only(*sections: str):
    return lambda cfg: dataclasses.replace(cfg, sections=sections)


#: one size per section of the run (``Config.sections``): a mutant runs only the section(s) its bug is checked in;
#: two pairs where a bug is caught in two sections and is the only mutant that kills rows of both
SIZES = {**{section: _only(section) for section in SECTIONS},
         "gaussian+dv_te": _only("gaussian", "dv_te"), "categorical+bounds": _only("categorical", "categorical_bounds"),
         "gaussian+bias_variance": _only("gaussian", "bias_variance"),
         "te_lr+bias_variance": _only("te_lr", "bias_variance")}


# ---- Gaussian (log-det) estimators ------------------------------------------------------------------------


def _logdet_half(orig):
    return lambda S: jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(S))))  # ln det L, not ln det L Lᵀ


def _te_blocks_source_present(orig):
    def _te_blocks(source, target, k, ell):
        b = orig(source, target, k, ell)
        m = max(k, ell)
        y = np.asarray(source, dtype=np.float64).reshape(len(source), -1)
        return {**b, "source_past": np.concatenate([y[m - j + 1: len(y) - j + 1] for j in range(1, ell + 1)], 1)}
    return _te_blocks


# ---- plug-in entropy, TE likelihood-ratio test, Granger ---------------------------------------------------


def _code_entropy_bits(orig):
    def _code_entropy(code):
        n = code.shape[0]
        counts = jnp.zeros((n,), jnp.result_type(float)).at[code].add(1.0)
        p = counts / n
        return -jnp.sum(jnp.where(counts > 0, p * jnp.log2(jnp.where(counts > 0, p, 1.0)), 0.0))
    return _code_entropy



def _restriction_rows_no_intercept(orig):
    return lambda k, p, causing: np.array([ell * k + j for ell in range(p) for j in causing], dtype=np.int32)



def _plugin_te_source_present(orig):
    from tvvar.theory.estimation import classical as E

    def plugin_transfer_entropy(source, target, k=1, ell=1):
        y = E.check_stream(source, "source", discrete=True)
        x = E.check_stream(target, "target", discrete=True)
        n = E.check_same_length(source=y, target=x)
        k = E.check_history(k, "k (target history)", n)
        ell = E.check_history(ell, "ell (source history)", n)
        m = max(k, ell)
        # the bug: the source block holds s_t … s_{t−ℓ+1} (the present where the past is meant)
        src = np.concatenate([y[m - j + 1: n - j + 1] for j in range(1, ell + 1)], axis=1)
        b = {"present": x[m:], "target_past": np.asarray(E.lag_embed(jnp.asarray(x), k, m)), "source_past": src}
        hxz, hyz, hz, hxyz = E._plugin_entropies(b, [("present", "target_past"), ("source_past", "target_past"),
                                                     ("target_past",), ("present", "source_past", "target_past")])
        return hxz + hyz - hz - hxyz
    return plugin_transfer_entropy


def _simulate_transposed(orig):
    return lambda key, A, c, chol, burn_in: orig(key, jnp.swapaxes(A, -1, -2), c, chol, burn_in)  # y_t = Aᵀ y_{t−1}


# ---- neural bounds and the token critics -------------------------------------------------------------------


def _dv_sum_not_mean(orig):
    def dv_bound(S, clip=None):
        K = S.shape[0]
        off = S[~np.eye(K, dtype=bool)]
        if clip is not None:
            off = jnp.clip(off, -clip, clip)
        return jnp.mean(jnp.diag(S)) - jax.nn.logsumexp(off)  # ln Σ e^T: the 1/(K(K−1)) of the mean dropped
    return dv_bound



def _infonce_without_log_k(orig):
    return lambda S: jnp.mean(jnp.diag(S) - jax.nn.logsumexp(S, axis=1))  # the + ln K forgotten


def _token_ids_shifted(orig):
    def ids(self, x, y):
        if self.reduced:
            return orig(self, x, y)
        x, y = jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32)
        pairs = jnp.stack([x, y + self.vocab_x], axis=-1).reshape(y.shape[0], 2 * self.length)
        return pairs[:, 1:]  # drops x_0 instead of the last y: the row scoring y_t sees y_t
    return ids


# ---- exact categorical DI ------------------------------------------------------------------------------------


def _entropy_bits(orig):
    return lambda p, axes: orig(p, axes) / math.log(2)  # H in bits where every quantity is in nats




# ---- kernel TV-VAR and coefficient recovery -------------------------------------------------------------------


def _design_present_as_lag(orig):
    def var_design(y, p):
        n = y.shape[0]
        lags = jnp.concatenate([y[p - j + 1: n - j + 1] for j in range(1, p + 1)], axis=1)  # y_t where y_{t−1} is meant
        return y[p:], jnp.concatenate([jnp.ones((n - p, 1), y.dtype), lags], axis=1)
    return var_design


def _weights_no_loo(orig):
    return lambda tau, h, name, loo: orig(tau, h, name, False)  # the diagonal kept: each point predicts itself


def _solve_float32(orig):
    def _solve(X, present, h, ones):
        out = orig(X.astype(jnp.float32), present, h.astype(jnp.float32), ones.astype(jnp.float32))
        return tuple(o.astype(X.dtype) if jnp.issubdtype(o.dtype, jnp.floating) else o for o in out)
    return _solve


def _trajectories_first_sequence(orig):
    def mixer_trajectories(model, ids, layer=0):
        u, h, A = orig(model, ids, layer)
        return u, h, jnp.broadcast_to(A[:1], A.shape)  # A_tj materialised for the first sequence only
    return mixer_trajectories


def _stderr_variance(orig):
    def fit_tvvar_coefficients(u, h, **kw):
        fit = orig(u, h, **kw)
        return fit._replace(stderr=fit.stderr ** 2)  # the variance reported as the standard error
    return fit_tvvar_coefficients



MUTANTS = (
    Mutant("logdet_without_2", "tvvar.theory.estimation.classical:_logdet", _logdet_half,
           "ln det S as Σ ln diag(chol S), the factor 2 of ln det L Lᵀ forgotten", size="gaussian+bias_variance"),
    Mutant("te_source_present", "tvvar.theory.estimation.classical:_te_blocks", _te_blocks_source_present,
           "source block holds y_t … y_{t−ℓ+1} (lag off by one: the present where the past is meant)",
           size="gaussian+dv_te"),
    Mutant("plugin_entropy_bits", "tvvar.theory.estimation.classical:_code_entropy", _code_entropy_bits,
           "plug-in entropy with log2 (bits) where nats are meant", size="te_lr+bias_variance"),
    Mutant("plugin_te_source_present", "tvvar.theory.estimation.classical:plugin_transfer_entropy",
           _plugin_te_source_present,
           "plug-in TE's source block holds s_t … s_{t−ℓ+1} (lag off by one: the present where the past is meant)",
           size="te_lr"),
    Mutant("var_simulated_transposed", "tvvar.theory.estimation.kernel_tvvar:_simulate", _simulate_transposed,
           "VAR replicates simulated as y_t = Aᵀ y_{t−1} + ε (coefficient matrix transposed)", size="granger"),
    Mutant("granger_rows_no_intercept", "tvvar.theory.estimation.granger:restriction_rows",
           _restriction_rows_no_intercept,
           "restricted regressor rows ℓk + j, the intercept's row offset forgotten", size="granger"),
    Mutant("dv_log_sum_not_mean", "tvvar.theory.estimation.neural:dv_bound", _dv_sum_not_mean,
           "DV's ln E_Q[e^T] as ln Σ e^T (the 1/(K(K−1)) normaliser dropped)", size="categorical_bounds"),
    Mutant("infonce_without_log_k", "tvvar.theory.estimation.neural:infonce_bound", _infonce_without_log_k,
           "InfoNCE without the + ln K", size="staircase"),
    Mutant("categorical_entropy_bits", "tvvar.theory.estimation.categorical:entropy", _entropy_bits,
           "exact entropies in bits where nats are meant", size="categorical+bounds"),
    Mutant("ols_design_present_as_lag", "tvvar.theory.estimation.kernel_tvvar:var_design", _design_present_as_lag,
           "VAR design's lag block holds y_t … y_{t−p+1} (off by one: the present regresses on itself)",
           size="haslbeck"),
    Mutant("cv_without_leave_one_out", "tvvar.theory.estimation.kernel_tvvar:_weights", _weights_no_loo,
           "kernel CV weights keep the diagonal: leave-one-out not applied", size="haslbeck"),
    Mutant("recovery_float32", "tvvar.theory.estimation.recovery:_solve", _solve_float32,
           "coefficient-recovery normal equations accumulated in float32", size="recovery"),
    Mutant("token_critic_sees_y_t", "tvvar.theory.estimation.neural:TokenCritic.ids", _token_ids_shifted,
           "full critic's layout drops x_0 instead of y_{m−1}, so the row that scores y_t has read y_t",
           size="di_tvvar_critic"),
    Mutant("trajectories_first_sequence", "tvvar.theory.estimation.recovery:mixer_trajectories",
           _trajectories_first_sequence, "materialised A_tj of the first sequence broadcast to the whole batch",
           size="recovery"),
    Mutant("recovery_stderr_is_variance", "tvvar.theory.estimation.recovery:fit_tvvar_coefficients",
           _stderr_variance, "standard errors without the square root (variances)", size="recovery"),
)
