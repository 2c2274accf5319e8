"""Mamba-1 checkpoints — the state-spaces / mamba_ssm layout and transformers' ``MambaForCausalLM`` — as tvvar models,
against an independent float64 numpy Mamba-1 written here from the equations (Gu & Dao 2023;
``mamba_ssm.modules.mamba_simple.Mamba``, transformers' ``MambaMixer.slow_forward``): in_proj → (x, z), a depthwise
causal conv (PyTorch Conv1d with padding K − 1, truncated) with bias, SiLU, x_proj(x) → (Δ̃, B, C),
Δ = softplus(dt_proj Δ̃ + b), A = −exp(A_log) [E, N], the sequential recurrence h_t = exp(Δ_t A) ⊙ h_{t−1} +
Δ_t B_t x_t, y_t = C_t·h_t + D ⊙ x_t, y ⊙ SiLU(z) → out_proj; layers x + mixer(RMSNorm x), final RMSNorm, head.
Nothing of tvvar's JAX code is used by the reference (an explicit loop over t).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from tvvar.core import mix_dense
from tvvar.decompositions.ssm import Mamba1Block
from tvvar.generate import generate
from tvvar.pretrained import SUPPORTED_MODEL_TYPES, load_pretrained, save_pretrained
from tvvar.testing import check_decomposition

D, N, E, R, LAYERS, V = 16, 4, 32, 2, 2, 40

# ---- the two config conventions ---------------------------------------------------------------------------


def _ssm_config(**kw):
    """mamba_ssm's MambaConfig as the state-spaces checkpoints write it (no model_type; ssm_cfg without 'layer'
    means Mamba1); the table is padded to a multiple of 16: V = 48."""
    ssm = {"d_state": N, "d_conv": 4, "expand": 2, "dt_rank": R}
    ssm.update(kw.pop("ssm", {}))
    c = {"d_model": D, "n_layer": LAYERS, "vocab_size": V, "ssm_cfg": ssm, "rms_norm": True, "residual_in_fp32": True,
         "fused_add_norm": True, "pad_vocab_size_multiple": 16, "tie_embeddings": True}
    c.update(kw)
    return c


def _hf_config(**kw):
    """transformers' MambaConfig as ``MambaForCausalLM.save_pretrained`` writes it (untied here; no padding)."""
    c = {"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": D, "num_hidden_layers": LAYERS,
         "vocab_size": V, "state_size": N, "expand": 2, "intermediate_size": E, "conv_kernel": 4, "use_bias": False,
         "use_conv_bias": True, "hidden_act": "silu", "time_step_rank": R, "layer_norm_epsilon": 1e-5,
         "residual_in_fp32": True, "tie_word_embeddings": False, "time_step_scale": 1.0, "time_step_min": 0.001,
         "time_step_max": 0.1, "time_step_init_scheme": "random", "time_step_floor": 1e-4, "initializer_range": 0.1,
         "rescale_prenorm_residual": False, "use_cache": True, "use_mambapy": False, "bos_token_id": 0,
         "eos_token_id": 0, "pad_token_id": 0, "torch_dtype": "float32", "transformers_version": "4.57.6"}
    c.update(kw)
    return c


def _fields(c):
    """(V as stored, conv bias, tied, eps, embedding key, R) of either convention, read independently of tvvar."""
    if "hidden_size" in c:
        r = c.get("time_step_rank", "auto")
        return (c["vocab_size"], c.get("use_conv_bias", True), c.get("tie_word_embeddings", True),
                c.get("layer_norm_epsilon", 1e-5), "backbone.embeddings.weight", -(-D // 16) if r == "auto" else r)
    m = c.get("pad_vocab_size_multiple", 8)
    r = c["ssm_cfg"].get("dt_rank", "auto")
    return (c["vocab_size"] + (m - c["vocab_size"] % m) % m, c["ssm_cfg"].get("conv_bias", True),
            c.get("tie_embeddings", True), c.get("norm_epsilon", 1e-5), "backbone.embedding.weight",
            -(-D // 16) if r == "auto" else r)


def _tensors(c, seed=0):
    Vs, conv_bias, tied, _, emb, R = _fields(c)
    rng = np.random.default_rng(seed)
    n = lambda *s: rng.normal(size=s)  # noqa: E731
    t = {emb: n(Vs, D), "backbone.norm_f.weight": 1 + 0.2 * n(D)}
    for i in range(LAYERS):
        b = f"backbone.layers.{i}."
        t[b + "norm.weight"] = 1 + 0.2 * n(D)
        t[b + "mixer.in_proj.weight"] = n(2 * E, D) / np.sqrt(D)
        t[b + "mixer.conv1d.weight"] = n(E, 1, 4) / 2
        if conv_bias:
            t[b + "mixer.conv1d.bias"] = 0.5 * n(E)
        t[b + "mixer.x_proj.weight"] = n(R + 2 * N, E) / np.sqrt(E)
        t[b + "mixer.dt_proj.weight"] = n(E, R) / np.sqrt(R)
        dt = np.exp(rng.uniform(np.log(0.01), np.log(0.5), E))
        t[b + "mixer.dt_proj.bias"] = dt + np.log(-np.expm1(-dt))  # softplus⁻¹
        t[b + "mixer.A_log"] = np.log(rng.uniform(0.5, 8, (E, N)))  # a different decay per channel and state
        t[b + "mixer.D"] = 1 + 0.3 * n(E)
        t[b + "mixer.out_proj.weight"] = n(D, E) / np.sqrt(E)
    if not tied:
        t["lm_head.weight"] = n(Vs, D)
    return {k: v.astype(np.float32) for k, v in t.items()}


def _write(folder, c, t):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(c))
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


# ---- the independent reference ------------------------------------------------------------------------


def _silu(a):
    return a / (1 + np.exp(-a))


def _rms(a, w, eps):
    return a / np.sqrt(np.mean(a * a, axis=-1, keepdims=True) + eps) * w


def reference_logits(c, t, ids, flip_conv=False):
    """float64 Mamba-1 language model on one sequence ``ids`` [T] → logits [T, V] (``flip_conv``: the conv kernel
    reversed, a wrong model the comparison must reject)."""
    Vs, conv_bias, tied, eps, emb, R = _fields(c)
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    x = t[emb][np.asarray(ids)]
    L = len(ids)
    for i in range(LAYERS):
        b = f"backbone.layers.{i}.mixer."
        u = _rms(x, t[f"backbone.layers.{i}.norm.weight"], eps)
        xz = u @ t[b + "in_proj.weight"].T
        xs, z = xz[:, :E], xz[:, E:]
        w = t[b + "conv1d.weight"][:, 0, :]  # [E, K]: w[:, k] weighs x_{s − (K − 1) + k}
        if flip_conv:
            w = w[:, ::-1]
        K = w.shape[1]
        pad = np.concatenate([np.zeros((K - 1, E)), xs])
        conv = np.stack([np.sum(w.T * pad[s:s + K], axis=0) for s in range(L)])
        if conv_bias:
            conv = conv + t[b + "conv1d.bias"]
        xs = _silu(conv)
        dbc = xs @ t[b + "x_proj.weight"].T
        dlow, Bm, Cm = dbc[:, :R], dbc[:, R:R + N], dbc[:, R + N:]
        dt = np.log1p(np.exp(dlow @ t[b + "dt_proj.weight"].T + t[b + "dt_proj.bias"]))  # softplus, [L, E]
        A = -np.exp(t[b + "A_log"])  # [E, N]
        h = np.zeros((E, N))
        y = np.zeros((L, E))
        for s in range(L):
            h = np.exp(dt[s][:, None] * A) * h + (dt[s] * xs[s])[:, None] * Bm[s][None, :]
            y[s] = h @ Cm[s] + t[b + "D"] * xs[s]
        x = x + (y * _silu(z)) @ t[b + "out_proj.weight"].T
    x = _rms(x, t["backbone.norm_f.weight"], eps)
    return x @ (t[emb] if tied else t["lm_head.weight"]).T


def _ids(B=2, L=24, seed=3):
    return np.random.default_rng(seed).integers(0, V, (B, L)).astype(np.int32)


VARIANTS = {
    "mamba_ssm": _ssm_config(),
    "mamba_ssm_no_conv_bias_untied": _ssm_config(ssm={"conv_bias": False}, tie_embeddings=False),
    "transformers": _hf_config(),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def ckpt(request, tmp_path_factory):
    c = VARIANTS[request.param]
    t = _tensors(c)
    return _write(tmp_path_factory.mktemp(request.param), c, t), c, t


# ---- exactness ------------------------------------------------------------------------------------------


def test_mamba_is_supported():
    assert "mamba" in SUPPORTED_MODEL_TYPES


def test_logits_match_the_numpy_reference_float64(ckpt):
    folder, c, t = ckpt
    ids = _ids()
    with jax.enable_x64(True):
        pre = load_pretrained(folder, dtype="float64")
        got = np.asarray(pre.model(jnp.asarray(ids)))
    assert pre.model_type == "mamba" and isinstance(pre.model.blocks[0].mixer, Mamba1Block)
    assert pre.model.cfg.vocab_size == _fields(c)[0]  # 48 (padded) in mamba_ssm's layout, 40 in transformers'
    want = np.stack([reference_logits(c, t, s) for s in ids])
    err = float(np.max(np.abs(got - want)))
    print(f"float64 max |Δlogit| = {err:.3e} (logit scale {np.abs(want).max():.2f})")
    assert err <= 1e-10, f"max |Δlogit| = {err:.3e}"
    wrong = reference_logits(c, t, ids[0], flip_conv=True)  # the comparison can fail: a reversed conv is rejected
    assert np.max(np.abs(got[0] - wrong)) > 1e-3


def test_logits_match_the_numpy_reference_float32(ckpt):
    folder, c, t = ckpt
    pre = load_pretrained(folder)
    ids = _ids(L=48)
    got = np.asarray(pre.model(jnp.asarray(ids)))
    want = np.stack([reference_logits(c, t, s) for s in ids])
    err = float(np.max(np.abs(got - want)))
    print(f"float32 max |Δlogit| = {err:.3e} (logit scale {np.abs(want).max():.2f})")
    assert err <= 1e-4, f"max |Δlogit| = {err:.3e} (logit scale {np.abs(want).max():.2f})"


def test_greedy_generation_is_identical(ckpt):
    folder, c, t = ckpt
    pre = load_pretrained(folder)
    prompt = _ids(B=1, L=6, seed=5)
    got = np.asarray(generate(pre.model, jnp.asarray(prompt), 10, temperature=0.0))[0]
    seq = list(prompt[0])
    for _ in range(10):
        seq.append(int(np.argmax(reference_logits(c, t, np.asarray(seq))[-1])))
    assert got.tolist() == seq


def test_save_reload_is_bit_exact(ckpt, tmp_path):
    folder, c, t = ckpt
    pre = load_pretrained(folder)
    save_pretrained(pre, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == c
    back = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert sorted(back) == sorted(t)  # including the embedding's name in each convention
    for k in t:  # nothing is folded: the very bytes of the source file come back
        assert back[k].dtype == t[k].dtype and np.array_equal(back[k], t[k]), k
    again = load_pretrained(tmp_path / "again")
    a, b = nnx.state(pre.model, nnx.Param), nnx.state(again.model, nnx.Param)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ValueError, match="PyTorch layout only"):
        save_pretrained(pre, tmp_path / "flax", layout="flax")


@pytest.mark.slow
def test_loaded_mixer_keeps_the_tvvar_law_and_its_affine_split(ckpt):
    """coefficients reproduce the mixer (float64, 1e-10), so do linear part + intercept; the intercept is the conv
    bias's: nonzero with it, exactly zero without it. scan == chunked == step on the loaded mixer."""
    folder, c, _ = ckpt
    with jax.enable_x64(True):
        pre = load_pretrained(folder, dtype="float64")
        blk = pre.model.blocks[1]
        x = pre.model.embed_tokens(jnp.asarray(_ids(B=2, L=7)))
        u = blk.norm1(pre.model.blocks[0](x))
        mx = blk.mixer
        h = np.asarray(mx(u))
        law = np.asarray(mix_dense(mx.coefficients(u), u))
        r = np.asarray(mx.intercept(u))
        lin = np.asarray(mix_dense(mx.linear_coefficients(u), u))
        scanned = np.asarray(mx.scan(u)[0])
        cache, rows = mx.init_cache(2, 7, jnp.float64), []
        for i in range(7):
            row, cache = mx.step(cache, u[:, i])
            rows.append(np.asarray(row))
    scale = np.abs(h).max()
    assert np.max(np.abs(law - h)) <= 1e-10 * scale
    assert np.max(np.abs(lin + r - h)) <= 1e-10 * scale
    assert np.max(np.abs(scanned - h)) <= 1e-10 * scale
    assert np.max(np.abs(np.stack(rows, 1) - h)) <= 1e-10 * scale
    if _fields(c)[1]:
        assert np.abs(r).max() > 1e-3 * scale
    else:
        assert np.abs(r).max() == 0.0


def test_mixing_matrix_is_the_per_channel_diagonal_ssm():
    """L^e[i, j] = Σ_n C_i[n] Π_{k=j+1..i} exp(Δ_k[e] A[e, n]) Δ_j[e] B_j[n] + D[e] δ_ij, written out in numpy from
    the mixer's own Δ, B, C: a decay per channel AND state (not Mamba-2's scalar per head)."""
    with jax.enable_x64(True):
        m = Mamba1Block(8, rngs=nnx.Rngs(0), dtype=jnp.float64, state_size=3, dt_rank=2)
        m.A_log[...] = jnp.log(jnp.asarray(np.random.default_rng(0).uniform(0.5, 4, (16, 3))))
        u = jax.random.normal(jax.random.key(1), (1, 5, 8), jnp.float64)
        L = np.asarray(m.mixing_matrix(u))[0]
        pre = m._pre_conv(u)
        from tvvar.decompositions.ssm_kernels import causal_conv

        _, _, dt, Bm, Cm, _ = (np.asarray(a)[0] if a is not None else None
                               for a in m._post_conv(causal_conv(pre, m.conv_w[...])[0], u))
        A, Dk = -np.exp(np.asarray(m.A_log[...])), np.asarray(m.D[...])
    want = np.zeros_like(L)
    for i in range(5):
        for j in range(i + 1):
            decay = np.prod([np.exp(dt[k][:, None] * A) for k in range(j + 1, i + 1)], axis=0) if i > j else 1.0
            want[:, i, j] = (decay * (Cm[i] * Bm[j])[None, :]).sum(-1) * dt[j] + (Dk if i == j else 0)
    np.testing.assert_allclose(L, want, rtol=0, atol=1e-12)
    assert np.all(L[:, np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0)


@pytest.mark.slow
def test_kit():
    """The decomposition kit (law, gradients, support, causality, batch independence, jit; f32 and f64)."""
    check_decomposition(lambda rngs, dtype: Mamba1Block(8, rngs=rngs, dtype=dtype, state_size=3, d_conv=3,
                                                        dt_rank=2, chunk_size=4))


# ---- what converted hub configs carry, and refusals -------------------------------------------------------


@pytest.mark.slow
def test_converted_hub_config_with_legacy_fields_loads_unpadded(tmp_path):
    """state-spaces/mamba-*-hf configs carry mamba_ssm's fields beside transformers' (d_model, n_layer, d_inner,
    ssm_cfg {}, rms_norm, fused_add_norm, pad_vocab_size_multiple) and time_step_rank "auto": transformers ignores
    them, so does tvvar (no padding), as long as they agree."""
    c = _hf_config(d_model=D, n_layer=LAYERS, d_inner=E, ssm_cfg={}, rms_norm=True, fused_add_norm=True,
                   pad_vocab_size_multiple=16, time_step_rank="auto", tie_word_embeddings=True)  # R = ⌈16/16⌉ = 1
    t = _tensors(c, seed=2)
    pre = load_pretrained(_write(tmp_path / "hub", c, t))
    ids = _ids(B=1, L=12)
    got = np.asarray(pre.model(jnp.asarray(ids)))[0]
    want = reference_logits(c, t, ids[0])
    assert pre.model.cfg.vocab_size == V and pre.model.blocks[0].mixer.dt_rank == 1
    assert np.max(np.abs(got - want)) <= 1e-4


def _assert_refused(tmp_path, c, field):
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(c))
    save_file({"x": np.zeros(1, np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=f"'{field}'"):
        load_pretrained(folder)


@pytest.mark.parametrize("change,field", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"use_bias": True}, "bias"),
    ({"d_model": 32}, "d_model"),
    ({"intermediate_size": 48}, "intermediate_size"),
    ({"ssm_cfg": {"d_state": 8}}, "ssm_cfg"),
    ({"rms_norm": False}, "rms_norm"),
    ({"time_step_rank": 0}, "dt_rank"),
    ({"some_new_field": 1}, "some_new_field"),
])
def test_transformers_fields_are_refused_by_name(tmp_path, change, field):
    _assert_refused(tmp_path, _hf_config(**change), field)


@pytest.mark.parametrize("change,field", [
    ({"ssm": {"bias": True}}, "bias"),
    ({"d_intermediate": 32}, "d_intermediate"),
    ({"attn_layer_idx": [1]}, "attn_layer_idx"),
    ({"rms_norm": False}, "rms_norm"),
    ({"model_type": "mamba", "ssm": {"layer": "Mamba3"}}, "layer"),
    ({"ssm": {"d_state": 4.5}}, "d_state"),
    ({"model_type": "mamba", "ssm": {"layer": "Mamba2"}}, "layer"),
    ({"some_new_field": 1}, "some_new_field"),
])
def test_mamba_ssm_fields_are_refused_by_name(tmp_path, change, field):
    _assert_refused(tmp_path, _ssm_config(**change), field)


def test_bad_shapes_missing_tensors_and_flax_names_are_refused(tmp_path):
    c = _ssm_config()
    t = _tensors(c)
    bad = {**t, "backbone.layers.1.mixer.A_log": np.zeros(E, np.float32)}  # Mamba-2's [H], not Mamba-1's [E, N]
    with pytest.raises(ValueError, match=r"backbone\.layers\.1\.mixer\.A_log.*model\.safetensors"):
        load_pretrained(_write(tmp_path / "shape", c, bad))
    missing = {k: v for k, v in t.items() if k != "backbone.layers.0.mixer.dt_proj.bias"}
    with pytest.raises(KeyError, match=r"backbone\.layers\.0\.mixer\.dt_proj\.bias"):
        load_pretrained(_write(tmp_path / "missing", c, missing))
    extra = {**t, "backbone.layers.0.mixer.out_proj.bias": np.zeros(D, np.float32)}
    with pytest.raises(ValueError, match="does not use"):
        load_pretrained(_write(tmp_path / "extra", c, extra))
    flax = {k.replace("norm_f.weight", "norm_f.scale"): v for k, v in t.items()}
    with pytest.raises(ValueError, match="PyTorch layout only"):
        load_pretrained(_write(tmp_path / "flax", c, flax))
