"""load_pretrained(path, mesh=...) on 8 fake CPU devices (tests/conftest.py): every parameter placed directly on its
shards of a 2×4 (data, model) mesh, with the sharding tvvar.sharding.state_shardings gives it; the forward equals
the unsharded load's; no jax array of the unsharded model is ever built on the way (issue 32 item 9).

The checkpoints are written here with numpy in the PyTorch (hub) layout: a GPT-2 (tied, biases, learned
positions) and a Llama (rotary, grouped-query heads, SwiGLU, untied head), both with random values everywhere.
"""

import json
import types

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from safetensors.numpy import save_file

import tvvar.pretrained as tp
from tvvar.model import TVVARModel
from tvvar.pretrained import load_pretrained
from tvvar.sharding import make_mesh, state_shardings

pytestmark = pytest.mark.mesh  # 8 devices (tests/conftest.py)

T = 16
MESH = "data=2,model=4"


def _write(folder, config, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _gpt2(folder, V=128, D=32, H=4, L=2, seed=0):
    r = np.random.default_rng(seed)
    n = lambda *s, sd=0.2, mean=0.0: (mean + sd * r.normal(size=s)).astype(np.float32)  # noqa: E731
    t = {"wte.weight": n(V, D), "wpe.weight": n(T, D, sd=0.05), "ln_f.weight": n(D, sd=0.1, mean=1),
         "ln_f.bias": n(D, sd=0.1)}
    for i in range(L):
        b = f"h.{i}."
        t |= {b + "ln_1.weight": n(D, sd=0.1, mean=1), b + "ln_1.bias": n(D, sd=0.1),
              b + "attn.c_attn.weight": n(D, 3 * D), b + "attn.c_attn.bias": n(3 * D, sd=0.1),
              b + "attn.c_proj.weight": n(D, D), b + "attn.c_proj.bias": n(D, sd=0.1),
              b + "ln_2.weight": n(D, sd=0.1, mean=1), b + "ln_2.bias": n(D, sd=0.1),
              b + "mlp.c_fc.weight": n(D, 4 * D), b + "mlp.c_fc.bias": n(4 * D, sd=0.1),
              b + "mlp.c_proj.weight": n(4 * D, D, sd=0.1), b + "mlp.c_proj.bias": n(D, sd=0.1)}
    cfg = {"model_type": "gpt2", "vocab_size": V, "n_positions": T, "n_embd": D, "n_layer": L, "n_head": H,
           "activation_function": "gelu_new"}
    return _write(folder, cfg, t)


def _llama(folder, V=128, D=32, H=8, G=2, F=64, L=2, seed=1):
    r = np.random.default_rng(seed)
    n = lambda *s, sd=0.2, mean=0.0: (mean + sd * r.normal(size=s)).astype(np.float32)  # noqa: E731
    K = D // H
    t = {"model.embed_tokens.weight": n(V, D), "model.norm.weight": n(D, sd=0.1, mean=1), "lm_head.weight": n(V, D)}
    for i in range(L):
        b = f"model.layers.{i}."
        t |= {b + "self_attn.q_proj.weight": n(H * K, D), b + "self_attn.k_proj.weight": n(G * K, D),
              b + "self_attn.v_proj.weight": n(G * K, D), b + "self_attn.o_proj.weight": n(D, H * K),
              b + "input_layernorm.weight": n(D, sd=0.1, mean=1),
              b + "post_attention_layernorm.weight": n(D, sd=0.1, mean=1),
              b + "mlp.gate_proj.weight": n(F, D), b + "mlp.up_proj.weight": n(F, D),
              b + "mlp.down_proj.weight": n(D, F)}
    cfg = {"model_type": "llama", "vocab_size": V, "hidden_size": D, "intermediate_size": F, "num_hidden_layers": L,
           "num_attention_heads": H, "num_key_value_heads": G, "max_position_embeddings": T, "rope_theta": 10000.0,
           "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu"}
    return _write(folder, cfg, t)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("sharded")
    return {"gpt2": _gpt2(base / "gpt2"), "llama": _llama(base / "llama"),
            "gpt2_v101": _gpt2(base / "gpt2_v101", V=101)}


def _logits(model, ids):
    gd, st = nnx.split(model)
    return np.asarray(jax.jit(lambda st, ids: nnx.merge(gd, st)(ids))(st, ids))


def _ids(V):
    return jnp.asarray(np.random.default_rng(3).integers(0, V, (2, T)))


def _flat(model):
    return {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(model))}


def _expected_shardings(model, mesh):
    abstract = nnx.eval_shape(lambda: TVVARModel(model.cfg, rngs=nnx.Rngs(0)))
    return {p: v.get_value() for p, v in nnx.to_flat_state(state_shardings(nnx.state(abstract), mesh))}


def _check_placement(model, mesh, must_split, must_whole):
    """Each parameter has state_shardings' NamedSharding; the ones split over ``model`` hold 1/model of their
    elements on every device, the others the whole array; ``must_split`` / ``must_whole`` name parameters (by path
    suffix) that must be in each group."""
    want = _expected_shardings(model, mesh)
    got = _flat(model)
    assert set(want) == set(got)
    n_model, split, whole = mesh.shape["model"], set(), set()
    for p, x in got.items():
        assert isinstance(x.sharding, NamedSharding) and x.sharding == want[p], (p, x.sharding, want[p])
        assert len(x.addressable_shards) == mesh.size
        if "model" in x.sharding.spec:
            assert all(s.data.size * n_model == x.size for s in x.addressable_shards), p
            split.add(p)
        else:
            assert all(s.data.size == x.size for s in x.addressable_shards), p
            whole.add(p)
    names = lambda group: {"/".join(map(str, p[-2:])) for p in group}  # noqa: E731
    assert must_split <= names(split), must_split - names(split)
    assert must_whole <= names(whole), must_whole - names(whole)
    return split, whole


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_sharded_load_places_each_weight_and_matches_unsharded(which, dirs, monkeypatch):
    d = dirs[which]
    ref = load_pretrained(d)
    # the mesh path never builds a jax array of a weight before placing it (no jnp.asarray), and places every
    # parameter with exactly one device_put onto a NamedSharding of the mesh
    puts = []
    real_put = jax.device_put

    def spy(x, sharding=None, **kw):
        puts.append((type(x), getattr(x, "shape", None), sharding))
        return real_put(x, sharding, **kw)

    def no_device_array(*a, **k):
        raise AssertionError("load_pretrained(mesh=...) built an unsharded jax array")

    monkeypatch.setattr(tp, "jnp", types.SimpleNamespace(dtype=jnp.dtype, asarray=no_device_array))
    monkeypatch.setattr(jax, "device_put", spy)
    pre = load_pretrained(d, mesh=MESH)
    monkeypatch.undo()
    mesh = next(iter(_flat(pre.model).values())).sharding.mesh
    assert dict(mesh.shape) == {"data": 2, "model": 4}
    assert len(puts) == len(_flat(pre.model))
    assert all(t is np.ndarray or issubclass(t, np.ndarray) for t, _, _ in puts)
    assert all(isinstance(s, NamedSharding) and s.mesh == mesh for _, _, s in puts)

    if which == "gpt2":
        split = {"embed/table", "mixer/wq", "mixer/wk", "mixer/wv", "mixer/wo", "mixer/bq", "mixer/bk", "psi/w1",
                 "psi/b1", "psi/w2"}
        whole = {"pos", "final_norm/scale", "final_norm/bias", "norm1/bias", "psi/b2", "0/mixer_bias"}
    else:  # G = 2 key/value heads on a 4-way model axis: wk / wv are replicated (logical_to_spec's fallback)
        split = {"embed/table", "mixer/wq", "mixer/wo", "psi/w_gate", "psi/w_up", "psi/w_down", "embedding/table"}
        whole = {"mixer/wk", "mixer/wv", "norm1/scale", "final_norm/scale"}
    _check_placement(pre.model, mesh, split, whole)

    # the same parameters, bit for bit, and the same logits
    a, b = _flat(ref.model), _flat(pre.model)
    for p in a:
        np.testing.assert_array_equal(np.asarray(a[p]), np.asarray(b[p]), err_msg=str(p))
    ids = _ids(pre.model.cfg.vocab_size)
    diff = np.max(np.abs(_logits(pre.model, ids) - _logits(ref.model, ids)))
    assert diff <= 1e-5, diff


def test_float64_and_bfloat16(dirs):
    d = dirs["llama"]
    ids = _ids(128)
    with jax.enable_x64(True):
        ref, pre = load_pretrained(d, "float64"), load_pretrained(d, "float64", mesh=MESH)
        x = _flat(pre.model)[("blocks", 0, "mixer", "wq")]
        assert x.dtype == jnp.float64 and x.addressable_shards[0].data.shape == (32, 2, 4)
        diff = np.max(np.abs(_logits(pre.model, ids) - _logits(ref.model, ids)))
        assert diff <= 1e-12, diff
    # bf16: numpy / ml_dtypes' cast on the host rounds as jnp's does on device — the same parameters bit for bit
    ref, pre = load_pretrained(d, "bfloat16"), load_pretrained(d, "bfloat16", mesh=MESH)
    a, b = _flat(ref.model), _flat(pre.model)
    for p in a:
        assert b[p].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a[p]).view(np.uint16), np.asarray(b[p]).view(np.uint16))
    # a bf16 file loads onto the mesh in bf16 (no cast: the tensors are views of the memory map until placed)
    folder = d.parent / "llama_bf16"
    folder.mkdir()
    from safetensors.numpy import load_file

    t = load_file(str(d / "model.safetensors"))
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text((d / "config.json").read_text())
    got = _flat(load_pretrained(folder, "bfloat16", mesh=MESH).model)
    for p in a:
        np.testing.assert_array_equal(np.asarray(a[p]).view(np.uint16), np.asarray(got[p]).view(np.uint16))


def test_indivisible_vocab_is_replicated_and_a_mesh_object_works(dirs):
    # V = 101 on a 4-way model axis: the table is replicated (tvvar.sharding.logical_to_spec's fallback), the rest
    # split as usual; the forward still equals the unsharded one
    d = dirs["gpt2_v101"]
    pre, ref = load_pretrained(d, mesh=MESH), load_pretrained(d)
    mesh = next(iter(_flat(pre.model).values())).sharding.mesh
    _check_placement(pre.model, mesh, {"mixer/wq", "psi/w1"}, {"embed/table"})
    ids = _ids(101)
    assert np.max(np.abs(_logits(pre.model, ids) - _logits(ref.model, ids))) <= 1e-5
    # a jax.sharding.Mesh itself, 1 × 8: H = 8 heads split 8 ways, the G = 2 key/value heads replicated
    m = make_mesh("data=1,model=8")
    pre = load_pretrained(dirs["llama"], mesh=m)
    split, _ = _check_placement(pre.model, m, {"mixer/wq", "psi/w_gate", "embed/table"}, {"mixer/wk"})
    assert all(_flat(pre.model)[p].addressable_shards[0].data.size * 8 == _flat(pre.model)[p].size for p in split)


def test_bad_mesh_arguments_name_the_argument(dirs):
    d = dirs["gpt2"]
    with pytest.raises(ValueError, match=r"mesh='data=two'.*look like"):
        load_pretrained(d, mesh="data=two")
    with pytest.raises(ValueError, match=r"mesh='data=3,model=4'.*does not divide"):
        load_pretrained(d, mesh="data=3,model=4")
    with pytest.raises(ValueError, match=r"mesh='pipe=2'.*unknown"):
        load_pretrained(d, mesh="pipe=2")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        load_pretrained(d, mesh=8)
    with pytest.raises(ValueError, match="rules= applies to a mesh"):
        load_pretrained(d, rules={"vocab": "model"})
    with pytest.raises(ValueError, match=r"mesh axis 'pipe'.*lacks"):
        load_pretrained(d, mesh=MESH, rules={"vocab": "pipe"})
    # rules of one's own: the MLP over data (2), nothing over model
    pre = load_pretrained(d, mesh=MESH, rules={"mlp": "data"})
    x = _flat(pre.model)[("blocks", 0, "psi", "w1")]
    assert x.sharding.spec == jax.sharding.PartitionSpec(None, "data")
    assert x.addressable_shards[0].data.size * 2 == x.size
    assert _flat(pre.model)[("embed", "table")].addressable_shards[0].data.size == 128 * 32
