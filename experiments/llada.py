"""LLaDA (Section V-G-2, Eq. 79) against an autoregressive TV-VAR of the same size, on a source with
exact probabilities.

Both models are the same :class:`tvvar.model.TVVARModel` (attention, Theorem 5), trained with
:func:`tvvar.train.train` on the same stationary order-1 Markov source (:class:`tvvar.sources.MarkovSource`):
the causal one with next-token cross-entropy, the bidirectional one (one extra token vector: the mask)
with the loss of Eq. 79. On held-out sequences x_{0:L−1} both are scored on the *same* tokens
x_{1:L−1} given x_0:

* AR: −Σ_i log q(x_i | x_{<i});
* LLaDA: the negative ELBO of x_{1:L−1} given the never-masked prompt x_0, by (a) the 1/τ Monte Carlo
  estimator, (b) the low-variance ℓ-count estimator and (c) exact enumeration of all 2^{L−1} − 1 mask
  sets; (a) and (b) must agree with (c) within 4 standard errors;
* the source: the exact −log p(x_{1:L−1} | x_0) of the same tokens, and the entropy rate H.

Every order of the any-order AR view of (c) is a normalized distribution, so E_x[NELBO(x)] ≥ E_x[−log p]
(the Eq. 79 bound), and by Gibbs E_x[AR NLL] ≥ E_x[−log p] too. Figures: the variance of the estimators
vs the number of samples; sample quality (the source's log-likelihood per generated token) vs sampling
steps, for low-confidence and random remasking, beside AR ancestral samples and the source's own.

    python -m experiments.llada [--quick] [--seed S] [--out DIR]
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import plotting
from experiments.common import check, cli, save_figure
from tvvar import diffusion as D
from tvvar.generate import generate as ar_generate
from tvvar.model import ModelConfig
from tvvar.sources import MarkovSource
from tvvar.train import TrainConfig, train

SOURCE = "Bai, arXiv:2511.01202, Eq. 79 (Section V-G-2); Nie et al. 2025 (LLaDA); Ou et al. 2024 (any-order AR = NELBO)"


@dataclass(frozen=True)
class Config:
    """``ar`` / ``llada`` / ``variance`` switch a part off (default on; the mutant kit runs one part alone):
    without ``ar`` no AR model is trained and its row (Gibbs) is not produced; without ``llada`` no LLaDA model
    is trained and the rows of its estimators, bound, training, samples and Eq. 79 loss are not produced; without
    ``variance`` the variance figure (no row) is not drawn. The exact-denoiser rows need no model and always run."""

    seed: int = 0
    vocab_size: int = 8  # V
    alpha: float = 0.15  # Dirichlet concentration of the Markov rows (small: low entropy)
    seq_len: int = 8  # L: the LLaDA sequence (x_0 prompt + L − 1 scored tokens)
    d_model: int = 32  # D
    num_layers: int = 2
    num_heads: int = 2
    batch_size: int = 64
    lr: float = 3e-3
    steps_ar: int = 300
    steps_llada: int = 800
    eval_sequences: int = 64
    mc_samples: int = 256  # S for estimators (a), (b)
    var_sequences: int = 8
    var_repeats: int = 24
    var_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    gen_prompts: int = 256
    gen_steps: tuple[int, ...] = (1, 2, 4, 7)
    loss_draws: int = 128  # Monte Carlo draws of the Eq. 79 training loss, against its exact expectation
    ar: bool = True  # train the AR baseline (its Gibbs row)
    llada: bool = True  # train LLaDA (its estimator, bound, training, sample and Eq. 79 rows)
    variance: bool = True  # the estimator-variance figure (data only, no row)

    @classmethod
    def quick(cls) -> Config:
        return cls()

    @classmethod
    def full(cls) -> Config:
        return cls(vocab_size=16, seq_len=12, d_model=64, num_layers=3, num_heads=4, steps_ar=2000,
                   steps_llada=6000, eval_sequences=128, mc_samples=1024, var_sequences=16, var_repeats=64,
                   var_sizes=(1, 2, 4, 8, 16, 32, 64, 128), gen_prompts=1024, gen_steps=(1, 2, 3, 4, 6, 11))


def _source_nll(src: MarkovSource, x: np.ndarray) -> np.ndarray:
    """Exact −log p(x_{1:} | x_0) per sequence (order-1 chain)."""
    logP = np.log(src.P)
    return -np.sum(logP[x[:, :-1], x[:, 1:]], axis=1)


def _posterior_logits(src: MarkovSource, ids, mask_id: int) -> jax.Array:
    """The exact denoiser of an order-1 Markov source: log p(x_i = v | every unmasked token) [B, L, V] by the
    forward-backward recursion in float64 (position i's own token left out, so every row is finite). With it
    every any-order factorization is the chain rule of p, so the NELBO (c) equals −log p exactly (Ou et al.)
    and the reverse process with random remasking, one token per step, samples p exactly."""
    x = np.asarray(ids)
    B, L = x.shape
    V = src.vocab_size
    P = src.P
    e = np.where((x == mask_id)[..., None], 1.0, (np.arange(V) == np.minimum(x, V - 1)[..., None]))  # [B, L, V]
    pred = np.empty((B, L, V))  # law of x_i given the unmasked tokens before i
    a = np.broadcast_to(src.pi, (B, V))
    for i in range(L):
        pred[:, i] = a
        post = a * e[:, i]
        a = (post / post.sum(-1, keepdims=True)) @ P
    back = np.ones((B, L, V))  # ∝ p(unmasked tokens after i | x_i)
    for i in range(L - 2, -1, -1):
        b = (e[:, i + 1] * back[:, i + 1]) @ P.T
        back[:, i] = b / b.sum(-1, keepdims=True)
    m = pred * back
    return jnp.asarray(np.log(m / m.sum(-1, keepdims=True)), jnp.float32)


def _expected_loglik(src: MarkovSource, x0: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """E[log p(y_{1:T} | x_0)] per prompt for y ~ p(· | x_0) (exact samples) and for y_i ~ p(x_i | x_0)
    drawn independently (what one reverse step that reveals every position samples): ([N], [N])."""
    P, logP = src.P, np.log(src.P)
    H_row = -np.sum(P * logP, axis=1)
    m_prev = np.eye(src.vocab_size)[x0]  # law of y_{i−1} given x_0
    joint, indep = np.zeros(len(x0)), np.zeros(len(x0))
    for _ in range(T):
        m = m_prev @ P
        joint -= m_prev @ H_row
        indep += np.einsum("na,nb,ab->n", m_prev, m, logP)
        m_prev = m
    return joint, indep


def _train(cfg: Config, model_cfg: ModelConfig, objective: str, steps: int, data, out: Path) -> tuple[nnx.Module, dict]:
    tc = TrainConfig(model=model_cfg, objective=objective, steps=steps, batch_size=cfg.batch_size,
                     seq_len=cfg.seq_len, lr=cfg.lr, warmup=min(50, steps // 10), eval_every=0, eval_batches=2,
                     ckpt_every=0, seed=cfg.seed)
    res = train(tc, data, out, progress=False)
    return res["model"], res


def run(cfg: Config, out: Path) -> dict:
    """LLaDA vs AR on a Markov source: ELBO estimators (a), (b), (c) beside the AR NLL and the exact entropy."""

    t0 = time.perf_counter()
    L, V = cfg.seq_len, cfg.vocab_size
    src = MarkovSource(V, 1, alpha=cfg.alpha, seed=1000 + cfg.seed)
    H = src.entropy_rate
    base = ModelConfig(V, cfg.d_model, num_layers=cfg.num_layers, max_len=L, mixer={"num_heads": cfg.num_heads})

    with tempfile.TemporaryDirectory() as tmp:
        ar, ar_res = _train(cfg, base, "cross_entropy", cfg.steps_ar, src, Path(tmp) / "ar") if cfg.ar else (None, None)
        dm, dm_res = (_train(cfg, D.llada_model_config(base), "llada", cfg.steps_llada, D.MaskTokenSource(src),
                             Path(tmp) / "llada") if cfg.llada else (None, None))
    t_train = time.perf_counter() - t0
    n_params = lambda m: sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731

    # held-out sequences x_{0:L−1}; everything below scores x_{1:L−1} given x_0
    x = np.asarray(src.sample_batch(jax.random.key(cfg.seed + 7), cfg.eval_sequences, L - 1, split="val"))
    xj = jnp.asarray(x)
    src_nll = _source_nll(src, x)  # [N]
    T = L - 1
    per_tok = lambda a: float(np.mean(a)) / T  # noqa: E731
    se_tok = lambda a: float(np.std(a, ddof=1) / math.sqrt(len(a))) / T  # noqa: E731
    checks: list[dict] = []
    data: dict = {"entropy_rate_nats": H, "source_nll_per_token_eval": per_tok(src_nll)}
    if cfg.ar:
        ar_logits = jax.jit(lambda ids: ar(ids))
        logp = jax.nn.log_softmax(np.asarray(ar_logits(xj)), -1)  # rows 0..L−1; row i predicts x_{i+1}
        ar_nll = -np.take_along_axis(np.asarray(logp[:, :-1]), x[:, 1:, None], -1)[..., 0].sum(1)  # [N]
        d_ar = ar_nll - src_nll
        data["ar_nll_per_token"] = per_tok(ar_nll)
    if cfg.llada:
        graphdef, state = nnx.split(dm)
        jit_logits = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids)[..., :V])
        logits_fn = lambda ids: jit_logits(state, ids)  # noqa: E731
        k = jax.random.key(cfg.seed + 11)
        exact = D.nelbo_exact(logits_fn, xj, mask_id=V, prompt_length=1)
        exact_eps = D.nelbo_exact(logits_fn, xj, mask_id=V, prompt_length=1, eps=D.DEFAULT_EPS)
        est_a = D.nelbo_mc(logits_fn, xj, jax.random.fold_in(k, 1), mask_id=V, num_samples=cfg.mc_samples,
                           prompt_length=1, chunk=64)
        est_b = D.nelbo_count(logits_fn, xj, jax.random.fold_in(k, 2), mask_id=V, num_samples=cfg.mc_samples,
                              prompt_length=1, stratified=False, chunk=64)
        uncond = D.nelbo_exact(logits_fn, xj, mask_id=V)  # all L tokens, x_0 included
        src_uncond = src_nll - np.log(src.pi[x[:, 0]])
    t_eval = time.perf_counter() - t0 - t_train
    # ------------------------------------------------------------------ variance vs number of samples
    figs = []
    if cfg.llada and cfg.variance:
        xv = xj[: cfg.var_sequences]
        variants = {"(a) 1/τ, i.i.d.": ("a", False), "(a) 1/τ, stratified τ": ("a", True),
                    "(b) L/ℓ, i.i.d. ℓ": ("b", False), "(b) L/ℓ, stratified ℓ": ("b", True)}
        var = {name: [] for name in variants}
        kv = jax.random.key(cfg.seed + 13)
        for name, (kind, strat) in variants.items():
            for n in cfg.var_sizes:
                vals = []
                for r in range(cfg.var_repeats):
                    kr = jax.random.fold_in(jax.random.fold_in(kv, n), r)
                    if kind == "a":
                        e = D.nelbo_mc(logits_fn, xv, kr, mask_id=V, num_samples=n, prompt_length=1, stratified=strat)
                    else:
                        e = D.nelbo_count(logits_fn, xv, kr, mask_id=V, num_samples=n, prompt_length=1,
                                          stratified=strat)
                    vals.append(e.nats_per_token)
                var[name].append(float(np.var(vals, ddof=1)))
        fig, ax = plotting.subplots(figsize=(6, 4))
        for name, v in var.items():
            ax.loglog(cfg.var_sizes, v, "o-", label=name)
        ref_exact = D.nelbo_exact(logits_fn, xv, mask_id=V, prompt_length=1).nats_per_token
        ax.set_xlabel("Monte Carlo samples per sequence")
        ax.set_ylabel("variance of the NELBO estimate (nats/token)²")
        ax.set_title(f"LLaDA NELBO estimators ({cfg.var_sequences} sequences, exact {ref_exact:.3f} nats/token)")
        ax.legend(fontsize=8)
        figs.append(save_figure(fig, out, "estimator_variance.png"))
        data["variance_vs_samples"] = {"sizes": list(cfg.var_sizes), **var}

    t_var = time.perf_counter() - t0 - t_train - t_eval
    # ------------------------------------------------------------------ sample quality vs steps
    prompts = np.asarray(src.sample_batch(jax.random.key(cfg.seed + 17), cfg.gen_prompts, 1, split="val"))[:, :1]
    pj = jnp.asarray(prompts)
    quality: dict[str, list[float]] = {"low_confidence": [], "random": []}
    if cfg.llada:
        for remasking in quality:
            for s in cfg.gen_steps:
                g = np.asarray(D.generate(logits_fn, pj, jax.random.key(cfg.seed + s), mask_id=V, steps=s,
                                          gen_length=T, temperature=1.0, remasking=remasking))
                quality[remasking].append(-float(np.mean(_source_nll(src, g))) / T)
    if cfg.ar:
        g_ar = np.asarray(ar_generate(ar, pj, T, key=jax.random.key(cfg.seed + 19), temperature=1.0))
        ar_quality = -float(np.mean(_source_nll(src, g_ar))) / T
    if cfg.llada or cfg.ar:
        fig, ax = plotting.subplots(figsize=(6, 4))
        for remasking, q in quality.items():
            if q:
                ax.plot(cfg.gen_steps, q, "o-", label=f"LLaDA, {remasking} remasking")
        if cfg.ar:
            ax.axhline(ar_quality, color="C2", ls="--", label="AR ancestral sampling")
        ax.axhline(-H, color="k", ls=":", label="source samples (−H)")
        ax.set_xlabel(f"sampling steps (gen_length = {T:d})")
        plotting.integer_ticks(ax, "x")
        ax.set_ylabel("source log-likelihood per generated token (nats)")
        ax.set_title("Sample quality vs sampling steps (temperature 1)")
        ax.legend(fontsize=8)
        figs.append(save_figure(fig, out, "quality_vs_steps.png"))

    # ------------------------------------------------------------------ the exact denoiser (the source's posterior)
    post_fn = lambda ids: _posterior_logits(src, ids, V)  # noqa: E731
    post_c = D.nelbo_exact(post_fn, xj, mask_id=V, prompt_length=1)
    ref_joint, ref_indep = _expected_loglik(src, prompts[:, 0], T)
    exact_q: dict[str, float] = {}
    exact_se: dict[str, float] = {}
    for label, (s, remasking) in {"random, one token per step": (T, "random"),
                                  "low_confidence, one token per step": (T, "low_confidence"),
                                  "one step": (1, "random")}.items():
        g = np.asarray(D.generate(post_fn, pj, jax.random.key(cfg.seed + 23 + s), mask_id=V, steps=s, gen_length=T,
                                  temperature=1.0, remasking=remasking))
        ll = -_source_nll(src, g) / T
        exact_q[label], exact_se[label] = float(np.mean(ll)), float(np.std(ll, ddof=1) / math.sqrt(len(ll)))
    # ------------------------------------------------------------------ the Eq. 79 training loss, draw by draw
    if cfg.llada:
        loss_fn = jax.jit(lambda key: D.diffusion_loss(logits_fn, xj, key, mask_id=V)[0])
        kl = jax.random.key(cfg.seed + 29)
        losses = np.array([float(loss_fn(jax.random.fold_in(kl, s))) for s in range(cfg.loss_draws)])
        uncond_eps = D.nelbo_exact(logits_fn, xj, mask_id=V, eps=D.DEFAULT_EPS)

    t_gen = time.perf_counter() - t0 - t_train - t_eval - t_var
    # ------------------------------------------------------------------ checks
    if cfg.llada:
        d_nelbo = exact.nats - src_nll
        checks += [
            check("(a) 1/τ estimator = exact E[(a)] (enumeration with ε weights), nats/token",
                  est_a.nats_per_token, exact_eps.nats_per_token, "~", 4 * est_a.stderr_nats_per_token,
                  "unbiasedness; tolerance 4 SE"),
            check("(b) L/ℓ estimator = exact NELBO (c), nats/token", est_b.nats_per_token, exact.nats_per_token, "~",
                  4 * est_b.stderr_nats_per_token, "unbiasedness; tolerance 4 SE"),
            check("single-draw variance ratio var(b)/var(a)", float(np.var(est_b.samples) / np.var(est_a.samples)),
                  1.0, "<=", 0.0, "Nie et al. 2025 (LLaDA), low-variance likelihood estimator"),
            check("E[NELBO (c)] − E[−log p(x_{1:}|x_0)] ≥ 0 (nats/token)", per_tok(d_nelbo), 0.0, ">=",
                  4 * se_tok(d_nelbo),
                  "Eq. 79 is an upper bound: each any-order AR factorization is a normalized q; tolerance 4 SE"),
        ]
    if cfg.ar:
        checks.append(check("E[AR NLL] − E[−log p(x_{1:}|x_0)] ≥ 0 (nats/token)", per_tok(d_ar), 0.0, ">=",
                            4 * se_tok(d_ar), "Gibbs' inequality; tolerance 4 SE"))
    if cfg.llada:
        checks += [
            check("LLaDA learned the source: NELBO (c) ≤ log V (uniform) − 0.3 nats/token", exact.nats_per_token,
                  math.log(V) - 0.3, "<=", 0.0, "training works"),
            check("sample quality: source log-lik/token at max steps ≥ at 1 step (low-confidence)",
                  quality["low_confidence"][-1], quality["low_confidence"][0], ">=", 0.0,
                  "Nie et al. 2025: more sampling steps, better samples"),
            check("Eq. 79 training loss: mean over draws = exact E (ε-weighted enumeration / L), nats/token",
                  float(np.mean(losses)), uncond_eps.nats_per_token, "~",
                  4 * float(np.std(losses, ddof=1) / math.sqrt(len(losses))),
                  "E over τ and Bernoulli(p) masks of (1/(B·L)) Σ 1[masked] (−log q)/p = Σ_M w_ε(|M|) Σ_{i∈M} "
                  "(−log q) / L; tolerance 4 SE over draws"),
        ]
    checks += [
        check("NELBO (c) with the source's exact posterior as denoiser = −log p(x_{1:}|x_0) (max |Δ|, nats/seq)",
              float(np.max(np.abs(post_c.nats - src_nll))), 0.0, "~", 1e-4,
              "Ou et al. 2024: each any-order factorization of the true conditionals is the chain rule of p; "
              "float32 log-softmax of 2^{L−1} − 1 sets"),
        check("reverse process, exact denoiser, random remasking, one token per step: source log-lik/token = "
              "exact E[log p(x_{1:}|x_0)]/T", exact_q["random, one token per step"], float(np.mean(ref_joint)) / T,
              "~", 4 * exact_se["random, one token per step"],
              "revealing one position at a time, chosen independently of the proposals, samples p exactly; "
              "tolerance 4 SE over prompts"),
        check("reverse process, exact denoiser, one step: source log-lik/token = closed form of independent "
              "marginals p(x_i|x_0)", exact_q["one step"], float(np.mean(ref_indep)) / T, "~",
              4 * exact_se["one step"], "one step reveals every position from its own marginal; tolerance 4 SE"),
        check("reverse process, exact denoiser, one token per step: low-confidence source log-lik/token ≥ random's",
              exact_q["low_confidence, one token per step"], exact_q["random, one token per step"], ">=",
              4 * math.hypot(exact_se["low_confidence, one token per step"], exact_se["random, one token per step"]),
              "Nie et al. 2025: low-confidence remasking reveals the likeliest proposals first; tolerance 4 SE"),
    ]
    if cfg.llada:
        data.update({
            "llada_nelbo_per_token": {"a_mc_1_over_tau": est_a.summary(), "b_count": est_b.summary(),
                                      "c_exact": exact.summary(), "c_exact_eps": exact_eps.summary()},
            "llada_unconditional_exact_nelbo_per_token": uncond.nats_per_token,
            "source_unconditional_nll_per_token": float(np.mean(src_uncond)) / L,
            "training_loss": {"mean": float(np.mean(losses)), "draws": len(losses),
                              "exact_expectation": uncond_eps.nats_per_token},
        })
    if cfg.ar and cfg.llada:
        n_ar, n_dm = n_params(ar), n_params(dm)
        data["params"] = {"ar": n_ar, "llada": n_dm, "difference": n_dm - n_ar}
    data["train"] = {**({"ar_final_val": ar_res["final"]["val"]} if cfg.ar else {}),
                     **({"llada_final_val": dm_res["final"]["val"]} if cfg.llada else {})}
    data["seconds"] = {"train": t_train, "likelihoods": t_eval, "variance": t_var, "generation": t_gen}
    data["quality_vs_steps"] = {"steps": list(cfg.gen_steps), **quality, "source_minus_H": -H,
                                **({"ar_ancestral": ar_quality} if cfg.ar else {})}
    data["exact_denoiser"] = {"nelbo_c_per_token": post_c.nats_per_token, "sample_quality": exact_q,
                              "sample_quality_stderr": exact_se,
                              "reference_exact_samples": float(np.mean(ref_joint)) / T,
                              "reference_independent_marginals": float(np.mean(ref_indep)) / T}
    data["bits_per_token"] = {"entropy_rate": H / math.log(2),
                              **({"ar": per_tok(ar_nll) / math.log(2)} if cfg.ar else {}),
                              **({"llada_c": exact.bits_per_token} if cfg.llada else {})}
    data["perplexity"] = {"entropy_rate": math.exp(H), **({"ar": math.exp(per_tok(ar_nll))} if cfg.ar else {}),
                          **({"llada_c": exact.perplexity} if cfg.llada else {})}
    return {"checks": checks, "figures": figs, "data": data}


main = cli("llada", Config, run)

if __name__ == "__main__":
    main()
