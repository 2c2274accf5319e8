"""Mutants of the code the semantic_space rows verify: the projections (fwht, the DCT and its normalisation,
the Gaussian and the sparse scales), the Dasgupta–Gupta dimension, Eq. 39's weights, the GW objective (its
cross term, the sign of one term, the coupling's orientation), solver and start, the Markov closed forms, the
backward DI and per-horizon enumerations, InfoNCE and its per-size ceiling, the Bayes-optimal critic, CPC's
scores and the synthetic source's entropy floor."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments.semantic_space import SECTIONS, Config
from mutants import Mutant, edited


def tiny() -> Config:
    """Every check computed at a fraction of the quick size: the JL table at its fixed M = 1000, N = 1024 (the
    reference needs them) for the three tabulated kinds, n = 32 points for GW, two m and two projection kinds
    for Theorem 4 and the compressed readout, D = 16 models trained briefly, CPC with K = 2 on T = 12 at
    N ≤ 32 over V = 8."""
    return Config(jl_kinds=("gaussian", "srht", "dct"), gw_n=32, noise=(0.0, 0.05, 0.2), t4_dim=256,
                  t4_ms=(16, 128), t4_draws=30, d_model=16, num_heads=2, steps=40, text_steps=40, seq_len=16,
                  batch_size=16, eval_batches=1, warmup=10, dd_ms=(4, 8), dd_kinds=("srht", "sparse"), cpc_V=8,
                  cpc_d_model=16, cpc_code_dim=16, cpc_steps=80, cpc_lr=1e-2, cpc_batch=32, cpc_sizes=(2, 8, 32),
                  cpc_eval_batches=3, cpc_T=12, cpc_K=2, cpc_enumeration_n=3)


def _only(*sections: str):
    return lambda cfg: dataclasses.replace(cfg, sections=sections)


#: one size per section of the run (``Config.sections``): a mutant runs only the section(s) its bug is checked in;
#: the fwht is also used by Theorem 4's rows, the GW objective and the TLB start by Theorem 4's and the trained
#: models' GW rows, which only those mutants kill
SIZES = {**{section: _only(section) for section in SECTIONS}, "jl+theorem4": _only("jl", "theorem4"),
         "gw+theorem4+synthetic": _only("gw", "theorem4", "synthetic")}


# --- projections --------------------------------------------------------------------------------------------


def _fwht_stage_skipped(original):
    def fwht(x, axis=-1):
        x = jnp.moveaxis(jnp.asarray(x), axis, -1)
        n = x.shape[-1]
        lead = x.shape[:-1]
        h = 1
        while h < n // 2:  # the bug: log₂N − 1 butterfly stages
            y = x.reshape(*lead, n // (2 * h), 2, h)
            a, b = y[..., 0, :], y[..., 1, :]
            x = jnp.stack([a + b, a - b], axis=-2).reshape(*lead, n)
            h *= 2
        return jnp.moveaxis(x, -1, axis)

    return fwht


def _dct_wrong_axis(original):
    # the bug: the DCT over the points (axis 0), not the coordinates
    return edited(original, 'jfft.dct(y, type=2, norm="ortho", axis=-1)', 'jfft.dct(y, type=2, norm="ortho", axis=0)')


def _sparse_thirds(original):
    import jax

    def random_projection(key, kind, n, m, *, dtype=jnp.float32):
        P = original(key, kind, n, m, dtype=dtype)
        if kind != "sparse":
            return P
        import dataclasses

        u = jax.random.uniform(jax.random.split(key, 3)[0], (m, n), dtype)
        # the bug: ±1 with probability 1/3 each (0 with 1/3), still scaled by Achlioptas' √(3/m)
        entry = (u < 1.0 / 3.0).astype(dtype) - (u >= 2.0 / 3.0).astype(dtype)
        return dataclasses.replace(P, matrix_or_none=entry * math.sqrt(3.0 / m))

    return random_projection


def _jl_dimension_log2(original):
    def jl_dimension(num_points, eps):
        return math.ceil(4.0 * math.log2(num_points) / (eps**2 / 2 - eps**3 / 3))

    return jl_dimension


def _gaussian_input_scale(original):
    def random_projection(key, kind, n, m, *, dtype=jnp.float32):
        P = original(key, kind, n, m, dtype=dtype)
        if kind != "gaussian":
            return P
        k_mat = jax.random.split(key, 3)[0]
        # the bug: G/√N (the input dimension) where Lemma 1's G/√m is meant
        return dataclasses.replace(P, matrix_or_none=jax.random.normal(k_mat, (m, n), dtype) / math.sqrt(n))

    return random_projection


def _dct_unnormalised(original):
    # the bug: norm=None (the unnormalised DCT-II), not norm="ortho"
    return edited(original, 'jfft.dct(y, type=2, norm="ortho", axis=-1)', "jfft.dct(y, type=2, axis=-1)")


def _sparse_scale_times_m(original):
    def random_projection(key, kind, n, m, *, dtype=jnp.float32):
        P = original(key, kind, n, m, dtype=dtype)
        if kind != "sparse":
            return P
        # the bug: √(3·m) where Achlioptas' √(3/m) is meant (the entries ±1, 0 drawn as they should be)
        return dataclasses.replace(P, matrix_or_none=P.matrix_or_none * m)

    return random_projection


def _eq39_unweighted(original):
    def eq39_distortion(space, projection):
        out = original(space, projection)
        s = np.asarray(space.points, np.float64)
        ps = np.asarray(projection(jnp.asarray(space.points)), np.float64)
        # the bug: Σ_ij (…)² without the weights μ_i μ_j (no 1/n² for the uniform measure)
        return {**out, "eq39": float(np.sum((ps @ ps.T - s @ s.T) ** 2))}

    return eq39_distortion


# --- Gromov–Wasserstein --------------------------------------------------------------------------------------


def _gw_objective_no_two(original):
    def gw_objective(G, G2, coupling):
        a, b = coupling.sum(axis=1), coupling.sum(axis=0)
        cross = jnp.sum(coupling * (G @ coupling @ G2))
        return a @ (G * G) @ a + b @ (G2 * G2) @ b - cross  # the bug: the cross term without its 2

    return gw_objective


def _solve_three_iterations(original):
    def _solve(G, G2, a, b, C0, **kw):
        return original(G, G2, a, b, C0, **{**kw, "max_iterations": 3})  # stopped early, reported as converged

    return _solve


def _gw_outer_cap_three(original):
    def gromov_wasserstein(S, S2, *, max_iterations=3, **kw):  # the default outer limit 3 instead of 50
        return original(S, S2, max_iterations=max_iterations, **kw)

    return gromov_wasserstein


def _tlb_unsorted(original):
    def tlb_cost(G, mu, G2, nu, num=128):
        # the bug: rows compared entry by entry, not as laws (no quantiles, so not invariant to relabelling)
        return np.mean((np.asarray(G)[:, None, :] - np.asarray(G2)[None, :, :]) ** 2, axis=-1)

    return tlb_cost


def _gw_objective_second_sign(original):
    def gw_objective(G, G2, coupling):
        a, b = coupling.sum(axis=1), coupling.sum(axis=0)
        cross = jnp.sum(coupling * (G @ coupling @ G2))
        return a @ (G * G) @ a - b @ (G2 * G2) @ b - 2.0 * cross  # the bug: −bᵀ(G'∘G')b, not +

    return gw_objective


def _gw_objective_transposed(original):
    def gw_objective(G, G2, coupling):
        if coupling.shape[0] == coupling.shape[1]:
            coupling = coupling.T  # the bug: π[k, i] read as π[i, k] (silent when both spaces have n points)
        return original(G, G2, coupling)

    return gw_objective


# --- Eq. 42 and CPC ------------------------------------------------------------------------------------------


def _backward_di_future_from_t(original):
    from tvvar.theory.space import cpc as K

    def backward_directed_information(joint, encoder=None):
        p = K._check_joint(joint)
        n = p.ndim
        seqs, w = K._outcomes(p)
        S = K._encode(seqs, encoder, n)
        total, history = 0.0, np.zeros(len(seqs), np.int64)
        for t in range(n - 1):
            future = K._labels([s[t:] for s in seqs])  # the bug: X_{t:n}, not X_{t+1:n}
            total += K._label_cmi(w, S[t], future, history)
            history = K._labels(list(zip(history.tolist(), S[t].tolist(), strict=True)))
        return total

    return backward_directed_information


def _horizon_off_by_one(original):
    def markov_horizon_information(P, pi, k):
        return original(P, pi, k + 1)  # the bug: P^(k+1) for horizon k

    return markov_horizon_information


def _infonce_log2(original):
    import optax

    def infonce(S):
        N = S.shape[-1]
        labels = jnp.broadcast_to(jnp.arange(N), S.shape[:-1])
        return jnp.log2(N) - jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(S, labels))

    return infonce


def _bayes_one_step(original):
    def bayes_scores(P, pi, k, ids, dtype=jnp.float32):
        P, pi = np.asarray(P, np.float64), np.asarray(pi, np.float64)
        with np.errstate(divide="ignore"):
            ratio = np.log(P) - np.log(pi)[None, :]  # the bug: ln P, not ln P^k, at every horizon
        R = jnp.asarray(np.maximum(ratio, -1e30), dtype)
        ids = jnp.asarray(ids)
        a, b = ids[:, :-k].T, ids[:, k:].T
        return R[a[:, :, None], b[:, None, :]]

    return bayes_scores


def _scores_lag_short(original):
    def scores(self, ids):
        c = self.ar.hidden(ids)
        c = c.astype(jnp.promote_types(c.dtype, jnp.float32))
        z = jnp.take(self.code[...], ids, axis=0)
        out = []
        for k in range(1, self.horizons + 1):
            cw = jnp.einsum("ntd,de->nte", c[:, :-k], self.critic[...][k - 1])
            out.append(jnp.einsum("ite,jte->tij", cw, z[:, k - 1:-1]))  # the bug: x_{t+k−1}, not x_{t+k}
        return out

    return scores


def _horizon_last_dropped(original):
    from tvvar.theory.space import cpc as K

    def horizon_information(joint, encoder=None):
        p = K._check_joint(joint)
        n = p.ndim
        seqs, w = K._outcomes(p)
        S = K._encode(seqs, encoder, n)
        zero = np.zeros(len(seqs), np.int64)
        out = np.zeros((n - 1, n - 1))
        for t in range(n - 1):
            for k in range(1, n - 1 - t):  # the bug: stops one horizon early (k < n − 1 − t, not ≤)
                out[t, k - 1] = K._label_cmi(w, S[t], np.array([s[t + k] for s in seqs]), zero)
        return out

    return horizon_information


def _infonce_by_size_ceiling_m(original):
    def infonce_by_size(S, sizes):
        M = S.shape[-1]
        # the bug: every group of n scored against the whole batch's ceiling ln M, not its own ln n
        return original(S, sizes) + jnp.log(M) - jnp.log(jnp.asarray(sizes, jnp.float32))

    return infonce_by_size


def _entropy_weights_dropped(original):
    def entropy_of_logits(logits):
        z = logits.astype(jnp.float64 if logits.dtype == jnp.float64 else jnp.float32)
        return -jnp.sum(jax.nn.log_softmax(z, axis=-1), axis=-1)  # the bug: −Σ_v log p_v, not −Σ_v p_v log p_v

    return entropy_of_logits


MUTANTS = (
    Mutant("fwht_stage_skipped", "tvvar.theory.space.compression:fwht", _fwht_stage_skipped,
           "fast Walsh–Hadamard transform stops one butterfly stage early (log₂N − 1 stages)", size="jl+theorem4"),
    Mutant("dct_wrong_axis", "tvvar.theory.space.compression:Projection.__call__", _dct_wrong_axis,
           "sub-DCT projection takes the DCT over the points (axis 0) instead of the coordinates", size="jl"),
    Mutant("sparse_thirds", "tvvar.theory.space.compression:random_projection", _sparse_thirds,
           "Achlioptas projection draws ±1 with probability 1/3 each (not 1/6) but keeps the √(3/m) scale",
           size="theorem4"),
    Mutant("jl_dimension_log2", "tvvar.theory.space.compression:jl_dimension", _jl_dimension_log2,
           "Dasgupta–Gupta dimension with log₂ M where ln M is meant", size="jl"),
    Mutant("gw_objective_cross_term", "tvvar.theory.space.semantic:gw_objective", _gw_objective_no_two,
           "closed form of Eq. 34 drops the factor 2 of the cross term −2⟨π, GπG'⟩", size="gw+theorem4+synthetic"),
    Mutant("gw_outer_limit_three", "tvvar.theory.space.semantic:gromov_wasserstein", _gw_outer_cap_three,
           "entropic GW's default outer-iteration limit 3 instead of 50: solves stop early and say they did not "
           "converge", size="gw"),
    Mutant("gw_three_iterations", "tvvar.theory.space.semantic:_solve", _solve_three_iterations,
           "entropic GW's outer loop stopped after 3 iterations (and still reported converged)", size="gw"),
    Mutant("tlb_unsorted", "tvvar.theory.space.semantic:tlb_cost", _tlb_unsorted,
           "TLB start compares rows entry by entry instead of their sorted laws (quantiles)",
           size="gw+theorem4+synthetic"),
    Mutant("backward_di_future_from_t", "tvvar.theory.space.cpc:backward_directed_information",
           _backward_di_future_from_t, "backward DI's future window X_{t:n} instead of X_{t+1:n} (off by one)",
           size="cpc"),
    Mutant("horizon_off_by_one", "tvvar.theory.space.cpc:markov_horizon_information", _horizon_off_by_one,
           "I_k computed from P^(k+1) (off-by-one horizon)", size="cpc"),
    Mutant("infonce_log2", "tvvar.theory.space.cpc:infonce", _infonce_log2,
           "InfoNCE's ceiling log₂ N where ln N is meant", size="cpc"),
    Mutant("bayes_one_step", "tvvar.theory.space.cpc:bayes_scores", _bayes_one_step,
           "Bayes-optimal critic uses the one-step ratio ln P − ln π at every horizon k (P, not P^k)", size="cpc"),
    Mutant("cpc_lag_short", "tvvar.theory.space.cpc:CPC.scores", _scores_lag_short,
           "CPC's k-step critic scores c_t against x_{t+k−1} (off-by-one lag)", size="cpc"),
    Mutant("gaussian_input_scale", "tvvar.theory.space.compression:random_projection", _gaussian_input_scale,
           "Gaussian projection scaled G/√N (the input dimension) where Lemma 1's G/√m is meant", size="jl"),
    Mutant("dct_unnormalised", "tvvar.theory.space.compression:Projection.__call__", _dct_unnormalised,
           "sub-DCT projection with the unnormalised DCT-II (norm=None) where the orthonormal one is meant",
           size="jl"),
    Mutant("sparse_scale_times_m", "tvvar.theory.space.compression:random_projection", _sparse_scale_times_m,
           "Achlioptas projection scaled √(3·m) where √(3/m) is meant", size=None),
    Mutant("eq39_unweighted", "tvvar.theory.space.compression:eq39_distortion", _eq39_unweighted,
           "Eq. 39 summed over pairs without the weights μ_i μ_j (no 1/n² for the uniform measure)",
           size="theorem4"),
    Mutant("gw_objective_second_sign", "tvvar.theory.space.semantic:gw_objective", _gw_objective_second_sign,
           "closed form of Eq. 34 with the sign of the second space's term flipped (−bᵀ(G'∘G')b)", size=None),
    Mutant("horizon_last_dropped", "tvvar.theory.space.cpc:horizon_information", _horizon_last_dropped,
           "enumerated Σ_k I(X^t; X_{t+k}) stops one horizon early (k < n − 1 − t)", size="cpc"),
    Mutant("infonce_by_size_ceiling_m", "tvvar.theory.space.cpc:infonce_by_size", _infonce_by_size_ceiling_m,
           "InfoNCE of each group of n candidates with the whole batch's ceiling ln M instead of ln n",
           size="cpc"),
    Mutant("entropy_weights_dropped", "tvvar.sources.base:entropy_of_logits", _entropy_weights_dropped,
           "the synthetic source's exact entropy −Σ_v log p_v (the weights p_v dropped from −Σ_v p_v log p_v)",
           size="gw+theorem4+synthetic"),
    Mutant("gw_objective_transposed", "tvvar.theory.space.semantic:gw_objective", _gw_objective_transposed,
           "Eq. 34 evaluated at the transposed coupling πᵀ (silent for two spaces of n points)", size="gw"),
)
