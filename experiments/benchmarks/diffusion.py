"""LLaDA (Eq. 79) speed: the bidirectional forward vs the causal forward of the same model, and one
reverse-process step vs one forward pass.

* ``bidirectional vs causal forward``: the same :class:`TVVARModel` weights run with ``mask="causal"``
  and ``mask="bidirectional"`` (the attention fast path does the same work; only the support differs).
  Target ≤ 1.10×.
* ``sampling step vs forward``: :func:`tvvar.diffusion.generate` with k steps vs k jitted forward
  passes of the same [B, P + G] input, for both step paths (``jit_step=True``: denoiser + reveal fused
  into one jitted step; default: the denoiser called from Python, then the jitted reveal). Ratio = time
  per sampling step / time per forward pass. Target ≤ 1.10×. Full size: B 8, T 256, D 256, 4 layers, 16 steps
  (a forward ≥ 20 ms, so fixed per-step costs are weighed against real work), about a minute in all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.benchmarks.timing import compare
from tvvar import diffusion as D
from tvvar.model import ModelConfig, TVVARModel


def _forward(cfg: ModelConfig):
    model = TVVARModel(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))
    return lambda ids: fn(state, ids)


def run(quick: bool) -> list[dict]:
    # full size: a forward is ≥ 20 ms here, so a step's fixed cost (Gumbel noise, top-k, dispatch) is measured
    # against real work; 16 steps × 5 interleaved repeats keep the whole module under 2 minutes
    B, T, Dm, layers, steps = (8, 64, 64, 2, 16) if quick else (8, 256, 256, 4, 16)
    V = 32
    base = ModelConfig(V + 1, Dm, num_layers=layers, max_len=T, mixer={"num_heads": 4})
    ids = jax.random.randint(jax.random.key(0), (B, T), 0, V)
    causal = _forward(base)
    bidir = _forward(base.replace(mask="bidirectional"))
    repeats = 21 if quick else 5
    out = [compare("llada: bidirectional vs causal forward", ("causal forward", lambda: causal(ids)),
                   ("bidirectional forward", lambda: bidir(ids)), target=1.10, repeats=repeats,
                   shape={"B": B, "T": T, "D": Dm, "layers": layers})]

    P = T // 4
    G = T - P
    logits_fn = lambda x: bidir(x)[..., :V]  # noqa: E731
    prompt = ids[:, :P]
    x_full = jnp.concatenate([prompt, jnp.full((B, G), V, prompt.dtype)], axis=1)

    def k_forwards():
        y = None
        for _ in range(steps):
            y = logits_fn(x_full)
        return y

    for jit_step in (True, False):
        def sample(jit_step=jit_step):
            return D.generate(logits_fn, prompt, jax.random.key(1), mask_id=V, steps=steps, gen_length=G,
                              block_length=G // 2, temperature=1.0, jit_step=jit_step)

        label = "fused jitted step" if jit_step else "eager denoiser call + jitted reveal"
        out.append(compare(f"llada: sampling step vs forward pass ({label})", (f"{steps} forward passes", k_forwards),
                           (f"generate, {steps} steps", sample), target=None if quick else 1.10, repeats=repeats,
                           target_note="≤ 1.10 at full size only: at quick size a forward is ~2 ms and the "
                                       "step's fixed costs dominate (reported)",
                           shape={"B": B, "prompt": P, "gen_length": G, "steps": steps, "D": Dm, "layers": layers}))
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
