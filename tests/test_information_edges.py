"""Issue 29 §3.2–3.4: edge cases of tvvar.theory.information.directed defined, bad input refused (each test fails on the
code before the fix)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tvvar.model import ModelConfig, TVVARModel
from tvvar.sources import PromptedSource
from tvvar.theory.information import directed as I


def _source():
    return PromptedSource(4, 2, num_prompts=5, seed=1, end_prob=0.15)


def _model(V=4):
    return TVVARModel(ModelConfig(V, 8, num_layers=1, mixer={"num_heads": 2}, max_len=4), rngs=nnx.Rngs(0))


def test_kl_is_infinite_where_q_is_zero_and_p_is_not():
    """P = (.5, .5, 0), Q = (1, 0, 0) gave 0.153 (the q = 0 term was clamped away); it is +∞."""
    with jax.enable_x64(True):
        lp, lq = jnp.log(jnp.array([0.5, 0.5, 0.0])), jnp.log(jnp.array([1.0, 0.0, 0.0]))
        assert float(I._kl_rows(lp, lq)) == math.inf
        assert float(I._kl_rows(lq, lp)) == pytest.approx(math.log(2.0), abs=1e-15)   # the other way is finite
        # the distortion of a model that rules out a token the source can emit is +∞ (Theorem 1's D)
        src = _source()

        def model_fn(u):
            lc = src.log_conditionals(u)
            ruled_out = lc.at[..., 0].set(-jnp.inf)                           # token 0 impossible for the model
            return jax.nn.log_softmax(jnp.where(jnp.isneginf(lc).all(-1, keepdims=True), lc, ruled_out), axis=-1)

        d = I.directed_distortion(src.log_conditionals, model_fn, src.log_prior(), 4, 2)
        assert float(d["D"]) == math.inf


def test_zero_probability_path_is_refused_with_its_position():
    with jax.enable_x64(True):
        src = _source()
        # after the end token (3) only 3 can follow: the path (3, 0) is impossible under every prompt at t = 1
        u = jnp.array([[1, 2, 0], [3, 0, 1]], jnp.int32)
        k = jnp.array([0, 2], jnp.int32)
        lc = src.log_conditionals(u)
        for fn in (I.information_density, I.flow, I.sequence_flow, I.drift, I.drift_by_enumeration, I.doob):
            with pytest.raises(ValueError, match=r"path b=1 has probability 0 under its prompt k=2 at output "
                                                 r"position t=1"):
                fn(lc, src.log_prior(), u, k)
        with pytest.raises(ValueError, match="probability 0"):
            I.directed_information_mc(lc, src.log_prior(), u, k)
        # the possible path alone is fine and finite
        assert np.all(np.isfinite(I.flow(lc[:1], src.log_prior(), u[:1], k[:1])))


def test_unnormalised_log_cond_refused():
    """Shifted logits used to give I = 0 silently."""
    with jax.enable_x64(True):
        src = _source()
        k, u = src.sample(jax.random.key(0), 8, 3)
        lc = src.log_conditionals(u)
        shifted = jnp.where(jnp.isneginf(lc), lc, lc + 1.0)
        for fn in (I.flow, I.drift, I.doob, I.drift_by_enumeration, I.sequence_flow):
            with pytest.raises(ValueError, match="normalised"):
                fn(shifted, src.log_prior(), u, k)
        with pytest.raises(ValueError, match="normalised"):
            I.marginal_log_conditionals(shifted, src.log_prior(), u)
        with pytest.raises(ValueError, match="normalised"):
            I.directed_information(lambda x: jnp.where(jnp.isneginf(src.log_conditionals(x)), -jnp.inf,
                                                       src.log_conditionals(x) + 0.5), src.log_prior(), 4, 2)
        with pytest.raises(ValueError, match="NaN"):
            I.flow(lc.at[0, 0, 0, 0].set(jnp.nan), src.log_prior(), u, k)
    # float32 rows from a log_softmax pass (rounding is within 64 ulp)
    lc32 = jax.nn.log_softmax(jax.random.normal(jax.random.key(1), (4, 5, 3, 4)) * 5, axis=-1)
    I.flow(lc32, src.log_prior(jnp.float32), u[:4], k[:4])


@pytest.mark.slow
def test_eq18_refuses_bad_lambda_prior_and_indices_eagerly():
    src = _source()
    m = _model()
    lp = src.log_prior(jnp.float32)
    b = src.batch(jax.random.key(0), 4, 3)
    u, k = b["tokens"][:, 2:], b["prompt"]
    prompts = jnp.asarray(src.prompts, jnp.int32)
    assert np.isfinite(float(I.eq18_loss(m, prompts, lp, u, k, 1.0)[0]))
    for lam in (-5.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="lam"):
            I.eq18_loss(m, prompts, lp, u, k, lam)
    with pytest.raises(ValueError, match="lam"):
        I.eq18_loss(m, prompts, lp, u, k, jnp.float32(-1.0))
    with pytest.raises(ValueError, match="summing to 1"):
        I.eq18_loss(m, prompts, lp + 1.0, u, k, 1.0)
    with pytest.raises(ValueError, match="prompt index"):
        I.eq18_loss(m, prompts, lp, u, k.at[0].set(99), 1.0)
    with pytest.raises(ValueError, match="prompts"):
        I.eq18_loss(m, prompts.at[0, 0].set(7), lp, u, k, 1.0)
    with pytest.raises(ValueError, match="weights"):
        I.eq18_loss(m, prompts, lp, u, k, 1.0, weights=jnp.full((4,), 0.3))
    with pytest.raises(ValueError, match="prompts"):
        I.eq18_objective([[0.5, 1.0]], lp[:1] * 0)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["prior", "index", "lambda"])
def test_eq18_refuses_bad_arguments_under_jit(what):
    """Under jit the prior (summing to e), the prompt index (99) and λ (−5) gave a number or NaN."""
    src = _source()
    m = _model()
    lp = src.log_prior(jnp.float32)
    b = src.batch(jax.random.key(0), 4, 3)
    u, k = b["tokens"][:, 2:], b["prompt"]
    prompts = jnp.asarray(src.prompts, jnp.int32)
    bad = {"prior": dict(lp=lp + 1.0), "index": dict(k=k.at[0].set(99)), "lambda": dict(lam=jnp.float32(-5.0))}[what]
    args = {"lp": lp, "k": k, "lam": jnp.float32(1.0), **bad}
    gd, st = nnx.split(m)

    @jax.jit
    def loss(st, lp, k, lam):
        return I.eq18_loss(nnx.merge(gd, st), prompts, lp, u, k, lam)[0]

    good = loss(st, lp, k, jnp.float32(1.0))
    assert np.isfinite(float(good))
    match = {"prior": "summing to 1", "index": "prompt index", "lambda": "lam"}[what]
    with pytest.raises(Exception, match=match):
        jax.block_until_ready(loss(st, args["lp"], args["k"], args["lam"]))


@pytest.mark.slow
def test_eq18_weights_make_the_one_step_loss_exact():
    """With every (prompt, first token) pair weighted by p(s) P(u | s), Eq. 18 at T = 1 is the exact
    I(S; U; Q) + λ E_P[−log Q(U | S)] of the model's one-step channel."""
    with jax.enable_x64(True):
        src = _source()
        m = TVVARModel(ModelConfig(4, 8, num_layers=1, mixer={"num_heads": 2}, max_len=4, param_dtype="float64",
                                   dtype="float64"), rngs=nnx.Rngs(0))
        K, V = src.num_prompts, 4
        k = jnp.repeat(jnp.arange(K), V).astype(jnp.int32)
        u = jnp.tile(jnp.arange(V), K)[:, None].astype(jnp.int32)
        P = src.transitions[src.topics, src.prompts[:, -1]]                   # [K, V]
        w = jnp.asarray((src.prompt_probs[:, None] * P).ravel())
        prompts = jnp.asarray(src.prompts, jnp.int32)
        loss, met = I.eq18_loss(m, prompts, src.log_prior(), u, k, 2.0, weights=w)
        Q = np.exp(np.asarray(I.model_log_conditionals(m, prompts, u[:1]))[0, :, 0])   # [K, V]
        p = src.prompt_probs
        r = p @ Q
        info = np.sum(p * np.sum(Q * np.log(Q / r), 1))
        ce = -np.sum(p[:, None] * P * np.log(Q))
        assert abs(float(met["information"]) - info) < 1e-10 and abs(float(met["ce"]) - ce) < 1e-10
        assert abs(float(loss) - (info + 2.0 * ce)) < 1e-10
