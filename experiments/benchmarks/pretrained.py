"""Pretrained checkpoints (issue 16): a GPT-2-shaped model loaded by ``tvvar.pretrained`` vs the reference
``transformers.FlaxGPT2LMHeadModel`` on the same weights, and the load itself.

Full size: 12 layers, D 768, 12 heads, V 50257, T 512, batch 1 (GPT-2 small, 124M parameters), random weights
written to safetensors by the benchmark. Entries:

* forward, jitted, both in one process, interleaved: tvvar / reference time, target ≤ 1.10 (the logit
  difference is recorded as ``max_abs_logit_diff``);
* load: ``load_pretrained`` in a fresh subprocess — seconds (target ≤ 5 s) and peak RSS growth over the
  process after imports relative to the weights' bytes (target ≤ 1.5, ``peak_over_weights``).

Quick: 2 layers, D 128, 4 heads, V 1024, T 128 (targets not applied at this size). ``transformers`` is a test
dependency; without it the entries are skipped with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.timing import compare


@dataclass(frozen=True)
class Size:
    layers: int
    width: int
    heads: int
    vocab: int
    T: int


FULL = Size(layers=12, width=768, heads=12, vocab=50257, T=512)
QUICK = Size(layers=2, width=128, heads=4, vocab=1024, T=128)

_LOADER = """
import json, resource, sys, time  # noqa: E401
import numpy as np
import jax
from tvvar.pretrained import load_pretrained, num_parameters
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:  # reset the high-water mark so the peak is the load's, not the imports'
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
base = status("VmRSS")
def rss():
    return status("VmHWM")
t0 = time.perf_counter()
pre = load_pretrained(sys.argv[1])
jax.block_until_ready([v.get_value() for _, v in __import__('flax').nnx.iter_graph(pre.model)
                       if isinstance(v, __import__('flax').nnx.Variable)])
sec = time.perf_counter() - t0
print(json.dumps({"seconds": sec, "peak_growth": rss() - base, "params": num_parameters(pre.model)}))
"""


def _write_reference(folder: Path, s: Size):
    import warnings

    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    cfg = transformers.GPT2Config(vocab_size=s.vocab, n_positions=max(s.T, 64), n_embd=s.width, n_layer=s.layers,
                                  n_head=s.heads)
    with jax.numpy_rank_promotion("allow"):
        ref = transformers.FlaxGPT2LMHeadModel(cfg, seed=0)
    ref.save_pretrained(folder, safe_serialization=True)
    return ref


def run(quick: bool) -> list[dict]:
    s = QUICK if quick else FULL
    try:
        import transformers  # noqa: F401
    except ImportError:
        return [{"name": "pretrained: GPT-2 forward and load", "skipped": "transformers is not installed"}]
    from flax import nnx

    from tvvar.pretrained import load_pretrained

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ref = _write_reference(folder, s)
        weight_bytes = (folder / "model.safetensors").stat().st_size
        proc = subprocess.run([sys.executable, "-c", _LOADER, str(folder)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"loader subprocess failed: {proc.stderr[-2000:]}")
        load = json.loads(proc.stdout.strip().splitlines()[-1])
        pre = load_pretrained(folder)
    ids = jax.random.randint(jax.random.key(1), (1, s.T), 0, s.vocab)
    gd, st = nnx.split(pre.model)
    ours = jax.jit(lambda st, ids: nnx.merge(gd, st)(ids))
    with jax.numpy_rank_promotion("allow"):
        theirs = jax.jit(lambda p, ids: ref(ids, params=p).logits)
        ref_params = ref.params
        diff = float(jnp.max(jnp.abs(ours(st, ids) - theirs(ref_params, ids))))
        entry = compare(
            f"pretrained: GPT-2-shaped forward ({s.layers} layers, D {s.width}, V {s.vocab}, T {s.T}), tvvar vs "
            "transformers Flax",
            ("FlaxGPT2LMHeadModel forward", lambda: theirs(ref_params, ids)),
            ("tvvar load_pretrained model forward", lambda: ours(st, ids)),
            target=None if quick else 1.10, repeats=3 if not quick else 5, max_abs_logit_diff=diff)
    size = f"{s.layers} layers, D {s.width}, V {s.vocab}"
    ratio = load["peak_growth"] / weight_bytes
    load_entry = {"name": f"pretrained: load_pretrained from safetensors ({size}, {load['params']} parameters)",
                  "baseline": "target seconds", "contender": "load_pretrained", "baseline_s": 5.0,
                  "contender_s": load["seconds"], "ratio": load["seconds"] / 5.0,
                  "ratio_definition": "contender_s / 5 s", "target": None if quick else 1.0,
                  "met": None if quick else bool(load["seconds"] <= 5.0 and ratio <= 1.5),
                  "weights_bytes": weight_bytes, "peak_rss_growth_bytes": load["peak_growth"],
                  "peak_over_weights": ratio, "peak_target": 1.5}
    return [entry, load_entry]


if __name__ == "__main__":
    for e in run("--full" not in sys.argv):
        print(json.dumps({k: (float(v) if isinstance(v, np.floating) else v) for k, v in e.items()}))
