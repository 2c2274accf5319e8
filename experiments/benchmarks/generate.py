"""Generation (issue 4): cached decoding (``tvvar.generate.generate``) vs recomputation of the whole
prefix for every new token (``generate_recompute``, each prefix length compiled once).

Full size: attention model with 4 layers, width 256 (4 heads), batch 4, prompt 64 + 192 new tokens,
greedy (Ξ = 0). Target: ≥ 8× faster, with identical greedy tokens (recorded in the entry as
``identical_greedy_tokens``). Quick: 2 layers, width 64, batch 2, prompt 16 + 16 new (the ratio is
reported; at this size per-step overhead dominates and the target does not apply).

Compilation is excluded (the harness warms up first: one compile for the cached path, one per prefix
length for recomputation). Both contenders run interleaved in one process; medians are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx

from experiments.benchmarks.timing import compare
from tvvar.generate import generate, generate_recompute
from tvvar.model import ModelConfig, TVVARModel


@dataclass(frozen=True)
class Size:
    layers: int
    width: int
    heads: int
    batch: int
    prompt: int
    new: int
    vocab: int


FULL = Size(layers=4, width=256, heads=4, batch=4, prompt=64, new=192, vocab=256)
QUICK = Size(layers=2, width=64, heads=4, batch=2, prompt=16, new=16, vocab=64)


def run(quick: bool) -> list[dict]:
    s = QUICK if quick else FULL
    cfg = ModelConfig(vocab_size=s.vocab, d_model=s.width, num_layers=s.layers, decomposition="attention",
                      mixer={"num_heads": s.heads})
    model = TVVARModel(cfg, rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.key(1), (s.batch, s.prompt), 0, s.vocab)

    def cached():
        return generate(model, prompt, s.new, temperature=0.0)

    def recompute():
        return generate_recompute(model, prompt, s.new, temperature=0.0)

    fast, ref = np.asarray(cached()), np.asarray(recompute())  # also compiles every path
    identical = bool(np.array_equal(fast, ref))
    mismatches = int(np.sum(fast != ref))
    entry = compare(
        f"generate: cached vs recompute ({s.layers} layers, width {s.width}, batch {s.batch}, "
        f"prompt {s.prompt} + {s.new} new, greedy)",
        ("recompute the prefix per token", recompute),
        ("KV-cached decoding", cached),
        target=None if quick else 8.0,
        direction=">=",
        repeats=3,
        identical_greedy_tokens=identical,
        mismatched_tokens=mismatches,
        size=s.__dict__,
    )
    entry["new_tokens_per_s"] = {"cached": s.batch * s.new / entry["contender_s"],
                                 "recompute": s.batch * s.new / entry["baseline_s"]}
    if not identical:
        entry["met"] = False  # a speed-up with different tokens does not count
    return [entry]
