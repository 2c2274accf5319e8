"""Information measures at model scale (issue 32 item 10): the K·B forwards of the prompt-free marginal in
chunks of bounded memory, split across ``jax.distributed`` processes, equal to the whole-array functions."""

import json
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tvvar.model import ModelConfig, TVVARModel
from tvvar.theory.information import directed as I

ROOT = Path(__file__).resolve().parents[1]
V, K, B, T, N_PROMPT = 11, 5, 7, 6, 3           # K·B = 35 pairs: chunks 4 and 6 do not divide it


def _model(dtype="float32", mask="causal", V=V):
    cfg = ModelConfig(V, 16, num_layers=2, mixer={"num_heads": 4}, max_len=N_PROMPT + T, mask=mask,
                      param_dtype=dtype, dtype=dtype)
    return TVVARModel(cfg, rngs=nnx.Rngs(0))


def _data(dtype=jnp.float32, V=V):
    ks = jax.random.split(jax.random.key(0), 4)
    prompts = jax.random.randint(ks[0], (K, N_PROMPT), 0, V)
    u = jax.random.randint(ks[1], (B, T), 0, V)
    k = jax.random.randint(ks[2], (B,), 0, K)
    log_prior = jax.nn.log_softmax(jax.random.normal(ks[3], (K,), dtype))
    return prompts, u, k, log_prior


def _err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [None, 1, 4, 6, 35, 1000])
def test_chunked_density_and_flow_equal_the_whole_array_functions_float64(chunk):
    with jax.enable_x64(True):
        m = _model("float64")
        prompts, u, k, lp = _data(jnp.float64)
        lc = I.model_log_conditionals(m, prompts, u)
        ll = I.model_token_logliks(m, prompts, u, chunk=chunk)
        assert ll.shape == (B, K, T) and ll.dtype == jnp.float64
        assert _err(ll, I._token_logliks(lc, u)) < 1e-10
        assert _err(I.token_information_density(ll, lp, k), I.information_density(lc, lp, u, k)) < 1e-10
        assert _err(I.token_flow(ll, lp, k), I.flow(lc, lp, u, k)) < 1e-10
        assert _err(I.token_sequence_flow(ll, lp, k), I.sequence_flow(lc, lp, u, k)) < 1e-10
        assert _err(I.model_flow(m, prompts, lp, u, k, chunk=chunk), I.flow(lc, lp, u, k)) < 1e-10
        # the prompt-free marginal is exact Bayes: log P(u_{≤T}) from the densities equals Σ_k p_k P(u | s_k)
        seq = np.asarray(jnp.sum(ll, axis=-1))
        logm = jax.scipy.special.logsumexp(np.asarray(lp)[None] + seq, axis=1)
        own = seq[np.arange(B), np.asarray(k)]
        np.testing.assert_allclose(np.asarray(I.token_flow(ll, lp, k))[:, -1], own - logm, atol=1e-10)


def test_masked_diffusion_model_chunked_equals_whole_array():
    with jax.enable_x64(True):
        m = _model("float64", mask="bidirectional", V=V + 1)                    # last id is the mask
        prompts, u, k, lp = _data(jnp.float64)
        lc = I.model_log_conditionals(m, prompts, u)
        ll = I.model_token_logliks(m, prompts, u, chunk=4)
        assert _err(ll, I._token_logliks(lc, u)) < 1e-10
        assert _err(I.token_flow(ll, lp, k), I.flow(lc, lp, u, k)) < 1e-10


@pytest.mark.slow
def test_every_forward_is_one_chunk_of_bounded_size(monkeypatch):
    """Memory is bounded by construction: each compiled call sees at most ``chunk`` pairs (one shape, the last
    chunk padded), whatever K·B is, and its output is [chunk, T] — never a [.., V] array."""
    m = _model()
    prompts, u, _, _ = _data()
    shapes = []
    real = I._chunk_token_logliks

    def spy(model, ids, **kw):
        out = real(model, ids, **kw)
        shapes.append((tuple(ids.shape), tuple(out.shape)))
        return out

    monkeypatch.setattr(I, "_chunk_token_logliks", spy)
    I.model_token_logliks(m, prompts, u, chunk=8)
    assert len(shapes) == 5                                                   # ⌈35 / 8⌉ chunks, evened to 7 each
    assert set(shapes) == {((7, N_PROMPT + T), (7, T))}
    shapes.clear()
    monkeypatch.setattr(I, "CHUNK_ELEMENTS", 3 * (N_PROMPT + T) * V)         # the default fits the budget
    I.model_token_logliks(m, prompts, u)
    assert {s[0][0] for s in shapes} == {3} and len(shapes) == 12


def test_bad_input_is_refused():
    m = _model()
    prompts, u, k, lp = _data()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk"):
            I.model_token_logliks(m, prompts, u, chunk=bad)
    with pytest.raises(ValueError):
        I.model_token_logliks(m, prompts, u.at[0, 0].set(V))
    ll = I.model_token_logliks(m, prompts, u)
    with pytest.raises(ValueError, match=r"\[B, K, T\]"):
        I.token_information_density(ll[0], lp, k)
    with pytest.raises(ValueError, match="prompts"):
        I.token_information_density(ll, jax.nn.log_softmax(lp[:-1]), k)
    with pytest.raises(ValueError, match="prompt index"):
        I.token_information_density(ll, lp, k.at[0].set(K))
    with pytest.raises(ValueError, match="probability 0"):
        I.token_information_density(ll.at[2, k[2], 3].set(-jnp.inf), lp, k)
    with pytest.raises(ValueError, match="NaN"):
        I.token_information_density(ll.at[0, 0, 0].set(jnp.nan), lp, k)


def test_inside_jit_matches_eager():
    m = _model()
    prompts, u, k, lp = _data()
    ll = I.model_token_logliks(m, prompts, u, chunk=4)
    got = jax.jit(I.token_flow)(ll, lp, k)
    np.testing.assert_allclose(got, I.token_flow(ll, lp, k), atol=1e-6)


CHILD = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {root!r})
    from tvvar.sharding import initialize_distributed
    initialize_distributed()
    import jax
    import numpy as np
    assert jax.process_count() == 2, jax.process_count()
    from tests.test_information_scale import _model, _data
    from tvvar.theory.information import directed as I
    calls = []
    real = I._chunk_token_logliks
    I._chunk_token_logliks = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    m = _model()
    prompts, u, k, lp = _data()
    ll = I.model_token_logliks(m, prompts, u, chunk=3)
    own = len(calls)
    d = I.model_information_density(m, prompts, lp, u, k, chunk=3)
    pid = jax.process_index()
    np.save(sys.argv[1] + f".{{pid}}.ll.npy", np.asarray(ll))
    np.save(sys.argv[1] + f".{{pid}}.d.npy", np.asarray(d))
    json.dump({{"calls": own}}, open(sys.argv[1] + f".{{pid}}.json", "w"))
    """
)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    m = _model()
    prompts, u, k, lp = _data()
    ll1 = I.model_token_logliks(m, prompts, u, chunk=3)
    d1 = I.model_information_density(m, prompts, lp, u, k, chunk=3)
    from local_processes import run_processes  # here: the children import this module as tests.…

    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT)))
    run_processes(script, [str(tmp_path / "out")], ROOT, devices=1)
    for pid in range(2):
        assert json.loads((tmp_path / f"out.{pid}.json").read_text())["calls"] == 6   # 12 chunks of 3, half each
        np.testing.assert_allclose(np.load(tmp_path / f"out.{pid}.ll.npy"), ll1, rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.load(tmp_path / f"out.{pid}.d.npy"), d1, rtol=0, atol=1e-6)
