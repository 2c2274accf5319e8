"""Mamba-2 checkpoints (state-spaces / mamba_ssm layout) as tvvar models, against an independent float64 numpy
implementation of the Mamba-2 block written here from the paper's equations (Dao & Gu 2024, Section 7 and
``mamba_ssm.modules.mamba2.Mamba2``): the in-projection split [z, x, B, C, Δ], a depthwise causal conv (PyTorch
Conv1d with padding K − 1, truncated) with bias, SiLU, Δ = softplus(Δ̃ + dt_bias), A = −exp(A_log), the
sequential recurrence h_t = e^{Δ_t A} h_{t−1} + Δ_t x_t B_tᵀ, y_t = h_t C_t + D x_t per head with grouped B/C,
the gated RMSNorm per group, out_proj; layers x + mixer(RMSNorm x), final RMSNorm, head. Nothing of tvvar's
JAX code is used by the reference.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from tvvar.core import mix_dense
from tvvar.generate import generate
from tvvar.pretrained import load_pretrained, save_pretrained

T = 64


# ---- the checkpoint, written with numpy in the PyTorch layout -------------------------------------------


def _config(**kw):
    ssm = {"layer": "Mamba2", "d_state": 8, "d_conv": 4, "expand": 2, "headdim": 8, "ngroups": 2}
    ssm.update(kw.pop("ssm", {}))
    c = {"d_model": 16, "n_layer": 2, "vocab_size": 61, "pad_vocab_size_multiple": 8, "tie_embeddings": True,
         "d_intermediate": 0, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "ssm_cfg": ssm}
    c.update(kw)
    return c


def _fields(c):
    f = {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "rmsnorm": True,
         "norm_before_gate": False, "conv_bias": True, "tie_embeddings": True, "pad_vocab_size_multiple": 8}
    f.update({k: v for k, v in c.items() if k != "ssm_cfg"})
    f.update(c.get("ssm_cfg", {}))
    m = f["pad_vocab_size_multiple"]
    f["V"] = f["vocab_size"] + (m - f["vocab_size"] % m) % m
    f["E"] = f["expand"] * f["d_model"]
    f["H"] = f["E"] // f["headdim"]
    return f


def _tensors(c, seed=0, embedding_key="backbone.embedding.weight"):
    f = _fields(c)
    rng = np.random.default_rng(seed)
    D, E, H, N, G, K, V = f["d_model"], f["E"], f["H"], f["d_state"], f["ngroups"], f["d_conv"], f["V"]
    C = E + 2 * G * N
    n = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    t = {embedding_key: n(V, D), "backbone.norm_f.weight": 1 + 0.2 * n(D)}
    for i in range(f["n_layer"]):
        b = f"backbone.layers.{i}."
        t[b + "norm.weight"] = 1 + 0.2 * n(D)
        t[b + "mixer.in_proj.weight"] = n(2 * E + 2 * G * N + H, D) / np.sqrt(D)
        t[b + "mixer.conv1d.weight"] = n(C, 1, K) / np.sqrt(K)
        if f["conv_bias"]:
            t[b + "mixer.conv1d.bias"] = 0.5 * n(C)
        t[b + "mixer.A_log"] = np.log(rng.uniform(1, 16, H)).astype(np.float32)
        dt = np.exp(rng.uniform(np.log(0.01), np.log(0.5), H))
        t[b + "mixer.dt_bias"] = (dt + np.log(-np.expm1(-dt))).astype(np.float32)
        t[b + "mixer.D"] = 1 + 0.3 * n(H)
        if f["rmsnorm"]:
            t[b + "mixer.norm.weight"] = 1 + 0.2 * n(E)
        t[b + "mixer.out_proj.weight"] = n(D, E) / np.sqrt(E)
    if not f["tie_embeddings"]:
        t["lm_head.weight"] = n(V, D)
    return {k: v.astype(np.float32) for k, v in t.items()}


def _write(folder, c, t):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(c))
    save_file(t, str(folder / "model.safetensors"))
    return folder


# ---- the independent reference -----------------------------------------------------------------------


def _silu(a):
    return a / (1 + np.exp(-a))


def _rms(a, w, eps, groups=1):
    g = a.reshape(a.shape[:-1] + (groups, -1))
    g = g / np.sqrt(np.mean(g * g, axis=-1, keepdims=True) + eps)
    return g.reshape(a.shape) * w


def reference_logits(c, t, ids, norm_groups=None, mixer_eps=1e-5):
    """float64 Mamba-2 language model on one sequence ``ids`` [T] → logits [T, V], sequential recurrence; the gated
    norm per group (mamba_ssm) or over ``norm_groups`` groups (transformers: 1, all channels) with ``mixer_eps``."""
    f = _fields(c)
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    E, H, P, N, G, K = f["E"], f["H"], f["headdim"], f["d_state"], f["ngroups"], f["d_conv"]
    eps = c.get("norm_epsilon", 1e-5)
    emb = t.get("backbone.embedding.weight", t.get("backbone.embeddings.weight"))
    x = emb[np.asarray(ids)]
    L = len(ids)
    for i in range(f["n_layer"]):
        b = f"backbone.layers.{i}.mixer."
        u = _rms(x, t[f"backbone.layers.{i}.norm.weight"], eps)
        zxbcdt = u @ t[b + "in_proj.weight"].T
        z, xbc, dt = zxbcdt[:, :E], zxbcdt[:, E:2 * E + 2 * G * N], zxbcdt[:, 2 * E + 2 * G * N:]
        w = t[b + "conv1d.weight"][:, 0, :]  # [C, K]
        pad = np.concatenate([np.zeros((K - 1, xbc.shape[1])), xbc])
        conv = np.stack([np.sum(w.T * pad[s:s + K], axis=0) for s in range(L)])
        if f["conv_bias"]:
            conv = conv + t[b + "conv1d.bias"]
        xbc = _silu(conv)
        xs = xbc[:, :E].reshape(L, H, P)
        Bm = xbc[:, E:E + G * N].reshape(L, G, N)
        Cm = xbc[:, E + G * N:].reshape(L, G, N)
        dt = np.log1p(np.exp(dt + t[b + "dt_bias"]))  # softplus
        A = -np.exp(t[b + "A_log"])
        state = np.zeros((H, P, N))
        y = np.zeros((L, H, P))
        for s in range(L):
            for h in range(H):
                g = h // (H // G)
                state[h] = np.exp(dt[s, h] * A[h]) * state[h] + dt[s, h] * np.outer(xs[s, h], Bm[s, g])
                y[s, h] = state[h] @ Cm[s, g] + t[b + "D"][h] * xs[s, h]
        y = y.reshape(L, E)
        if f["rmsnorm"]:
            Gn = G if norm_groups is None else norm_groups
            if f["norm_before_gate"]:
                y = _rms(y, t[b + "norm.weight"], mixer_eps, Gn) * _silu(z)
            else:
                y = _rms(y * _silu(z), t[b + "norm.weight"], mixer_eps, Gn)
        else:
            y = y * _silu(z)
        x = x + y @ t[b + "out_proj.weight"].T
    x = _rms(x, t["backbone.norm_f.weight"], eps)
    head = emb if f["tie_embeddings"] else t["lm_head.weight"]
    return x @ head.T


def _ids(V, B=2, L=T, seed=3):
    return np.random.default_rng(seed).integers(0, V, (B, L)).astype(np.int32)


VARIANTS = {
    "groups2": {},
    "before_gate": {"ssm": {"norm_before_gate": True}},
    "no_rmsnorm_untied": {"ssm": {"rmsnorm": False, "ngroups": 1}, "tie_embeddings": False},
    "no_conv_bias": {"ssm": {"conv_bias": False}},
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def ckpt(request, tmp_path_factory):
    c = _config(**json.loads(json.dumps(VARIANTS[request.param])))
    t = _tensors(c)
    return _write(tmp_path_factory.mktemp(request.param), c, t), c, t


@pytest.mark.slow
def test_logits_match_the_numpy_reference_float32(ckpt):
    folder, c, t = ckpt
    pre = load_pretrained(folder)
    assert pre.model_type == "mamba2" and pre.model.cfg.vocab_size == 64  # 61 padded to a multiple of 8
    ids = _ids(61)
    got = np.asarray(pre.model(jnp.asarray(ids)))
    want = np.stack([reference_logits(c, t, s) for s in ids])
    err = float(np.max(np.abs(got - want)))
    assert err <= 1e-4, f"max |Δlogit| = {err:.3e} (logit scale {np.abs(want).max():.2f})"


@pytest.mark.slow
def test_logits_match_the_numpy_reference_float64(ckpt):
    folder, c, t = ckpt
    with jax.enable_x64(True):
        pre = load_pretrained(folder, dtype="float64")
        ids = _ids(61, B=1, L=32)
        got = np.asarray(pre.model(jnp.asarray(ids)))
    want = reference_logits(c, t, ids[0])[None]
    err = float(np.max(np.abs(got - want)))
    assert err <= 1e-10, f"max |Δlogit| = {err:.3e}"


def test_greedy_generation_is_identical(ckpt):
    folder, c, t = ckpt
    pre = load_pretrained(folder)
    prompt = _ids(61, B=1, L=8, seed=5)
    got = np.asarray(generate(pre.model, jnp.asarray(prompt), 12, temperature=0.0))[0]
    seq = list(prompt[0])
    for _ in range(12):
        seq.append(int(np.argmax(reference_logits(c, t, np.asarray(seq))[-1])))
    assert got.tolist() == seq


def test_save_reload_is_bit_exact(ckpt, tmp_path):
    folder, c, t = ckpt
    pre = load_pretrained(folder)
    save_pretrained(pre, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == c
    back = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert sorted(back) == sorted(t)
    for k in t:  # no folding for Mamba-2: the very bytes of the source file come back
        assert back[k].dtype == t[k].dtype and np.array_equal(back[k], t[k]), k
    again = load_pretrained(tmp_path / "again")
    a, b = nnx.state(pre.model, nnx.Param), nnx.state(again.model, nnx.Param)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_transformers_embedding_name_and_flat_fields_load(tmp_path):
    """``model_type: "mamba2"`` with the Mamba2 fields flat and transformers' ``backbone.embeddings`` key."""
    c = {"model_type": "mamba2", "d_model": 16, "n_layer": 1, "vocab_size": 40, "pad_vocab_size_multiple": 1,
         "d_state": 4, "headdim": 8, "expand": 2, "ngroups": 1}
    t = _tensors(c, seed=1, embedding_key="backbone.embeddings.weight")
    pre = load_pretrained(_write(tmp_path / "m", c, t))
    ids = _ids(40, B=1, L=16)
    got = np.asarray(pre.model(jnp.asarray(ids)))
    assert np.max(np.abs(got - reference_logits(c, t, ids[0])[None])) <= 1e-4
    save_pretrained(pre, tmp_path / "m2")
    assert "backbone.embeddings.weight" in load_file(str(tmp_path / "m2" / "model.safetensors"))


@pytest.mark.slow
def test_loaded_mixer_keeps_the_tvvar_law_and_its_affine_split(ckpt):
    """coefficients reproduce the mixer exactly (float64, 1e-10); linear part + intercept reproduce it too, and the
    intercept is the conv's x-channel bias: nonzero with it, exactly zero without it."""
    folder, c, _ = ckpt
    with jax.enable_x64(True):
        pre = load_pretrained(folder, dtype="float64")
        blk = pre.model.blocks[1]
        x = pre.model.embed_tokens(jnp.asarray(_ids(61, B=2, L=10)))
        u = blk.norm1(pre.model.blocks[0](x))
        mx = blk.mixer
        h = np.asarray(mx(u))
        law = np.asarray(mix_dense(mx.coefficients(u), u))
        r = np.asarray(mx.intercept(u))
        lin = np.asarray(mix_dense(mx.linear_coefficients(u), u))
    scale = np.abs(h).max()
    assert np.max(np.abs(law - h)) <= 1e-10 * scale
    assert np.max(np.abs(lin + r - h)) <= 1e-10 * scale
    if _fields(c)["conv_bias"]:
        assert np.abs(r).max() > 1e-3 * scale
    else:
        assert np.abs(r).max() == 0.0


def test_block_without_the_norm_or_with_it_differs(ckpt):
    """The reference agreement can fail: dropping the gated RMSNorm's weight (w = 1) changes the logits."""
    folder, c, t = ckpt
    if not _fields(c)["rmsnorm"]:
        pytest.skip("no gated RMSNorm in this variant")
    t2 = dict(t)
    t2["backbone.layers.0.mixer.norm.weight"] = np.ones_like(t["backbone.layers.0.mixer.norm.weight"])
    ids = _ids(61, B=1, L=16)
    pre = load_pretrained(folder)
    got = np.asarray(pre.model(jnp.asarray(ids)))[0]
    assert np.max(np.abs(got - reference_logits(c, t2, ids[0]))) > 1e-3


@pytest.mark.parametrize("change,field", [
    ({"d_intermediate": 32}, "d_intermediate"),
    ({"attn_layer_idx": [1]}, "attn_layer_idx"),
    ({"rms_norm": False}, "rms_norm"),
    ({"ssm": {"D_has_hdim": True}}, "D_has_hdim"),
    ({"ssm": {"bias": True}}, "bias"),
    ({"ssm": {"dt_limit": [0.001, 0.1]}}, "dt_limit"),
    ({"ssm": {"d_ssm": 16}}, "d_ssm"),
    ({"ssm": {"layer": "Mamba1"}}, "layer"),
    ({"hidden_size": 16}, "hidden_size"),
    ({"some_new_field": 1}, "some_new_field"),
])
def test_unimplemented_config_fields_are_refused_by_name(tmp_path, change, field):
    c = _config(**change)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**c, "model_type": "mamba2"}))
    save_file({"x": np.zeros(1, np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=f"'{field}'"):
        load_pretrained(folder)


def test_bad_shapes_and_missing_tensors_name_the_key(tmp_path):
    c = _config()
    t = _tensors(c)
    bad = dict(t)
    bad["backbone.layers.1.mixer.A_log"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"backbone\.layers\.1\.mixer\.A_log.*model\.safetensors"):
        load_pretrained(_write(tmp_path / "shape", c, bad))
    missing = {k: v for k, v in t.items() if k != "backbone.layers.0.mixer.dt_bias"}
    with pytest.raises(KeyError, match=r"backbone\.layers\.0\.mixer\.dt_bias"):
        load_pretrained(_write(tmp_path / "missing", c, missing))
    extra = {**t, "backbone.layers.0.mixer.out_proj.bias": np.zeros(16, np.float32)}
    with pytest.raises(ValueError, match="does not use"):
        load_pretrained(_write(tmp_path / "extra", c, extra))


def test_transformers_mamba2_config_names_load_with_its_gated_norm_over_all_channels(tmp_path):
    """transformers' Mamba2Config (hidden_size, n_groups = 2, state_size, …): its gated RMSNorm normalises over all
    E channels with layer_norm_epsilon, not per group as mamba_ssm — the logits equal the float64 reference with
    that norm (1e-10 in float64) and differ from the per-group one; a num_heads that is not E / head_dim is refused."""
    c = _config(tie_embeddings=False, pad_vocab_size_multiple=1, norm_epsilon=1e-3)
    t = _tensors(c, seed=4, embedding_key="backbone.embeddings.weight")
    f = _fields(c)
    hf = {"model_type": "mamba2", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 61, "state_size": 8,
          "conv_kernel": 4, "expand": 2, "head_dim": 8, "num_heads": f["H"], "n_groups": 2, "use_bias": False,
          "use_conv_bias": True, "hidden_act": "silu", "layer_norm_epsilon": 1e-3, "rms_norm": True,
          "residual_in_fp32": True, "time_step_limit": [0.0, float("inf")], "time_step_rank": 2, "chunk_size": 256,
          "tie_word_embeddings": False}
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf))
    ids = _ids(61, B=1, L=12)
    want = reference_logits(c, t, ids[0], norm_groups=1, mixer_eps=1e-3)
    with jax.enable_x64(True):
        got = np.asarray(load_pretrained(folder, dtype="float64").model(jnp.asarray(ids)))[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert np.max(np.abs(got - reference_logits(c, t, ids[0], mixer_eps=1e-3))) > 1e-4  # per group: another model
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(t, str(bad / "model.safetensors"), metadata={"format": "pt"})
    (bad / "config.json").write_text(json.dumps({**hf, "num_heads": f["H"] + 1}))
    with pytest.raises(ValueError, match="num_heads"):
        load_pretrained(bad)
