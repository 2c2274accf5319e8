"""Training-stack benchmarks: the sharded step on 8 fake CPU devices vs one device; async vs sync checkpoint.

* ``sharded train step``: the jitted train step (default ``experiments.train`` model, batch 32 × 64) on a
  2×4 (data, model) mesh of 8 fake CPU devices vs the same step on one device. Fake devices must exist
  before JAX starts, so this part runs in a subprocess with ``JAX_NUM_CPU_DEVICES=8``. Target ≤ 1.25×
  (the fake devices share the same cores, so this measures partitioning overhead, not a speed-up).
* ``checkpoint save``: how long the training loop is blocked by ``CheckpointManager.save`` with async
  checkpointing (device→host copy, then writing in a background thread) vs a synchronous save.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.benchmarks.timing import compare

ROOT = Path(__file__).resolve().parents[2]


def _train_config(mesh, quick: bool, d_model: int = 64, num_layers: int = 2):
    from tvvar.model import ModelConfig
    from tvvar.train import TrainConfig

    model = ModelConfig(vocab_size=16, d_model=d_model, num_layers=num_layers, mixer={"num_heads": 4})
    return TrainConfig(model, steps=1000, batch_size=16 if quick else 32, seq_len=32 if quick else 64,
                       ckpt_every=0, seed=0, mesh=mesh)


def sharded_worker(quick: bool, source: str = "synthetic-tvvar") -> dict:
    """Runs in the subprocess (8 fake devices): one entry comparing the 1-device and 2×4-mesh steps.

    The step includes drawing its batch (the data source runs inside the jitted step): with
    ``synthetic-tvvar`` that is a 64-step ``lax.scan`` of the source model, with ``markov`` a cheap table
    lookup — the two entries separate the model step from the sampler's partitioned loop.
    """
    import jax

    from tvvar.sources import make_source
    from tvvar.train import _make_fns, _setup, get_objective

    assert jax.device_count() == 8, jax.device_count()
    src = make_source(source) if source == "synthetic-tvvar" else make_source(source, vocab_size=16)
    obj = get_objective("cross_entropy")
    fns = {}
    for name, mesh in (("1 device", None), ("2x4 mesh", "data=2,model=4")):
        s = _setup(_train_config(mesh, quick))
        step_fn, _ = _make_fns(s, src, obj)
        holder = [s.params, s.opt_state]

        def f(step_fn=step_fn, holder=holder, mesh=s.mesh):
            with jax.set_mesh(mesh):
                holder[0], holder[1], m = step_fn(holder[0], holder[1], np.int32(0))
            return m["loss"]

        fns[name] = f
    return compare(f"sharded train step incl. {source} sampling (8 fake CPU devices, 2x4 mesh) vs one device",
                   ("1 device", fns["1 device"]), ("2x4 mesh", fns["2x4 mesh"]),
                   target=1.25, repeats=5 if quick else 15, batch=16 if quick else 32, seq_len=32 if quick else 64)


def _sharded(quick: bool, source: str) -> dict:
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "8"}
    code = ("import json; from experiments.benchmarks.train import sharded_worker; "
            f"print('RESULT' + json.dumps(sharded_worker({quick}, {source!r})))")
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    raise RuntimeError(f"sharded benchmark subprocess failed:\n{p.stderr[-3000:]}")


def _checkpoint(quick: bool) -> dict:
    import jax
    import orbax.checkpoint as ocp

    from tvvar.train import _flatten, _setup

    d, L = (128, 2) if quick else (256, 4)
    s = _setup(_train_config(None, quick, d_model=d, num_layers=L))
    tree = _flatten({"params": s.params, "opt_state": s.opt_state})
    nbytes = sum(x.nbytes for x in jax.tree.leaves(tree))
    times: dict[str, list[float]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory() as tmp:
        mgrs = {k: ocp.CheckpointManager(Path(tmp) / k, options=ocp.CheckpointManagerOptions(
            max_to_keep=2, enable_async_checkpointing=(k == "async"))) for k in times}
        repeats = 3 if quick else 7
        for i in range(repeats + 1):  # the first round warms up both paths
            for k, mgr in mgrs.items():
                t0 = time.perf_counter()
                mgr.save(i, args=ocp.args.StandardSave(tree))
                dt = time.perf_counter() - t0  # the time the training loop would be blocked
                mgr.wait_until_finished()
                if i:
                    times[k].append(dt)
        for mgr in mgrs.values():
            mgr.close()
    b, c = statistics.median(times["sync"]), statistics.median(times["async"])
    return {"name": f"checkpoint save: loop blocked, async vs sync ({nbytes / 2**20:.1f} MiB params + AdamW state)",
            "baseline": "synchronous save", "contender": "async save (blocked part)", "baseline_s": b, "contender_s": c,
            "ratio": c / b, "ratio_definition": "contender_s / baseline_s", "target": None, "met": None,
            "bytes": nbytes}


def run(quick: bool) -> list[dict]:
    return [_sharded(quick, "synthetic-tvvar"), _sharded(quick, "markov"), _checkpoint(quick)]


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
