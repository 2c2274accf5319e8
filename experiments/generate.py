"""Sample from a trained run: ``python -m experiments.generate --run DIR --prompt "…"``.

Loads the latest checkpoint of ``DIR`` with :func:`tvvar.train.load_run` and continues the prompt with
:func:`tvvar.generate.generate` (cached decoding; u_t = argsoftmax(ũᵀΨ(Σ_j A_tj u_j)/Ξ), Eq. 44).

* character/byte-level runs (a text corpus): the prompt is text, encoded and decoded with the
  vocabulary saved with the run;
* synthetic runs (TV-VAR, Markov, HMM sources): the prompt is a space-separated list of token ids.

Prints the prompt followed by the continuation (text, or ids) and returns it from :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.common import fail

__all__ = ["main", "cli", "encode_prompt", "decode_tokens"]


def encode_prompt(prompt: str, data_info: dict, vocab_size: int):
    """Token ids [P] for ``prompt``: text through the run's vocabulary, or space-separated ids."""
    import numpy as np

    if data_info.get("kind") == "text":
        from tvvar.sources import Vocab

        if prompt == "":
            raise ValueError("--prompt must hold at least one character")
        try:
            return Vocab.from_json(data_info["vocab"]).encode(prompt)
        except ValueError as e:
            raise ValueError(f"--prompt {prompt!r}: {e} (the run's vocabulary is in its data.json)") from None
    parts = prompt.replace(",", " ").split()
    kind = data_info.get("kind")
    what = f"this {kind!r} run" if kind else "a run without data.json (its source unknown: prompts are token ids)"
    if not parts:
        raise ValueError(f"--prompt must be a space-separated list of token ids in [0, {vocab_size}) for "
                         f"{what}, got an empty prompt")
    try:
        ids = np.array([int(p) for p in parts], np.int32)
    except ValueError:
        raise ValueError(f"--prompt must be a space-separated list of integer token ids in [0, {vocab_size}) for "
                         f"{what}, got {prompt!r}") from None
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"--prompt token ids must lie in [0, {vocab_size}), got values in [{ids.min()}, {ids.max()}]")
    return ids


def decode_tokens(ids, data_info: dict) -> str:
    if data_info.get("kind") == "text":
        from tvvar.sources import Vocab

        return Vocab.from_json(data_info["vocab"]).decode(ids)
    return " ".join(str(int(i)) for i in ids)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.generate",
        description="Continue a prompt with a trained tvvar run (cached autoregressive decoding, Eq. 44).",
    )
    p.add_argument("--run", type=Path, required=True,
                   help="run directory written by `python -m experiments.train --out DIR` "
                        "(its latest checkpoint is used)")
    p.add_argument("--prompt", type=str, required=True,
                   help="text for a character/byte-level run; a space-separated list of token ids "
                        "(e.g. \"3 1 4\") for a synthetic run")
    p.add_argument("--max-new-tokens", type=int, default=100,
                   help="number of tokens to generate after the prompt (default 100; prompt + new must fit the "
                        "model's max_len if it has learned positions)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature Ξ of argsoftmax (default 1.0; 0 = greedy argmax)")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens (default: all)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set of tokens with total probability ≥ p, in (0, 1] "
                        "(default: off)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the sampler (default 0)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step to load (default: the latest)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable): the module that registers the run's own decomposition")
    return p


def _check_ranges(args) -> None:
    """What can be checked before the run is loaded, named by its flag."""
    import math

    if args.max_new_tokens < 0:
        fail(f"--max-new-tokens must be ≥ 0, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        fail(f"--temperature must be a finite number ≥ 0 (0: greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        fail(f"--top-k must be ≥ 1 (and at most the vocabulary size), got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        fail(f"--top-p must lie in (0, 1], got {args.top_p}")
    if args.step is not None and args.step < 0:
        fail(f"--step must be a committed checkpoint step ≥ 0, got {args.step}")
    if not args.run.is_dir():
        fail(f"--run {args.run}: no such run directory (write one with `python -m experiments.train --out DIR`)")


def main(argv: list[str] | None = None) -> dict:
    """Parse, load, generate; returns the tokens and text. Bad input raises ``SystemExit(2)`` after one
    ``error:`` paragraph on stderr."""
    args = _parser().parse_args(argv)
    _check_ranges(args)
    from experiments.train import import_modules

    try:
        import_modules(args.imports)
    except ValueError as e:
        fail(str(e))
    import jax

    from tvvar.generate import generate, length_limit
    from tvvar.train import CheckpointError, load_run

    try:
        model, train_cfg, data_info = load_run(args.run, step=args.step)
    except (FileNotFoundError, CheckpointError, ValueError, TypeError) as e:
        fail(f"--run {args.run}: {e}")
    if model.cfg.mask != "causal":
        fail(f"--run {args.run} holds a {model.cfg.mask} model (objective {train_cfg.objective!r}, e.g. a "
              "masked-diffusion LLaDA run); autoregressive decoding needs a causal one — sample a LLaDA run with "
              "tvvar.diffusion.generate")
    V = model.cfg.vocab_size
    if args.top_k is not None and args.top_k > V:
        fail(f"--top-k must be at most the run's vocabulary size {V}, got {args.top_k}")
    try:
        prompt_ids = encode_prompt(args.prompt, data_info, V)
    except ValueError as e:
        fail(str(e))
    limit = length_limit(model)
    if limit is not None and len(prompt_ids) + args.max_new_tokens > limit:
        fail(f"--prompt ({len(prompt_ids)} tokens) + --max-new-tokens {args.max_new_tokens} = "
              f"{len(prompt_ids) + args.max_new_tokens} exceeds the run's length limit {limit}")
    try:
        tokens = generate(model, jax.numpy.asarray(prompt_ids), args.max_new_tokens, key=jax.random.key(args.seed),
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    except ValueError as e:
        fail(str(e))
    tokens = [int(t) for t in tokens]
    text = decode_tokens(tokens, data_info)
    new_text = decode_tokens(tokens[len(prompt_ids):], data_info)
    print(text)
    sys.stdout.flush()
    return {"tokens": tokens, "text": text, "new_text": new_text, "prompt_len": len(prompt_ids)}


def cli() -> int:
    """Console-script entry: :func:`main` with the exit status as its value (0 on success)."""
    main()
    return 0


if __name__ == "__main__":
    main()
