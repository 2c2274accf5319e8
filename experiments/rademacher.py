"""Theorem 8, judged: the paper's Rademacher bound (Eq. 72) and a rigorous bound against the true risk.

Part A — a linear-softmax class with a teacher inside it (x on the sphere S^{D−1}, y ~ softmax(W* x / Ξ)):
for each sample size M, R independent repeats (vmapped + jitted) fit W by projected gradient descent in
the ball ‖W‖_F ≤ Λ on S, then compare the true risk (exact over y, on a large fresh x-sample), the
entropy floor H(Y|X), the empirical risk, the paper's bound and the rigorous bound
(Mohri et al. Thm 3.3 + Maurer's vector contraction; see tvvar.theory.transformer.rademacher).

Part B — a TV-VAR Transformer trained with tvvar.train on the synthetic TV-VAR source of tvvar.sources,
judged at one position t from M held-out samples.  The law at position t is enumerated exactly
(all V^{t+1} contexts), so the true risk and the floor are exact; the rigorous bound uses the
finite-context class (all maps with logits bounded by c, the trained model's largest |logit|).

Checks, each one able to fail under a plausible bug (tests/mutants/rademacher.py): the certified rigorous
bound's data-free terms against the theorem as printed (4Λr√(V/M) + 3B√(ln(2/δ)/2M), recomputed here in
float64), Eq. 72's middle term in the log-probability gauge against 2√2 L̂, the Monte Carlo R̂_S against
Λr√(V/M), the middle term's ratio over the last decade of M (it does not shrink), ERM's true risk near the
floor at the largest M; for Part B the enumerated law against tvvar.sources' sampler (mean CE and entropy),
the certified finite-context R̂ against a Monte Carlo estimate of its defining expectation, and the
Hoeffding bound's violation rate, judged only at the M where the bound is informative (its mean below
ln V, the uniform predictor's risk; above ln V no risk of interest can violate it). The empirical risk
alone is checked to be violated far more often than δ, so the violation rate is shown to detect a
non-bound. Rows that hold by construction (Gibbs: true risk ≥ floor) are labelled identities. The paper's
bound and both rigorous bounds stay above ln V at every M of the sweep: that finding is recorded in
``data[...]["findings"]`` with the M from which their data-free terms would leave them below ln V (about
1.9e5 for the linear class at the default sizes, where H(Y|X) ≈ 1.70 leaves 0.38 nats below ln 8; about
2e7 for the finite-context class of Part B), not as rows, since no plausible bug moves a bound that far.

    python -m experiments.rademacher [--quick] [--seed S] [--out DIR]
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

from experiments import plotting
from experiments.common import check, cli, save_figure, skipped
from tvvar.theory.transformer import rademacher as rd

SOURCE = "Bai, arXiv:2511.01202, Theorem 8 (Eqs. 68–75)"
RIGOROUS = "Mohri et al. 2018 Thm 3.3 + Maurer 2016 Cor. 1"


@dataclass(frozen=True)
class Config:
    seed: int = 0
    # Part A: linear-softmax class (linear=False switches it off: its rows are then one skipped row, as for tv)
    linear: bool = True
    V: int = 8  # vocabulary size
    D: int = 4  # input dimension (inputs on S^{D-1}, r = 1)
    teacher_norm: float = 6.0  # ‖W*/Ξ‖_F of the teacher
    Lam: float = 8.0  # Λ: the class radius ‖W‖_F ≤ Λ (contains the teacher)
    Ms: tuple[int, ...] = (100, 316, 1000, 3162, 10000)
    R: int = 200  # repeats per M
    steps: int = 50  # projected-GD steps of the fit
    n_sigma: int = 8  # Monte Carlo draws of σ per repeat
    n_fresh: int = 2**14  # fresh x-sample for the true risk
    deltas: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
    delta: float = 0.05  # δ of the risk-vs-M figure
    # Part B: trained TV-VAR model at position t (tvvar.sources.TVVARSource + tvvar.train)
    tv: bool = True
    tv_V: int = 8
    tv_source_D: int = 16
    tv_source_xi: float = 0.25
    tv_t: int = 1  # position (row t predicts token t+1; context = tokens 0..t)
    tv_d_model: int = 32
    tv_train_steps: int = 150
    tv_Ms: tuple[int, ...] = (100, 1000, 10000)
    tv_R: int = 20
    tv_check_n: int = 4096  # source.batch sample that cross-checks the enumerated law
    tv_rc_repeats: int = 4  # repeats per M whose certified R̂ is compared with a Monte Carlo estimate
    tv_rc_sigma: int = 16  # σ draws of that estimate

    @classmethod
    def quick(cls) -> Config:
        return cls()

    @classmethod
    def full(cls) -> Config:
        return cls(Ms=(100, 316, 1000, 3162, 10000, 31623, 100000), steps=100, n_sigma=16, n_fresh=2**16,
                   tv_train_steps=600, tv_Ms=(100, 316, 1000, 3162, 10000, 31623, 100000), tv_R=50,
                   tv_check_n=16384)


def _conf(M, deltas, B=1.0) -> np.ndarray:
    """The confidence term 3B√(log(2/δ)/2M) at every δ (the library's, Mohri et al. Thm 3.3)."""
    return np.asarray(rd.confidence_term(M, np.asarray(deltas, np.float64), B))


def certified_terms(M: int, V: int, Lam: float, deltas, r: float = 1.0) -> np.ndarray:
    """The data-free terms of the certified rigorous bound for the linear class as the theorem prints them,
    computed here in float64 without the library: 4Λr√(V/M) + 3B√(ln(2/δ)/(2M)) with B = ln V + 2Λr
    (Mohri et al. Thm 3.3 + Maurer; Jensen's R̂ ≤ Λr√(V/M) is an equality for inputs of norm r)."""
    d = np.asarray(deltas, np.float64)
    B = math.log(V) + 2.0 * Lam * r
    return 4.0 * Lam * r * math.sqrt(V / M) + 3.0 * B * np.sqrt(np.log(2.0 / d) / (2.0 * M))


def finite_context_rc_mc(key, context_ids, V: int, c: float, n_sigma: int) -> float:
    """R̂^vec_S(F_c) = (c/M) E_σ Σ_κ Σ_k |Σ_{m: κ_m = κ} σ_mk| by Monte Carlo over ``n_sigma`` draws of σ
    (the sup over all maps with |f_k(κ)| ≤ c separates over (κ, k) and sets f_k(κ) = c·sign of the sum)."""
    ids = np.asarray(context_ids)
    _, inv = np.unique(ids, return_inverse=True)
    sigma = 2.0 * np.asarray(jax.random.bernoulli(key, 0.5, (n_sigma, ids.size, V)), np.float64) - 1.0
    sums = np.zeros((n_sigma, int(inv.max()) + 1, V))
    np.add.at(sums, (slice(None), inv), sigma)
    return float(c / ids.size * np.abs(sums).sum(axis=(1, 2)).mean())


def regime(Ms, bound_mean, log_V: float) -> dict:
    """Where a bound is informative: the M at which its mean is below ln V (what predicting uniformly
    achieves). Above it the bound says less than guessing, and no risk of interest can violate it."""
    informative = [int(M) for M, b in zip(Ms, bound_mean, strict=True) if b < log_V]
    return {"informative_Ms": informative, "vacuous_Ms": [int(M) for M in Ms if int(M) not in informative],
            "first_informative_M": informative[0] if informative else None}


def informative_M(coefficient: float, log_V: float, risk: float) -> float:
    """The M from which data-free terms coefficient/√M leave the bound below ln V when the empirical risk
    is ``risk``: (coefficient / (ln V − risk))²; infinite if risk ≥ ln V."""
    room = log_V - risk
    return float((coefficient / room) ** 2) if room > 0 else math.inf


def violation_check(label: str, Ms, bound_mean, viol, delta: float, R: int, log_V: float, source: str) -> dict:
    """The worst violation rate (true risk > bound) over the M where the bound is informative must stay
    within δ + 3√(δ(1−δ)/R). With no informative M the measurement is NaN and the check fails: the sweep
    then holds no M at which the bound could be violated, and must be extended."""
    use = regime(Ms, bound_mean, log_V)["informative_Ms"]
    rates = [float(v) for M, v in zip(Ms, viol, strict=True) if int(M) in use]
    where = f"worst of M ∈ {use} (bound < ln V)" if use else "no M with the bound below ln V (vacuous sweep)"
    return check(f"{label} violation rate at δ, worst M where the bound is below ln V",
                 max(rates) if rates else math.nan, delta, "<=", 3 * math.sqrt(delta * (1 - delta) / R),
                 f"{source}; δ = {delta}, {where}")


def empirical_violation_check(label: str, viol_empirical, delta: float, R: int) -> dict:
    """L̂ alone is no bound: its violation rate at every M must exceed what a valid bound is allowed, which
    shows that the violation rate can detect a non-bound at this R."""
    return check(f"{label}: min over M of the violation rate of L̂ alone (no bound) exceeds the allowance at δ",
                 float(np.min(viol_empirical)), rd.violation_tolerance(delta, R), ">=", 0.0,
                 f"power of the violation test; δ = {delta}, R = {R}")


def middle_term_check(Ms, middle) -> dict:
    """The paper's middle term (2√2/M) Σ|z^ħ| is a mean, not a Rademacher average: it tends to
    2√2 E|z^ħ| > 0 instead of shrinking. Over the last decade of M (where the fit has settled; at small M
    the overfitted logits make it larger) a Rademacher term would give the ratio √(M0/M1) ≈ 0.32; this
    check fails unless the ratio is within 10% of 1."""
    i0 = int(np.argmin(np.abs(np.log10(np.asarray(Ms, float)) - (math.log10(Ms[-1]) - 1.0))))
    if i0 == len(Ms) - 1:
        raise ValueError(f"Ms must span more than one size to compare the middle term over M, got {tuple(Ms)}")
    ratio = float(middle[-1] / middle[i0])
    return check("linear: paper middle term, largest M / a tenth of it, does not shrink (a Rademacher term would "
                 "give √(M0/M1))", ratio, 1.0, "~", 0.1,
                 f"{SOURCE}; M = {Ms[-1]} / M = {Ms[i0]}, √(M0/M1) = {math.sqrt(Ms[i0] / Ms[-1]):.3g}")


def _part_linear(cfg: Config, out: Path, checks: list, figures: list) -> dict:
    from tqdm.auto import tqdm

    key = jax.random.key(cfg.seed)
    k_teacher, k_fresh, k_sweep = jax.random.split(key, 3)
    teacher = rd.LinearSoftmaxTeacher.create(k_teacher, cfg.V, cfg.D, cfg.teacher_norm)
    X_fresh = teacher.sample_x(k_fresh, cfg.n_fresh)
    H_x = np.asarray(teacher.conditional_entropy(X_fresh))
    B = rd.loss_range(cfg.V, cfg.Lam * 1.0)
    per_M, sweep_seconds = [], {}
    for i, M in enumerate(tqdm(cfg.Ms, desc="rademacher: linear sweep over M")):
        t0 = time.perf_counter()
        o = rd.linear_sweep(jax.random.fold_in(k_sweep, i), teacher, X_fresh, M=M, R=cfg.R, Lam=cfg.Lam,
                            steps=cfg.steps, n_sigma=cfg.n_sigma)
        o = {k: np.asarray(v) for k, v in jax.block_until_ready(o).items()}
        sweep_seconds[M] = time.perf_counter() - t0
        per_M.append(o)

    Ms = np.asarray(cfg.Ms, float)
    dl = np.asarray(cfg.deltas)
    rows = []
    viol = {"paper": [], "rigorous": [], "rigorous_certified": [], "empirical": []}
    dev_certified, dev_gauge = [], []
    for M, o in zip(cfg.Ms, per_M, strict=True):
        tr = o["true_risk"]
        paper = o["empirical"][:, None] + o["paper_logit"][:, None] + _conf(M, dl)[None, :]
        rig = np.stack([np.asarray(rd.rigorous_bound(o["empirical"], o["rc_mc"], M, float(d), B).total) for d in dl], 1)
        rigc = np.stack([np.asarray(rd.rigorous_bound(o["empirical"], o["rc_jensen"], M, float(d), B).total)
                         for d in dl], 1)
        viol["paper"].append(np.mean(tr[:, None] > paper, axis=0))
        viol["rigorous"].append(np.mean(tr[:, None] > rig, axis=0))
        viol["rigorous_certified"].append(np.mean(tr[:, None] > rigc, axis=0))
        viol["empirical"].append(float(np.mean(tr > o["empirical"])))
        j = int(np.argmin(np.abs(dl - cfg.delta)))
        # the certified bound's data-free terms, from the theorem as printed (float64, inputs on the unit
        # sphere, so Jensen's (Λ/M)√(V Σ‖x‖²) is Λ√(V/M) exactly): 4Λr√(V/M) + 3B√(ln(2/δ)/2M), B = ln V + 2Λr
        printed = certified_terms(M, cfg.V, cfg.Lam, dl)
        dev_certified.append(float(np.max(np.abs((rigc - o["empirical"][:, None]) - printed[None, :]) / printed)))
        # Eq. 72's middle term in the log-probability gauge is 2√2 L̂ (|log softmax(z)_y| = ℓ(z, y))
        gauge_ref = rd.PAPER_RC_FACTOR * o["empirical"].astype(np.float64)
        dev_gauge.append(float(np.max(np.abs(o["paper_logit_logprob"] - gauge_ref) / gauge_ref)))
        rows.append({
            "M": M, "true_risk": float(tr.mean()), "true_risk_q05": float(np.quantile(tr, 0.05)),
            "true_risk_q95": float(np.quantile(tr, 0.95)), "empirical": float(o["empirical"].mean()),
            "paper_bound": float(paper[:, j].mean()), "rigorous_bound": float(rig[:, j].mean()),
            "rigorous_bound_certified": float(rigc[:, j].mean()),
            "paper_logit_term": float(o["paper_logit"].mean()),
            "paper_logit_term_logprob_gauge": float(o["paper_logit_logprob"].mean()),
            "paper_confidence_term": float(_conf(M, [cfg.delta])[0]),
            "rigorous_complexity_term": float(rd.RIGOROUS_RC_FACTOR * o["rc_mc"].mean()),
            "rigorous_confidence_term": float(_conf(M, [cfg.delta], B)[0]),
            "rc_mc": float(o["rc_mc"].mean()), "rc_mc_se_of_mean": float(o["rc_mc"].std(ddof=1) / math.sqrt(cfg.R)),
            "rc_closed_form": rd.linear_rc_bound(M, cfg.V, cfg.Lam, 1.0),
            "min_true_risk_minus_floor": float(np.min(tr - o["floor"])),
            "w_norm": float(o["w_norm"].mean()), "sweep_seconds": sweep_seconds[M],
        })
    viol = {k: np.asarray(v) for k, v in viol.items()}
    floor = float(H_x.mean())

    # ---- checks ----
    log_V = math.log(cfg.V)
    g = lambda k: np.array([r[k] for r in rows])  # noqa: E731
    # The data-free terms of the certified bound are c0/√M: with L̂ at the floor it leaves ln V only from
    # M* = (c0 / (ln V − H(Y|X)))² (≈ 1.9e5 here), beyond every M of the sweep; until then no violation
    # can happen and its violation rate is no test: the finding is checked instead.
    c0 = rd.RIGOROUS_RC_FACTOR * rd.linear_rc_bound(1, cfg.V, cfg.Lam, 1.0) + float(_conf(1, [cfg.delta], B)[0])
    m_star = informative_M(c0, log_V, floor)
    # The two bounds are vacuous (above ln V) at every M of the sweep: recorded in findings (data), not as
    # rows, since no plausible bug moves a bound that far; the rows below are ones a bug can fail.
    checks.append(check("linear: certified rigorous bound − L̂ vs 4Λr√(V/M) + 3B√(ln(2/δ)/2M), B = ln V + 2Λr "
                        "(max relative deviation over repeats, M and δ)", max(dev_certified), 0.0, "~", 1e-5,
                        f"{RIGOROUS}; inputs on the unit sphere make the Jensen bound exact; float32 sums of "
                        f"terms ≤ 20 nats round at ~1e-6 relative; below ln V only from M ≈ {m_star:.3g}"))
    checks.append(check("linear: Eq. 72's middle term in the log-probability gauge vs 2√2 L̂ (max relative "
                        "deviation over repeats and M)", max(dev_gauge), 0.0, "~", 1e-5,
                        f"{SOURCE}: |log softmax(z)_ħ| is the per-sample cross-entropy (float32 rounding)"))
    checks.append(empirical_violation_check("linear", viol["empirical"], cfg.delta, cfg.R))
    checks.append(check("linear: min over runs of true risk − H(Y|X) (floor respected)",
                        min(r["min_true_risk_minus_floor"] for r in rows), 0.0, ">=", 1e-6, "KL ≥ 0",
                        identity="Gibbs: both are exact expectations over y under the teacher's p on the same fresh "
                                 "x-sample, and the model's q is a softmax, so their difference is a mean of KL ≥ 0"))
    worst = max(rows, key=lambda r: r["rc_mc"] / r["rc_closed_form"])
    checks.append(check("linear: MC R̂_S / Λr√(V/M), worst M", worst["rc_mc"] / worst["rc_closed_form"],
                        1.0, "<=", 3 * worst["rc_mc_se_of_mean"] / worst["rc_closed_form"],
                        f"Jensen; M = {worst['M']}"))
    checks.append(middle_term_check(cfg.Ms, g("paper_logit_term")))
    checks.append(check("linear: true risk at the largest M − floor (ERM approaches the Bayes risk)",
                        rows[-1]["true_risk"] - floor, 0.0, "~", 0.05, f"consistency of ERM; M = {cfg.Ms[-1]}"))
    findings = {"log_V": log_V,
                "rigorous": regime(cfg.Ms, g("rigorous_bound"), log_V),
                "rigorous_certified": regime(cfg.Ms, g("rigorous_bound_certified"), log_V),
                "paper": regime(cfg.Ms, g("paper_bound"), log_V),
                "paper_bound_minus_log_V_at_largest_M": rows[-1]["paper_bound"] - log_V,
                "rigorous_bound_minus_log_V_at_largest_M": rows[-1]["rigorous_bound"] - log_V,
                "certified_terms_max_relative_deviation": max(dev_certified),
                "logprob_gauge_max_relative_deviation": max(dev_gauge),
                "certified_bound_below_log_V_from_M_predicted": m_star,
                "paper_middle_term_over_M": [float(x) for x in g("paper_logit_term")]}

    # ---- figures ----
    fig, ax = plotting.subplots(figsize=(7, 4.5))
    ax.fill_between(Ms, g("true_risk_q05"), g("true_risk_q95"), color="k", alpha=0.15, lw=0)
    ax.plot(Ms, g("true_risk"), "k-o", ms=3, label="true risk (5–95% band)")
    ax.plot(Ms, g("empirical"), "C0-o", ms=3, label="empirical risk L̂ on S")
    ax.plot(Ms, g("paper_bound"), "C3-s", ms=3, label=f"paper bound, Eq. 72 (δ={cfg.delta})")
    ax.plot(Ms, g("rigorous_bound"), "C2-^", ms=3, label=f"rigorous bound (δ={cfg.delta})")
    ax.axhline(floor, color="gray", ls="--", lw=1, label="H(Y|X) floor")
    ax.axhline(math.log(cfg.V), color="gray", ls=":", lw=1, label="ln V (uniform predictor)")
    ax.set(xscale="log", yscale="log", xlabel="M (samples)", ylabel="cross-entropy (nats)",
           title=f"Linear-softmax class, V={cfg.V}, D={cfg.D}, Λ={cfg.Lam}, R={cfg.R}")
    ax.legend(fontsize=8)
    figures.append(save_figure(fig, out, "rademacher_linear_risk_vs_M.png"))

    fig, axs = plotting.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, idx in zip(axs, (0, len(cfg.Ms) - 1), strict=True):
        ax.plot(dl, dl, "k:", label="δ (allowed)")
        ax.plot(dl, [rd.violation_tolerance(d, cfg.R) for d in dl], "k--", lw=0.8, label="δ + 3√(δ(1−δ)/R)")
        ax.plot(dl, viol["paper"][idx], "C3-s", ms=4, label="paper bound (Eq. 72)")
        ax.plot(dl, viol["rigorous"][idx], "C2-^", ms=4, label="rigorous bound")
        ax.axhline(viol["empirical"][idx], color="C0", ls="-.", label="L̂ alone (no bound)")
        ax.set(xscale="log", xlabel="δ", title=f"M = {cfg.Ms[idx]}")
    axs[0].set_ylabel("violation rate (true risk > bound)")
    axs[0].legend(fontsize=8)
    figures.append(save_figure(fig, out, "rademacher_linear_violation_vs_delta.png"))

    fig, ax = plotting.subplots(figsize=(7, 4.5))
    ax.plot(Ms, g("paper_logit_term"), "C3-s", ms=3, label="paper: (2√2/M) Σ|z^ħ|")
    ax.plot(Ms, g("paper_confidence_term"), "C3:", label="paper: 3√(log(2/δ)/2M)")
    ax.plot(Ms, g("rigorous_complexity_term"), "C2-^", ms=3, label="rigorous: 4 R̂^vec_S")
    ax.plot(Ms, g("rigorous_confidence_term"), "C2:", label="rigorous: 3B√(log(2/δ)/2M)")
    ax.plot(Ms, g("paper_bound") - g("true_risk"), "C3--", label="paper bound − true risk")
    ax.plot(Ms, g("rigorous_bound") - g("true_risk"), "C2--", label="rigorous bound − true risk")
    ax.set(xscale="log", yscale="log", xlabel="M (samples)", ylabel="nats", title="Terms of the two bounds")
    ax.legend(fontsize=8)
    figures.append(save_figure(fig, out, "rademacher_linear_terms_vs_M.png"))

    return {"teacher_weight_norm": teacher.weight_norm, "loss_range_B": B, "floor_H_Y_given_X": floor,
            "floor_se": float(H_x.std(ddof=1) / math.sqrt(H_x.size)), "rows": rows,
            "violation_rate": {k: v.tolist() for k, v in viol.items()}, "deltas": list(cfg.deltas),
            "findings": findings, "sweep_seconds_total": float(sum(sweep_seconds.values()))}


def _part_tvvar(cfg: Config, out: Path, checks: list, figures: list) -> dict:
    from tvvar.core import log_softmax32
    from tvvar.model import ModelConfig
    from tvvar.sources import TVVARSource
    from tvvar.train import TrainConfig, train

    V, t = cfg.tv_V, cfg.tv_t
    src = TVVARSource(V, cfg.tv_source_D, xi=cfg.tv_source_xi, seed=1234 + cfg.seed)
    tcfg = TrainConfig(model=ModelConfig(vocab_size=V, d_model=cfg.tv_d_model, num_layers=1, mixer={"num_heads": 2}),
                       steps=cfg.tv_train_steps, batch_size=32, seq_len=max(8, t + 1), lr=3e-3,
                       warmup=min(20, cfg.tv_train_steps), eval_every=0, eval_batches=1, ckpt_every=0,
                       seed=cfg.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        model = train(tcfg, src, run_dir, progress=False)["model"]
    train_seconds = time.perf_counter() - t0

    # the exact law at position t: every context enumerated
    ctx = jnp.asarray(rd.enumerate_contexts(V, t))
    log_P, log_p = rd.position_law(src.logits(ctx), t)
    q_table = model(ctx)[:, t, :].astype(jnp.float32)  # the model's logits for every context
    P, p = jnp.exp(log_P), jnp.exp(log_p)
    floor = float(jnp.sum(P * -jnp.sum(p * log_p, axis=-1)))
    true_risk = float(jnp.sum(P * -jnp.sum(p * log_softmax32(q_table), axis=-1)))
    c = float(jnp.max(jnp.abs(q_table)))
    B = rd.loss_range(V, c)

    # cross-check the enumerated law with tvvar.sources' own sampler
    b = src.batch(jax.random.key(cfg.seed + 99), cfg.tv_check_n, t + 1, split="val")
    ce_s = np.asarray(rd.cross_entropy(model(b["tokens"][:, : t + 1])[:, t, :], b["tokens"][:, t + 1]))
    H_s = np.asarray(b["entropy"][:, t])
    at = f"position t = {t}"
    checks.append(check("TV-VAR: mean CE on source.batch samples vs exact true risk (4 SE)",
                        float(ce_s.mean()), true_risk, "~", 4 * float(ce_s.std(ddof=1) / math.sqrt(ce_s.size)),
                        f"enumeration of all contexts; {at}, {cfg.tv_check_n} samples"))
    checks.append(check("TV-VAR: mean source entropy at t vs exact H(U_t | context) (4 SE)",
                        float(H_s.mean()), floor, "~", 4 * float(H_s.std(ddof=1) / math.sqrt(H_s.size)) + 1e-5,
                        f"tvvar.sources exact entropy; {at}, {cfg.tv_check_n} samples"))
    checks.append(check("TV-VAR: exact true risk − exact floor (KL ≥ 0)", true_risk - floor, 0.0, ">=", 1e-6,
                        f"Gibbs' inequality; {at}",
                        identity="Gibbs: both sums run over the same enumerated law P(κ) p(y | κ) and the model's q "
                                 "is a softmax, so the difference is Σ_κ P(κ) KL(p ‖ q) ≥ 0"))

    K = int(ctx.shape[0])
    rows, dl = [], np.asarray(cfg.deltas)
    viol = {"paper": [], "rigorous": [], "hoeffding_heldout": [], "empirical": []}
    means = {"paper": [], "rigorous": [], "hoeffding_heldout": []}
    rc_ratio = []
    for i, M in enumerate(cfg.tv_Ms):
        def one(k, M=M):
            ids, y = rd.sample_position(k, log_P, log_p, M)
            z = q_table[ids]
            return {"empirical": jnp.mean(rd.cross_entropy(z, y)),
                    "paper_logit": rd.PAPER_RC_FACTOR * jnp.mean(jnp.abs(rd.target_logit(z, y))), "ids": ids}

        keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed + 7), i), cfg.tv_R)
        o = {k: np.asarray(v) for k, v in jax.jit(lambda ks: jax.lax.map(one, ks, batch_size=8))(keys).items()}
        rc = np.array([rd.finite_context_rc(ids, V, c) for ids in o["ids"]])
        # the certified R̂^vec_S(F_c) against its defining expectation, by Monte Carlo over σ on the first repeats
        mc = [finite_context_rc_mc(jax.random.fold_in(jax.random.key(cfg.seed + 11), 1000 * i + r), ids, V, c,
                                   cfg.tv_rc_sigma) for r, ids in enumerate(o["ids"][: cfg.tv_rc_repeats])]
        rc_ratio.append([m / b for m, b in zip(mc, rc, strict=False)])
        emp = o["empirical"]
        paper = emp[:, None] + o["paper_logit"][:, None] + _conf(M, dl)[None, :]
        rig = np.stack([np.asarray(rd.rigorous_bound(emp, rc, M, float(d), B).total) for d in dl], 1)
        hoef = np.stack([np.asarray(rd.hoeffding_bound(emp, M, float(d), B).total) for d in dl], 1)
        for k, b in (("paper", paper), ("rigorous", rig), ("hoeffding_heldout", hoef)):
            viol[k].append(np.mean(true_risk > b, axis=0))
            means[k].append(b.mean(0))
        viol["empirical"].append(float(np.mean(true_risk > emp)))
        j = int(np.argmin(np.abs(dl - cfg.delta)))
        rows.append({"M": M, "empirical": float(emp.mean()), "empirical_sd": float(emp.std(ddof=1)),
                     "paper_bound": float(paper[:, j].mean()), "rigorous_bound": float(rig[:, j].mean()),
                     "hoeffding_heldout_bound": float(hoef[:, j].mean()),
                     "paper_logit_term": float(o["paper_logit"].mean()),
                     "rigorous_complexity_term": float(rd.RIGOROUS_RC_FACTOR * rc.mean())})
    viol = {k: np.asarray(v) for k, v in viol.items()}
    means = {k: np.asarray(v) for k, v in means.items()}
    jd = int(np.argmin(np.abs(dl - cfg.delta)))
    log_V = math.log(V)
    label = "TV-VAR"
    checks.append(violation_check("TV-VAR: Hoeffding (model fixed before S) bound", cfg.tv_Ms,
                                  means["hoeffding_heldout"][:, jd], viol["hoeffding_heldout"][:, jd], cfg.delta,
                                  cfg.tv_R, log_V, "Hoeffding 1963"))
    # Σ_κ √n_κ ≤ √(K M) (Cauchy–Schwarz): the rigorous terms are at most c0/√M, c0 = 4cV√K + 3B√(log(2/δ)/2)
    c0 = rd.RIGOROUS_RC_FACTOR * c * V * math.sqrt(K) + float(_conf(1, [cfg.delta], B)[0])
    m_star = informative_M(c0, log_V, true_risk)
    # Jensen: E|Σ_{n} σ| lies between √(2n/π) (n → ∞) and √n (n = 1), so MC / certified ∈ [√(2/π), 1]
    ratios = np.asarray(rc_ratio, float)
    lo_r, hi_r = math.sqrt(2 / math.pi), 1.0
    worst_r = float(ratios.min() if abs(ratios.min() - lo_r) > abs(ratios.max() - hi_r) else ratios.max())
    checks.append(check("TV-VAR: Monte Carlo E_σ sup_{F_c} / certified (cV/M) Σ_κ √n_κ (within [√(2/π), 1], worst "
                        "over M and repeats)", worst_r, (lo_r + hi_r) / 2, "~", (hi_r - lo_r) / 2 + 0.05,
                        f"{RIGOROUS}: the sup over F_c separates; Jensen; {cfg.tv_rc_sigma} σ draws per repeat "
                        "(0.05 for their noise: each draw sums K·V terms |Σσ|, relative SE ≈ 0.75/√(K·V·draws), "
                        "under 1 % at K·V = 512 and 16 draws)"))
    checks.append(empirical_violation_check(label, viol["empirical"], cfg.delta, cfg.tv_R))
    findings = {"log_V": log_V, **{k: regime(cfg.tv_Ms, means[k][:, jd], log_V) for k in means},
                "rigorous_below_log_V_from_M_predicted": m_star,
                "paper_bound_minus_log_V_at_largest_M": float(means["paper"][-1, jd]) - log_V,
                "rigorous_bound_minus_log_V_at_largest_M": float(means["rigorous"][-1, jd]) - log_V,
                "rc_mc_over_certified": ratios.tolist()}

    Ms = np.asarray(cfg.tv_Ms, float)

    def g(k):
        return np.array([r[k] for r in rows])

    fig, ax = plotting.subplots(figsize=(7, 4.5))
    ax.axhline(true_risk, color="k", lw=1.5, label="true risk (exact)")
    ax.axhline(floor, color="gray", ls="--", lw=1, label="H(U_t | context) (exact)")
    ax.errorbar(Ms, g("empirical"), yerr=g("empirical_sd"), fmt="C0-o", ms=3, label="empirical risk L̂ (held-out S)")
    ax.plot(Ms, g("paper_bound"), "C3-s", ms=3, label=f"paper bound, Eq. 72 (δ={cfg.delta})")
    ax.plot(Ms, g("rigorous_bound"), "C2-^", ms=3, label="rigorous (finite-context class)")
    ax.plot(Ms, g("hoeffding_heldout_bound"), "C1-v", ms=3, label="Hoeffding, model fixed before S")
    ax.set(xscale="log", yscale="log", xlabel="M (held-out samples)", ylabel="cross-entropy (nats)",
           title=f"Trained TV-VAR Transformer at t={t} (V={V}, {K} contexts, R={cfg.tv_R})")
    ax.legend(fontsize=8)
    figures.append(save_figure(fig, out, "rademacher_tvvar_risk_vs_M.png"))
    return {"source": src.info(), "train_config": tcfg.to_dict(), "train_seconds": train_seconds, "contexts": K,
            "true_risk": true_risk, "floor": floor, "max_abs_logit_c": c, "loss_range_B": B, "rows": rows,
            "violation_rate": {k: v.tolist() for k, v in viol.items()}, "deltas": list(cfg.deltas),
            "findings": findings}


def run(config: Config, out: Path) -> dict:
    """Theorem 8 (Rademacher bound): the paper's Eq. 72 and a rigorous bound vs the true risk."""
    checks: list = []
    figures: list = []
    data: dict = {}
    if config.linear:
        data["linear"] = _part_linear(config, out, checks, figures)
    else:  # switched off on purpose (the mutant kit runs Part B alone), shown in the report like Part B's switch
        checks.append(skipped("linear: Part A checks (linear-softmax class with a teacher inside it)",
                              "Part A disabled (Config.linear is False)", source=SOURCE))
    if config.tv:
        data["tvvar"] = _part_tvvar(config, out, checks, figures)
    else:  # switched off on purpose, yet it must show in the report rather than vanish
        checks.append(skipped(f"TV-VAR t={config.tv_t}: Part B checks (trained TV-VAR at one position)",
                              "Part B disabled (Config.tv is False)", source=SOURCE))
    return {"checks": checks, "figures": figures, "data": data}


main = cli("rademacher", Config, run)

if __name__ == "__main__":
    main()
