"""Decoding with caches (tvvar.generate, the decoding protocol): one step = one row of the full forward,
and cached decoding gives exactly the tokens of recomputing the whole prefix for every new token."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tvvar import core
from tvvar.core import available, build
from tvvar.decompositions.dense import DenseTVVAR
from tvvar.generate import generate, generate_recompute, length_limit, supports_cache
from tvvar.model import ModelConfig, TVVARModel

V, D, MAXLEN = 13, 16, 16
_OPTIONS = {"attention": {"num_heads": 2}, "bilinear_attention": {"num_heads": 2}, "dense": {"max_len": MAXLEN}}


def _cached_decompositions() -> list[str]:
    """Every registered decomposition with a decoding cache, one name per distinct (init_cache, step)
    implementation (e.g. "ssm", "ssm_diagonal", "ssm_lti" share one step): the SSM family joins
    automatically, and the suite stays small."""
    names, seen = [], set()
    for n in available():
        cls = core.get(n)
        impl = (getattr(cls, "init_cache", None), getattr(cls, "step", None))
        if callable(impl[0]) and callable(impl[1]) and impl not in seen:
            seen.add(impl)
            names.append(n)
    return names


CACHED = _cached_decompositions()


def test_required_decompositions_have_caches():
    for name in ("attention", "bilinear_attention", "dense"):
        assert name in CACHED
    for name in ("ssm", "mamba"):
        if name in available():
            assert name in CACHED


def _model(name, dtype="float32", seed=0, layers=1, **kw):
    # one layer keeps compilation cheap; the two-layer loop over blocks is exercised in float64 below
    cfg = ModelConfig(vocab_size=V, d_model=D, num_layers=layers, decomposition=name, mixer=_OPTIONS.get(name, {}),
                      param_dtype=dtype, dtype=dtype, **kw)
    return TVVARModel(cfg, rngs=nnx.Rngs(seed))


def _ids(B, T, seed=1):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, V)


@pytest.mark.parametrize("name", ["attention", "bilinear_attention", "dense"])
def test_mixer_step_equals_full_forward_rows_float64(name):
    """Mixer.step at t = row t of mixer(u), float64 at 1e-10 (the protocol's contract; the SSM
    family tests its own step in tests/test_ssm.py)."""
    with jax.enable_x64(True):
        m = build(name, D, rngs=nnx.Rngs(0), dtype=jnp.float64, **_OPTIONS.get(name, {}))
        u = jax.random.normal(jax.random.key(2), (2, 5, D), jnp.float64)
        u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
        full = np.asarray(m(u))
        h_t, cache = m.step(m.init_cache(2, 6, jnp.float64), u[:, 0])  # eagerly, once
        np.testing.assert_allclose(np.asarray(h_t), full[:, 0], atol=1e-10, rtol=1e-10)

        @jax.jit
        def stepped(m, u):
            cache, h_TxBxD = jax.lax.scan(lambda c, u_t: m.step(c, u_t)[::-1], m.init_cache(2, 6, jnp.float64),
                                          jnp.swapaxes(u, 0, 1))
            return jnp.swapaxes(h_TxBxD, 0, 1), cache["index"]

        h, index = stepped(m, u)
        assert int(index) == 5
        np.testing.assert_allclose(np.asarray(h), full, atol=1e-10, rtol=1e-10)


@jax.jit
def _full_and_stepped(model, ids_BxT):
    """(model(ids), decode_step over every position in one scan, final cache index); the cache is
    longer than the sequence so unfilled slots must be inert."""
    B, T = ids_BxT.shape
    cache = model.init_cache(B, T + 3)
    cache, logits_TxBxV = jax.lax.scan(lambda c, ids_t: model.decode_step(c, ids_t)[::-1], cache, ids_BxT.T)
    return model(ids_BxT), jnp.swapaxes(logits_TxBxV, 0, 1), cache["index"]


def _assert_rows(model, ids, tol):
    full, stepped, index = _full_and_stepped(model, ids)
    assert stepped.dtype == full.dtype and int(index) == ids.shape[1]
    scale = max(1.0, float(jnp.abs(full).max()))
    np.testing.assert_allclose(np.asarray(stepped), np.asarray(full), atol=tol * scale, rtol=tol)
    return np.asarray(full)


def test_decode_step_rows_float64():
    """TVVARModel.decode_step logits at t = row t of model(ids) at 1e-10, learned positions read at
    the cache index (the model-level code is the same for every mixer; each mixer's own step is
    tested in float64 above and in tests/test_ssm.py, and every cache in float32 below)."""
    name = "attention"
    with jax.enable_x64(True):
        model = _model(name, "float64", layers=2, max_len=MAXLEN)
        _assert_rows(model, _ids(2, 7), 1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name", CACHED)
def test_greedy_cached_equals_recompute(name):
    """The acceptance test: greedy decoding with the cache = full recomputation, token for token; and
    in float32 the step logits on the produced sequence equal the full forward's rows to 1e-5."""
    model = _model(name, max_len=MAXLEN)
    P, N = 3, 4
    prompt = _ids(2, P)
    fast = generate(model, prompt, N, temperature=0.0)
    ref = generate_recompute(model, prompt, N, temperature=0.0, padded=True)  # one compilation
    assert fast.shape == (2, P + N) and fast.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(fast[:, :P]), np.asarray(prompt))
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(ref))
    full = _assert_rows(model, fast[:, :-1], 1e-5)
    # every new token is the argmax of the full forward's row before it
    np.testing.assert_array_equal(np.asarray(fast[:, P:]), full[:, P - 1:].argmax(-1))


def test_sampling_reproducible_and_equal_to_reference():
    model = _model("attention")
    prompt = _ids(3, 3)
    kw = dict(temperature=0.8, top_k=6, top_p=0.9)
    a = generate(model, prompt, 4, key=jax.random.key(5), **kw)
    b = generate(model, prompt, 4, key=jax.random.key(5), **kw)
    c = generate(model, prompt, 4, key=jax.random.key(6), **kw)
    ref = generate_recompute(model, prompt, 4, key=jax.random.key(5), **kw)  # the growing prefix
    ref_padded = generate_recompute(model, prompt, 4, key=jax.random.key(5), padded=True, **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(ref_padded))
    assert not np.array_equal(np.asarray(a), np.asarray(c)), "a different key should give different samples"
    assert int(a.min()) >= 0 and int(a.max()) < V


def test_top_k_one_is_greedy_and_unbatched_prompt():
    model = _model("bilinear_attention")
    prompt = _ids(1, 5)[0]
    greedy = generate(model, prompt, 4, temperature=0.0)
    topk1 = generate(model, prompt, 4, key=jax.random.key(0), temperature=1.0, top_k=1)
    assert greedy.shape == (9,)
    np.testing.assert_array_equal(np.asarray(greedy), np.asarray(topk1))
    np.testing.assert_array_equal(np.asarray(generate(model, prompt, 0, temperature=0.0)), np.asarray(prompt))
    # a one-token prompt: nothing to prefill; each new token is the argmax of the full forward
    one = generate(model, prompt[:1], 3, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(one[1:]), np.asarray(model(one[None, :-1])[0].argmax(-1)))


def test_sampling_frequencies_match_softmax():
    """One step of argsoftmax at Ξ: empirical frequencies of the first new token over many keys vs
    softmax(logits/Ξ) of the full forward (total variation < 0.06 at 2000 draws; the expected TV for
    V=13 is about 0.03)."""
    model = _model("dense", max_len=MAXLEN)
    prompt = jnp.tile(_ids(1, 3), (2000, 1))
    out = generate(model, prompt, 1, key=jax.random.key(11), temperature=1.5)
    freq = np.bincount(np.asarray(out[:, -1]), minlength=V) / 2000
    p = np.asarray(jax.nn.softmax(model(prompt[:1])[0, -1] / 1.5))
    assert 0.5 * np.abs(freq - p).sum() < 0.06


def test_bad_input_gives_clear_errors():
    model = _model("attention", max_len=12)
    prompt = _ids(2, 4)
    with pytest.raises(ValueError, match="prompt must lie in"):
        generate(model, prompt.at[0, 0].set(V), 3, temperature=0.0)
    with pytest.raises(ValueError, match="prompt must lie in"):
        generate_recompute(model, prompt.at[1, 2].set(-1), 3, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens must be an int ≥ 0"):
        generate(model, prompt, -1, temperature=0.0)
    with pytest.raises(ValueError, match="exceeds the model's max_len=12"):
        generate(model, prompt, 9, temperature=0.0)
    with pytest.raises(TypeError, match="prompt must be an integer array"):
        generate(model, prompt.astype(jnp.float32), 3, temperature=0.0)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, jnp.zeros((2, 0), jnp.int32), 3, temperature=0.0)
    with pytest.raises(ValueError, match="key must be a PRNG key"):
        generate(model, prompt, 3, temperature=1.0)
    with pytest.raises(ValueError, match="top_k must be an int"):
        generate(model, prompt, 3, temperature=0.0, top_k=V + 1)
    with pytest.raises(ValueError, match="top_p must lie in"):
        generate(model, prompt, 3, temperature=0.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 3, temperature=-1.0)
    # the dense table bounds the length too, even without learned positions
    dense = _model("dense")
    assert length_limit(dense) == MAXLEN
    with pytest.raises(ValueError, match=f"exceeds the model's max_len={MAXLEN}"):
        generate(dense, prompt, MAXLEN, temperature=0.0)


def test_cache_errors():
    model = _model("attention", max_len=12)
    with pytest.raises(ValueError, match="exceeds the model's learned positions"):
        model.init_cache(2, 13)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        model.init_cache(0, 4)
    bidir = _model("attention", mask="bidirectional")
    with pytest.raises(ValueError, match="mask='causal'"):
        bidir.init_cache(1, 4)
    with pytest.raises(ValueError, match="mask='causal'"):
        generate(bidir, _ids(1, 3), 2, temperature=0.0)
    dense = DenseTVVAR(D, rngs=nnx.Rngs(0), max_len=8)
    with pytest.raises(ValueError, match="exceeds the dense decomposition's table length"):
        dense.init_cache(1, 9)
    att = build("attention", D, rngs=nnx.Rngs(0), num_heads=2)
    cache = att.init_cache(2, 3)
    with pytest.raises(ValueError, match=r"u_t must have shape \[B=2, D_in=16\]"):
        att.step(cache, jnp.ones((2, 5, D)))
    for _ in range(3):
        _, cache = att.step(cache, jnp.ones((2, D)))
    with pytest.raises(ValueError, match="the cache is full"):
        att.step(cache, jnp.ones((2, D)))
    with pytest.raises(ValueError, match=r"ids_t must have shape \[B\]"):
        model.decode_step(model.init_cache(2, 4), _ids(2, 2))


def test_mixer_without_cache_falls_back_to_recompute(monkeypatch):
    """A decomposition without init_cache/step still generates (with a warning) the reference tokens;
    fallback=False raises a clear error."""

    class NoCacheDense(DenseTVVAR):
        init_cache = None
        step = None

    monkeypatch.setitem(core.DECOMPOSITIONS._members, "_test_dense_nocache", NoCacheDense)
    cfg = ModelConfig(vocab_size=V, d_model=D, num_layers=1, decomposition="_test_dense_nocache",
                      mixer={"max_len": MAXLEN})
    model = TVVARModel(cfg, rngs=nnx.Rngs(0))
    assert not supports_cache(model)
    prompt = _ids(2, 3)
    with pytest.warns(UserWarning, match="falling back to one compiled full forward per token"):
        out = generate(model, prompt, 4, temperature=0.0)
        sampled = generate(model, prompt, 4, key=jax.random.key(5), temperature=1.0)
    # the fallback is the padded recompute (one compilation), whose tokens are the per-prefix reference's
    for got, kw in ((out, dict(temperature=0.0)), (sampled, dict(key=jax.random.key(5), temperature=1.0))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(generate_recompute(model, prompt, 4, **kw)))
    with pytest.raises(NotImplementedError, match="has no init_cache/step"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            generate(model, prompt, 4, temperature=0.0, fallback=False)


# --------------------------------------------------------------------------------------------------
# python -m experiments.generate
# --------------------------------------------------------------------------------------------------


def test_cli_prompt_encoding():
    from experiments.generate import decode_tokens, encode_prompt

    np.testing.assert_array_equal(encode_prompt("3 1, 4", {"kind": "markov"}, 5), [3, 1, 4])
    assert decode_tokens([3, 1, 4], {"kind": "markov"}) == "3 1 4"
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\)"):
        encode_prompt("3 5", {"kind": "markov"}, 5)
    with pytest.raises(ValueError, match="space-separated list of integer token ids"):
        encode_prompt("3 x", {"kind": "synthetic-tvvar"}, 5)
    with pytest.raises(ValueError, match="empty prompt"):
        encode_prompt("  ", {"kind": "markov"}, 5)
    with pytest.raises(ValueError, match="for this 'markov' run, got an empty prompt"):
        encode_prompt("  ", {"kind": "markov"}, 5)
    with pytest.raises(ValueError, match=r"for a run without data.json \(its source unknown"):
        encode_prompt("3 x", {}, 5)  # not called "synthetic": nothing says it is
    text_info = {"kind": "text", "vocab": {"byte_level": False, "symbols": [" ", "a", "b"]}}
    np.testing.assert_array_equal(encode_prompt("ab a", text_info, 3), [1, 2, 0, 1])
    assert decode_tokens([2, 0, 1], text_info) == "b a"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encode_prompt("abc", text_info, 3)


@pytest.mark.slow
def test_cli_generates_from_a_trained_char_run(tmp_path, capsys):
    """End to end: a 2-step character-level run, then the CLI continues a text prompt (greedy: the
    same text as tvvar.generate on the loaded model)."""
    from experiments.generate import main
    from tvvar.sources import TextCorpus
    from tvvar.train import TrainConfig, load_run, train

    corpus = tmp_path / "tiny.txt"
    corpus.write_text("abba cab dab bad cad " * 20)
    data = TextCorpus(corpus)
    cfg = TrainConfig(model=ModelConfig(vocab_size=data.vocab_size, d_model=16, num_layers=1, mixer={"num_heads": 2}),
                      steps=2, batch_size=2, seq_len=8, warmup=0, eval_every=0, eval_batches=1, ckpt_every=2)
    train(cfg, data, tmp_path / "run", progress=False)
    out = main(["--run", str(tmp_path / "run"), "--prompt", "ab", "--max-new-tokens", "5", "--temperature", "0"])
    assert out["text"].startswith("ab") and len(out["text"]) == 7 and out["prompt_len"] == 2
    assert capsys.readouterr().out.strip() == out["text"]
    model, _, _ = load_run(tmp_path / "run")
    expect = generate(model, jnp.asarray(data.vocab.encode("ab")), 5, temperature=0.0)
    assert out["text"] == data.vocab.decode(expect)
    sampled = main(["--run", str(tmp_path / "run"), "--prompt", "ba", "--max-new-tokens", "4", "--top-k", "3",
                    "--top-p", "0.9", "--seed", "1"])
    assert len(sampled["text"]) == 6 and set(sampled["text"]) <= set(data.vocab.symbols)
    # bad input: status 2 and one line on stderr naming the flag (experiments/generate.py's usage errors)
    for argv, message in ((["--run", str(tmp_path / "run"), "--prompt", "xyz"], "outside the vocabulary"),
                          (["--run", str(tmp_path), "--prompt", "ab"], "not a tvvar run directory"),
                          (["--run", str(tmp_path / "run"), "--prompt", "ab", "--max-new-tokens", "-1"],
                           "max-new-tokens must be ≥ 0")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_help_documents_every_option(capsys):
    from experiments.generate import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for opt in ("--run", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed", "--step"):
        assert opt in text


def test_infinite_temperature_is_refused():
    model = _model("attention", max_len=12)
    with pytest.raises(ValueError, match="temperature .* finite number ≥ 0, got inf"):
        generate(model, _ids(2, 4), 3, key=jax.random.key(0), temperature=float("inf"))
