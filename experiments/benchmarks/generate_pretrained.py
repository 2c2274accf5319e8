"""Generation from a loaded checkpoint (issue 32 item 12): cached greedy decoding with tvvar
(``tvvar.generate.generate`` on the model from ``tvvar.pretrained.load_pretrained``) vs what users of the
checkpoint run instead, ``transformers.FlaxGPT2LMHeadModel.generate`` (greedy, ``do_sample=False``, its KV
cache, the whole call jitted as its users run it: prefill forward + ``lax.while_loop``), on the same weights and
the same prompt.

Full size: a GPT-2-124M-shaped checkpoint (12 layers, D 768, 12 heads, V 50257), random weights written to
safetensors by :func:`experiments.benchmarks.pretrained._write_reference`; batch 1, a prompt of 32 tokens,
32 new tokens. Target: tvvar's time ≤ 1.0 × Flax's, with identical tokens (``identical_tokens``; different
tokens fail the entry). Quick: 2 layers, D 128, 4 heads, V 1024, 8 + 8 tokens (ratio reported only).

Both calls include the prompt (prefill) and return the prompt followed by the new tokens; the entry's seconds
are per call and ``per_new_token_s`` divides them by the number of new tokens. Flax's end-of-sequence stop is
switched off (``eos_token_id=V``, an id the argmax never returns, and ``pad_token_id=0``), so both produce
exactly the requested number of tokens (random weights could otherwise emit token 50256 and stop early).
Compilation is excluded (both are warmed up first); the two run interleaved in one process; medians.
``transformers`` is a test dependency; without it the entry is skipped with the reason.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from experiments.benchmarks import pretrained as _pre
from experiments.benchmarks.timing import compare


@dataclass(frozen=True)
class Size:
    layers: int
    width: int
    heads: int
    vocab: int
    prompt: int
    new: int


FULL = Size(layers=12, width=768, heads=12, vocab=50257, prompt=32, new=32)
QUICK = Size(layers=2, width=128, heads=4, vocab=1024, prompt=8, new=8)


def run(quick: bool) -> list[dict]:
    s = QUICK if quick else FULL
    name = (f"generate_pretrained: GPT-2-shaped checkpoint ({s.layers} layers, D {s.width}, V {s.vocab}), batch 1, "
            f"prompt {s.prompt} + {s.new} new, greedy, tvvar generate vs transformers Flax generate")
    try:
        import transformers  # noqa: F401
    except ImportError:
        return [{"name": name, "skipped": "transformers is not installed"}]
    from tvvar.generate import generate
    from tvvar.pretrained import load_pretrained

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ref = _pre._write_reference(folder, _pre.Size(layers=s.layers, width=s.width, heads=s.heads,
                                                      vocab=s.vocab, T=s.prompt + s.new))
        model = load_pretrained(folder).model
    prompt = jax.random.randint(jax.random.key(1), (1, s.prompt), 0, s.vocab).astype(np.int32)

    def ours():
        return generate(model, prompt, s.new, temperature=0.0)

    with jax.numpy_rank_promotion("allow"):
        flax_generate = jax.jit(lambda params, ids: ref.generate(
            ids, params=params, max_new_tokens=s.new, do_sample=False, eos_token_id=s.vocab, pad_token_id=0).sequences)
        params = ref.params

        def theirs():
            return flax_generate(params, prompt)

        fast, want = np.asarray(ours()), np.asarray(theirs())  # also compiles both
        identical = bool(fast.shape == want.shape and np.array_equal(fast, want))
        mismatches = int(np.sum(fast != want)) if fast.shape == want.shape else -1
        entry = compare(name, ("FlaxGPT2LMHeadModel.generate (jitted)", theirs),
                        ("tvvar generate on load_pretrained model", ours),
                        target=None if quick else 1.0, repeats=7 if not quick else 5,
                        identical_tokens=identical, mismatched_tokens=mismatches, size=s.__dict__)
    entry["per_new_token_s"] = {"tvvar": entry["contender_s"] / s.new, "flax": entry["baseline_s"] / s.new}
    if not identical:
        entry["met"] = False  # a speed with different tokens does not count
    return [entry]


if __name__ == "__main__":
    for e in run("--full" not in sys.argv):
        print(json.dumps({k: (float(v) if isinstance(v, np.floating) else v) for k, v in e.items()}))
