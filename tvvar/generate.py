"""Autoregressive decoding of a TV-VAR language model (Definition 13, Eq. 44):

    u_t = argsoftmax( ũ_{1:N}ᵀ Ψ( Σ_{j<t} A_tj u_j ) / Ξ )

Two drivers that give the same tokens:

* :func:`generate` — the fast path. Each mixer keeps a cache (the decoding protocol: ``init_cache`` /
  ``step``; a KV cache for attention, the u_j for the dense TV-VAR, the state for the SSM), so a new
  token costs one row of the TV-VAR sum instead of the whole prefix. The prompt is *prefilled by
  stepping* (one ``lax.scan`` over its tokens through ``TVVARModel.decode_step``), then a second
  ``lax.scan`` samples ``max_new_tokens`` tokens; the whole thing is one jitted computation.
* :func:`generate_recompute` — the plain reference: for every new token, run the full forward on the
  whole prefix and read its last row.

Sampling is :func:`tvvar.core.argsoftmax` (Gumbel-max in float32+) with temperature Ξ
(``temperature=0`` is greedy), optional ``top_k`` / ``top_p``. The key of new token i is
``fold_in(key, i)`` in both drivers, so given the same key they draw the same tokens.

Index convention (DESIGN.md): the logits at position t predict token t + 1; the prompt occupies
positions 0..P−1 and new token i lands at position P + i.

A model whose decomposition lacks ``init_cache`` / ``step`` still decodes: :func:`generate` warns
and falls back to :func:`generate_recompute` (pass ``fallback=False`` to get an error instead).
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp

from tvvar.core import argsoftmax, check_token_ids
from tvvar.model import TVVARModel
from tvvar.typing import Array, PRNGKey

__all__ = ["generate", "generate_recompute", "length_limit", "supports_cache"]


def supports_cache(model: TVVARModel) -> bool:
    """True when every layer's mixer implements the decoding protocol (``init_cache`` and ``step``)."""
    return model.supports_decoding()


def length_limit(model: TVVARModel) -> int | None:
    """The longest sequence the model accepts: learned positions ``ModelConfig.max_len`` and any
    mixer with a fixed table length (e.g. the dense TV-VAR); None when unbounded."""
    limits = [model.cfg.max_len] if model.cfg.max_len is not None else []
    limits += [b.mixer.max_len for b in model.blocks if isinstance(getattr(b.mixer, "max_len", None), int)]
    return min(limits) if limits else None


def _validate(model, prompt, max_new_tokens, key, temperature, top_k, top_p):
    if not isinstance(model, TVVARModel):
        raise TypeError(f"model must be a tvvar.model.TVVARModel, got {type(model).__name__}")
    if model.cfg.mask != "causal":
        raise ValueError(f"autoregressive generation needs ModelConfig.mask='causal', got {model.cfg.mask!r}")
    if not (isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens must be an int ≥ 0, got {max_new_tokens!r}")
    prompt = jnp.asarray(prompt)
    squeeze = prompt.ndim == 1
    if squeeze:
        prompt = prompt[None]
    if prompt.ndim != 2:
        raise ValueError(f"prompt must have shape [B, P] or [P], got shape {prompt.shape}")
    if prompt.shape[0] < 1 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must hold at least one token per sequence, got shape {prompt.shape}")
    check_token_ids(prompt, model.cfg.vocab_size, name="prompt")
    prompt = prompt.astype(jnp.int32)
    total = prompt.shape[1] + max_new_tokens
    limit = length_limit(model)
    if limit is not None and total > limit:
        raise ValueError(f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} = {total} exceeds the "
                         f"model's max_len={limit}")
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
            and 0 <= temperature < math.inf):
        raise ValueError(f"temperature (Ξ) must be a finite number ≥ 0, got {temperature!r}")
    V = model.cfg.vocab_size
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= V):
        raise ValueError(f"top_k must be an int in [1, V={V}], got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    if temperature > 0 and key is None:
        raise ValueError("key must be a PRNG key when temperature > 0 (use temperature=0 for greedy decoding)")
    if key is None:
        key = jax.random.key(0)  # unused by greedy argsoftmax; keeps one traced signature
    return prompt, squeeze, key, float(temperature)


def _sample(key, i, logits, temperature, top_k, top_p):
    return argsoftmax(jax.random.fold_in(key, i), logits, temperature, top_k=top_k, top_p=top_p).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "temperature", "top_k", "top_p"))
def _generate_cached(model, prompt_BxP, key, *, max_new_tokens, temperature, top_k, top_p):
    B, P = prompt_BxP.shape
    cache = model.init_cache(B, P + max_new_tokens)

    # 1. prefill: positions 0..P−2 only fill the caches (their logits predict prompt tokens we already have)
    def feed(cache, ids_t):
        _, cache = model.decode_step(cache, ids_t)
        return cache, None

    cache, _ = jax.lax.scan(feed, cache, prompt_BxP[:, :-1].T)

    # 2. decode: position P−1+i yields the logits of new token i (Eq. 44), sampled by argsoftmax
    def step(carry, i):
        cache, ids_t = carry
        logits_BxV, cache = model.decode_step(cache, ids_t)
        nxt = _sample(key, i, logits_BxV, temperature, top_k, top_p)
        return (cache, nxt), nxt

    _, new_NxB = jax.lax.scan(step, (cache, prompt_BxP[:, -1]), jnp.arange(max_new_tokens))
    return jnp.concatenate([prompt_BxP, new_NxB.T.astype(jnp.int32)], axis=1)


def generate(
    model: TVVARModel,
    prompt: Array,
    max_new_tokens: int,
    *,
    key: PRNGKey | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    fallback: bool = True,
) -> Array:
    """Decode ``max_new_tokens`` tokens after ``prompt`` with per-mixer caches (jitted).

    prompt: int [B, P] (or [P]) token ids in [0, V), P ≥ 1. Returns int32 [B, P + max_new_tokens]
    (or [P + max_new_tokens]): the prompt followed by the new tokens. ``temperature`` Ξ = 0 is greedy
    (``key`` may be None); otherwise ``key`` is required. P + max_new_tokens must not exceed the
    model's length limit (:func:`length_limit`).

    If a mixer lacks ``init_cache``/``step``, warns and returns :func:`generate_recompute`'s tokens with
    ``padded=True`` (one compiled forward over a fixed window per token inside one jitted loop; same key scheme,
    same result); with ``fallback=False`` raises ``NotImplementedError`` instead.
    """
    prompt_BxP, squeeze, key, temperature = _validate(model, prompt, max_new_tokens, key, temperature, top_k, top_p)
    if not supports_cache(model):
        if not fallback:
            model.init_cache(1, 1)  # raises NotImplementedError naming the mixer
        warnings.warn(f"decomposition {model.cfg.decomposition!r} has no decoding cache (init_cache/step); "
                      "falling back to one compiled full forward per token", stacklevel=2)
        # one compilation for the whole loop (a fixed window of P + max_new_tokens positions): not one per prefix
        return generate_recompute(model, prompt, max_new_tokens, key=key, temperature=temperature,
                                  top_k=top_k, top_p=top_p, padded=True)
    if max_new_tokens == 0:
        out = prompt_BxP
    else:
        out = _generate_cached(model, prompt_BxP, key, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_k=top_k, top_p=top_p)
    return out[0] if squeeze else out


def _next_token_recompute(model, tokens_BxT, key, i, *, temperature, top_k, top_p):
    logits_BxV = model(tokens_BxT)[:, -1]
    return _sample(key, i, logits_BxV, temperature, top_k, top_p)


_next_token_recompute_jit = jax.jit(_next_token_recompute, static_argnames=("temperature", "top_k", "top_p"))


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "temperature", "top_k", "top_p"))
def _generate_recompute_padded(model, prompt_BxP, key, *, max_new_tokens, temperature, top_k, top_p):
    B, P = prompt_BxP.shape
    buf_BxT = jnp.concatenate([prompt_BxP, jnp.zeros((B, max_new_tokens), jnp.int32)], axis=1)

    def body(i, buf_BxT):
        # full forward on the whole window; causality makes row P−1+i blind to the zero padding after it
        logits_BxV = jax.lax.dynamic_index_in_dim(model(buf_BxT), P - 1 + i, axis=1, keepdims=False)
        nxt = _sample(key, i, logits_BxV, temperature, top_k, top_p)
        return jax.lax.dynamic_update_slice_in_dim(buf_BxT, nxt[:, None], P + i, axis=1)

    return jax.lax.fori_loop(0, max_new_tokens, body, buf_BxT)


def generate_recompute(
    model: TVVARModel,
    prompt: Array,
    max_new_tokens: int,
    *,
    key: PRNGKey | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    jit: bool = True,
    padded: bool = False,
) -> Array:
    """The reference: new token i = argsoftmax(last row of ``model(tokens[:, :P+i])``), recomputing the
    full forward over the whole prefix for every token (no cache; works for any decomposition).

    Same arguments, validation, key scheme and output as :func:`generate`. With ``jit=True`` each
    prefix length is compiled once (the fair baseline for timing; the first call pays
    ``max_new_tokens`` compilations); ``jit=False`` runs eagerly. ``padded=True`` instead runs the full
    forward on a fixed window of P + max_new_tokens positions (zeros after the prefix) and reads row
    P − 1 + i — one compilation, more work per token, the same tokens because the model is causal.
    """
    prompt_BxP, squeeze, key, temperature = _validate(model, prompt, max_new_tokens, key, temperature, top_k, top_p)
    if padded:
        tokens = _generate_recompute_padded(model, prompt_BxP, key, max_new_tokens=max_new_tokens,
                                            temperature=temperature, top_k=top_k, top_p=top_p)
        return tokens[0] if squeeze else tokens
    next_token = _next_token_recompute_jit if jit else _next_token_recompute
    tokens = prompt_BxP
    for i in range(max_new_tokens):
        nxt = next_token(model, tokens, key, jnp.int32(i), temperature=temperature, top_k=top_k, top_p=top_p)
        tokens = jnp.concatenate([tokens, nxt[:, None]], axis=1)
    return tokens[0] if squeeze else tokens
