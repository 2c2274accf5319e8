"""Hugging Face checkpoints as tvvar models (tvvar.pretrained), checked against transformers' Flax models.

The reference models are built from tiny random configs (no download) and written with their own
``save_pretrained(..., safe_serialization=True)``; the PyTorch layout is produced from those files by the
documented renaming (kernel/embedding/scale → weight, kernels transposed, ``transformer.`` prefix dropped).
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from tvvar.decompositions.attention import Attention
from tvvar.generate import generate
from tvvar.pretrained import load_pretrained, save_pretrained
from tvvar.testing import check_decomposition

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

V, T = 100, 64


def _gpt2(folder, **kw):
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=32, n_layer=2, n_head=4, **kw)
    with _ref_numpy():
        ref = transformers.FlaxGPT2LMHeadModel(cfg, seed=0)
    # random biases and norm gains too (the default init sets them to 0 / 1, which would hide bugs)
    from flax.core import unfreeze

    params = unfreeze(ref.params)
    rng = np.random.default_rng(1)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name.endswith(("bias", "scale")):
            _set(params, path, jnp.asarray(rng.normal(size=leaf.shape) * 0.1 + (1 if "scale" in name else 0),
                                           leaf.dtype))
    ref.params = params
    ref.save_pretrained(folder, safe_serialization=True)
    return ref


def _llama(folder, model_type="llama", **kw):
    c = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=T)
    c.update(kw)
    with _ref_numpy():
        if model_type == "llama":
            ref = transformers.FlaxLlamaForCausalLM(transformers.LlamaConfig(**c), seed=0)
        else:
            ref = transformers.FlaxMistralForCausalLM(transformers.MistralConfig(**{"sliding_window": T, **c}),
                                                      seed=0)
    from flax.core import unfreeze

    params = unfreeze(ref.params)
    rng = np.random.default_rng(2)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if "norm" in "/".join(str(getattr(k, "key", k)) for k in path):
            _set(params, path, jnp.asarray(1 + 0.1 * rng.normal(size=leaf.shape), leaf.dtype))
    ref.params = params
    ref.save_pretrained(folder, safe_serialization=True)
    return ref


def _ref_numpy():
    """transformers' Flax models rely on implicit rank promotion, which the suite's conftest forbids: allow it
    around reference calls only (tvvar's own code keeps running under 'raise')."""
    return jax.numpy_rank_promotion("allow")


def _set(tree, path, value):
    node = tree
    for k in path[:-1]:
        node = node[k.key]
    node[path[-1].key] = value


def _to_pytorch_layout(src, dst, model_type):
    """The documented renaming of a Flax-layout folder into the PyTorch (hub) layout."""
    shutil.copytree(src, dst)
    t = load_file(str(src / "model.safetensors"))
    out = {}
    for k, v in t.items():
        if model_type == "gpt2":
            k = k.removeprefix("transformer.")
        if k.endswith(".kernel"):
            k, v = k[: -len(".kernel")] + ".weight", v.T
        elif k.endswith((".embedding", ".scale")):
            k = k.rsplit(".", 1)[0] + ".weight"
        out[k] = np.ascontiguousarray(v)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    ref = _gpt2(d)
    return d, ref


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    ref = _llama(d)
    return d, ref


def _ids(B=2):
    return np.random.default_rng(0).integers(0, V, (B, T))


def _agree(pre, ref, ids):
    with _ref_numpy():
        out = ref(ids, output_attentions=True)
    logits = pre.model(jnp.asarray(ids))
    assert float(jnp.max(jnp.abs(logits - out.logits))) <= 1e-4
    x = pre.model.embed_tokens(jnp.asarray(ids))
    for i, block in enumerate(pre.model.blocks):
        pi = block.mixer.pi(block.norm1(x))  # [B, H, T, T], Theorem 5's π of every head
        np.testing.assert_allclose(np.asarray(pi), np.asarray(out.attentions[i]), atol=1e-6)
        x = block(x)
    return float(jnp.max(jnp.abs(logits - out.logits)))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_logits_and_attention_match_reference(which, gpt2_dir, llama_dir, tmp_path):
    d, ref = gpt2_dir if which == "gpt2" else llama_dir
    pre = load_pretrained(d)
    assert pre.layout == "flax"
    _agree(pre, ref, _ids())
    # the same weights rewritten in the PyTorch layout give the same logits
    pt = tmp_path / "pt"
    _to_pytorch_layout(d, pt, which)
    pre_pt = load_pretrained(pt)
    assert pre_pt.layout == "pytorch"
    np.testing.assert_array_equal(np.asarray(pre_pt.model(jnp.asarray(_ids()))),
                                  np.asarray(pre.model(jnp.asarray(_ids()))))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_greedy_generation_matches_reference(which, gpt2_dir, llama_dir):
    d, ref = gpt2_dir if which == "gpt2" else llama_dir
    pre = load_pretrained(d)
    prompt = _ids(1)[:, :8]
    ours = np.asarray(generate(pre.model, jnp.asarray(prompt), 12, temperature=0.0))
    with _ref_numpy():
        theirs = np.asarray(ref.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0).sequences)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
@pytest.mark.parametrize("layout", ["pytorch", "flax"])
def test_save_reload_bit_exact(which, layout, gpt2_dir, llama_dir, tmp_path):
    d, _ = gpt2_dir if which == "gpt2" else llama_dir
    pre = load_pretrained(d)
    save_pretrained(pre, tmp_path / "out", layout=layout)
    again = load_pretrained(tmp_path / "out")
    assert again.layout == layout
    _assert_same_params(pre.model, again.model)


def test_mistral_layout_loads(tmp_path):
    ref = _llama(tmp_path, model_type="mistral")
    pre = load_pretrained(tmp_path)
    assert pre.model_type == "mistral"
    _agree(pre, ref, _ids())


@pytest.mark.slow
def test_mistral_sliding_window_matches_flax_and_is_banded(tmp_path):
    """sliding_window w = 10 < T = 64: logits and every head's π equal transformers' Flax Mistral — which keeps
    w + 1 keys (jnp.triu(causal, -w)) where its PyTorch Mistral keeps w (kv > q − w), so the reference is built with
    w − 1 and the checkpoint says w, as a hub checkpoint does — π is exactly 0 outside the band, and greedy
    generation through the KV cache equals the full forward's argmax beyond the window."""
    w = 10
    ref = _llama(tmp_path / "m", model_type="mistral", sliding_window=w - 1)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "sliding_window": w}))
    pre = load_pretrained(tmp_path / "m")
    assert pre.model.blocks[0].mixer.window == w
    ids = _ids()
    assert _agree(pre, ref, ids) <= 1e-4
    pi = np.asarray(pre.model.blocks[1].mixer.pi(pre.model.embed_tokens(jnp.asarray(ids))))
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    assert np.all(pi[:, :, (j > i) | (j <= i - w)] == 0)
    out = np.asarray(generate(pre.model, jnp.asarray(ids[:1, :12]), 8, temperature=0.0))
    for s in range(12, 20):
        assert out[0, s] == int(np.argmax(np.asarray(pre.model(jnp.asarray(out[:, :s])))[0, -1]))
    with pytest.raises(ValueError, match="sliding_window"):  # Llama has no window: the field is refused there
        bad = tmp_path / "llama"
        _llama(bad)
        c = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**c, "sliding_window": 8}))
        load_pretrained(bad)


def test_sharded_bf16_and_tokenizer(gpt2_dir, tmp_path):
    d, _ = gpt2_dir
    pre = load_pretrained(d)
    out = tmp_path / "sh"
    save_pretrained(pre, out, layout="pytorch")
    t = load_file(str(out / "model.safetensors"))
    (out / "model.safetensors").unlink()
    keys = sorted(t)
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2:]}
    import ml_dtypes

    for f, ks in shards.items():
        save_file({k: t[k].astype(ml_dtypes.bfloat16) for k in ks}, str(out / f))
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: f for f, ks in shards.items()
                                                                                 for k in ks}}))
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(V)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(out / "tokenizer.json"))
    got = load_pretrained(out)
    assert got.tokenizer is not None and got.tokenizer.encode("w3 w7").ids == [3, 7]
    ids = jnp.asarray(_ids())
    expect = np.asarray(load_pretrained(d).model(ids))
    # bf16 weights (cast to float32 on load): close to the float32 logits, not equal
    diff = float(np.max(np.abs(np.asarray(got.model(ids)) - expect)))
    assert 0 < diff < 0.1
    # an index naming a missing shard
    (out / "b.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="b.safetensors"):
        load_pretrained(out)


def test_bad_input_errors(gpt2_dir, llama_dir, tmp_path):
    d, _ = gpt2_dir

    def copy(name, src=d):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    def edit_config(folder, **kw):
        c = json.loads((folder / "config.json").read_text())
        c.update(kw)
        (folder / "config.json").write_text(json.dumps(c))

    f = copy("type")
    edit_config(f, model_type="bert")
    with pytest.raises(ValueError, match="model_type 'bert'"):
        load_pretrained(f)
    f = copy("shape")
    edit_config(f, n_positions=32)
    with pytest.raises(ValueError, match=r"wpe.*shape \(64, 32\).*\(32, 32\)"):
        load_pretrained(f)
    f = copy("act")
    edit_config(f, activation_function="relu")
    with pytest.raises(ValueError, match="activation_function"):
        load_pretrained(f)
    f = copy("unknown")
    edit_config(f, some_new_option=3)
    with pytest.raises(ValueError, match="some_new_option"):
        load_pretrained(f)
    f = copy("trunc")
    data = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_pretrained(f)
    f = copy("missing")
    (f / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(f)
    f = copy("key")
    t = load_file(str(f / "model.safetensors"))
    del t["transformer.ln_f.bias"]
    save_file(t, str(f / "model.safetensors"))
    with pytest.raises(KeyError, match="ln_f.bias"):
        load_pretrained(f)
    ld, _ = llama_dir
    for field, value in [("rope_scaling", {"type": "yarn", "factor": 2.0}), ("attention_bias", True),
                         ("sliding_window", 16)]:
        f = copy(f"llama_{field}", ld)
        edit_config(f, **{field: value})
        with pytest.raises(ValueError, match=field):
            load_pretrained(f)
    with pytest.raises(ValueError, match="dtype"):
        load_pretrained(d, dtype="int8")


# ---- the attention components themselves -----------------------------------------------------------


def _assert_same_params(a, b):
    """Every parameter of model ``a`` equals ``b``'s, bit for bit, under the same path."""
    flat_a, flat_b = (nnx.to_flat_state(nnx.state(m, nnx.Param)) for m in (a, b))
    for (pa, va), (pb, vb) in zip(flat_a, flat_b, strict=True):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va.get_value()), np.asarray(vb.get_value()))


def _normal(seed):
    """r(*shape, sd=0.2): float32 normal draws of one generator, for the random checkpoints below."""
    rng = np.random.default_rng(seed)
    return lambda *s, sd=0.2: (sd * rng.normal(size=s)).astype(np.float32)


def _write_checkpoint(folder, cfg, tensors):
    """A PyTorch-layout checkpoint folder: model.safetensors and config.json from a transformers config."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(cfg.to_json_string())


def _assert_refused(tmp_path, cases):
    """Each (field, value, match): the checkpoint in tmp_path / "ok" with that config field changed is refused with
    a ValueError matching ``match``."""
    good = json.loads((tmp_path / "ok" / "config.json").read_text())
    for field, value, match in cases:
        bad = tmp_path / field
        shutil.copytree(tmp_path / "ok", bad)
        (bad / "config.json").write_text(json.dumps({**good, field: value}))
        with pytest.raises(ValueError, match=match):
            load_pretrained(bad)


def _rand_bias(m, dtype):
    if m.qk_bias:
        m.bq[...] = jax.random.normal(jax.random.key(3), m.bq.shape, dtype)
        m.bk[...] = jax.random.normal(jax.random.key(4), m.bk.shape, dtype)
    return m


@pytest.mark.slow  # 20–30 s each on 2 loaded cores (the kit's full Jacobians in float32 and float64)
@pytest.mark.parametrize("kw", [dict(rotary=True, num_kv_heads=2), dict(qk_bias=True),
                                dict(rotary=True, qk_bias=True, num_kv_heads=1)])
def test_decomposition_kit_with_rotary_gqa_bias(kw):
    check_decomposition(lambda rngs, dtype: _rand_bias(Attention(16, rngs=rngs, num_heads=4, dtype=dtype, **kw),
                                                       dtype))


@pytest.mark.slow
@pytest.mark.parametrize("scaling", [None, "llama3"])
def test_rotary_is_a_relative_bilinear_form_float64(scaling):
    """Theorem 5 with rotary: score[i, j] = u_iᵀ B_h(i − j) u_j exactly, and R(i)ᵀ R(j) = R(j − i) — with Llama
    3.1's frequency scaling too (it changes the frequencies of R, not that R is a rotation)."""
    rope_scaling = None if scaling is None else LLAMA3_SMALL
    with jax.enable_x64(True):
        m = Attention(12, rngs=nnx.Rngs(0), num_heads=3, num_kv_heads=1, rotary=True, rope_theta=100.0,
                      rope_scaling=rope_scaling, dtype=jnp.float64)
        u = jax.random.normal(jax.random.key(1), (2, 9, 12), jnp.float64)
        s = np.asarray(m.scores(u))  # [B, H, T, T]
        Bd = np.asarray(m.relative_bilinear_forms(9))  # [H, Δ, D, D]
        un = np.asarray(u)
        for i in range(9):
            for j in range(i + 1):
                want = np.einsum("bd,hde,be->bh", un[:, i], Bd[:, i - j], un[:, j])
                np.testing.assert_allclose(s[:, :, i, j], want, rtol=0, atol=1e-10)
        R = np.asarray(m.rotation(jnp.arange(6)))
        np.testing.assert_allclose(R[2].T @ R[5], R[3], atol=1e-12)
        np.testing.assert_allclose(R[4].T @ R[4], np.eye(4), atol=1e-12)
        with pytest.raises(ValueError, match="rotary"):
            m.to_bilinear()


@pytest.mark.parametrize("rotary", [False, True])
def test_qk_biases_are_an_affine_relative_form_float64(rotary):
    """Qwen2's q/k biases (added before the rotation): score[i, j] = ū_iᵀ B̄_h(i − j) ū_j with ū = [u; 1], exactly;
    without rotary the bias column and corner of B̄ do not depend on Δ (constant in j: they cancel in π) and B̄ is
    the same matrix at every Δ; with rotary they vary with Δ, so they change π (the statement of the docstring)."""
    with jax.enable_x64(True):
        m = Attention(16, rngs=nnx.Rngs(0), num_heads=4, num_kv_heads=2, qk_bias=True, rotary=rotary,
                      rope_theta=50.0, dtype=jnp.float64)
        _rand_bias(m, jnp.float64)
        T = 9
        u = jax.random.normal(jax.random.key(1), (2, T, 16), jnp.float64)
        s = np.asarray(m.scores(u))
        Bbar = np.asarray(m.affine_relative_forms(T))  # [H, Δ, D + 1, D + 1]
        ub = np.concatenate([np.asarray(u), np.ones((2, T, 1))], axis=-1)
        for i in range(T):
            for j in range(i + 1):
                want = np.einsum("bd,hde,be->bh", ub[:, i], Bbar[:, i - j], ub[:, j])
                np.testing.assert_allclose(s[:, :, i, j], want, rtol=0, atol=1e-10)
        column = Bbar[:, :, :, -1]  # u_iᵀ W_q R(−Δ) b_k (+ the corner): constant in j only without rotary
        spread = float(np.max(np.abs(column - column[:, :1])))
        if rotary:
            assert spread > 1e-3
        else:
            assert spread == 0.0 and float(np.max(np.abs(Bbar - Bbar[:, :1]))) == 0.0
        np.testing.assert_allclose(Bbar[:, :, :16, :16], np.asarray(
            Attention(16, rngs=nnx.Rngs(0), num_heads=4, num_kv_heads=2, rotary=rotary, rope_theta=50.0,
                      dtype=jnp.float64).relative_bilinear_forms(T)), rtol=0, atol=1e-12)


def test_gqa_to_bilinear_exact_float64():
    with jax.enable_x64(True):
        m = Attention(12, rngs=nnx.Rngs(0), num_heads=4, num_kv_heads=2, dtype=jnp.float64)
        u = jax.random.normal(jax.random.key(1), (2, 7, 12), jnp.float64)
        np.testing.assert_allclose(np.asarray(m.to_bilinear()(u)), np.asarray(m(u)), atol=1e-10)
    with pytest.raises(ValueError, match="num_kv_heads"):
        Attention(12, rngs=nnx.Rngs(0), num_heads=4, num_kv_heads=3)


# ---- rotary scaling (Llama 3.1 / 3.2 checkpoints carry rope_scaling of type llama3) ----------------------

#: the scaling Llama 3.1 ships (factor 8, frequencies 1 and 4, context 8192) and a small one whose three
#: regions all hold a frequency of an 8-wide head with θ = 10⁴ (wavelengths 2π·10^{k/4}, k = 0..3, against 16, 64)
LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}
LLAMA3_SMALL = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": T}


def _llama3_freqs_reference(head_dim, theta, scaling):
    """Llama 3.1's frequency scaling written from its definition, one frequency at a time (float64)."""
    L, factor = scaling["original_max_position_embeddings"], scaling["factor"]
    lo, hi = scaling["low_freq_factor"], scaling["high_freq_factor"]
    out = []
    for k in range(0, head_dim, 2):
        f = theta ** (-k / head_dim)
        wavelength = 2 * np.pi / f
        if wavelength < L / hi:  # high frequency: kept
            out.append(f)
        elif wavelength > L / lo:  # low frequency: interpolated by the factor
            out.append(f / factor)
        else:  # in between: a smooth blend of the two
            smooth = (L / wavelength - lo) / (hi - lo)
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)


@pytest.mark.parametrize("head_dim,theta,scaling", [(128, 500000.0, LLAMA31), (64, 500000.0, LLAMA31),
                                                    (8, 10000.0, LLAMA3_SMALL)])
def test_rope_llama3_frequencies_float64(head_dim, theta, scaling):
    from tvvar.decompositions.attention import rope_inv_freq

    want = _llama3_freqs_reference(head_dim, theta, scaling)
    base = theta ** (-np.arange(0, head_dim, 2) / head_dim)
    assert (want == base).any() and (want == base / 8).any() and ((want != base) & (want != base / 8)).any()
    with jax.enable_x64(True):
        got = np.asarray(rope_inv_freq(head_dim, theta, scaling, jnp.float64))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
        lin = np.asarray(rope_inv_freq(head_dim, theta, {"rope_type": "linear", "factor": 4.0}, jnp.float64))
        np.testing.assert_allclose(lin, base / 4, rtol=1e-12, atol=0)


def test_rope_scaling_refusals_name_the_field():
    from tvvar.decompositions.attention import check_rope_scaling

    assert check_rope_scaling({"type": "linear", "factor": 2}) == {"rope_type": "linear", "factor": 2.0}
    assert check_rope_scaling({"rope_type": "default"}) is None
    for bad, match in [({"rope_type": "yarn", "factor": 4.0}, "yarn"), ({"rope_type": "dynamic"}, "dynamic"),
                       ({"rope_type": "nope"}, "must be one of"), ({"rope_type": "linear"}, "needs 'factor'"),
                       ({**LLAMA31, "factor": -1.0}, r"rope_scaling\['factor'\]"),
                       ({**LLAMA31, "high_freq_factor": 0.5}, "high_freq_factor")]:
        with pytest.raises(ValueError, match=match):
            check_rope_scaling(bad)
    with pytest.raises(ValueError, match="rotary=True"):
        Attention(8, rngs=nnx.Rngs(0), num_heads=2, rope_scaling=LLAMA31)


def test_llama3_rope_scaling_checkpoint_matches_reference(tmp_path, monkeypatch):
    """A Llama 3.1-style checkpoint (rope_scaling llama3) loads with logits and every head's π equal to the
    transformers Flax Llama whose rotary table is built from the scaled frequencies (its Flax port ignores
    rope_scaling, so the reference table is patched in from the definition above); save → load is exact."""
    from transformers.models.llama import modeling_flax_llama

    def scaled_table(num_pos, dim):  # the Flax port's create_sinusoidal_positions, with scaled frequencies
        freqs = np.einsum("i,j->ij", np.arange(num_pos), _llama3_freqs_reference(dim, 10000.0, LLAMA3_SMALL))
        emb = np.concatenate([freqs, freqs], axis=-1).astype("float32")
        return jnp.array(np.concatenate([np.sin(emb)[:, None, :], np.cos(emb)[:, None, :]], axis=-1))

    monkeypatch.setattr(modeling_flax_llama, "create_sinusoidal_positions", scaled_table)
    ref = _llama(tmp_path / "ckpt", rope_scaling=dict(LLAMA3_SMALL))
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["rope_scaling"]["rope_type"] == "llama3"
    pre = load_pretrained(tmp_path / "ckpt")
    assert pre.model.blocks[0].mixer.rope_scaling == LLAMA3_SMALL
    ids = _ids()
    assert _agree(pre, ref, ids) <= 1e-4
    monkeypatch.undo()  # without the scaled table the reference is the unscaled model: tvvar must differ from it
    with _ref_numpy():
        plain = transformers.FlaxLlamaForCausalLM(ref.config, seed=0)
        plain.params = ref.params
        unscaled = plain(ids).logits
    assert float(jnp.max(jnp.abs(pre.model(jnp.asarray(ids)) - unscaled))) > 1e-3
    save_pretrained(pre, tmp_path / "again")
    again = load_pretrained(tmp_path / "again")
    np.testing.assert_array_equal(np.asarray(again.model(jnp.asarray(ids))), np.asarray(pre.model(jnp.asarray(ids))))


def test_dynamic_rope_scaling_is_the_unscaled_model_within_the_original_context_and_refused_beyond(tmp_path):
    """Dynamic NTK scaling keeps θ's frequencies while the length is at most the original context L
    (max_position_embeddings; transformers rescales the base only beyond it): the checkpoint loads, its logits equal
    the Flax Llama's (which ignores rope_scaling) at T = L, bit-equal to the same weights without the field; a
    longer input or cache is refused by name instead of running with frequencies that are not the checkpoint's."""
    ref = _llama(tmp_path / "plain")
    _llama(tmp_path / "dyn", rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    pre, plain = load_pretrained(tmp_path / "dyn"), load_pretrained(tmp_path / "plain")
    assert pre.model.blocks[0].mixer.rope_scaling == {"rope_type": "dynamic", "factor": 4.0,
                                                      "original_max_position_embeddings": T}
    ids = _ids()
    assert ids.shape[1] == T  # the whole original context
    assert _agree(pre, ref, ids) <= 1e-4
    np.testing.assert_array_equal(np.asarray(pre.model(jnp.asarray(ids))), np.asarray(plain.model(jnp.asarray(ids))))
    long = jnp.zeros((1, T + 1), jnp.int32)
    with pytest.raises(ValueError, match=rf"dynamic.*original_max_position_embeddings={T}"):
        pre.model(long)
    with pytest.raises(ValueError, match="dynamic"):
        pre.model.init_cache(1, T + 1)
    pre.model.init_cache(1, T)  # the original context itself is fine
    save_pretrained(pre, tmp_path / "again")
    again = load_pretrained(tmp_path / "again")
    assert again.model.blocks[0].mixer.rope_scaling == pre.model.blocks[0].mixer.rope_scaling


# ---- Gemma: √D-scaled token vectors, RMSNorm with (1 + w), GeGLU, head_dim ≠ D/H, tied head -------------------


def _gemma(folder, **kw):
    c = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=T, hidden_activation="gelu_pytorch_tanh",
             eos_token_id=V)  # an id no token has: the reference generates to full length, as ours does
    c.update(kw)
    with _ref_numpy():
        ref = transformers.FlaxGemmaForCausalLM(transformers.GemmaConfig(**c), seed=0)
    from flax.core import unfreeze

    params = unfreeze(ref.params)
    rng = np.random.default_rng(3)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if "norm" in "/".join(str(getattr(k, "key", k)) for k in path):  # Gemma stores w of (1 + w): around 0
            _set(params, path, jnp.asarray(0.3 * rng.normal(size=leaf.shape), leaf.dtype))
    ref.params = params
    ref.save_pretrained(folder, safe_serialization=True)
    return ref


def _numpy_logits(folder, ids):
    """The Llama-layout families' forward written from their equations in float64 NumPy, on the PyTorch-layout
    weights: u = E[x] (Gemma: √D·E[x]); per layer x += W_o attn(n₁ x) + b, x += W_down(act(W_gate n₂ x) ⊙ W_up n₂ x)
    with n(x) = x/rms(x)·w (Gemma: ·(1 + w), act the tanh GELU; else silu); q/k/v biases (Qwen2) added before the
    rotation, rotary on (first half, second half) pairs (rotate_half), grouped-query heads; Phi-3's fused
    projections split on their outputs ([q | k | v], [gate | up]) and a sliding window t − w < j ≤ t (Mistral,
    Phi-3); logits = n_f(x) Eᵀ (or lm_head)."""
    c = json.loads((folder / "config.json").read_text())
    gemma, olmo2 = c["model_type"] == "gemma", c["model_type"] == "olmo2"
    W = {k: np.asarray(v, np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()}
    D, H = c["hidden_size"], c["num_attention_heads"]
    G, K = c.get("num_key_value_heads") or H, c.get("head_dim") or D // H
    eps, theta = c["rms_norm_eps"], c.get("rope_theta", 10000.0)

    def norm(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * ((1 + w) if gemma else w)

    def act(z):
        if gemma:
            return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
        return z / (1 + np.exp(-z))

    B, n = ids.shape
    ang = np.arange(n)[:, None] * (1.0 / theta ** (np.arange(0, K, 2) / K))[None]   # [T, K/2]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(z):  # z [B, T, heads, K]
        half = np.concatenate([-z[..., K // 2:], z[..., :K // 2]], axis=-1)
        return z * cos[None, :, None] + half * sin[None, :, None]

    def proj(h, name, heads):
        y = h @ W[name + ".weight"].T + W.get(name + ".bias", 0.0)
        return y.reshape(B, n, heads, K)

    E = W["model.embed_tokens.weight"]
    x = E[ids] * (np.sqrt(D) if gemma else 1.0)
    causal = np.tril(np.ones((n, n), bool))
    if c.get("sliding_window") and c["model_type"] in ("mistral", "phi3"):
        causal &= np.arange(n)[None, :] > np.arange(n)[:, None] - c["sliding_window"]
    def wnorm(z, g):  # OLMo 2's QK-norm: RMSNorm over the whole projection width, before the heads split
        return z / np.sqrt(np.mean(z * z, axis=-1, keepdims=True) + eps) * g

    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = x if olmo2 else norm(x, W[p + "input_layernorm.weight"])
        if p + "self_attn.qkv_proj.weight" in W:  # Phi-3: one projection, its output split [q | k | v]
            qkv = h @ W[p + "self_attn.qkv_proj.weight"].T
            q, k, v = np.split(qkv, [H * K, (H + G) * K], axis=-1)
            q, k, v = rope(q.reshape(B, n, H, K)), rope(k.reshape(B, n, G, K)), v.reshape(B, n, G, K)
        elif olmo2:
            q = wnorm(h @ W[p + "self_attn.q_proj.weight"].T, W[p + "self_attn.q_norm.weight"])
            k = wnorm(h @ W[p + "self_attn.k_proj.weight"].T, W[p + "self_attn.k_norm.weight"])
            q, k = rope(q.reshape(B, n, H, K)), rope(k.reshape(B, n, G, K))
            v = proj(h, p + "self_attn.v_proj", G)
        else:
            q, k = rope(proj(h, p + "self_attn.q_proj", H)), rope(proj(h, p + "self_attn.k_proj", G))
            v = proj(h, p + "self_attn.v_proj", G)
        k, v = np.repeat(k, H // G, axis=2), np.repeat(v, H // G, axis=2)
        s = np.where(causal[None, None], np.einsum("bihk,bjhk->bhij", q, k) / np.sqrt(K), -np.inf)
        pi = np.exp(s - s.max(-1, keepdims=True))
        pi /= pi.sum(-1, keepdims=True)
        attn = np.einsum("bhij,bjhk->bihk", pi, v).reshape(B, n, H * K) @ W[p + "self_attn.o_proj.weight"].T
        if olmo2:  # post-norms: x + norm(attn(x)), then x + norm(mlp(x))
            x = x + norm(attn, W[p + "post_attention_layernorm.weight"])
            gate, up = x @ W[p + "mlp.gate_proj.weight"].T, x @ W[p + "mlp.up_proj.weight"].T
            x = x + norm((act(gate) * up) @ W[p + "mlp.down_proj.weight"].T, W[p + "post_feedforward_layernorm.weight"])
            continue
        x = x + attn
        h = norm(x, W[p + "post_attention_layernorm.weight"])
        if p + "mlp.gate_up_proj.weight" in W:  # Phi-3: [gate | up] = chunk(2) of one projection
            gate, up = np.split(h @ W[p + "mlp.gate_up_proj.weight"].T, 2, axis=-1)
        else:
            gate, up = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
        x = x + (act(gate) * up) @ W[p + "mlp.down_proj.weight"].T
    return norm(x, W["model.norm.weight"]) @ W.get("lm_head.weight", E).T


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gemma")
    return d, _gemma(d)


@pytest.mark.slow
def test_gemma_matches_flax_and_a_float64_numpy_reference(gemma_dir, tmp_path):
    d, ref = gemma_dir
    pre = load_pretrained(d)
    assert pre.model_type == "gemma" and pre.model.cfg.embed_scale == pytest.approx(np.sqrt(32))
    assert pre.model.cfg.mixer["head_dim"] == 16 != 32 // 4
    ids = _ids()
    assert _agree(pre, ref, ids) <= 1e-4  # logits and every head's π against transformers' Flax Gemma
    pt = tmp_path / "pt"
    _to_pytorch_layout(d, pt, "gemma")
    with jax.enable_x64(True):
        ours = np.asarray(load_pretrained(pt, dtype="float64").model(jnp.asarray(ids)))
    np.testing.assert_allclose(ours, _numpy_logits(pt, ids), rtol=0, atol=1e-10)


@pytest.mark.slow
def test_gemma_greedy_generation_and_save_reload(gemma_dir, tmp_path):
    d, ref = gemma_dir
    pre = load_pretrained(d)
    prompt = _ids(1)[:, :8]
    ours = np.asarray(generate(pre.model, jnp.asarray(prompt), 12, temperature=0.0))
    with _ref_numpy():
        theirs = np.asarray(ref.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0).sequences)
    np.testing.assert_array_equal(ours, theirs)
    for layout in ("pytorch", "flax"):
        save_pretrained(pre, tmp_path / layout, layout=layout)
        again = load_pretrained(tmp_path / layout)
        assert again.layout == layout
        _assert_same_params(pre.model, again.model)


def test_gemma_refusals_name_the_field(tmp_path):
    _gemma(tmp_path / "ok")
    _assert_refused(tmp_path, (("hidden_act", "gelu", "hidden_act='gelu'"),
                               ("hidden_activation", "relu", "hidden_activation='relu'"),
                               ("attention_bias", True, "attention_bias"),
                               ("tie_word_embeddings", False, "tie_word_embeddings"),
                               ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "yarn")))


# ---- Qwen2: q/k/v biases (no output bias) -------------------------------------------------------------------


def _qwen2(folder, **kw):
    """A random Qwen2 checkpoint in the PyTorch layout (transformers has no Flax Qwen2): config.json from
    transformers' Qwen2Config and every tensor, biases and norm gains included, drawn at random."""
    c = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=T, rope_theta=500.0)
    c.update(kw)
    cfg = transformers.Qwen2Config(**c)
    D, H, G, F = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    K = D // H
    r = _normal(5)
    t = {"model.embed_tokens.weight": r(V, D, sd=1.0), "model.norm.weight": 1 + r(D, sd=0.1), "lm_head.weight": r(V, D)}
    for i in range(cfg.num_hidden_layers):
        b = f"model.layers.{i}."
        t.update({b + "self_attn.q_proj.weight": r(H * K, D), b + "self_attn.q_proj.bias": r(H * K, sd=0.5),
                  b + "self_attn.k_proj.weight": r(G * K, D), b + "self_attn.k_proj.bias": r(G * K, sd=0.5),
                  b + "self_attn.v_proj.weight": r(G * K, D), b + "self_attn.v_proj.bias": r(G * K, sd=0.5),
                  b + "self_attn.o_proj.weight": r(D, H * K), b + "input_layernorm.weight": 1 + r(D, sd=0.1),
                  b + "post_attention_layernorm.weight": 1 + r(D, sd=0.1), b + "mlp.gate_proj.weight": r(F, D),
                  b + "mlp.up_proj.weight": r(F, D), b + "mlp.down_proj.weight": r(D, F)})
    _write_checkpoint(folder, cfg, t)


@pytest.mark.slow
def test_qwen2_matches_a_float64_numpy_reference_and_saves_back(tmp_path):
    _qwen2(tmp_path / "q")
    pre = load_pretrained(tmp_path / "q")
    assert pre.model_type == "qwen2" and pre.model.blocks[0].mixer.qk_bias and pre.model.cfg.mixer_bias
    ids = _ids()
    ref = _numpy_logits(tmp_path / "q", ids)
    assert float(np.max(np.abs(np.asarray(pre.model(jnp.asarray(ids))) - ref))) <= 1e-4
    with jax.enable_x64(True):
        pre64 = load_pretrained(tmp_path / "q", dtype="float64")
        np.testing.assert_allclose(np.asarray(pre64.model(jnp.asarray(ids))), ref, rtol=0, atol=1e-10)
        # Theorem 5 with the biases: every head's score is ū_iᵀ B̄_h(i − j) ū_j, ū = [n₁(u); 1]
        mx = pre64.model.blocks[0].mixer
        h = pre64.model.blocks[0].norm1(pre64.model.embed_tokens(jnp.asarray(ids)))
        s, Bbar = np.asarray(mx.scores(h)), np.asarray(mx.affine_relative_forms(T))
        hb = np.concatenate([np.asarray(h), np.ones((2, T, 1))], axis=-1)
        for i, j in ((5, 0), (40, 17), (63, 63)):
            np.testing.assert_allclose(s[:, :, i, j], np.einsum("bd,hde,be->bh", hb[:, i], Bbar[:, i - j], hb[:, j]),
                                       rtol=0, atol=1e-10)
    # greedy generation through the cache = the full forward's argmax at every step
    prompt = jnp.asarray(ids[:1, :8])
    out = np.asarray(generate(pre.model, prompt, 10, temperature=0.0))
    for s_ in range(8, 18):
        assert out[0, s_] == int(np.argmax(np.asarray(pre.model(jnp.asarray(out[:, :s_])))[0, -1]))
    for layout in ("pytorch", "flax"):  # the value bias is written back as loaded: bit-exact both ways
        save_pretrained(pre, tmp_path / layout, layout=layout)
        again = load_pretrained(tmp_path / layout)
        _assert_same_params(pre.model, again.model)
    np.testing.assert_array_equal(load_file(str(tmp_path / "pytorch" / "model.safetensors"))[
        "model.layers.1.self_attn.v_proj.bias"], load_file(str(tmp_path / "q" / "model.safetensors"))[
        "model.layers.1.self_attn.v_proj.bias"])
    # an intercept changed after loading (training) within the folds W_oᵀ b_v is written as that value bias (the
    # same function); one outside them (Qwen2 has no output bias) is refused, not written as another model
    blk = pre.model.blocks[0]
    delta = np.random.default_rng(0).normal(size=(16,)).astype(np.float32)  # a value-bias change (G·K = 16)
    blk.mixer_bias[...] = blk.mixer_bias[...] + jnp.asarray(
        np.repeat(delta.reshape(2, 8), 2, axis=0).reshape(-1) @ np.asarray(blk.mixer.wo[...]).reshape(32, 32))
    save_pretrained(pre, tmp_path / "changed")
    changed = load_pretrained(tmp_path / "changed")
    np.testing.assert_allclose(np.asarray(changed.model(jnp.asarray(ids))), np.asarray(pre.model(jnp.asarray(ids))),
                               atol=1e-4)
    blk.mixer_bias[...] = blk.mixer_bias[...] + 0.25
    with pytest.raises(ValueError, match="layer 0: mixer_bias is not W_oᵀ b_v"):
        save_pretrained(pre, tmp_path / "outside")
    assert not (tmp_path / "outside").exists()


def test_qwen2_refusals_name_the_field(tmp_path):
    _qwen2(tmp_path / "ok")
    _assert_refused(tmp_path, (("use_sliding_window", True, "use_sliding_window"),
                               ("layer_types", ["sliding_attention", "full_attention"], "layer_types"),
                               ("hidden_act", "gelu", "hidden_act"),
                               ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "yarn")))


# ---- Phi-3: fused qkv_proj and gate_up_proj, a sliding window --------------------------------------------------


def _phi3(folder, **kw):
    """A random Phi-3 checkpoint in the PyTorch layout (transformers has no Flax Phi-3), window 16 < T."""
    c = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=T, sliding_window=16, pad_token_id=0, bos_token_id=1,
             eos_token_id=2)
    c.update(kw)
    cfg = transformers.Phi3Config(**c)
    D, H, G, F = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    K = D // H
    r = _normal(6)
    t = {"model.embed_tokens.weight": r(V, D, sd=1.0), "model.norm.weight": 1 + r(D, sd=0.1), "lm_head.weight": r(V, D)}
    for i in range(cfg.num_hidden_layers):
        b = f"model.layers.{i}."
        t.update({b + "self_attn.qkv_proj.weight": r((H + 2 * G) * K, D), b + "self_attn.o_proj.weight": r(D, H * K),
                  b + "input_layernorm.weight": 1 + r(D, sd=0.1),
                  b + "post_attention_layernorm.weight": 1 + r(D, sd=0.1),
                  b + "mlp.gate_up_proj.weight": r(2 * F, D), b + "mlp.down_proj.weight": r(D, F)})
    _write_checkpoint(folder, cfg, t)


def test_phi3_matches_a_float64_numpy_reference_and_saves_back(tmp_path):
    _phi3(tmp_path / "p")
    pre = load_pretrained(tmp_path / "p")
    assert pre.model_type == "phi3" and pre.model.blocks[0].mixer.window == 16
    ids = _ids()
    ref = _numpy_logits(tmp_path / "p", ids)
    assert float(np.max(np.abs(np.asarray(pre.model(jnp.asarray(ids))) - ref))) <= 1e-4
    with jax.enable_x64(True):
        np.testing.assert_allclose(np.asarray(load_pretrained(tmp_path / "p", dtype="float64").model(jnp.asarray(ids))),
                                   ref, rtol=0, atol=1e-10)
    for layout in ("pytorch", "flax"):  # fused back as Phi-3 stores them: bit-exact both ways
        save_pretrained(pre, tmp_path / layout, layout=layout)
        again = load_pretrained(tmp_path / layout)
        _assert_same_params(pre.model, again.model)
    saved, src = load_file(str(tmp_path / "pytorch" / "model.safetensors")), load_file(str(tmp_path / "p" /
                                                                                           "model.safetensors"))
    assert sorted(saved) == sorted(src) and all(np.array_equal(saved[k], src[k]) for k in src)


def test_phi3_refusals_name_the_field(tmp_path):
    _phi3(tmp_path / "ok")
    _assert_refused(tmp_path, (("partial_rotary_factor", 0.75, "partial_rotary_factor"),
                               ("rope_scaling", {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]},
                                "longrope"),
                               ("hidden_act", "gelu", "hidden_act")))


# ---- OLMo 2: QK-norm over the whole projection width, post-sublayer norms --------------------------------------


def _olmo2(folder, **kw):
    """A random OLMo 2 checkpoint in the PyTorch layout (transformers has no Flax OLMo 2)."""
    c = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=T, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    c.update(kw)
    cfg = transformers.Olmo2Config(**c)
    D, H, G, F = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    K = D // H
    r = _normal(7)
    t = {"model.embed_tokens.weight": r(V, D, sd=1.0), "model.norm.weight": 1 + r(D, sd=0.1), "lm_head.weight": r(V, D)}
    for i in range(cfg.num_hidden_layers):
        b = f"model.layers.{i}."
        t.update({b + "self_attn.q_proj.weight": r(H * K, D), b + "self_attn.k_proj.weight": r(G * K, D),
                  b + "self_attn.v_proj.weight": r(G * K, D), b + "self_attn.o_proj.weight": r(D, H * K),
                  b + "self_attn.q_norm.weight": 1 + r(H * K, sd=0.3),
                  b + "self_attn.k_norm.weight": 1 + r(G * K, sd=0.3),
                  b + "post_attention_layernorm.weight": 1 + r(D, sd=0.1),
                  b + "post_feedforward_layernorm.weight": 1 + r(D, sd=0.1),
                  b + "mlp.gate_proj.weight": r(F, D), b + "mlp.up_proj.weight": r(F, D),
                  b + "mlp.down_proj.weight": r(D, F)})
    _write_checkpoint(folder, cfg, t)


@pytest.mark.slow
def test_olmo2_matches_a_float64_numpy_reference_and_saves_back(tmp_path):
    _olmo2(tmp_path / "o")
    pre = load_pretrained(tmp_path / "o")
    blk = pre.model.blocks[0]
    assert pre.model_type == "olmo2" and blk.mixer.qk_norm and blk.post_norm
    ids = _ids()
    ref = _numpy_logits(tmp_path / "o", ids)
    assert float(np.max(np.abs(np.asarray(pre.model(jnp.asarray(ids))) - ref))) <= 1e-4
    with jax.enable_x64(True):
        pre64 = load_pretrained(tmp_path / "o", dtype="float64")
        np.testing.assert_allclose(np.asarray(pre64.model(jnp.asarray(ids))), ref, rtol=0, atol=1e-10)
        # a TV-VAR whose π is no bilinear form: A = Σ_h π^h A_h reproduces the mixer; the forms are refused
        from tvvar.core import mix_dense

        mx = pre64.model.blocks[1].mixer
        u = jax.random.normal(jax.random.key(0), (1, 12, 32), jnp.float64)
        np.testing.assert_allclose(np.asarray(mix_dense(mx.coefficients(u), u)), np.asarray(mx(u)), rtol=0,
                                   atol=1e-10)
        for form in (lambda: mx.relative_bilinear_forms(4), lambda: mx.affine_relative_forms(4), mx.to_bilinear):
            with pytest.raises(ValueError, match="qk_norm"):
                form()
    out = np.asarray(generate(pre.model, jnp.asarray(ids[:1, :8]), 8, temperature=0.0))  # the cached path
    for s in range(8, 16):
        assert out[0, s] == int(np.argmax(np.asarray(pre.model(jnp.asarray(out[:, :s])))[0, -1]))
    save_pretrained(pre, tmp_path / "again")
    saved, src = load_file(str(tmp_path / "again" / "model.safetensors")), load_file(str(tmp_path / "o" /
                                                                                         "model.safetensors"))
    assert sorted(saved) == sorted(src) and all(np.array_equal(saved[k], src[k]) for k in src)


# ---- GPT-NeoX / Pythia: parallel residual, partial rotary, fused per-head qkv, LayerNorm and GELU with biases ----


def _neox(folder, **kw):
    """A random GPT-NeoX checkpoint in the PyTorch layout (transformers has no Flax GPT-NeoX), with the causal-mask
    and rotary buffers older exports carry."""
    c = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=T, rotary_pct=0.5, rotary_emb_base=100, hidden_act="gelu")
    c.update(kw)
    cfg = transformers.GPTNeoXConfig(**c)
    D, F = cfg.hidden_size, cfg.intermediate_size
    r = _normal(8)
    g = "gpt_neox."
    t = {g + "embed_in.weight": r(V, D, sd=1.0), g + "final_layer_norm.weight": 1 + r(D, sd=0.1),
         g + "final_layer_norm.bias": r(D, sd=0.1), "embed_out.weight": r(V, D)}
    for i in range(cfg.num_hidden_layers):
        b = f"{g}layers.{i}."
        t.update({b + "attention.query_key_value.weight": r(3 * D, D), b + "attention.query_key_value.bias": r(3 * D),
                  b + "attention.dense.weight": r(D, D), b + "attention.dense.bias": r(D),
                  b + "input_layernorm.weight": 1 + r(D, sd=0.1), b + "input_layernorm.bias": r(D, sd=0.1),
                  b + "post_attention_layernorm.weight": 1 + r(D, sd=0.1),
                  b + "post_attention_layernorm.bias": r(D, sd=0.1),
                  b + "mlp.dense_h_to_4h.weight": r(F, D), b + "mlp.dense_h_to_4h.bias": r(F),
                  b + "mlp.dense_4h_to_h.weight": r(D, F), b + "mlp.dense_4h_to_h.bias": r(D),
                  b + "attention.bias": np.tril(np.ones((1, 1, T, T), bool)).astype(np.float32),
                  b + "attention.rotary_emb.inv_freq": r(4)})
    _write_checkpoint(folder, cfg, t)


def _neox_numpy_logits(folder, ids):
    """GPT-NeoX's forward from its equations in float64 NumPy: x + attn(LN₁ x) + mlp(LN₂ x) per layer; the fused
    projection's output viewed as [H, 3K] per head and split [q | k | v]; rotary on the first r = rotary_pct·K
    channels (rotate_half within them), the rest unrotated; exact (erf) GELU; logits = LN_f(x) W_outᵀ."""
    from scipy.special import erf

    c = json.loads((folder / "config.json").read_text())
    W = {k: np.asarray(v, np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()}
    D, H = c["hidden_size"], c["num_attention_heads"]
    K = D // H
    r = int(K * c["rotary_pct"])
    eps = c["layer_norm_eps"]

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * W[p + ".weight"] + W[p + ".bias"]

    B, n = ids.shape
    ang = np.arange(n)[:, None] * (1.0 / c["rotary_emb_base"] ** (np.arange(0, r, 2) / r))[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(z):
        zr, zp = z[..., :r], z[..., r:]
        half = np.concatenate([-zr[..., r // 2:], zr[..., :r // 2]], axis=-1)
        return np.concatenate([zr * cos[None, :, None] + half * sin[None, :, None], zp], axis=-1)

    g = "gpt_neox."
    x = W[g + "embed_in.weight"][ids]
    causal = np.tril(np.ones((n, n), bool))
    for i in range(c["num_hidden_layers"]):
        p = f"{g}layers.{i}."
        h = ln(x, p + "input_layernorm")
        qkv = (h @ W[p + "attention.query_key_value.weight"].T + W[p + "attention.query_key_value.bias"])
        q, k, v = np.split(qkv.reshape(B, n, H, 3 * K), 3, axis=-1)
        q, k = rope(q), rope(k)
        s = np.where(causal[None, None], np.einsum("bihk,bjhk->bhij", q, k) / np.sqrt(K), -np.inf)
        pi = np.exp(s - s.max(-1, keepdims=True))
        pi /= pi.sum(-1, keepdims=True)
        attn = np.einsum("bhij,bjhk->bihk", pi, v).reshape(B, n, D) @ W[p + "attention.dense.weight"].T
        attn = attn + W[p + "attention.dense.bias"]
        m = ln(x, p + "post_attention_layernorm") @ W[p + "mlp.dense_h_to_4h.weight"].T
        m = m + W[p + "mlp.dense_h_to_4h.bias"]
        m = 0.5 * m * (1 + erf(m / np.sqrt(2)))
        x = x + attn + m @ W[p + "mlp.dense_4h_to_h.weight"].T + W[p + "mlp.dense_4h_to_h.bias"]
    return ln(x, g + "final_layer_norm") @ W["embed_out.weight"].T


@pytest.mark.slow
def test_gpt_neox_matches_a_float64_numpy_reference_and_saves_back(tmp_path):
    _neox(tmp_path / "n")
    pre = load_pretrained(tmp_path / "n")
    blk = pre.model.blocks[0]
    assert pre.model_type == "gpt_neox" and blk.parallel and blk.mixer.rotary_dim == 4 and not blk.psi.approximate
    ids = _ids()
    ref = _neox_numpy_logits(tmp_path / "n", ids)
    assert float(np.max(np.abs(np.asarray(pre.model(jnp.asarray(ids))) - ref))) <= 1e-4
    with jax.enable_x64(True):
        pre64 = load_pretrained(tmp_path / "n", dtype="float64")
        np.testing.assert_allclose(np.asarray(pre64.model(jnp.asarray(ids))), ref, rtol=0, atol=1e-10)
        # partial rotary keeps Theorem 5's relative form: R(i)ᵀR(j) = R(j − i) with the unrotated channels fixed
        mx = pre64.model.blocks[0].mixer
        R = np.asarray(mx.rotation(jnp.arange(6)))
        np.testing.assert_allclose(R[2].T @ R[5], R[3], atol=1e-12)
        np.testing.assert_array_equal(R[5][4:, 4:], np.eye(4))
    out = np.asarray(generate(pre.model, jnp.asarray(ids[:1, :8]), 8, temperature=0.0))  # the cached path
    for s in range(8, 16):
        assert out[0, s] == int(np.argmax(np.asarray(pre.model(jnp.asarray(out[:, :s])))[0, -1]))
    for layout in ("pytorch", "flax"):  # the v bias is written as 0 with the output bias = the intercept
        save_pretrained(pre, tmp_path / layout, layout=layout)
        again = load_pretrained(tmp_path / layout)
        _assert_same_params(pre.model, again.model)
    for field, value, match in (("tie_word_embeddings", True, "tie_word_embeddings"),
                                ("hidden_act", "relu", "hidden_act"), ("rotary_pct", 0.1, "rotary_pct")):
        bad = tmp_path / field
        shutil.copytree(tmp_path / "n", bad)
        cfg = json.loads((bad / "config.json").read_text())
        if field == "rotary_pct":
            cfg.pop("partial_rotary_factor", None)
        (bad / "config.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(ValueError, match=match):
            load_pretrained(bad)
