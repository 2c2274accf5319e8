"""Pretrained checkpoints (issue 16): a GPT-2-shaped model loaded by ``tvvar.pretrained`` vs the reference
``transformers.FlaxGPT2LMHeadModel`` on the same weights, and the load itself.

Full size: 12 layers, D 768, 12 heads, V 50257, T 512, batch 1 (GPT-2 small, 124M parameters), random weights
written to safetensors by the benchmark. Entries:

* forward, jitted, both in one process, interleaved: tvvar / reference time, target ≤ 1.10 (the logit
  difference is recorded as ``max_abs_logit_diff``);
* load: ``load_pretrained`` in a fresh subprocess — seconds (target ≤ 5 s) and peak RSS growth over the
  process after imports relative to the weights' bytes (target ≤ 1.5, ``peak_over_weights``).

Quick: 2 layers, D 128, 4 heads, V 1024, T 128 (targets not applied at this size). ``transformers`` is a test
dependency; without it the GPT-2 entries are skipped with the reason.

Sharded bf16 load (issue 32 item 9, no ``transformers`` needed): a generated Llama-shaped bf16 checkpoint (20
layers, D 2048, 32 heads, 8 key/value heads, d_ff 5632, V 32000, untied: 1.03B parameters, 2.07 GB, written
tensor by tensor straight to safetensors in a temporary folder) loaded with ``dtype="bfloat16"`` in a fresh
subprocess on 8 fake CPU devices (``JAX_NUM_CPU_DEVICES=8``), without a mesh and with ``mesh="data=1,model=8"``
and ``"data=2,model=4"``: peak RSS growth over the process after imports and backend start-up, relative to the
checkpoint's bytes (``ratio``), and the seconds. The fake devices live in host memory, so the growth counts the
placed shards too: on 1 × 8 every matrix is split 8 ways (1× the weights in all, the norms 8 times): target ≤ 1.3;
on 2 × 4 each shard is held by both data rows, i.e. every matrix twice — that figure (≈ 2× at best) is reported
without a target, as is the load without a mesh (the path the mesh leaves unchanged, for comparison).
Quick: 2 layers, D 128, 4 heads, 2 key/value heads, d_ff 256, V 1024.
``python -m experiments.benchmarks.pretrained --full --sharded-load`` runs these entries alone.
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
args = sys.argv[1:] + [""] * 3
if args[2]:  # start the backend (the fake devices) before the baseline: the growth is the load's
    jax.devices()
base = status("VmRSS")
def rss():
    return status("VmHWM")
t0 = time.perf_counter()
pre = load_pretrained(args[0], args[1] or "float32", **({"mesh": args[2]} if args[2] not in ("", "none") else {}))
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


@dataclass(frozen=True)
class LlamaSize:
    layers: int
    width: int
    heads: int
    kv_heads: int
    d_ff: int
    vocab: int


LLAMA_1B = LlamaSize(layers=20, width=2048, heads=32, kv_heads=8, d_ff=5632, vocab=32000)
LLAMA_QUICK = LlamaSize(layers=2, width=128, heads=4, kv_heads=2, d_ff=256, vocab=1024)
SHARDED_MESHES = ("none", "data=1,model=8", "data=2,model=4")


def _write_llama_bf16(folder: Path, s: LlamaSize) -> int:
    """A PyTorch-layout Llama checkpoint in bf16, written tensor by tensor (the header first, from the shapes), so
    that at most one tensor is in memory; returns the file's bytes."""
    import ml_dtypes

    D, K = s.width, s.width // s.heads
    shapes = [("model.embed_tokens.weight", (s.vocab, D)), ("model.norm.weight", (D,)),
              ("lm_head.weight", (s.vocab, D))]
    for i in range(s.layers):
        b = f"model.layers.{i}."
        a = b + "self_attn."
        shapes += [(a + "q_proj.weight", (s.heads * K, D)), (a + "k_proj.weight", (s.kv_heads * K, D)),
                   (a + "v_proj.weight", (s.kv_heads * K, D)), (a + "o_proj.weight", (D, s.heads * K)),
                   (b + "input_layernorm.weight", (D,)), (b + "post_attention_layernorm.weight", (D,)),
                   (b + "mlp.gate_proj.weight", (s.d_ff, D)), (b + "mlp.up_proj.weight", (s.d_ff, D)),
                   (b + "mlp.down_proj.weight", (D, s.d_ff))]
    header, off = {}, 0
    for name, shape in shapes:
        n = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for _name, shape in shapes:
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= 0.1 if len(shape) == 1 else 0.02
            if len(shape) == 1:
                a += 1.0
            a.astype(ml_dtypes.bfloat16).tofile(f)
            del a
    cfg = {"model_type": "llama", "vocab_size": s.vocab, "hidden_size": D, "intermediate_size": s.d_ff,
           "num_hidden_layers": s.layers, "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
           "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
           "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return (folder / "model.safetensors").stat().st_size


def run_sharded_load(quick: bool) -> list[dict]:
    """``load_pretrained(dtype="bfloat16")`` of a generated Llama-shaped bf16 checkpoint without a mesh and with
    the meshes of :data:`SHARDED_MESHES`, each in a fresh subprocess on 8 fake CPU devices: peak RSS growth over
    the checkpoint's bytes (target ≤ 1.3 on 1 × 8; reported without a mesh, and on 2 × 4, where the fake devices
    hold every matrix twice) and the seconds."""
    import os

    s = LLAMA_QUICK if quick else LLAMA_1B
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "8"}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama_bf16"
        weight_bytes = _write_llama_bf16(folder, s)
        for mesh in SHARDED_MESHES:
            proc = subprocess.run([sys.executable, "-c", _LOADER, str(folder), "bfloat16", mesh], capture_output=True,
                                  text=True, check=False, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"loader subprocess (mesh {mesh}) failed: {proc.stderr[-2000:]}")
            load = json.loads(proc.stdout.strip().splitlines()[-1])
            ratio = load["peak_growth"] / weight_bytes
            target = 1.3 if not quick and mesh == "data=1,model=8" else None
            where = "no mesh (one device)" if mesh == "none" else f"mesh {mesh} of 8 fake CPU devices"
            out.append({
                "name": f"pretrained: load_pretrained bf16 Llama-shaped ({s.layers} layers, D {s.width}, "
                        f"{s.heads}/{s.kv_heads} heads, d_ff {s.d_ff}, V {s.vocab}, {load['params']} parameters), "
                        f"{where}: peak RSS growth / checkpoint bytes",
                "baseline": "checkpoint bytes", "contender": "peak RSS growth", "baseline_bytes": weight_bytes,
                "contender_bytes": load["peak_growth"], "ratio": ratio,
                "ratio_definition": "peak RSS growth during load_pretrained / model.safetensors bytes",
                "target": target, "met": None if target is None else bool(ratio <= target),
                "mesh": mesh, "load_seconds": load["seconds"], "params": load["params"],
                "note": ("fake CPU devices are host memory: the growth includes the placed shards; on data=2 every "
                         "shard is held twice" if mesh != "none" else "the model on the first device")})
    return out


def run(quick: bool) -> list[dict]:
    return _run_gpt2(quick) + run_sharded_load(quick)


def _run_gpt2(quick: bool) -> list[dict]:
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
    for e in (run_sharded_load if "--sharded-load" in sys.argv else run)("--full" not in sys.argv):
        print(json.dumps({k: (float(v) if isinstance(v, np.floating) else v) for k, v in e.items()}))
