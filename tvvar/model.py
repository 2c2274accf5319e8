"""A language model built from TV-VAR layers (Definition 13, Eq. 44).

    u_i = ũ_{x_i}  (unit sphere, Def. 11)                       embeddings
    x ← x + mixer(norm(x));   x ← x + Ψ(norm(x))       × L      layers (any registered decomposition)
    logits_i = ũᵀ norm(x_i) / Ξ                                 tied readout (Eq. 44)

``ModelConfig.pure(...)`` gives the single-layer TV-VAR of Eq. 44 itself: no norm, no residual, Ψ the
identity, so ``logits_i = ũᵀ Σ_{j∈S(i)} A[i, j] u_j / Ξ`` exactly.

Ψ is pluggable by name too (:func:`register_psi`): ``"ffn"`` (the Transformer's MLP) and
``"identity"`` are built in; other modules (e.g. a modern Hopfield layer) register their own.

Pretrained architectures (tvvar.pretrained) are the same pipeline with other registered components, each
exact, none a branch on an architecture name: norms (:func:`register_norm`: ``"rms"``, ``"layernorm"`` with
bias, ``"rms_offset"``: x/rms(x)·(1 + w), Gemma), Ψ ``"gelu_mlp"`` (GPT-2: biased W₂ gelu_tanh(W₁x + b₁) + b₂),
``"swiglu"`` (Llama: W_down(silu(W_gate x) ⊙ W_up x)) and ``"geglu"`` (Gemma: the tanh GELU in place of silu),
``embedding="plain"`` (the table itself, no sphere normalisation; the readout ũ is then the plain table, tied or
not), ``embed_scale`` (token vectors times a constant, Gemma's √D), learned absolute positions (``max_len``) and
``mixer_bias`` (the constant Σ_h W_o^hᵀ b_v^h + b_o of biased value/output projections, an intercept
added after the mixer so that the mixer's A[i, j] is unchanged).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tvvar.core import (
    Readout,
    SphereEmbedding,
    build,
    check_mask_kind,
    check_options,
    check_token_ids,
    constructor_options,
    get,
    lecun_normal,
    param,
)
from tvvar.registry import Registry
from tvvar.typing import Array, DType

__all__ = ["ModelConfig", "TVVARModel", "Block", "FFN", "GeluMLP", "SwiGLU", "RMSNorm", "LayerNorm",
           "PlainEmbedding", "PSI", "NORMS", "register_psi", "available_psi", "register_norm", "available_norms"]

#: Ψ layers by name (:mod:`tvvar.registry`): ``cls(d_model, *, rngs, dtype, **options)``; those defined outside
#: this module (``"hopfield"``, tvvar.theory.transformer.hopfield) register themselves when ``import tvvar``
#: imports them
PSI: Registry[Callable[..., nnx.Module]] = Registry("Ψ layer", "tvvar-psi")


def register_psi(name: str):
    """Register a Ψ constructor ``cls(d_model, *, rngs, dtype, **options)`` by name."""
    return PSI.register(name)


def available_psi() -> tuple[str, ...]:
    return PSI.names()


@register_psi("identity")
class Identity(nnx.Module):
    """Ψ = id: the pure TV-VAR of Eq. 44."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, dtype: DType = jnp.float32):
        self.d_model = d_model

    def __call__(self, x: Array) -> Array:
        return x


def _flat_matmul(x: Array, w: Array) -> Array:
    """x [..., D_in] @ w [D_in, D_out] as one 2-D matmul over the flattened positions.

    The same product as ``x @ w``, but XLA's CPU backend lowers the 3-D form's weight gradient (a contraction
    over both B and T) to a slower kernel: MLP forward+backward at B 4, T 512, D 512, d_ff 2048 measured
    0.45 s with ``x @ w`` vs 0.30 s flattened, interleaved in one process (72 % vs 110 % of a 2048³ matmul's rate).
    """
    lead = x.shape[:-1]
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(lead + (w.shape[-1],))


@register_psi("ffn")
class FFN(nnx.Module):
    """The Transformer's position-wise MLP: W₂ gelu(W₁ x)."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, dtype: DType = jnp.float32, d_ff: int | None = None):
        d_ff = d_ff or 4 * d_model
        self.w1 = param(lecun_normal(rngs.params(), (d_model, d_ff), d_model, dtype), "embed", "mlp")
        self.w2 = param(lecun_normal(rngs.params(), (d_ff, d_model), d_ff, dtype), "mlp", "embed")

    def __call__(self, x: Array) -> Array:
        h = jax.nn.gelu(_flat_matmul(x, self.w1[...].astype(x.dtype)))
        return _flat_matmul(h, self.w2[...].astype(x.dtype))


def _lead(v: Array, ndim: int) -> Array:
    """v [..., D] with leading unit axes up to rank ``ndim`` (the suite forbids implicit rank promotion)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


@register_psi("gelu_mlp")
class GeluMLP(nnx.Module):
    """GPT-2's MLP: W₂ gelu_tanh(W₁ x + b₁) + b₂ (the tanh approximation, HF ``gelu_new``); with
    ``approximate=False`` the exact (erf) GELU (HF ``gelu``, GPT-NeoX / Pythia)."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, dtype: DType = jnp.float32, d_ff: int | None = None,
                 approximate: bool = True):
        if not isinstance(approximate, bool):
            raise TypeError(f"approximate must be a bool, got {approximate!r}")
        self.approximate = approximate
        d_ff = d_ff or 4 * d_model
        self.w1 = param(lecun_normal(rngs.params(), (d_model, d_ff), d_model, dtype), "embed", "mlp")
        self.b1 = param(jnp.zeros((d_ff,), dtype), "mlp")
        self.w2 = param(lecun_normal(rngs.params(), (d_ff, d_model), d_ff, dtype), "mlp", "embed")
        self.b2 = param(jnp.zeros((d_model,), dtype), "embed")

    def __call__(self, x: Array) -> Array:
        c = lambda p: p[...].astype(x.dtype)  # noqa: E731
        h = jax.nn.gelu(_flat_matmul(x, c(self.w1)) + _lead(c(self.b1), x.ndim), approximate=self.approximate)
        return _flat_matmul(h, c(self.w2)) + _lead(c(self.b2), x.ndim)


@register_psi("swiglu")
class SwiGLU(nnx.Module):
    """Llama's MLP: W_down (silu(W_gate x) ⊙ W_up x), no biases."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, dtype: DType = jnp.float32, d_ff: int | None = None):
        d_ff = d_ff or 4 * d_model
        self.w_gate = param(lecun_normal(rngs.params(), (d_model, d_ff), d_model, dtype), "embed", "mlp")
        self.w_up = param(lecun_normal(rngs.params(), (d_model, d_ff), d_model, dtype), "embed", "mlp")
        self.w_down = param(lecun_normal(rngs.params(), (d_ff, d_model), d_ff, dtype), "mlp", "embed")

    @staticmethod
    def activation(z: Array) -> Array:
        return jax.nn.silu(z)

    def __call__(self, x: Array) -> Array:
        c = lambda p: p[...].astype(x.dtype)  # noqa: E731
        gate = self.activation(_flat_matmul(x, c(self.w_gate)))
        return _flat_matmul(gate * _flat_matmul(x, c(self.w_up)), c(self.w_down))


@register_psi("geglu")
class GeGLU(SwiGLU):
    """Gemma's MLP: W_down (gelu_tanh(W_gate x) ⊙ W_up x), no biases (HF ``gelu_pytorch_tanh``)."""

    @staticmethod
    def activation(z: Array) -> Array:
        return jax.nn.gelu(z, approximate=True)


#: norms by name (:mod:`tvvar.registry`): ``cls(d_model, *, dtype, eps)``; ``"none"`` is reserved (no norm)
NORMS: Registry[Callable[..., nnx.Module]] = Registry("norm", "tvvar-norms", reserved=("none",))


def register_norm(name: str):
    """Register a norm constructor ``cls(d_model, *, dtype, eps)`` by name (``"none"`` is reserved)."""
    return NORMS.register(name)


def available_norms() -> tuple[str, ...]:
    return ("none", *NORMS.names())


@register_norm("layernorm")
class LayerNorm(nnx.Module):
    """(x − mean(x)) / √(var(x) + ε) · g + b, statistics in float32 (GPT-2's LayerNorm)."""

    def __init__(self, d_model: int, *, dtype: DType = jnp.float32, eps: float = 1e-5):
        self.scale = param(jnp.ones((d_model,), dtype), "embed")
        self.bias = param(jnp.zeros((d_model,), dtype), "embed")
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mu = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mu), axis=-1, keepdims=True)
        y = (x32 - mu) * jax.lax.rsqrt(var + self.eps)
        g, b = (_lead(p[...].astype(y.dtype), y.ndim) for p in (self.scale, self.bias))
        return (y * g + b).astype(x.dtype)


class PlainEmbedding(nnx.Module):
    """Token embedding u = E[x] with the table itself as the token vectors (no sphere normalisation), the
    input embedding of GPT-2 and Llama; same interface as :class:`tvvar.core.SphereEmbedding`."""

    def __init__(self, vocab_size: int, d_model: int, *, rngs: nnx.Rngs, dtype: DType = jnp.float32):
        if vocab_size < 1 or d_model < 1:
            raise ValueError(f"vocab_size and d_model must be ≥ 1, got {vocab_size}, {d_model}")
        self.vocab_size, self.d_model = vocab_size, d_model
        self.table = param(0.02 * jax.random.normal(rngs.params(), (vocab_size, d_model), dtype), "vocab", "embed")

    def vectors(self) -> Array:
        """ũ_{1:N}: [V, D], the table."""
        return self.table[...]

    def __call__(self, ids: Array) -> Array:
        check_token_ids(ids, self.vocab_size)
        return jnp.take(self.vectors(), ids, axis=0, mode="fill", fill_value=jnp.nan)


_EMBEDDINGS: dict[str, Callable[..., nnx.Module]] = {"sphere": SphereEmbedding, "plain": PlainEmbedding}


@register_norm("rms")
class RMSNorm(nnx.Module):
    """x / rms(x) · g, statistics in float32."""

    def __init__(self, d_model: int, *, dtype: DType = jnp.float32, eps: float = 1e-6):
        self.scale = param(jnp.ones((d_model,), dtype), "embed")
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        g = self.scale[...].astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return (y * g).astype(x.dtype)


@register_norm("rms_offset")
class OffsetRMSNorm(RMSNorm):
    """x / rms(x) · (1 + g), statistics and the gain in float32 (Gemma's RMSNorm: its weights store g, zero at
    initialisation)."""

    def __init__(self, d_model: int, *, dtype: DType = jnp.float32, eps: float = 1e-6):
        super().__init__(d_model, dtype=dtype, eps=eps)
        self.scale = param(jnp.zeros((d_model,), dtype), "embed")

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        g = self.scale[...].astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return (y * (1 + g)).astype(x.dtype)


@dataclass(frozen=True)
class ModelConfig:
    """Every field is a choice of the paper's Eq. 44 pipeline; see the module docstring.

    vocab_size: V (size of the token set);  d_model: D;  num_layers: L;
    decomposition: a registered name (``tvvar.core.available()``); mixer: its options (e.g. num_heads);
    psi: a registered Ψ name; psi_options: its options; norm: "rms" or "none"; residual: x + f(x);
    tied: readout ũ tied to the input embedding; xi: Ξ > 0; mask: "causal" or "bidirectional";
    max_len: if set, learned absolute position vectors added to u (None: positions only through the
    causal mask, as in Eq. 44); param_dtype / dtype: parameter and compute dtypes;
    norm_eps: the norms' ε (None: each norm's default); embedding: "sphere" (Def. 11) or "plain" (the table
    itself); mixer_bias: a learned intercept added to every mixer output (biased value/output projections);
    embed_scale: a constant the token vectors are multiplied by in the compute dtype (Gemma's √D), or None;
    norm_position: "pre" (x + f(norm x), the default) or "post" (x + norm(f(x)), OLMo 2's sublayer norms) or
    "sandwich" (x + norm_out(f(norm_in x)), Gemma 2: four norms a layer);
    parallel_residual: x ← x + mixer(norm₁ x) + Ψ(norm₂ x), both read the layer's input (GPT-NeoX / Pythia);
    layer_mixer: None, or one dict per layer of mixer options overriding ``mixer`` in that layer (Gemma 2's sliding
    window on alternate layers: ``{"window": w}`` or ``{}``);
    logit_softcap: None, or c > 0: the logits are soft-capped, z ↦ c·tanh(z/c) (Gemma 2's final_logit_softcapping).
    """

    vocab_size: int
    d_model: int = 64
    num_layers: int = 2
    decomposition: str = "attention"
    mixer: dict[str, Any] = field(default_factory=dict)
    psi: str = "ffn"
    psi_options: dict[str, Any] = field(default_factory=dict)
    norm: str = "rms"
    residual: bool = True
    tied: bool = True
    xi: float = 1.0
    mask: str = "causal"
    max_len: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    norm_eps: float | None = None
    embedding: str = "sphere"
    mixer_bias: bool = False
    embed_scale: float | None = None
    norm_position: str = "pre"
    parallel_residual: bool = False
    layer_mixer: tuple[dict[str, Any], ...] | None = None
    logit_softcap: float | None = None

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not (is_int(self.vocab_size) and self.vocab_size >= 2):
            raise ValueError(f"vocab_size must be an int ≥ 2, got {self.vocab_size!r}")
        if not (is_int(self.d_model) and self.d_model >= 1):
            raise ValueError(f"d_model must be an int ≥ 1, got {self.d_model!r}")
        if not (is_int(self.num_layers) and self.num_layers >= 1):
            raise ValueError(f"num_layers must be an int ≥ 1, got {self.num_layers!r}")
        if not isinstance(self.decomposition, str):
            raise TypeError(f"decomposition must be a registered name (str), got {type(self.decomposition).__name__}")
        # options are checked against the constructor now, not when the first Block is built
        check_options(self.mixer, constructor_options(get(self.decomposition)),
                      what=f"decomposition {self.decomposition!r}", name="mixer")
        if not (isinstance(self.psi, str) and self.psi in PSI):
            raise ValueError(f"unknown psi {self.psi!r}; available: {', '.join(available_psi())}")
        check_options(self.psi_options, constructor_options(PSI[self.psi]), what=f"psi {self.psi!r}",
                      name="psi_options")
        if self.norm not in available_norms():
            raise ValueError(f"norm must be one of {available_norms()}, got {self.norm!r}")
        if self.norm_eps is not None and not (isinstance(self.norm_eps, (int, float)) and not isinstance(
                self.norm_eps, bool) and math.isfinite(self.norm_eps) and self.norm_eps > 0):
            raise ValueError(f"norm_eps must be a finite number > 0 or None, got {self.norm_eps!r}")
        if self.embedding not in _EMBEDDINGS:
            raise ValueError(f"embedding must be one of {tuple(_EMBEDDINGS)}, got {self.embedding!r}")
        for name in ("residual", "tied", "mixer_bias", "parallel_residual"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not (isinstance(self.xi, (int, float)) and not isinstance(self.xi, bool)
                and math.isfinite(self.xi) and self.xi > 0):
            raise ValueError(f"xi (the temperature Ξ) must be a finite number > 0, got {self.xi!r}")
        if self.embed_scale is not None and not (isinstance(self.embed_scale, (int, float)) and not isinstance(
                self.embed_scale, bool) and math.isfinite(self.embed_scale) and self.embed_scale > 0):
            raise ValueError(f"embed_scale must be a finite number > 0 or None, got {self.embed_scale!r}")
        if self.norm_position not in ("pre", "post", "sandwich"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {self.norm_position!r} (or 'sandwich': "
                             "Gemma 2's pre- and post-sublayer norms)")
        if self.layer_mixer is not None:
            if not (isinstance(self.layer_mixer, (tuple, list)) and len(self.layer_mixer) == self.num_layers
                    and all(isinstance(o, dict) for o in self.layer_mixer)):
                raise ValueError(f"layer_mixer must be None or one dict of mixer options per layer "
                                 f"(num_layers={self.num_layers}), got {self.layer_mixer!r}")
            for i, o in enumerate(self.layer_mixer):
                check_options({**self.mixer, **o}, constructor_options(get(self.decomposition)),
                              what=f"decomposition {self.decomposition!r} (layer {i})", name="layer_mixer")
        if self.logit_softcap is not None and not (isinstance(self.logit_softcap, (int, float)) and not isinstance(
                self.logit_softcap, bool) and math.isfinite(self.logit_softcap) and self.logit_softcap > 0):
            raise ValueError(f"logit_softcap must be a finite number > 0 or None, got {self.logit_softcap!r}")
        if self.parallel_residual and not (self.residual and self.norm_position == "pre" and self.psi != "identity"):
            raise ValueError("parallel_residual needs residual=True, norm_position='pre' and a Ψ other than 'identity'")
        check_mask_kind(self.mask)
        if self.max_len is not None and not (is_int(self.max_len) and self.max_len >= 1):
            raise ValueError(f"max_len must be an int ≥ 1 or None, got {self.max_len!r}")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in ("float32", "float64", "bfloat16", "float16"):
                raise ValueError(f"{name} must be float32, float64, bfloat16 or float16, got {getattr(self, name)!r}")

    @classmethod
    def pure(cls, vocab_size: int, d_model: int, decomposition: str = "attention", **kw) -> ModelConfig:
        """The single-layer TV-VAR of Eq. 44: logits = ũᵀ Σ_j A[i, j] u_j / Ξ."""
        return cls(vocab_size, d_model, num_layers=1, decomposition=decomposition, psi="identity",
                   norm="none", residual=False, **kw)

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def mixer_options(self, layer: int) -> dict[str, Any]:
        """The mixer options of layer ``layer``: ``mixer`` updated by ``layer_mixer[layer]`` when set."""
        return dict(self.mixer) if self.layer_mixer is None else {**self.mixer, **self.layer_mixer[layer]}


def make_norm(cfg: ModelConfig) -> nnx.Module | None:
    """The norm ``cfg.norm`` (None for "none") with ``cfg.norm_eps`` if set."""
    if cfg.norm == "none":
        return None
    kw = {} if cfg.norm_eps is None else {"eps": float(cfg.norm_eps)}
    return NORMS[cfg.norm](cfg.d_model, dtype=jnp.dtype(cfg.param_dtype), **kw)


class Block(nnx.Module):
    """One layer: x ← x + mixer(norm(x)) (+ b); x ← x + Ψ(norm(x)) (without residual/norm when disabled); with
    ``norm_position="post"``: x ← x + norm(mixer(x) + b); x ← x + norm(Ψ(x)) (OLMo 2); ``"sandwich"``:
    x ← x + norm1_out(mixer(norm1 x) + b); x ← x + norm2_out(Ψ(norm2 x)) (Gemma 2). ``mixer_options`` (default
    ``cfg.mixer``) are this layer's mixer options (:meth:`ModelConfig.mixer_options`)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, mixer_options: dict[str, Any] | None = None):
        pdt = jnp.dtype(cfg.param_dtype)
        self.residual = cfg.residual
        self.post_norm = cfg.norm_position == "post"
        self.parallel = cfg.parallel_residual
        self.norm1 = make_norm(cfg)
        self.norm2 = make_norm(cfg) if cfg.psi != "identity" else None
        sandwich = cfg.norm_position == "sandwich"
        self.norm1_out = make_norm(cfg) if sandwich else None
        self.norm2_out = make_norm(cfg) if sandwich and cfg.psi != "identity" else None
        options = cfg.mixer if mixer_options is None else mixer_options
        self.mixer = build(cfg.decomposition, cfg.d_model, rngs=rngs, mask=cfg.mask, dtype=pdt, **options)
        self.mixer_bias = param(jnp.zeros((cfg.d_model,), pdt), "embed") if cfg.mixer_bias else None
        self.psi = PSI[cfg.psi](cfg.d_model, rngs=rngs, dtype=pdt, **cfg.psi_options)

    def _sub(self, f, norm, x, norm_out=None):
        if norm is None:
            y = f(x)
        else:
            y = norm(f(x)) if self.post_norm else f(norm(x))
        if norm_out is not None:
            y = norm_out(y)
        return x + y if self.residual else y

    def mixer_input(self, x: Array) -> Array:
        """The u the mixer reads from the layer's input x (its A_tj act on these): norm1(x) with pre-norms, x
        itself with post-norms or no norm."""
        return self.norm1(x) if self.norm1 is not None and not self.post_norm else x

    def _mix(self, x: Array) -> Array:
        y = self.mixer(x)
        return y + _lead(self.mixer_bias[...].astype(y.dtype), y.ndim) if self.mixer_bias is not None else y

    def __call__(self, x: Array) -> Array:
        if self.parallel:  # both sublayers read the layer's input: x + mixer(norm₁ x) + Ψ(norm₂ x)
            return self._sub(self._mix, self.norm1, x) + self.psi(self.norm2(x) if self.norm2 is not None else x)
        x = self._sub(self._mix, self.norm1, x, self.norm1_out)
        if isinstance(self.psi, Identity):
            return x
        return self._sub(self.psi, self.norm2, x, self.norm2_out)


    def step(self, cache: Any, x_t: Array) -> tuple[Array, Any]:
        """One position of :meth:`__call__` (decoding protocol): x_t [B, D] → [B, D]; norms and Ψ are
        position-wise, so only the mixer carries state (``cache``, from ``mixer.init_cache``)."""
        h_t, cache = self.mixer.step(cache, self.mixer_input(x_t))
        if self.mixer_bias is not None:
            h_t = h_t + _lead(self.mixer_bias[...].astype(h_t.dtype), h_t.ndim)
        if self.post_norm and self.norm1 is not None:
            h_t = self.norm1(h_t)
        if self.norm1_out is not None:
            h_t = self.norm1_out(h_t)
        if self.parallel:
            return x_t + h_t + self.psi(self.norm2(x_t) if self.norm2 is not None else x_t), cache
        x_t = x_t + h_t if self.residual else h_t
        if isinstance(self.psi, Identity):
            return x_t, cache
        return self._sub(self.psi, self.norm2, x_t, self.norm2_out), cache


class TVVARModel(nnx.Module):
    """Token ids [B, T] → logits [B, T, V] (float32); row i predicts token i + 1.

    Concrete ids are checked (integer, rank 2, T ≥ 1, values in [0, V)). Under ``jit`` the ids are traced
    and their values cannot be checked: an id ≥ V or < 0 then reads a NaN token vector, so its row's logits
    are NaN (and other rows too wherever a zero weight multiplies it, 0·NaN = NaN) — never a silently
    clamped token. Validate before jitting.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        self.embed = _EMBEDDINGS[cfg.embedding](cfg.vocab_size, cfg.d_model, rngs=rngs, dtype=pdt)
        self.pos = (
            param(0.02 * jax.random.normal(rngs.params(), (cfg.max_len, cfg.d_model), pdt), None, "embed")
            if cfg.max_len is not None
            else None
        )
        self.blocks = nnx.List([Block(cfg, rngs=rngs, mixer_options=cfg.mixer_options(i))
                                for i in range(cfg.num_layers)])
        self.final_norm = make_norm(cfg)
        head = self.embed if cfg.tied else (
            None if cfg.embedding == "sphere" else _EMBEDDINGS[cfg.embedding](cfg.vocab_size, cfg.d_model,
                                                                               rngs=rngs, dtype=pdt))
        self.readout = Readout(cfg.vocab_size, cfg.d_model, rngs=rngs, xi=cfg.xi, dtype=pdt, embedding=head)
        self.readout.tied = cfg.tied

    def embed_tokens(self, ids: Array) -> Array:
        """u = ũ_{ids} (+ positions): [B, T, D] in the compute dtype."""
        check_token_ids(ids, self.cfg.vocab_size, ndim=2)
        u = self.embed(ids)
        if self.pos is not None:
            T = ids.shape[1]
            if T > self.cfg.max_len:
                raise ValueError(f"sequence length T={T} exceeds max_len={self.cfg.max_len}")
            u = u + self.pos[...][None, :T]
        return self._scaled(u.astype(jnp.dtype(self.cfg.dtype)))

    def _scaled(self, u: Array) -> Array:
        """u · embed_scale, the constant rounded to u's dtype first (as Gemma's PyTorch code does)."""
        s = self.cfg.embed_scale
        return u if s is None else u * jnp.asarray(s, u.dtype)

    def hidden(self, ids: Array) -> Array:
        """The vector Ψ(Σ_j A[i, j] u_j) fed to the readout: [B, T, D]."""
        x = self.embed_tokens(ids)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x) if self.final_norm is not None else x

    def _capped(self, logits: Array) -> Array:
        """logits ↦ c·tanh(logits/c) with c = ``cfg.logit_softcap`` (Gemma 2), the logits themselves without it."""
        c = self.cfg.logit_softcap
        return logits if c is None else c * jnp.tanh(logits / c)

    def __call__(self, ids: Array) -> Array:
        h = self.hidden(ids)
        return self._capped(self.readout(h.astype(jnp.promote_types(h.dtype, jnp.float32))))

    # ---- decoding protocol (tvvar.generate) ----------------------------------------------------

    def supports_decoding(self) -> bool:
        """True when every layer's mixer implements ``init_cache`` and ``step``."""
        return all(callable(getattr(b.mixer, "init_cache", None)) and callable(getattr(b.mixer, "step", None))
                   for b in self.blocks)

    def init_cache(self, batch_size: int, max_len: int, dtype: DType | None = None) -> dict:
        """Empty decoding state for ``max_len`` positions: {"index": int32 t, "blocks": [mixer caches]}.

        ``dtype`` defaults to the compute dtype. Raises if the mask is not causal, if a mixer has no
        ``init_cache`` (use ``tvvar.generate.generate_recompute``), or if ``max_len`` exceeds the
        learned positions.
        """
        if self.cfg.mask != "causal":
            raise ValueError(f"decoding needs ModelConfig.mask='causal', got {self.cfg.mask!r}")
        if not (isinstance(max_len, int) and max_len >= 1):
            raise ValueError(f"max_len must be an int ≥ 1, got {max_len!r}")
        if self.cfg.max_len is not None and max_len > self.cfg.max_len:
            raise ValueError(f"max_len={max_len} exceeds the model's learned positions "
                             f"ModelConfig.max_len={self.cfg.max_len}")
        missing = sorted({type(b.mixer).__name__ for b in self.blocks
                          if not callable(getattr(b.mixer, "init_cache", None))})
        if missing:
            raise NotImplementedError(
                f"decomposition {self.cfg.decomposition!r} ({', '.join(missing)}) has no init_cache/step; "
                "decode with tvvar.generate.generate_recompute instead")
        dtype = jnp.dtype(self.cfg.dtype) if dtype is None else jnp.dtype(dtype)
        return {"index": jnp.zeros((), jnp.int32),
                "blocks": [b.mixer.init_cache(batch_size, max_len, dtype) for b in self.blocks]}

    def decode_step(self, cache: dict, ids_t: Array) -> tuple[Array, dict]:
        """Feed token ids_t [B] at position t = ``cache["index"]``: logits [B, V] (float32) equal to row t
        of ``self(ids)`` on the full sequence, and the advanced cache."""
        check_token_ids(ids_t, self.cfg.vocab_size, name="ids_t", ndim=1)
        t = cache["index"]
        x_t = self.embed(ids_t)
        if self.pos is not None:
            if not isinstance(t, jax.core.Tracer) and int(t) >= self.cfg.max_len:
                raise ValueError(f"position t={int(t)} exceeds max_len={self.cfg.max_len}")
            x_t = x_t + jax.lax.dynamic_index_in_dim(self.pos[...], t, axis=0, keepdims=True)  # [1, D]
        x_t = self._scaled(x_t.astype(jnp.dtype(self.cfg.dtype)))
        new_blocks = []
        for block, c in zip(self.blocks, cache["blocks"], strict=True):
            x_t, c = block.step(c, x_t)
            new_blocks.append(c)
        h_t = self.final_norm(x_t) if self.final_norm is not None else x_t
        logits = self._capped(self.readout(h_t.astype(jnp.promote_types(h_t.dtype, jnp.float32))))
        return logits, {"index": t + 1, "blocks": new_blocks}
