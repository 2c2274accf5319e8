"""Mutants of the Hopfield capacity experiment (Section V-E): one realistic bug each in
tvvar.theory.transformer.hopfield (classical network, Gardner α_c(κ), Cover's count, AdaTron, dense memory) or
tvvar.theory.transformer.hopfield_modern (the modern update, separation, the retrieval sweep)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from experiments.hopfield_capacity import SECTIONS, Config
from mutants import Mutant, edited

HOP = "tvvar.theory.transformer.hopfield"
MOD = "tvvar.theory.transformer.hopfield_modern"


def tiny() -> Config:
    """Every part at its smallest: one n for the classical network (α = 0.12 and 0.24, the grid point
    nearest 0.20), a 48-neuron Gardner sweep, n = 16 dense memory up to 2^6 patterns, two d of the modern
    network at β = 1, and an 8-dimensional attention layer trained for 150 steps."""
    return Config(n_classical=(400,), alphas=(0.12, 0.24), trials_classical=4,
                  n_gardner=48, alphas_gardner=(0.15, 0.2, 0.25, 0.4, 0.5, 0.6, 0.9, 1.0, 1.5, 1.8, 2.0, 2.3),
                  nets_gardner=2, iters_gardner=600, n_dense=16, dense_log2_loads=tuple(range(1, 7)),
                  trials_dense=8, dense_kinds=(("poly", 3), ("exp", 0)), d_modern=(8, 16), betas=(1.0,),
                  modern_log2_N=tuple(range(1, 9)),
                  trials_modern=64, d_attn=8, N_attn=8, train_steps=150, batch=32, lr=0.1)


def _only(*sections: str):
    return lambda cfg: dataclasses.replace(cfg, sections=sections)


#: one size per section of the run (``Config.sections``): a mutant runs only the section(s) its bug is checked in;
#: β is used by the modern network's rows and the trained attention's, which only its mutant kills
SIZES = {**{section: _only(section) for section in SECTIONS}, "modern+attention": _only("modern", "attention")}


def _gardner_alpha_c_flipped(original):
    def gardner_alpha_c(kappa):  # ∫_{κ}^∞ instead of ∫_{−κ}^∞: Φ(−κ) where Φ(κ) belongs
        k = np.asarray(kappa, dtype=np.float64)
        return 1.0 / ((1.0 + k * k) * stats.norm.cdf(-k) + k * stats.norm.pdf(k))

    return gardner_alpha_c


def _cover_half(original):
    def cover_fraction(p, n, *, exact=False):  # 2^{−p} Σ C(p−1, k) where 2^{1−p} belongs
        return original(p, n, exact=exact) / 2

    return cover_fraction


def _flip_rate_no_sqrt(original):
    def flip_rate_reference(alpha):  # Φ(−1/α): the crosstalk's variance α used as its standard deviation
        a = np.asarray(alpha, dtype=np.float64)
        return stats.norm.cdf(-1.0 / a)

    return flip_rate_reference


def _keep_diagonal(original):
    def _integer_couplings(patterns, mask=None):  # J_ii = p left in (W_ii = α, self-coupling)
        if mask is not None:
            patterns = patterns * mask.astype(patterns.dtype)[:, None]
        return jnp.einsum("pi,pj->ij", patterns, patterns, precision=jax.lax.Precision.HIGHEST)

    return _integer_couplings


def _one_sweep(original):
    def _async_sweeps(J, s, key, max_sweeps):  # the loop ends after the first sweep
        return original(J, s, key, 1)

    return _async_sweeps


def _adatron_early(original):
    def _adatron_network(patterns, mask, iters):  # the AdaTron stopped after 1/20 of its epochs
        return original(patterns, mask, max(1, iters // 20))

    return _adatron_network


def _poly_self_term(original):
    # patched where the x^k keeps-test is looked up: the kind → functions table _DENSE (dense_sweep and
    # dense_stable reach _poly_keeps only through it, so a patch of the name _poly_keeps alone never runs)
    poly_keeps = original["poly"][2]

    def _poly_keeps(patterns, s, k, mask):  # b_μi = ξ^μ·s, neuron i's own term not removed
        n = patterns.shape[1]
        X, si = patterns.astype(jnp.int32), s.astype(jnp.int32)
        b = jnp.broadcast_to((X @ si)[:, None], X.shape)
        t = X * ((b + 1) ** k - (b - 1) ** k) * (mask[:, None] > 0).astype(jnp.int32)
        return si * jnp.sign(jnp.sum(t, axis=0)) >= 0 if n ** k < 2**24 else poly_keeps(patterns, s, k, mask)

    return {**original, "poly": (*original["poly"][:2], _poly_keeps)}


def _exp_sign(original):
    def _exp_fields(patterns, s, k, mask):  # lse(b − ξ) − lse(b + ξ): the two sums swapped
        return -original(patterns, s, k, mask)

    return _exp_fields


def _logits_no_beta(original):
    def _logits(X, xi, beta, mask):  # β never applied: softmax(X ξ)
        return original(X, xi, 1.0, mask)

    return _logits


def _separation_with_self(original):
    def separation(X):  # max over all j, the pattern itself not masked out
        G = jnp.einsum("id,jd->ij", X, X, precision=jax.lax.Precision.HIGHEST)
        return jnp.diagonal(G) - jnp.max(G, axis=1)

    return separation


def _noise_not_normalised(original):
    from tvvar.theory.transformer.hopfield_modern import _update, sphere_patterns

    def retrieval_sweep(key, d, Ns, beta, *, trials, noise, K=1.0, tol=0.1):
        # the query noise is a Gaussian vector (|ẑ| ≈ √d), not a unit vector: the noise grows with d
        Ns = np.asarray(Ns, dtype=np.int64)
        Nmax, M = int(Ns.max()), K * math.sqrt(d - 1)

        @jax.jit
        def run(keys):
            def trial(k):
                kx, kz = jax.random.split(k)
                X = sphere_patterns(kx, Nmax, d, M)
                xi = X[0] + noise * M * jax.random.normal(kz, (d,))

                def at(N):
                    new = _update(X, xi, beta, (jnp.arange(Nmax) < N).astype(X.dtype))
                    return jnp.linalg.norm(new - X[0]) <= tol * M

                return jax.vmap(at)(jnp.asarray(Ns))

            return jax.vmap(trial)(keys)

        success = np.asarray(run(jax.random.split(key, trials))).T
        return {"Ns": Ns, "accuracy": success.mean(axis=1), "success": success, "M": M}

    return retrieval_sweep


def _async_gather_back(original):
    # each sweep's relabelled state and field mapped back by gathering at the permutation (sp[order], which applies
    # it a second time) instead of scattering them back to their neurons (s.at[order].set(sp))
    return edited(original, "return s.at[order].set(sp), h.at[order].set(hp), flips",
                  "return sp[order], hp[order], flips")


def _dense_variance_as_sd(original):
    def dense_flip_reference(n, p, kind="poly", k=3):  # Φ(−S/σ²): the crosstalk variance used as its deviation
        p = np.asarray(p, dtype=np.float64)
        j = np.arange(n)
        b = 2.0 * j - (n - 1)
        logw = stats.binom.logpmf(j, n - 1, 0.5)
        if kind == "poly":
            x = b / n
            log_m2 = np.log(np.sum(np.exp(logw) * ((x + 1 / n) ** k - (x - 1 / n) ** k) ** 2))
            log_s = np.log(1.0 - ((n - 2) / n) ** k)
        else:
            log_m2 = 2 * np.log(np.e - 1 / np.e) + (n - 1) * np.log(np.cosh(2.0))
            log_s = n + np.log(1.0 - np.exp(-2.0))
        with np.errstate(divide="ignore"):
            snr = np.exp(log_s - (np.log(np.maximum(p - 1, 0)) + log_m2))
        return stats.norm.cdf(-snr)

    return dense_flip_reference


MUTANTS = (
    Mutant("gardner_integral_sign", f"{HOP}:gardner_alpha_c", _gardner_alpha_c_flipped,
           "α_c(κ) integrates Dt (t+κ)² from +κ instead of −κ (Φ(−κ) for Φ(κ))", size="gardner"),
    Mutant("cover_missing_2", f"{HOP}:cover_fraction", _cover_half,
           "Cover's P(p, n) normalised by 2^{−p} instead of 2^{1−p}", size="gardner"),
    Mutant("flip_rate_variance_as_sd", f"{HOP}:flip_rate_reference", _flip_rate_no_sqrt,
           "one-step flip rate Φ(−1/α): the crosstalk variance α used as its standard deviation", size="classical"),
    Mutant("hebb_self_coupling", f"{HOP}:_integer_couplings", _keep_diagonal,
           "Hebbian couplings keep the diagonal J_ii = p (W_ii = α ≠ 0)", size="classical"),
    Mutant("async_one_sweep", f"{HOP}:_async_sweeps", _one_sweep,
           "asynchronous retrieval stops after the first sweep instead of at a fixed point", size="classical"),
    Mutant("adatron_stopped_early", f"{HOP}:_adatron_network", _adatron_early,
           "Gardner's AdaTron run for 1/20 of its epochs (κ_max underestimated)", size="gardner"),
    Mutant("dense_self_term", f"{HOP}:_DENSE", _poly_self_term,
           "dense F = x^k field: b_μi includes neuron i's own term ξ^μ_i s_i", size="dense"),
    Mutant("dense_exp_sign", f"{HOP}:_exp_fields", _exp_sign,
           "dense F = exp field with its two log-sum-exps swapped (sign flipped)", size="dense"),
    Mutant("modern_no_beta", f"{MOD}:_logits", _logits_no_beta,
           "modern Hopfield update softmax(X ξ): the inverse temperature β dropped",
           size="modern+attention"),
    Mutant("separation_self", f"{MOD}:separation", _separation_with_self,
           "separation Δ_i takes max_j x_iᵀx_j over all j, the pattern itself included", size="theorem3"),
    Mutant("retrieval_noise_unnormalised", f"{MOD}:retrieval_sweep", _noise_not_normalised,
           "retrieval query noise is a standard Gaussian vector (norm ≈ √d), not a unit direction", size="modern"),
    Mutant("async_sweep_gathered_back", f"{HOP}:_async_sweeps", _async_gather_back,
           "each asynchronous sweep maps its relabelled state back with sp[order] (the permutation applied again) "
           "instead of scattering it to its neurons", size="classical"),
    Mutant("dense_flip_variance_as_sd", f"{HOP}:dense_flip_reference", _dense_variance_as_sd,
           "dense Gaussian flip estimate Φ(−S/σ²): the crosstalk variance used as its standard deviation",
           size="dense"),
)
