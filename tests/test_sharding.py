"""tvvar.sharding: partition rules, meshes, sharded init, sharded training == one device, two processes."""

import json
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tvvar.model import ModelConfig
from tvvar.sharding import logical_to_spec, make_mesh, parse_mesh, sample_sharding, sharded_init
from tvvar.sources import MarkovSource
from tvvar.train import TrainConfig, train

pytestmark = pytest.mark.mesh  # 8 devices (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
SRC = MarkovSource(8, 1, alpha=0.3, seed=0)


def cfg(mesh=None, steps=3):
    model = ModelConfig(vocab_size=8, d_model=16, num_layers=1, mixer={"num_heads": 8})
    return TrainConfig(model, steps=steps, batch_size=8, seq_len=8, lr=1e-2, warmup=1, eval_every=0,
                       eval_batches=1, ckpt_every=0, seed=1, mesh=mesh)


def test_parse_and_make_mesh_errors():
    assert parse_mesh("data=2,model=4") == {"data": 2, "model": 4}
    assert parse_mesh("model=2") == {"data": 1, "model": 2}
    with pytest.raises(ValueError, match="look like"):
        parse_mesh("data=two")
    with pytest.raises(ValueError, match="unknown"):
        parse_mesh("pipe=2")
    with pytest.raises(ValueError, match="size ≥ 1"):
        parse_mesh({"data": 0})
    with pytest.raises(ValueError, match="does not divide"):
        make_mesh("data=3", jax.devices()[:8])
    with pytest.raises(ValueError, match="does not divide"):
        make_mesh("data=4,model=4", jax.devices()[:8])
    m = make_mesh("data=2,model=4", jax.devices()[:8])
    assert dict(m.shape) == {"data": 2, "model": 4}
    assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
    # in-step sampling: rows over every device when the batch divides 8, else over data only
    assert sample_sharding(m, 16).spec == P(("data", "model"))
    assert sample_sharding(m, 6).spec == P("data")


def test_logical_to_spec_by_hand():
    mesh = make_mesh("data=2,model=4", jax.devices()[:8])
    assert logical_to_spec(("embed", "heads", "kv"), (16, 8, 2), mesh) == P(None, "model")
    assert logical_to_spec(("vocab", "embed"), (16, 16), mesh) == P("model")
    assert logical_to_spec(("vocab", "embed"), (65, 16), mesh) == P()  # 65 % 4: replicated
    assert logical_to_spec(("heads", "mlp"), (8, 8), mesh) == P("model")  # a mesh axis is used once
    assert logical_to_spec(("embed", "mystery"), (4, 4), mesh) == P()
    rules = {"embed": "data", "mlp": "model"}
    assert logical_to_spec(("embed", "mlp"), (16, 64), mesh, rules=rules) == P("data", "model")
    with pytest.raises(ValueError, match="logical axis names"):
        logical_to_spec(("embed",), (4, 4), mesh)


def test_sharded_init_is_born_sharded():
    from flax import nnx

    from tvvar.model import TVVARModel

    mesh = make_mesh("data=2,model=4", jax.devices()[:8])
    c = cfg().model
    graphdef, state, _ = sharded_init(lambda: TVVARModel(c, rngs=nnx.Rngs(0)), mesh)
    wq = state["blocks"][0]["mixer"]["wq"][...]
    assert wq.sharding.spec == P(None, "model") and wq.addressable_shards[0].data.shape == (16, 2, 2)
    # same values as the unsharded constructor
    ref = TVVARModel(c, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(wq), np.asarray(ref.blocks[0].mixer.wq[...]))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return train(cfg(), SRC, tmp_path_factory.mktemp("single"), progress=False)


def losses(r):
    return np.array([x["loss"] for x in r["history"]["train"]])


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["data=1,model=8", "data=8,model=1", "data=2,model=4"])
def test_sharded_training_matches_one_device(single, mesh, tmp_path):
    r = train(cfg(mesh), SRC, tmp_path, progress=False)
    np.testing.assert_allclose(losses(r), losses(single), rtol=2e-5, atol=1e-6)
    m = r["model"]
    expect = {  # worked out by hand from DEFAULT_RULES
        "wq": P(None, "model"), "wo": P("model"), "table": P("model"), "w1": P(None, "model"), "w2": P("model"),
        "scale": P(),
    }
    got = {"wq": m.blocks[0].mixer.wq, "wo": m.blocks[0].mixer.wo, "table": m.embed.table,
           "w1": m.blocks[0].psi.w1, "w2": m.blocks[0].psi.w2, "scale": m.blocks[0].norm1.scale}
    n_model = parse_mesh(mesh)["model"]
    for k, v in got.items():
        arr = v[...]
        assert arr.sharding.spec == expect[k], (k, arr.sharding.spec)
        assert len(arr.sharding.device_set) == 8
        if expect[k] != P():
            axis = list(expect[k]).index("model")
            assert arr.addressable_shards[0].data.shape[axis] == arr.shape[axis] // n_model


CHILD = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {root!r})
    from tvvar.sharding import initialize_distributed
    initialize_distributed()
    import jax
    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
    from tests.test_sharding import cfg, SRC
    from tvvar.train import train
    pid = jax.process_index()
    r = train(cfg("data=2,model=2"), SRC, sys.argv[1], progress=False)
    json.dump([x["loss"] for x in r["history"]["train"]], open(sys.argv[2] + f".{{pid}}.json", "w"))
    """
)


@pytest.mark.slow
def test_two_process_run_matches_single_process(single, tmp_path):
    from local_processes import run_processes  # here: the children import this module as tests.…

    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT)))
    run_processes(script, [str(tmp_path / "run"), str(tmp_path / "losses")], ROOT, devices=2)
    for pid in range(2):
        got = json.loads((tmp_path / f"losses.{pid}.json").read_text())
        np.testing.assert_allclose(got, losses(single), rtol=2e-5, atol=1e-6)
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
