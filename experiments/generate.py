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

__all__ = ["main", "encode_prompt", "decode_tokens"]


def encode_prompt(prompt: str, data_info: dict, vocab_size: int):
    """Token ids [P] for ``prompt``: text through the run's vocabulary, or space-separated ids."""
    import numpy as np

    if data_info.get("kind") == "text":
        from tvvar.data import Vocab

        if prompt == "":
            raise ValueError("--prompt must hold at least one character")
        return Vocab.from_json(data_info["vocab"]).encode(prompt)
    parts = prompt.replace(",", " ").split()
    if not parts:
        raise ValueError(f"--prompt must be a space-separated list of token ids in [0, {vocab_size}) for this "
                         f"{data_info.get('kind', 'synthetic')!r} run, got an empty prompt")
    try:
        ids = np.array([int(p) for p in parts], np.int32)
    except ValueError:
        raise ValueError(f"--prompt must be a space-separated list of integer token ids in [0, {vocab_size}) for "
                         f"this {data_info.get('kind', 'synthetic')!r} run, got {prompt!r}") from None
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"--prompt token ids must lie in [0, {vocab_size}), got values in [{ids.min()}, {ids.max()}]")
    return ids


def decode_tokens(ids, data_info: dict) -> str:
    if data_info.get("kind") == "text":
        from tvvar.data import Vocab

        return Vocab.from_json(data_info["vocab"]).decode(ids)
    return " ".join(str(int(i)) for i in ids)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.generate",
        description="Continue a prompt with a trained tvvar run (cached autoregressive decoding, Eq. 44).",
    )
    p.add_argument("--run", type=Path, required=True,
                   help="run directory written by `python -m experiments.train --out DIR` (its latest checkpoint is used)")
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
                   help="nucleus sampling: the smallest set of tokens with total probability ≥ p, in (0, 1] (default: off)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the sampler (default 0)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step to load (default: the latest)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    import jax

    from tvvar.generate import generate
    from tvvar.train import load_run

    if args.max_new_tokens < 0:
        raise SystemExit(f"error: --max-new-tokens must be ≥ 0, got {args.max_new_tokens}")
    from tvvar.train import CheckpointError

    try:
        model, train_cfg, data_info = load_run(args.run, step=args.step)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        raise SystemExit(f"error: --run {args.run}: {e}") from None
    try:
        prompt_ids = encode_prompt(args.prompt, data_info, model.cfg.vocab_size)
        tokens = generate(model, jax.numpy.asarray(prompt_ids), args.max_new_tokens, key=jax.random.key(args.seed),
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    tokens = [int(t) for t in tokens]
    text = decode_tokens(tokens, data_info)
    new_text = decode_tokens(tokens[len(prompt_ids):], data_info)
    print(text)
    sys.stdout.flush()
    return {"tokens": tokens, "text": text, "new_text": new_text, "prompt_len": len(prompt_ids)}


if __name__ == "__main__":
    main()
