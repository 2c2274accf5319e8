"""Section III bookkeeping cost: the information density and the Eq. 18 step vs the forward passes they need.

Both contenders need the model's conditionals under every prompt of the set, i.e. K·B forward passes of
[s_k ‖ u_b]; the Bayes marginal over the prompt set is then O(B·K·T·V) extra work. The baselines are exactly
those K·B passes:

- ``information density``: log-softmax of the K·B forwards (baseline) vs
  :func:`tvvar.theory.information.directed.information_density` of the same sequences (contender: the same forwards, the
  Bayes prompt-free marginal and the per-token density). Target ≤ 1.5.
- ``Eq. 18 step``: the gradient of the mean cross-entropy over the K·B sequences (baseline) vs the gradient of
  :func:`tvvar.theory.information.directed.eq18_loss` at K = 16 (contender: exact I(S; U_t | U_{<t}) over the prompt set
  plus λ · cross-entropy). Target ≤ 1.5. A cross-entropy step over the B paths alone is K times cheaper; Eq. 18
  cannot be computed from fewer than K·B forwards, so that comparison would measure K, not the bookkeeping.
- ``model scale`` (issue 32 item 10): a GPT-2-124M-shaped random model (12 layers, D 768, 12 heads, V 50257),
  K = 16 prompts of 4 tokens, B = 64 continuations of 32 tokens — K·B = 1024 forwards whose [B, K, T, V]
  log-conditionals would be 6.6 GB in float32. Contender:
  :func:`tvvar.theory.information.directed.model_information_density` (the forwards in chunks of 32 pairs, each
  reduced to the sampled tokens' log-likelihoods, then the Bayes prompt-free marginal and the density);
  baseline: the same chunked forwards reduced by a max over V (the least that keeps every logit computed).
  Target ≤ 1.2 at full size (``--quick`` only reports: at D 128 the softmax over V is a larger share of a
  forward than at D 768); the peak RSS of each run (the high-water mark reset before it) and the weights' size are
  reported. ``--quick``: 2 layers, D 128, V 4096, K 4, B 8, T 16. Alone:
  ``python -m experiments.benchmarks.information [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.benchmarks.timing import compare
from tvvar.model import ModelConfig, TVVARModel
from tvvar.theory.information import directed as I


def run(quick: bool) -> list[dict]:
    K, n, T, V = 16, 4, 28, 16
    B, D, L = (4, 32, 1) if quick else (8, 64, 2)
    cfg = ModelConfig(vocab_size=V, d_model=D, num_layers=L, decomposition="attention", max_len=n + T)
    model = TVVARModel(cfg, rngs=nnx.Rngs(0))
    gd, state = nnx.split(model)
    keys = jax.random.split(jax.random.key(1), 4)
    prompts = jax.random.randint(keys[0], (K, n), 0, V)
    u = jax.random.randint(keys[1], (B, T), 0, V)
    k = jax.random.randint(keys[2], (B,), 0, K)
    log_prior = jax.nn.log_softmax(jax.random.normal(keys[3], (K,)))
    ids = jnp.concatenate([jnp.broadcast_to(prompts[None], (B, K, n)),
                           jnp.broadcast_to(u[:, None, :], (B, K, T))], axis=-1).reshape(B * K, n + T)

    @jax.jit
    def forwards(st, ids):
        return jax.nn.log_softmax(nnx.merge(gd, st)(ids[:, :-1]).astype(jnp.float32), axis=-1)

    @jax.jit
    def density(st, prompts, u, k, log_prior):
        lc = I._log_cond_traced(nnx.merge(gd, st), prompts, u)
        return I.information_density(lc, log_prior, u, k)

    def ce(st, ids):
        logp = jax.nn.log_softmax(nnx.merge(gd, st)(ids[:, :-1]).astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    def eq18(st, prompts, u, k, log_prior):
        return I.eq18_loss(nnx.merge(gd, st), prompts, log_prior, u, k, 1.0)[0]

    ce_grad = jax.jit(jax.grad(ce))
    eq18_grad = jax.jit(jax.grad(eq18))
    shape = {"K": K, "B": B, "n": n, "T": T, "V": V, "D": D, "layers": L, "sequences": K * B}
    return [
        compare("information density of B paths under K prompts vs the K·B forwards",
                ("K·B forwards", lambda: forwards(state, ids)),
                ("information_density", lambda: density(state, prompts, u, k, log_prior)),
                target=1.5, **shape),
        compare("Eq. 18 gradient step vs a cross-entropy gradient over the same K·B sequences",
                ("cross-entropy grad", lambda: ce_grad(state, ids)),
                ("Eq. 18 grad", lambda: eq18_grad(state, prompts, u, k, log_prior)),
                target=1.5, **shape),
        scale(quick),
    ]


def _hwm() -> int:
    """Peak resident memory of this process in bytes (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@nnx.jit
def _forward_max(model, ids):
    """The baseline's chunk: the same forward as the contender's, its logits reduced by a max over V only."""
    n = ids.shape[1] - _SCALE_T
    return jnp.max(model(ids[:, :-1])[:, n - 1:].astype(jnp.float32), axis=-1)


_SCALE_T = 32


def scale(quick: bool) -> dict:
    """The model-scale entry (module docstring)."""
    global _SCALE_T
    if quick:
        L, D, H, V, K, B, T, n, chunk, repeats = 2, 128, 4, 4096, 4, 8, 16, 4, 8, 5
    else:
        L, D, H, V, K, B, T, n, chunk, repeats = 12, 768, 12, 50257, 16, 64, 32, 4, 32, 1
    _SCALE_T = T
    cfg = ModelConfig(vocab_size=V, d_model=D, num_layers=L, decomposition="attention",
                      mixer={"num_heads": H, "qk_bias": True}, psi="gelu_mlp", psi_options={"d_ff": 4 * D},
                      norm="layernorm", norm_eps=1e-5, tied=True, max_len=1024, embedding="plain", mixer_bias=True)
    model = TVVARModel(cfg, rngs=nnx.Rngs(0))
    weights = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model)))
    keys = jax.random.split(jax.random.key(1), 4)
    prompts = jax.random.randint(keys[0], (K, n), 0, V)
    u = jax.random.randint(keys[1], (B, T), 0, V)
    k = jax.random.randint(keys[2], (B,), 0, K)
    log_prior = jax.nn.log_softmax(jax.random.normal(keys[3], (K,)))
    ids = np.asarray(I._all_prompt_ids(prompts, u))                           # [B·K, n + T], as the contender
    chunks = [jnp.asarray(ids[i:i + chunk]) for i in range(0, B * K, chunk)]

    def forwards():
        return jnp.stack([_forward_max(model, c) for c in chunks])

    def density():
        return I.model_information_density(model, prompts, log_prior, u, k, chunk=chunk)

    # compile both chunk programs on one chunk each (not on a whole pass: at full size a pass is minutes on one
    # core), and the contender's [B, K, T] density program
    t0 = time.perf_counter()
    jax.block_until_ready(_forward_max(model, chunks[0]))
    jax.block_until_ready(I._chunk_token_logliks(model, chunks[0], n=n, mask_id=None))
    jax.block_until_ready(I.token_information_density(jnp.full((B, K, T), -1.0), log_prior, k))
    compile_s = time.perf_counter() - t0
    base_rss = _hwm()
    fns = {"K·B forwards": forwards, "model_information_density": density}
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, int] = dict.fromkeys(fns, 0)
    reset = True
    for _ in range(repeats):                                                  # interleaved, each run timed
        for name, fn in fns.items():
            reset &= _reset_hwm()
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks[name], _hwm())
    med = {name: statistics.median(v) for name, v in times.items()}
    b, c = med["K·B forwards"], med["model_information_density"]
    full_array = B * K * T * V * 4
    return {"name": "model scale: information density of B paths under K prompts (GPT-2-shaped) vs the K·B forwards"
                    + (" [quick]" if quick else ""),
            "baseline": "K·B forwards", "contender": "model_information_density", "baseline_s": b,
            "contender_s": c, "ratio": c / b, "ratio_definition": "contender_s / baseline_s",
            "target": None if quick else 1.2, "met": None if quick else c / b <= 1.2,
            "timed_runs_each": repeats, "times_s": times,
            "peak_rss_MiB": {kk: v / 2**20 for kk, v in peaks.items()}, "peak_rss_reset": reset,
            "rss_before_MiB": base_rss / 2**20, "weights_MiB": weights / 2**20,
            "unchunked_log_cond_MiB": full_array / 2**20, "compile_s": compile_s,
            "layers": L, "D": D, "heads": H, "V": V, "K": K, "B": B, "n": n, "T": T, "chunk": chunk,
            "sequences": K * B, "cores": len(__import__("os").sched_getaffinity(0))}


def _main() -> None:
    p = argparse.ArgumentParser(description="the model-scale information-density entry alone")
    p.add_argument("--quick", action="store_true")
    print(json.dumps(scale(p.parse_args().quick), indent=1, ensure_ascii=False))


if __name__ == "__main__":
    _main()
