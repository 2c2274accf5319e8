"""Gemma 2 checkpoints (tvvar.pretrained, model_type "gemma2") against a float64 NumPy Gemma 2 written from the
equations of transformers' PyTorch ``modeling_gemma2`` (there is no Flax Gemma 2 to compare with):

    x₀ = √D · E[ids]
    h  = x + n_post_attn( attn(n_in x) ),   x' = h + n_post_ff( W_down(gelu_tanh(W_gate n_pre_ff h) ⊙ W_up n_pre_ff h) )
    n(x) = x / √(mean(x²) + ε) · (1 + w)
    attn: rotary q, k (rotate_half), grouped-query heads, s = q·k · query_pre_attn_scalar^(−1/2),
          s ↦ c·tanh(s/c) (attn_logit_softcapping), causal mask banded to t − w < j ≤ t on "sliding_attention" layers
    logits = c_f·tanh(n_f(x) Eᵀ / c_f) (final_logit_softcapping, tied head)

on random weights with the PyTorch key names; head_dim ≠ hidden/heads, GQA, sliding_window < T, both caps set.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from tvvar.core import mix_dense
from tvvar.decompositions.attention import Attention
from tvvar.generate import generate
from tvvar.pretrained import load_pretrained, save_pretrained

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

V, D, H, G, K, F, L = 100, 32, 4, 2, 16, 48, 4
WINDOW, T = 5, 16
CONFIG = dict(model_type="gemma2", architectures=["Gemma2ForCausalLM"], vocab_size=V, hidden_size=D,
              intermediate_size=F, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=G, head_dim=K,
              hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh", max_position_embeddings=64,
              initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, pad_token_id=0, eos_token_id=1,
              bos_token_id=2, tie_word_embeddings=True, rope_theta=10000.0, attention_bias=False,
              attention_dropout=0.0, query_pre_attn_scalar=24, sliding_window=WINDOW,
              layer_types=["sliding_attention", "full_attention"] * (L // 2), final_logit_softcapping=6.0,
              attn_logit_softcapping=3.0, transformers_version="4.57.6", cache_implementation="hybrid")


def _write(folder, seed=0, **kw):
    """A random Gemma 2 checkpoint in the PyTorch layout: config.json (CONFIG updated by kw; a value None deletes
    the field when it is ``layer_types``) and model.safetensors."""
    rng = np.random.default_rng(seed)
    r = lambda *s, sd=0.3: (sd * rng.normal(size=s)).astype(np.float32)  # noqa: E731
    t = {"model.embed_tokens.weight": r(V, D, sd=1.0), "model.norm.weight": r(D, sd=0.3)}
    for i in range(L):
        b = f"model.layers.{i}."
        t.update({b + "self_attn.q_proj.weight": r(H * K, D), b + "self_attn.k_proj.weight": r(G * K, D),
                  b + "self_attn.v_proj.weight": r(G * K, D), b + "self_attn.o_proj.weight": r(D, H * K),
                  b + "mlp.gate_proj.weight": r(F, D), b + "mlp.up_proj.weight": r(F, D),
                  b + "mlp.down_proj.weight": r(D, F)})
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):
            t[b + n + ".weight"] = r(D, sd=0.3)
    c = {**CONFIG, **kw}
    if "layer_types" in kw and kw["layer_types"] is None:
        del c["layer_types"]
    folder.mkdir(parents=True, exist_ok=True)
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(c, indent=2))
    return folder


def _reference(folder, ids):
    """Gemma 2's logits [B, n, V] in float64 NumPy, from the equations in the module docstring."""
    c = json.loads((folder / "config.json").read_text())
    W = {k: np.asarray(v, np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()}
    d, h, g, k = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    eps, theta = c["rms_norm_eps"], c["rope_theta"]
    types = c.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention"
                                     for i in range(c["num_hidden_layers"])]
    acap, fcap = c["attn_logit_softcapping"], c["final_logit_softcapping"]
    ids = np.asarray(ids)
    B, n = ids.shape

    def norm(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 + w)

    def gelu_tanh(z):
        return 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z ** 3)))

    inv = 1.0 / theta ** (np.arange(0, k, 2) / k)
    ang = np.arange(n)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(z):  # [B, n, heads, k]
        rot = np.concatenate([-z[..., k // 2:], z[..., :k // 2]], axis=-1)
        return z * cos[None, :, None] + rot * sin[None, :, None]

    def lin(x, key):
        return x @ W[key].T

    rows, cols = np.arange(n)[:, None], np.arange(n)[None, :]
    E = W["model.embed_tokens.weight"]
    x = E[ids] * np.sqrt(d)
    for i, kind in enumerate(types):
        p = f"model.layers.{i}."
        u = norm(x, W[p + "input_layernorm.weight"])
        q = rope(lin(u, p + "self_attn.q_proj.weight").reshape(B, n, h, k))
        kk = rope(lin(u, p + "self_attn.k_proj.weight").reshape(B, n, g, k))
        v = lin(u, p + "self_attn.v_proj.weight").reshape(B, n, g, k)
        kk, v = np.repeat(kk, h // g, axis=2), np.repeat(v, h // g, axis=2)
        s = np.einsum("bihk,bjhk->bhij", q, kk) * c["query_pre_attn_scalar"] ** -0.5
        if acap is not None:
            s = acap * np.tanh(s / acap)
        allowed = cols <= rows
        if kind == "sliding_attention":
            allowed = allowed & (cols > rows - c["sliding_window"])
        s = np.where(allowed[None, None], s, -np.inf)
        pi = np.exp(s - s.max(-1, keepdims=True))
        pi /= pi.sum(-1, keepdims=True)
        a = lin(np.einsum("bhij,bjhk->bihk", pi, v).reshape(B, n, h * k), p + "self_attn.o_proj.weight")
        x = x + norm(a, W[p + "post_attention_layernorm.weight"])
        m = norm(x, W[p + "pre_feedforward_layernorm.weight"])
        mlp = lin(gelu_tanh(lin(m, p + "mlp.gate_proj.weight")) * lin(m, p + "mlp.up_proj.weight"),
                  p + "mlp.down_proj.weight")
        x = x + norm(mlp, W[p + "post_feedforward_layernorm.weight"])
    logits = norm(x, W["model.norm.weight"]) @ E.T
    return logits if fcap is None else fcap * np.tanh(logits / fcap)


#: the model's forward as one compiled program (op-by-op dispatch compiles each primitive: slower on few cores)
_forward = nnx.jit(lambda m, x: m(x))


def _ids(B=2, n=T, seed=1):
    return np.random.default_rng(seed).integers(0, V, size=(B, n)).astype(np.int32)


@pytest.fixture(scope="module")
def gemma2_dir(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("gemma2"))


def test_gemma2_logits_match_the_float64_reference(gemma2_dir):
    ids = _ids()
    ref = _reference(gemma2_dir, ids)
    with jax.enable_x64(True):
        pre64 = load_pretrained(gemma2_dir, dtype="float64")
        out64 = np.asarray(_forward(pre64.model, jnp.asarray(ids)))
    np.testing.assert_allclose(out64, ref, rtol=0, atol=1e-10)
    pre = load_pretrained(gemma2_dir)
    out32 = np.asarray(_forward(pre.model, jnp.asarray(ids)))
    assert float(np.max(np.abs(out32 - ref))) <= 1e-4
    # the structure loaded: four norms a layer, the cap and scale, the banded layers
    cfg = pre.model.cfg
    assert pre.model_type == "gemma2" and cfg.norm_position == "sandwich" and cfg.logit_softcap == 6.0
    assert cfg.embed_scale == pytest.approx(np.sqrt(D)) and cfg.tied
    for i, blk in enumerate(pre.model.blocks):
        mx = blk.mixer
        assert mx.head_dim == K != D // H and mx.num_kv_heads == G and mx.logit_softcap == 3.0
        assert mx.scale == 24 ** -0.5 and mx.window == (WINDOW if i % 2 == 0 else None)
    # the caps and the band matter at this size: the logits move by far more than the tolerance without them
    assert np.max(np.abs(ref)) > 3.0  # logits reach the non-linear part of 6·tanh(z/6)


def test_gemma2_greedy_generation_is_the_reference_argmax_loop(gemma2_dir):
    prompt, new = _ids(B=1, n=6, seed=2), 14  # 20 tokens: the cached path crosses the window of 5
    seq = prompt.copy()
    for _ in range(new):
        nxt = int(np.argmax(_reference(gemma2_dir, seq)[0, -1]))
        seq = np.concatenate([seq, [[nxt]]], axis=1).astype(np.int32)
    pre = load_pretrained(gemma2_dir)  # float32, the KV-cached decoding path (capped scores and logits, the band)
    np.testing.assert_array_equal(np.asarray(generate(pre.model, jnp.asarray(prompt), new, temperature=0.0)), seq)


def test_gemma2_save_reload_bit_exact(gemma2_dir, tmp_path):
    pre = load_pretrained(gemma2_dir)
    save_pretrained(pre, tmp_path / "again")
    saved = load_file(str(tmp_path / "again" / "model.safetensors"))
    src = load_file(str(gemma2_dir / "model.safetensors"))
    assert sorted(saved) == sorted(src) and all(np.array_equal(saved[k], src[k]) for k in src)
    save_pretrained(pre, tmp_path / "flax", layout="flax")
    for folder in ("again", "flax"):
        again = load_pretrained(tmp_path / folder)
        assert again.layout == ("flax" if folder == "flax" else "pytorch")
        for (pa, va), (pb, vb) in zip(*(nnx.to_flat_state(nnx.state(m, nnx.Param)) for m in (pre.model, again.model)),
                                      strict=True):
            assert pa == pb
            np.testing.assert_array_equal(np.asarray(va.get_value()), np.asarray(vb.get_value()))
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == pre.hf_config


def test_gemma2_caps_off_and_default_layer_types(tmp_path):
    ids = _ids(seed=3)
    # both soft-caps null; layer_types absent: Gemma2Config's rule, the even layers slide
    d = _write(tmp_path / "nocap", attn_logit_softcapping=None, final_logit_softcapping=None, layer_types=None)
    pre = load_pretrained(d)
    assert pre.model.cfg.logit_softcap is None
    assert [b.mixer.window for b in pre.model.blocks] == [WINDOW, None, WINDOW, None]
    assert all(b.mixer.logit_softcap is None for b in pre.model.blocks)
    ref = _reference(d, ids)
    with jax.enable_x64(True):
        out64 = np.asarray(_forward(load_pretrained(d, dtype="float64").model, jnp.asarray(ids)))
    np.testing.assert_allclose(out64, ref, rtol=0, atol=1e-10)
    capped = _reference(_write(tmp_path / "cap"), ids)
    assert np.max(np.abs(capped - ref)) > 0.1  # same weights (same seed): the caps change the function
    # another layer pattern, and no window anywhere (sliding_window null is allowed then)
    d2 = _write(tmp_path / "pattern", layer_types=["full_attention", "sliding_attention", "sliding_attention",
                                                   "full_attention"])
    assert [b.mixer.window for b in load_pretrained(d2).model.blocks] == [None, WINDOW, WINDOW, None]
    d3 = _write(tmp_path / "full", sliding_window=None, layer_types=["full_attention"] * L)
    assert all(b.mixer.window is None for b in load_pretrained(d3).model.blocks)


@pytest.mark.slow
def test_gemma2_soft_capped_pi_is_no_bilinear_form(gemma2_dir):
    with jax.enable_x64(True):
        pre = load_pretrained(gemma2_dir, dtype="float64")
        mx = pre.model.blocks[0].mixer  # a sliding layer: capped and banded
        u = jax.random.normal(jax.random.key(0), (1, 12, D), jnp.float64)
        # A[i, j] = Σ_h π^h[i, j] A_h still reproduces the mixer, exactly 0 outside the band
        A, mixed, direct, pi = nnx.jit(lambda m, u: (lambda A: (A, mix_dense(A, u), m(u), m.pi(u)))(m.coefficients(u)))(
            mx, u)
        np.testing.assert_allclose(np.asarray(mixed), np.asarray(direct), rtol=0, atol=1e-10)
        band = np.asarray(mx.support(12))
        assert not band[11, 11 - WINDOW] and band[11, 12 - WINDOW]
        assert np.all(np.asarray(A)[0][~band] == 0)
        for form in (lambda: mx.relative_bilinear_forms(4), lambda: mx.affine_relative_forms(4), mx.bilinear_forms,
                     mx.to_bilinear):
            with pytest.raises(ValueError, match="logit_softcap"):
                form()
        # the same weights uncapped: π is the softmax of the relative bilinear form; the capped π differs
        plain = Attention.from_weights(mx.wq[...], mx.wk[...], mx.wv[...], mx.wo[...], rotary=True,
                                       window=WINDOW, score_scale=mx.score_scale, implementation="einsum")
        Bd = np.asarray(plain.relative_bilinear_forms(12))  # [H, Δ, D, D]
        un = np.asarray(u[0])
        i, j = np.arange(12)[:, None], np.arange(12)[None, :]
        s = np.einsum("id,hijde,je->hij", un, Bd[:, np.clip(i - j, 0, 11)], un)
        s = np.where(band[None], s, -np.inf)
        bil = np.exp(s - s.max(-1, keepdims=True))
        bil /= bil.sum(-1, keepdims=True)
        np.testing.assert_allclose(np.asarray(plain.pi(u))[0], bil, rtol=0, atol=1e-10)
        assert np.max(np.abs(np.asarray(pi)[0] - bil)) > 1e-2
    with pytest.raises(ValueError, match="logit_softcap"):
        Attention(8, rngs=nnx.Rngs(0), num_heads=2, logit_softcap=5.0, implementation="blockwise")


def test_gemma2_refusals_name_the_field(tmp_path):
    ok = _write(tmp_path / "ok")
    good = json.loads((ok / "config.json").read_text())
    cases = [("hidden_activation", "gelu", "hidden_activation"), ("attention_bias", True, "attention_bias"),
             ("tie_word_embeddings", False, "tie_word_embeddings"),
             ("query_pre_attn_scalar", 0, "query_pre_attn_scalar"),
             ("attn_logit_softcapping", -1.0, "attn_logit_softcapping"),
             ("final_logit_softcapping", "30", "final_logit_softcapping"),
             ("layer_types", ["sliding_attention"] * (L - 1), "layer_types"),
             ("layer_types", ["chunked_attention"] * L, "layer_types"),
             ("sliding_window", None, "sliding_window"), ("sliding_window_size", 7, "sliding_window_size"),
             ("use_bidirectional_attention", True, "use_bidirectional_attention"),
             ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "yarn")]
    for n, (field, value, match) in enumerate(cases):
        bad = tmp_path / f"bad{n}"
        shutil.copytree(ok, bad)
        (bad / "config.json").write_text(json.dumps({**good, field: value}))
        with pytest.raises(ValueError, match=match):
            load_pretrained(bad)
