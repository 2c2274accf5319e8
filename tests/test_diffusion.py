"""LLaDA (Eq. 79): the masked-diffusion wrapper, its likelihood bounds and its samplers.

The exact identities use a *table denoiser*: for V = 3 and L = 4 every input in {0, 1, 2, M}^4 (256 of
them) gets its own row of logits, so any conditional model — consistent or not — can be written down.

Why NELBO(x) = −log p(x) holds exactly with the true conditionals. The enumerated NELBO is the
any-order autoregressive loss averaged over all L! orders: for an order σ, step k scores
x_{σ(k)} with the masked set M = [L] \\ σ(<k); over uniform σ, M is a uniform set of size m = L − k + 1
and i = σ(k) is uniform in M, which gives the weight 1/(m·C(L, m)) of every (M, i) — this holds for
*any* denoiser. If the denoiser returns the true *marginal* conditionals q(x_i | x_{−M}) =
p(x_i | x_{[L]∖M}) (the other masked positions summed out — not the Gibbs conditional p(x_i | x_{−i})),
then for each order the chain rule gives Σ_k −log p(x_{σ(k)} | x_{σ(<k)}) = −log p(x), so the average is
−log p(x) and the bound is tight. (A p with full support keeps every conditional defined.)
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import integrate
from scipy.special import log_softmax

from tvvar import diffusion as D
from tvvar.core import available, build, mix_dense
from tvvar.model import ModelConfig
from tvvar.testing import check_decomposition

V, L = 3, 4
M = V  # the mask id


# --------------------------------------------------------------------------------------------------
# table denoisers
# --------------------------------------------------------------------------------------------------


def _codes(ids):
    return ids @ ((V + 1) ** jnp.arange(ids.shape[-1]))


def _all_inputs(length=L):
    return np.array(list(itertools.product(range(V + 1), repeat=length)))[:, ::-1]  # little-endian rows


def table_denoiser(table):
    """logits_fn(ids [B, L]) = table[code(ids)], table [(V+1)^L, L, V]."""
    t = jnp.asarray(table)
    calls = {"n": 0}

    def fn(ids):
        calls["n"] += 1
        return t[_codes(ids)]

    fn.calls = calls
    return fn


def _index_table(length=L):
    """Rows of _all_inputs ordered by code: row c decodes code c."""
    rows = np.zeros(((V + 1) ** length, length), np.int64)
    for c in range((V + 1) ** length):
        rows[c] = [(c // (V + 1) ** i) % (V + 1) for i in range(length)]
    return rows


def true_conditional_table(p, length=L):
    """log p(x_i = v | x_visible) for every input pattern (marginal conditionals of the joint p)."""
    seqs = np.array(list(itertools.product(range(V), repeat=length)))  # [V^L, L]
    rows = _index_table(length)
    table = np.zeros((len(rows), length, V))
    for c, ids in enumerate(rows):
        visible = ids < V
        match = np.all((seqs == ids) | ~visible, axis=1)
        for i in range(length):
            if visible[i]:
                continue  # never scored: the denoiser is only read at masked positions
            probs = np.array([p[match & (seqs[:, i] == v)].sum() for v in range(V)])
            table[c, i] = np.log(probs / probs.sum())
    return table, seqs


def random_joint(seed=0, length=L):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(V**length, 0.7))
    return 0.95 * p + 0.05 / V**length


# --------------------------------------------------------------------------------------------------
# exact identities (float64, 1e-10)
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("prompt_length", [0, 1])
def test_enumerated_nelbo_equals_any_order_ar_for_inconsistent_model(prompt_length):
    """NELBO by enumeration == the any-order AR loss averaged over all orders, for an arbitrary table."""
    with jax.enable_x64(True):
        table = np.random.default_rng(1).normal(size=((V + 1) ** L, L, V)) * 2.0
        fn = table_denoiser(table)
        x = jnp.asarray([[0, 2, 1, 1], [2, 2, 0, 1], [1, 0, 0, 2]])
        exact = D.nelbo_exact(fn, x, mask_id=M, prompt_length=prompt_length)
        ao = D.any_order_nll(fn, x, mask_id=M, prompt_length=prompt_length)
        np.testing.assert_allclose(exact.nats, ao, atol=1e-10, rtol=0)
        chunked = D.nelbo_exact(fn, x, mask_id=M, prompt_length=prompt_length, chunk=4)  # the per-sequence path
        np.testing.assert_allclose(chunked.nats, exact.nats, atol=1e-12, rtol=0)
        assert exact.num_tokens == L - prompt_length
        # and by a third, literal route: the formula of the issue written as a loop over subsets
        for b in range(x.shape[0]):
            tot = 0.0
            La = L - prompt_length
            for m in range(1, La + 1):
                for Mset in itertools.combinations(range(prompt_length, L), m):
                    ids = np.asarray(x[b]).copy()
                    ids[list(Mset)] = M
                    logp = log_softmax(table[int(ids @ (V + 1) ** np.arange(L))], axis=-1)
                    tot += sum(-logp[i, int(x[b, i])] for i in Mset) / (m * math.comb(La, m))
            assert abs(tot - exact.nats[b]) < 1e-10


def test_true_conditionals_make_the_bound_tight():
    """With the true marginal conditionals of a joint p, NELBO(x) = −log p(x) for every x (and the
    prompt-conditional NELBO = −log p(x_{1:} | x_0)); a perturbed model gives NELBO > −log p(x) on average."""
    with jax.enable_x64(True):
        p = random_joint(0)
        table, seqs = true_conditional_table(p)
        fn = table_denoiser(table)
        xs = jnp.asarray(seqs)
        exact = D.nelbo_exact(fn, xs, mask_id=M)
        np.testing.assert_allclose(exact.nats, -np.log(p), atol=1e-10, rtol=0)
        cond = D.nelbo_exact(fn, xs, mask_id=M, prompt_length=1)
        p0 = np.array([p[seqs[:, 0] == seqs[k, 0]].sum() for k in range(len(seqs))])
        np.testing.assert_allclose(cond.nats, -np.log(p / p0), atol=1e-10, rtol=0)
        # a wrong model is an upper bound in expectation under p only if it is a consistent joint;
        # for a perturbed table we only check that the identity is not vacuous: it breaks.
        bad = D.nelbo_exact(table_denoiser(table + 0.3 * np.random.default_rng(2).normal(size=table.shape)), xs,
                            mask_id=M)
        assert np.max(np.abs(bad.nats + np.log(p))) > 1e-2


def test_subset_weights():
    """w(m) = 1/(m C(L, m)); Σ_M |M| w(|M|) = L; the ε-weights match quadrature of E_τ[p^{m−1}(1−p)^{L−m}]."""
    for Lx in (1, 4, 9):
        w = D.subset_weights(Lx)
        m = np.arange(1, Lx + 1)
        np.testing.assert_allclose(w[1:], [1 / (k * math.comb(Lx, k)) for k in m], rtol=1e-13)
        assert abs(sum(math.comb(Lx, k) * k * w[k] for k in m) - Lx) < 1e-12
    eps = 0.05
    w = D.subset_weights(4, eps)
    for k in range(1, 5):
        ref = integrate.quad(lambda t, k=k: ((1 - eps) * t + eps) ** (k - 1) * (1 - ((1 - eps) * t + eps)) ** (4 - k),
                             0, 1, epsabs=1e-14)[0]
        assert abs(w[k] - ref) < 1e-12
    with pytest.raises(ValueError, match="eps must be"):
        D.subset_weights(4, 1.0)


# --------------------------------------------------------------------------------------------------
# Monte Carlo estimators vs the exact bound
# --------------------------------------------------------------------------------------------------


def _se(lik, b):
    return lik.samples[:, b].std(ddof=1) / math.sqrt(lik.samples.shape[0])


def test_estimators_agree_with_exact_and_count_estimator_has_lower_variance():
    table = np.random.default_rng(3).normal(size=((V + 1) ** L, L, V)) * 1.5
    fn = table_denoiser(table)
    x = jnp.asarray([[0, 2, 1, 1], [2, 2, 0, 1]])
    S = 4000
    exact = D.nelbo_exact(fn, x, mask_id=M)
    exact_eps = D.nelbo_exact(fn, x, mask_id=M, eps=D.DEFAULT_EPS)
    a = D.nelbo_mc(fn, x, jax.random.key(0), mask_id=M, num_samples=S, chunk=1000)
    b = D.nelbo_count(fn, x, jax.random.key(1), mask_id=M, num_samples=S, stratified=False)
    for lik, ref in ((a, exact_eps), (b, exact)):
        for k in range(x.shape[0]):
            assert abs(lik.nats[k] - ref.nats[k]) < 4 * _se(lik, k), (
                lik.method, k, lik.nats[k], ref.nats[k], _se(lik, k))
    # stratified variants are unbiased too (their i.i.d. standard error is conservative)
    a_s = D.nelbo_mc(fn, x, jax.random.key(2), mask_id=M, num_samples=S, stratified=True)
    b_s = D.nelbo_count(fn, x, jax.random.key(3), mask_id=M, num_samples=S, stratified=True)
    for lik, ref in ((a_s, exact_eps), (b_s, exact)):
        for k in range(x.shape[0]):
            assert abs(lik.nats[k] - ref.nats[k]) < 4 * _se(lik, k)
    # equal sample count: the per-draw variance of (b) is below that of (a), per sequence
    for k in range(x.shape[0]):
        assert b.samples[:, k].var() < 0.5 * a.samples[:, k].var()
    # reporting: nats/token, bits/token, perplexity
    assert abs(exact.nats_per_token - exact.nats.mean() / L) < 1e-12
    assert abs(exact.bits_per_token - exact.nats_per_token / math.log(2)) < 1e-12
    assert abs(exact.perplexity - math.exp(exact.nats_per_token)) < 1e-9
    assert exact.stderr_nats_per_token == 0.0 and a.stderr_nats_per_token > 0


def test_estimators_on_a_network_with_prompt():
    """The real wrapper (attention, positions): (a), (b) within 4 SE of (c), prompt-conditional."""
    cfg = ModelConfig(vocab_size=V, d_model=16, num_layers=1, max_len=6, mixer={"num_heads": 2})
    model = D.MaskedDiffusionLM(cfg, rngs=nnx.Rngs(0))
    fn = nnx.jit(lambda m, ids: m(ids))
    logits_fn = lambda ids: fn(model, ids)  # noqa: E731
    x = jnp.asarray([[0, 1, 2, 2, 1, 0]])
    exact = D.nelbo_exact(logits_fn, x, mask_id=M, prompt_length=2)
    exact_eps = D.nelbo_exact(logits_fn, x, mask_id=M, prompt_length=2, eps=D.DEFAULT_EPS)
    a = D.nelbo_mc(logits_fn, x, jax.random.key(0), mask_id=M, num_samples=1000, prompt_length=2)
    b = D.nelbo_count(logits_fn, x, jax.random.key(1), mask_id=M, num_samples=1000, prompt_length=2)
    assert exact.num_tokens == a.num_tokens == b.num_tokens == 4
    assert abs(a.nats[0] - exact_eps.nats[0]) < 4 * _se(a, 0)
    assert abs(b.nats[0] - exact.nats[0]) < 4 * _se(b, 0)


def test_likelihood_argument_errors():
    fn = table_denoiser(np.zeros(((V + 1) ** L, L, V)))
    x = jnp.zeros((1, L), jnp.int32)
    with pytest.raises(ValueError, match="prompt_length must be"):
        D.nelbo_exact(fn, x, mask_id=M, prompt_length=L)
    with pytest.raises(ValueError, match="num_samples must be"):
        D.nelbo_mc(fn, x, jax.random.key(0), mask_id=M, num_samples=0)
    with pytest.raises(ValueError, match="max_answer_length"):
        D.nelbo_exact(fn, jnp.zeros((1, 20), jnp.int32), mask_id=M)
    with pytest.raises(ValueError, match=r"x must have shape \[B, L\]"):
        D.nelbo_count(fn, jnp.zeros((L,), jnp.int32), jax.random.key(0), mask_id=M, num_samples=2)


# --------------------------------------------------------------------------------------------------
# the forward process and the loss of Eq. 79
# --------------------------------------------------------------------------------------------------


def test_hand_computed_loss_and_its_gradient():
    """V = 2, q = (1/4, 3/4) everywhere: −log q(1) = log 4/3, −log q(0) = log 4."""
    logits = jnp.broadcast_to(jnp.asarray([0.0, math.log(3.0)]), (2, 3, 2))
    x = jnp.asarray([[1, 0, 1], [0, 0, 1]])
    masked = jnp.asarray([[True, True, False], [False, False, True]])
    p = jnp.asarray([0.5, 0.25])
    got = D.weighted_masked_loss(logits, x, masked, p)
    want = (math.log(16 / 3) / 0.5 + math.log(4 / 3) / 0.25) / 6
    assert abs(float(got) - want) < 1e-6
    # SFT: the prompt is never scored; each row is normalized by its answer length
    prompt = jnp.asarray([[True, False, False], [True, True, False]])
    got = D.weighted_masked_loss(logits, x, masked, p, prompt_mask=prompt)
    want = (math.log(4) / 0.5 / 2 + math.log(4 / 3) / 0.25 / 1) / 2
    assert abs(float(got) - want) < 1e-6

    # gradients w.r.t. the logits against a plain loop
    def plain(lg):
        tot = 0.0
        for b in range(2):
            for i in range(3):
                if bool(masked[b, i]):
                    tot = tot - jax.nn.log_softmax(lg[b, i])[int(x[b, i])] / p[b]
        return tot / 6

    lg = jax.random.normal(jax.random.key(0), (2, 3, 2))
    g_fast = jax.grad(lambda z: D.weighted_masked_loss(z, x, masked, p))(lg)
    g_plain = jax.grad(plain)(lg)
    np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_plain), atol=1e-6)
    assert abs(float(D.weighted_masked_loss(lg, x, masked, p)) - float(plain(lg))) < 1e-6


def test_diffusion_loss_is_unbiased_for_the_mean_token_nll():
    """E[(1/p) Σ_{masked} nll] = Σ_i nll_i when the denoiser ignores its input: Eq. 79 in expectation."""
    Vx = 4
    base = jax.random.normal(jax.random.key(5), (3, 8, Vx))
    fn = lambda ids: base  # noqa: E731
    x = jax.random.randint(jax.random.key(6), (3, 8), 0, Vx)
    nll_all = -jnp.take_along_axis(jax.nn.log_softmax(base), x[..., None], -1)[..., 0]
    want = float(jnp.mean(nll_all))
    for stratified in (False, True):
        one = lambda k, stratified=stratified: D.diffusion_loss(fn, x, k, mask_id=Vx, stratified=stratified)[0]  # noqa: E731
        losses = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), 400)))
        se = losses.std(ddof=1) / math.sqrt(len(losses))
        assert abs(losses.mean() - want) < 4 * se, (stratified, losses.mean(), want, se)


def test_forward_process():
    key = jax.random.key(0)
    p = D.sample_mask_probs(key, 1000)
    assert float(p.min()) >= D.DEFAULT_EPS and float(p.max()) <= 1.0
    ps = np.sort(np.asarray(D.sample_mask_probs(key, 50, eps=0.0, stratified=True)))
    np.testing.assert_allclose(np.diff(ps), 1 / 50, atol=1e-6)  # evenly spread
    x = jnp.zeros((4, 2000), jnp.int32)
    prompt = jnp.arange(2000) < 100
    x_t, masked = D.mask_tokens(key, x, jnp.asarray([0.1, 0.5, 0.9, 1.0]), 7, prompt_mask=prompt)
    assert not bool(jnp.any(masked[:, :100])) and bool(jnp.all(x_t[:, :100] == 0))
    frac = np.asarray(masked[:, 100:].mean(1))
    np.testing.assert_allclose(frac, [0.1, 0.5, 0.9, 1.0], atol=0.04)
    assert bool(jnp.all((x_t == 7) == masked))
    ell = jnp.asarray([0, 3, 7, 8])
    x_t, masked = D.mask_exactly(key, jnp.zeros((4, 10), jnp.int32), ell, 9, prompt_mask=jnp.arange(10) < 2)
    np.testing.assert_array_equal(np.asarray(masked.sum(1)), [0, 3, 7, 8])
    assert not bool(jnp.any(masked[:, :2]))
    with pytest.raises(ValueError, match="p_mask must have shape"):
        D.mask_tokens(key, x, jnp.asarray([0.1]), 7)
    with pytest.raises(TypeError, match="prompt_mask must be a boolean"):
        D.mask_tokens(key, x, jnp.ones(4), 7, prompt_mask=jnp.zeros(2000, jnp.int32))
    with pytest.raises(ValueError, match="eps must be"):
        D.sample_mask_probs(key, 3, eps=-0.1)


# --------------------------------------------------------------------------------------------------
# the wrapper is a bidirectional TV-VAR
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_wrappers_mixer_passes_the_kit_in_bidirectional_mode():
    """The mixer LLaDA runs is still a TV-VAR: the kit (law, gradients, support, batch independence, jit;
    no causality check — S(i) is all j) on the mixer inside MaskedDiffusionLM, which really is
    bidirectional (some ∂h_i/∂u_j ≠ 0 with j > i). Each decomposition's own tests run the kit in both
    modes; this one checks what the wrapper builds."""

    def factory(rngs, dtype):
        cfg = ModelConfig(4, 8, num_layers=1, max_len=8, mixer={"num_heads": 2}, param_dtype=jnp.dtype(dtype).name,
                          dtype=jnp.dtype(dtype).name)
        return D.MaskedDiffusionLM(cfg, rngs=rngs).inner.blocks[0].mixer

    check_decomposition(factory, causality=False, T=5, dtypes=(jnp.float64,))
    mixer = factory(nnx.Rngs(0), jnp.float32)
    assert mixer.mask == "bidirectional"
    u = jax.random.normal(jax.random.key(0), (1, 5, 8))
    J = jax.jacrev(lambda z: mixer(z)[0, 0])(u)  # ∂h_0/∂u
    assert float(jnp.abs(J[0, 4]).max()) > 0


@pytest.mark.parametrize("name", available())
def test_every_decomposition_wraps_or_refuses_clearly(name):
    """Any registered decomposition either builds bidirectionally (its own tests run the kit in that mode)
    or refuses with an error that names the mask."""
    opts = {"max_len": 8} if name == "dense" else {}
    try:
        mixer = build(name, 8, rngs=nnx.Rngs(0), mask="bidirectional", **opts)
    except (ValueError, NotImplementedError) as e:
        assert "bidirectional" in str(e) or "mask" in str(e), str(e)
        return
    assert mixer.mask == "bidirectional" and bool(np.all(np.asarray(mixer.support(4))))


@pytest.mark.parametrize("decomposition", ["attention", "dense"])
def test_wrapper_logits_are_the_tvvar_readout_without_the_mask_logit(decomposition):
    """logits = ũ_{0:V}ᵀ Σ_j A[i, j] u_j / Ξ over all j (Eq. 44 bidirectional), the mask row dropped."""
    with jax.enable_x64(True):
        mixer = {"max_len": 6} if decomposition == "dense" else {"num_heads": 2}
        cfg = ModelConfig.pure(5, 8, decomposition, xi=0.5, mixer=mixer, param_dtype="float64", dtype="float64")
        model = D.MaskedDiffusionLM(cfg, rngs=nnx.Rngs(0))
        ids = jnp.asarray([[0, 5, 3, 5, 1, 4]])
        logits = model(ids)
        assert logits.shape == (1, 6, 5) and model.mask_id == 5
        inner = model.inner
        u = inner.embed_tokens(ids)
        h = mix_dense(inner.blocks[0].mixer.coefficients(u), u)
        U = inner.embed.vectors()[:5]
        np.testing.assert_allclose(np.asarray(logits), np.asarray(h @ U.T / 0.5), atol=1e-10, rtol=0)
        assert inner.cfg.mask == "bidirectional" and inner.cfg.vocab_size == 6
    with pytest.raises(ValueError, match="ids must lie in"):
        model(jnp.asarray([[0, 6]]))


@pytest.mark.slow
def test_as_denoiser_and_objective():
    cfg = ModelConfig(vocab_size=4, d_model=8, num_layers=1, max_len=6)
    model = D.MaskedDiffusionLM(cfg, rngs=nnx.Rngs(0))
    batch = {"tokens": jax.random.randint(jax.random.key(0), (3, 7), 0, 4)}  # [B, T + 1]
    loss, metrics = D.llada_objective(model, batch, jax.random.key(1))
    assert np.isfinite(float(loss)) and set(metrics) >= {"loss", "masked_fraction", "masked_token_nll"}
    # SFT variant via the batch: prompt_mask over the T input positions
    batch["prompt_mask"] = jnp.arange(6)[None].repeat(3, 0) < jnp.asarray([[1], [2], [3]])
    loss_sft, _ = D.llada_objective(model, batch, jax.random.key(1))
    assert np.isfinite(float(loss_sft))
    # a bare bidirectional TVVARModel works too; a causal one is refused
    from tvvar.model import TVVARModel

    bare = TVVARModel(D.llada_model_config(cfg), rngs=nnx.Rngs(0))
    fn, Vb = D.as_denoiser(bare)
    assert Vb == 4 and fn(batch["tokens"][:, :-1]).shape == (3, 6, 4)
    with pytest.raises(ValueError, match="must be bidirectional"):
        D.as_denoiser(TVVARModel(cfg, rngs=nnx.Rngs(0)))


@pytest.mark.slow
def test_llada_objective_is_found_by_name_and_trains(tmp_path):
    """tvvar.train finds "llada" by name; the real training loop runs two steps on a Markov source."""
    from tvvar import train as T
    from tvvar.sources import MarkovSource

    assert T.get_objective("llada") is D.llada_objective
    src = MarkovSource(4, 1, seed=0)
    cfg = T.TrainConfig(model=D.llada_model_config(ModelConfig(4, 8, num_layers=1, max_len=6)), objective="llada",
                        steps=2, batch_size=4, seq_len=6, warmup=0, eval_every=0, eval_batches=1, ckpt_every=0)
    with pytest.raises(ValueError, match="vocab_size"):
        T.train(cfg, src, tmp_path / "bad", progress=False)
    res = T.train(cfg, D.MaskTokenSource(src), tmp_path / "run", progress=False)
    assert np.isfinite(res["final"]["val"]["loss"])


# --------------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------------


class Recorder:
    """Counts denoiser calls and records their inputs."""

    def __init__(self, fn):
        self.fn, self.inputs = fn, []

    def __call__(self, ids):
        self.inputs.append(np.asarray(ids))
        return self.fn(ids)


def _random_logits_fn(Vx, seed=0):
    def fn(ids):
        # depends on the input, so the reveal order matters
        k = jax.random.fold_in(jax.random.key(seed), jnp.sum(ids @ (jnp.arange(ids.shape[1]) + 1)))
        return jax.random.normal(k, ids.shape + (Vx,)) * 2.0

    return fn


def test_reveal_schedule():
    assert D.reveal_schedule(10, 4) == (3, 3, 2, 2)
    assert D.reveal_schedule(8, 4) == (2, 2, 2, 2)
    assert sum(D.reveal_schedule(7, 3)) == 7


@pytest.mark.parametrize("remasking,temperature,cfg_scale", [("low_confidence", 0.0, 0.0), ("random", 1.0, 0.0),
                                                             ("low_confidence", 0.7, 1.5)])
def test_sampler_properties(remasking, temperature, cfg_scale):
    Vx, P, G, blk, steps = 5, 3, 12, 4, 6
    rec = Recorder(_random_logits_fn(Vx))
    prompt = jnp.asarray([[0, 1, 2], [4, 4, 3]])
    out = D.generate(rec, prompt, jax.random.key(0), mask_id=Vx, steps=steps, gen_length=G, block_length=blk,
                     temperature=temperature, remasking=remasking, cfg_scale=cfg_scale)
    out = np.asarray(out)
    assert out.shape == (2, P + G)
    assert len(rec.inputs) == steps  # k steps = k denoiser calls (CFG batched into the same call)
    assert np.all(out != Vx) and np.all(out < Vx)  # every mask filled
    np.testing.assert_array_equal(out[:, :P], np.asarray(prompt))  # prompt unchanged
    spb, per_step = steps // (G // blk), D.reveal_schedule(blk, steps // (G // blk))
    xs = rec.inputs + [out]
    for s, x_in in enumerate(rec.inputs):
        cond = x_in[:2]
        if cfg_scale > 0:
            assert x_in.shape[0] == 4 and np.all(x_in[2:, :P] == Vx)  # unconditional half: prompt masked
            np.testing.assert_array_equal(x_in[2:, P:], cond[:, P:])
        np.testing.assert_array_equal(cond[:, :P], np.asarray(prompt))
        blk_now = s // spb
        lo, hi = P + blk_now * blk, P + (blk_now + 1) * blk
        assert np.all(cond[:, P:lo] != Vx)  # earlier blocks complete before this block starts
        assert np.all(cond[:, hi:] == Vx)  # later blocks untouched
        nxt = xs[s + 1][:2]
        newly = (cond == Vx) & (nxt != Vx)
        assert np.all(newly.sum(1) == per_step[s % spb])
        assert not np.any(newly[:, :lo]) and not np.any(newly[:, hi:])
        # revealed tokens never change again
        assert np.all(nxt[cond != Vx] == cond[cond != Vx])


@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_fused_step_gives_the_same_tokens(cfg_scale):
    """jit_step=True (denoiser traced into one jitted step) == the eager per-step path, same key."""
    fn = _random_logits_fn(5, seed=1)
    pr = jnp.asarray([[0, 1, 2], [3, 3, 1]])
    kw = dict(mask_id=5, steps=4, gen_length=8, block_length=4, temperature=0.8, cfg_scale=cfg_scale)
    a = D.generate(fn, pr, jax.random.key(2), **kw)
    b = D.generate(fn, pr, jax.random.key(2), jit_step=True, **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_low_confidence_reveals_the_most_confident_positions():
    """Temperature 0: after the first step the revealed positions are the top-n by max softmax prob, with
    the argmax tokens."""
    Vx, G = 4, 8
    rec = Recorder(_random_logits_fn(Vx, seed=3))
    prompt = jnp.asarray([[1]])
    out = D.generate(rec, prompt, None, mask_id=Vx, steps=4, gen_length=G)
    first = np.asarray(_random_logits_fn(Vx, seed=3)(jnp.asarray(rec.inputs[0])))[0]  # [1+G, V]
    prob = np.exp(first - first.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    conf = prob.max(-1)[1:]
    top = set(np.argsort(-conf)[:2] + 1)
    revealed = set(np.nonzero(rec.inputs[1][0] != Vx)[0]) - {0}
    assert revealed == top
    for i in top:
        assert rec.inputs[1][0, i] == first[i].argmax()
    assert np.all(np.asarray(out) != Vx)


def test_cfg_formula_and_greedy_single_step():
    """gen_length 1: the token is argmax(un + (s+1)(cond − un)), differing from argmax(cond) here."""
    cond = jnp.asarray([1.0, 1.1, 0.0])
    unc = jnp.asarray([0.0, 1.5, 0.0])

    def fn(ids):
        prompt_masked = ids[:, :1] == 3
        return jnp.where(prompt_masked[:, :, None], unc[None, None], cond[None, None]).repeat(ids.shape[1], 1)

    prompt = jnp.asarray([[2]])
    plain = D.generate(fn, prompt, None, mask_id=3, steps=1, gen_length=1)
    guided = D.generate(fn, prompt, None, mask_id=3, steps=1, gen_length=1, cfg_scale=1.0)
    assert int(plain[0, 1]) == 1 and int(guided[0, 1]) == 0


def test_sampler_argument_errors():
    fn = _random_logits_fn(3)
    pr = jnp.asarray([[0, 1]])
    k = jax.random.key(0)
    with pytest.raises(ValueError, match="gen_length=10 must be divisible by block_length=4"):
        D.generate(fn, pr, k, mask_id=3, steps=4, gen_length=10, block_length=4)
    with pytest.raises(ValueError, match="steps=3 must be divisible by the number of blocks"):
        D.generate(fn, pr, k, mask_id=3, steps=3, gen_length=8, block_length=4)
    with pytest.raises(ValueError, match="steps=10 must be ≤ gen_length=8"):
        D.generate(fn, pr, k, mask_id=3, steps=10, gen_length=8)
    with pytest.raises(ValueError, match="remasking must be one of"):
        D.generate(fn, pr, k, mask_id=3, steps=2, gen_length=8, remasking="topk")
    with pytest.raises(ValueError, match="prompt must hold token ids"):
        D.generate(fn, jnp.asarray([[0, 3]]), k, mask_id=3, steps=2, gen_length=8)
    with pytest.raises(ValueError, match="key must be a PRNG key"):
        D.generate(fn, pr, None, mask_id=3, steps=2, gen_length=8, temperature=1.0)
    with pytest.raises(ValueError, match="cfg_scale must be"):
        D.generate(fn, pr, k, mask_id=3, steps=2, gen_length=8, cfg_scale=-1.0)


# --------------------------------------------------------------------------------------------------
# hardening (issue 12 items 12, 14, 18): input checks, chunk-independent draws, a bounded step cache
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["mc", "count"])
def test_mc_nelbo_values_do_not_depend_on_chunk(estimator):
    table = np.random.default_rng(5).normal(size=((V + 1) ** L, L, V))
    fn = table_denoiser(table)
    x = jnp.asarray([[0, 2, 1, 1], [2, 2, 0, 1]])
    S = 7
    est = D.nelbo_mc if estimator == "mc" else D.nelbo_count
    runs = [est(fn, x, jax.random.key(4), mask_id=M, num_samples=S, chunk=c) for c in (1, 3, None)]
    for r in runs[:2]:
        np.testing.assert_array_equal(r.samples, runs[2].samples)
        np.testing.assert_array_equal(r.nats, runs[2].nats)
    assert np.unique(runs[2].samples[:, 0]).size > 1  # the draws differ from one another


def test_mask_tokens_and_loss_refuse_bad_mask_probabilities():
    x = jnp.zeros((2, 3), jnp.int32)
    key = jax.random.key(0)
    for bad in (1.5, -0.2, float("nan")):
        with pytest.raises(ValueError, match=r"p_mask must lie in \[0, 1\]"):
            D.mask_tokens(key, x, jnp.asarray([0.5, bad]), M)
    logits = jnp.zeros((2, 3, V))
    masked = jnp.ones((2, 3), bool)
    with pytest.raises(ValueError, match=r"p_mask must lie in \(0, 1\] \(it divides the loss"):
        D.weighted_masked_loss(logits, x, masked, jnp.asarray([0.5, 0.0]))
    # traced p = 0 (nothing masked there) contributes 0 instead of inf/NaN
    out = jax.jit(D.weighted_masked_loss)(logits, x, masked & jnp.asarray([[True], [False]]), jnp.asarray([0.5, 0.0]))
    assert np.isfinite(float(out))


def test_likelihoods_refuse_out_of_range_ids_and_bad_mask_id():
    fn = table_denoiser(np.zeros(((V + 1) ** L, L, V)))
    bad = jnp.asarray([[0, 1, M, 2]])  # the mask id is not a data token
    for call in (lambda: D.nelbo_exact(fn, bad, mask_id=M),
                 lambda: D.nelbo_mc(fn, bad, jax.random.key(0), mask_id=M, num_samples=2),
                 lambda: D.nelbo_count(fn, bad, jax.random.key(0), mask_id=M, num_samples=2),
                 lambda: D.any_order_nll(fn, bad, mask_id=M)):
        with pytest.raises(ValueError, match=r"x must lie in \[0, V=3\)"):
            call()
    with pytest.raises(ValueError, match="mask_id must be an int ≥ 1"):
        D.nelbo_exact(fn, jnp.zeros((1, L), jnp.int32), mask_id=2.5)
    with pytest.raises(ValueError, match=r"x must hold at least one token"):
        D.nelbo_mc(fn, jnp.zeros((1, 0), jnp.int32), jax.random.key(0), mask_id=M, num_samples=2)


def test_the_jitted_step_cache_is_bounded_and_does_not_keep_denoisers_alive():
    import gc
    import weakref

    D._STEP_CACHE.clear()
    pr = jnp.asarray([[0, 1]])
    kw = dict(mask_id=5, steps=1, gen_length=2, jit_step=True)

    class Denoiser:  # stands for a model: an object the cache must not own
        def __call__(self, ids):
            return jax.nn.one_hot(ids % 5, 5) * 3.0

    d = Denoiser()
    alive = weakref.ref(d)
    a = D.generate(d, pr, None, **kw)
    b = D.generate(d, pr, None, **kw)  # a cache hit, same tokens
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(D._STEP_CACHE) == 1
    del d
    gc.collect()
    assert alive() is None and len(D._STEP_CACHE) == 0
    keep = [Denoiser() for _ in range(D._STEP_CACHE.maxsize + 3)]
    for fn in keep:
        D.generate(fn, pr, None, **kw)
    assert len(D._STEP_CACHE) == D._STEP_CACHE.maxsize


# --------------------------------------------------------------------------------------------------
# experiments.llada's exact references: the Markov source's posterior denoiser and the samplers' expectations
# --------------------------------------------------------------------------------------------------


def _markov_joint(src, L):
    """p(x_{0:L−1}) of a stationary order-1 chain for every sequence: ([V^L, L] ids, [V^L] probabilities)."""
    seqs = np.array(list(itertools.product(range(src.vocab_size), repeat=L)))
    p = src.pi[seqs[:, 0]] * np.prod(src.P[seqs[:, :-1], seqs[:, 1:]], axis=1)
    return seqs, p


def test_llada_posterior_denoiser_is_the_enumerated_conditional_marginal():
    from experiments.llada import _posterior_logits
    from tvvar.sources import MarkovSource

    src = MarkovSource(3, 1, alpha=0.5, seed=5)
    Lq, Vq = 4, 3
    seqs, p = _markov_joint(src, Lq)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, Vq, (6, Lq))
    ids[rng.random((6, Lq)) < 0.5] = Vq  # some positions masked
    got = np.exp(np.asarray(_posterior_logits(src, ids, Vq), np.float64))
    for b in range(ids.shape[0]):
        for i in range(Lq):
            # p(x_i | the unmasked tokens other than i): position i's own token is left out
            ok = np.all((seqs == ids[b]) | (ids[b] == Vq) | (np.arange(Lq) == i), axis=1)
            want = np.bincount(seqs[ok, i], weights=p[ok], minlength=Vq)
            np.testing.assert_allclose(got[b, i], want / want.sum(), atol=1e-6)


def test_llada_posterior_denoiser_makes_the_nelbo_exact():
    from experiments.llada import _posterior_logits, _source_nll
    from tvvar.sources import MarkovSource

    src = MarkovSource(3, 1, alpha=0.5, seed=5)
    x = jnp.asarray(np.random.default_rng(1).integers(0, 3, (5, 5)))
    fn = lambda ids: _posterior_logits(src, ids, 3)  # noqa: E731
    got = D.nelbo_exact(fn, x, mask_id=3, prompt_length=1).nats
    np.testing.assert_allclose(got, _source_nll(src, np.asarray(x)), atol=2e-5)


def test_llada_expected_loglik_matches_enumeration():
    from experiments.llada import _expected_loglik
    from tvvar.sources import MarkovSource

    src = MarkovSource(3, 1, alpha=0.5, seed=5)
    T = 3
    seqs, _ = _markov_joint(src, T)  # y_{1:T}
    logP = np.log(src.P)
    x0 = np.array([0, 1, 2])
    joint, indep = _expected_loglik(src, x0, T)
    Pn = [np.linalg.matrix_power(src.P, k) for k in range(T + 1)]
    for n, a in enumerate(x0):
        full = np.concatenate([np.full((len(seqs), 1), a), seqs], axis=1)
        ll = logP[full[:, :-1], full[:, 1:]].sum(1)
        p_joint = np.prod(src.P[full[:, :-1], full[:, 1:]], axis=1)
        p_indep = np.prod([Pn[i + 1][a, seqs[:, i]] for i in range(T)], axis=0)
        np.testing.assert_allclose(joint[n], np.sum(p_joint * ll), rtol=1e-10)
        np.testing.assert_allclose(indep[n], np.sum(p_indep * ll), rtol=1e-10)
