"""Definition 13 of Bai (arXiv:2511.01202): the time-varying vector autoregression (TV-VAR),

    u_t = argsoftmax( ũ_{1:N}ᵀ Ψ( Σ_{j<t} A_tj u_j ) / Ξ )                      (Eq. 44)

This module holds what every architecture shares and nothing any one of them owns:

* :class:`Mixer` — the abstract decomposition of the coefficients A_tj.  Two faces of one linear map:
  ``coefficients(u)`` (the explicit tensor, the definition) and ``__call__(u)`` (the fast path);
  the law that ties them is ``mixer(u) == mix_dense(mixer.coefficients(u), u)``.
* a registry of decompositions by name (:func:`register`, :func:`build`, :func:`available`);
* :func:`mix_dense` — the reference Σ_j A[i, j] u_j;
* :func:`support_mask` — the set S(i) of admissible j for a mask kind;
* token vectors on the unit sphere (Definition 11), the readout ũᵀh/Ξ (Eq. 44), and
  :func:`argsoftmax` — sampling with temperature, greedy as Ξ → 0, optional top-k / top-p.

Index convention (see DESIGN.md): arrays are 0-based; row i of a coefficient tensor predicts token
i + 1, ``h_i = Σ_{j∈S(i)} A[i, j] u_j`` with S(i) = {0..i} (causal) or all j (bidirectional). Code
``A[i, j]`` is the paper's A_{t,j'} with t = i + 2, j' = j + 1.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from tvvar.registry import Registry
from tvvar.typing import MASK_KINDS, Array, DType, MaskKind, PRNGKey

__all__ = [
    "Mixer",
    "register",
    "build",
    "available",
    "get",
    "mix_dense",
    "support_mask",
    "check_mask_kind",
    "check_u",
    "masked_fill_value",
    "param",
    "sphere",
    "SphereEmbedding",
    "Readout",
    "argsoftmax",
    "check_token_ids",
    "check_cache_args",
    "check_step_input",
    "LRUCache",
    "constructor_options",
    "check_options",
    "mixer_options",
    "lecun_normal",
    "glorot",
]


# --------------------------------------------------------------------------------------------------
# Validation helpers (bad input gets an error naming the argument, never a silent wrong answer)
# --------------------------------------------------------------------------------------------------


def check_mask_kind(mask: str) -> MaskKind:
    if mask not in MASK_KINDS:
        raise ValueError(f"mask must be one of {MASK_KINDS}, got {mask!r}")
    return mask  # type: ignore[return-value]


def check_u(u: Array, d_in: int, *, name: str = "u") -> None:
    """Check that ``u`` is a float array of shape [B, T, d_in]."""
    shape = getattr(u, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"{name} must have shape [B, T, D={d_in}] (rank 3), got shape {shape}")
    if shape[-1] != d_in:
        raise ValueError(f"{name} must have width D={d_in} in its last axis, got shape {tuple(shape)}")
    if not jnp.issubdtype(u.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating array, got dtype {u.dtype}")


def check_token_ids(ids: Array, vocab_size: int, *, name: str = "ids", ndim: int | None = None) -> None:
    """Token ids must be a non-empty integer array (of rank ``ndim`` if given); when concrete, every id
    must lie in [0, vocab_size).

    The range check needs values, so it runs only on concrete arrays. Under ``jit`` a traced id cannot
    raise: an id outside [0, V) then reads ``jnp.take``'s fill value (NaN token vectors, NaN logits), which
    is why every public entry point calls this on its concrete input before tracing.
    """
    shape, dtype = getattr(ids, "shape", None), getattr(ids, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{name} must be an integer array of token ids, got {type(ids).__name__}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array of token ids, got dtype {dtype}")
    if ndim is not None and len(shape) != ndim:
        axes = {1: "[B]", 2: "[B, T]"}.get(ndim, f"rank {ndim}")
        raise ValueError(f"{name} must have shape {axes} (rank {ndim}), got shape {tuple(shape)}")
    if math.prod(shape) == 0:
        raise ValueError(f"{name} must hold at least one token (T ≥ 1, B ≥ 1), got shape {tuple(shape)}")
    if not isinstance(ids, jax.core.Tracer):
        lo, hi = int(jnp.min(ids)), int(jnp.max(ids))
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name} must lie in [0, V={vocab_size}), got values in [{lo}, {hi}]")


class LRUCache:
    """A small least-recently-used map for jitted functions built on demand.

    Module-level caches of ``jax.jit`` wrappers must be bounded: each entry holds compiled executables
    (and whatever its closure holds) for the life of the process.
    """

    def __init__(self, maxsize: int):
        if not (isinstance(maxsize, int) and maxsize >= 1):
            raise ValueError(f"maxsize must be an int ≥ 1, got {maxsize!r}")
        self.maxsize = maxsize
        self._data: OrderedDict[Any, Any] = OrderedDict()

    def get_or_create(self, key: Any, factory: Callable[[], Any]) -> Any:
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        value = factory()
        self._data[key] = value
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)
        return value

    def pop(self, key: Any) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Any) -> bool:
        return key in self._data


def masked_fill_value(dtype: DType) -> Array:
    """The most negative finite value of ``dtype`` (DESIGN: never −1e9)."""
    return jnp.asarray(jnp.finfo(dtype).min, dtype)


# --------------------------------------------------------------------------------------------------
# The support S(i) and the reference mixing Σ_j A[i, j] u_j
# --------------------------------------------------------------------------------------------------


def support_mask(mask: MaskKind, T: int, S: int | None = None) -> Array:
    """Boolean [T, S] with True where j ∈ S(i). Causal: j ≤ i; bidirectional: all j."""
    check_mask_kind(mask)
    S = T if S is None else S
    if mask == "bidirectional":
        return jnp.ones((T, S), dtype=bool)
    return jnp.arange(S)[None, :] <= jnp.arange(T)[:, None]


def mix_dense(A: Array, u: Array) -> Array:
    """Reference TV-VAR mixing h_i = Σ_j A[i, j] u_j (Definition 13).

    A: [B, T, T, D_out, D_in] (zero outside S(i)); u: [B, T, D_in] → h: [B, T, D_out].
    """
    if A.ndim != 5:
        raise ValueError(f"A must have shape [B, T, T, D_out, D_in], got shape {A.shape}")
    if u.ndim != 3 or u.shape[0] != A.shape[0] or u.shape[1] != A.shape[2] or u.shape[2] != A.shape[4]:
        raise ValueError(f"u must have shape [B={A.shape[0]}, T={A.shape[2]}, D_in={A.shape[4]}], got {u.shape}")
    return jnp.einsum("bijde,bje->bid", A, u, precision=jax.lax.Precision.HIGHEST)


def param(value: Array, *axes: str | None) -> nnx.Param:
    """A parameter that carries its logical axis names from the moment it is created.

    ``tvvar.sharding`` maps the names (``"embed"``, ``"heads"``, ``"kv"``, ``"mlp"``, ``"vocab"``,
    ``"state"``, …) to mesh axes; on one device they are inert.
    """
    if len(axes) != value.ndim:
        raise ValueError(f"param: {len(axes)} axis names {axes} for an array of rank {value.ndim}")
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


# --------------------------------------------------------------------------------------------------
# The abstract decomposition and its registry
# --------------------------------------------------------------------------------------------------

class Mixer(nnx.Module):
    """Abstract decomposition of the TV-VAR coefficients A_tj (Definition 13).

    Subclasses are final, registered by name with :func:`register`, and constructed as
    ``cls(d_model, *, mask="causal", rngs, dtype=jnp.float32, **options)``. They implement

    * ``coefficients(u) -> A`` of shape [B, T, T, D_out, D_in], zero outside S(i) (the definition,
      O(T²D²): small T, tests, plots);
    * ``__call__(u) -> h`` of shape [B, T, D_out], the fast path, which never builds the tensor above.

    Both faces must agree: ``mixer(u) == mix_dense(mixer.coefficients(u), u)``; the shared kit
    :mod:`tvvar.testing` checks this and causality for any subclass.
    """

    name: ClassVar[str] = "abstract"
    d_in: int
    d_out: int
    mask: MaskKind

    def coefficients(self, u: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement coefficients(u)")

    def __call__(self, u: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(u)")

    def support(self, T: int) -> Array:
        """Boolean [T, T]: True where j ∈ S(i)."""
        return support_mask(self.mask, T)


def _mixer_class(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Mixer)):
        raise TypeError(f"register({name!r}) expects a Mixer subclass, got {cls!r}")


#: the decompositions of A_tj by name (:mod:`tvvar.registry`); the built-ins (tvvar.decompositions) register
#: themselves when ``import tvvar`` imports their package
DECOMPOSITIONS: Registry[type[Mixer]] = Registry("decomposition", "tvvar-decompositions", validate=_mixer_class)


def register(name: str) -> Callable[[type[Mixer]], type[Mixer]]:
    """Class decorator: make a decomposition constructible by name (``build(name, ...)``)."""

    def deco(cls: type[Mixer]) -> type[Mixer]:
        DECOMPOSITIONS.register(name, cls)
        cls.name = name
        return cls

    return deco


def available() -> tuple[str, ...]:
    """Names of all registered decompositions."""
    return DECOMPOSITIONS.names()


def get(name: str) -> type[Mixer]:
    return DECOMPOSITIONS.get(name)


# Arguments that build() and the model supply themselves; never user options of a decomposition.
_BUILD_ARGS = frozenset({"self", "d_model", "mask", "rngs", "dtype"})


def constructor_options(cls: Callable[..., Any]) -> tuple[str, ...] | None:
    """The keyword options a constructor accepts, without the arguments build() supplies itself.

    For a class, ``__init__`` is followed up the MRO while it forwards ``**kw`` (a subclass that passes
    ``**kw`` on accepts its parents' options too). A plain function taking ``**kw`` gives None: its
    options cannot be known, so they are not checked.
    """
    names: set[str] = set()
    if isinstance(cls, type):
        inits = [k.__dict__["__init__"] for k in cls.__mro__ if "__init__" in k.__dict__]
    else:
        inits = [cls]
    for init in inits:
        params = list(inspect.signature(init).parameters.values())
        names |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return tuple(sorted(names - _BUILD_ARGS))
    return None


def check_options(options: Any, valid: tuple[str, ...] | None, *, what: str, name: str = "mixer") -> dict[str, Any]:
    """``options`` must be a dict whose keys are all in ``valid`` (None: any); the error lists the valid names."""
    if not isinstance(options, dict):
        raise TypeError(f"{name} (the options of {what}) must be a dict, got {type(options).__name__}")
    unknown = [] if valid is None else sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown} for {what}; "
                         f"valid options: {', '.join(valid) or '(none)'}")
    return options


def mixer_options(name: str) -> tuple[str, ...] | None:
    """The options the registered decomposition ``name`` accepts (from its constructor's signature)."""
    return constructor_options(get(name))


def build(name: str, d_model: int, *, rngs: nnx.Rngs, mask: MaskKind = "causal", **options: Any) -> Mixer:
    """Construct the registered decomposition ``name``; an option its constructor does not take is refused
    with the list of those it does (never passed on or dropped)."""
    cls = get(name)
    user_options = {k: v for k, v in options.items() if k != "dtype"}  # dtype is build-level, as mask is
    check_options(user_options, constructor_options(cls), what=f"decomposition {name!r}")
    return cls(d_model, mask=check_mask_kind(mask), rngs=rngs, **options)


# --------------------------------------------------------------------------------------------------
# The decoding protocol (optional on a Mixer): init_cache(batch_size, max_len, dtype) and
# step(cache, u_t) -> (h_t, cache), with h_t equal to row t of mixer(u) in causal mode.
# --------------------------------------------------------------------------------------------------


def check_cache_args(mixer: Mixer, batch_size: int, max_len: int) -> None:
    """Validate the arguments of ``Mixer.init_cache`` (a cache exists only for the causal mask)."""
    if getattr(mixer, "mask", "causal") != "causal":
        raise ValueError(
            f"{type(mixer).__name__}: step-by-step decoding needs mask='causal', got mask={mixer.mask!r} "
            "(a bidirectional row i depends on tokens after i)")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r}")
    if not (isinstance(max_len, int) and max_len >= 1):
        raise ValueError(f"max_len must be an int ≥ 1, got {max_len!r}")


def check_step_input(mixer: Mixer, cache: Any, u_t: Array, batch_size: int, max_len: int | None = None) -> None:
    """Validate ``u_t`` [B, D_in] for ``Mixer.step``; a concrete ``cache["index"]`` must be < ``max_len``.

    (Under jit the index is traced and cannot be checked here; :mod:`tvvar.generate` validates lengths
    before tracing.)
    """
    shape = getattr(u_t, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] != mixer.d_in or shape[0] != batch_size:
        raise ValueError(f"u_t must have shape [B={batch_size}, D_in={mixer.d_in}] (one position), got shape {shape}")
    if not jnp.issubdtype(u_t.dtype, jnp.floating):
        raise TypeError(f"u_t must be a floating array, got dtype {u_t.dtype}")
    if not isinstance(cache, dict) or "index" not in cache:
        raise ValueError(f"cache must be the dict returned by {type(mixer).__name__}.init_cache, "
                         f"got {type(cache).__name__}")
    index = cache["index"]
    if max_len is not None and not isinstance(index, jax.core.Tracer):
        if int(index) >= max_len:
            raise ValueError(f"the cache is full: index={int(index)} ≥ max_len={max_len} (allocate a longer cache)")


# --------------------------------------------------------------------------------------------------
# Token vectors on the unit sphere (Definition 11) and the readout of Eq. 44
# --------------------------------------------------------------------------------------------------


def sphere(x: Array, axis: int = -1) -> Array:
    """Project onto the unit sphere along ``axis`` (Definition 11), safely at 0."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, jnp.finfo(x.dtype).tiny))


class SphereEmbedding(nnx.Module):
    """Token embedding u = ũ_x with ũ_v on the unit sphere S^{D−1} (Definition 11).

    The free parameter is ``table`` [V, D]; the token vectors are ``sphere(table)``.
    """

    def __init__(self, vocab_size: int, d_model: int, *, rngs: nnx.Rngs, dtype: DType = jnp.float32):
        if vocab_size < 1 or d_model < 1:
            raise ValueError(f"vocab_size and d_model must be ≥ 1, got {vocab_size}, {d_model}")
        self.vocab_size, self.d_model = vocab_size, d_model
        self.table = param(jax.random.normal(rngs.params(), (vocab_size, d_model), dtype), "vocab", "embed")

    def vectors(self) -> Array:
        """ũ_{1:N}: [V, D] unit vectors."""
        return sphere(self.table[...])

    def __call__(self, ids: Array) -> Array:
        check_token_ids(ids, self.vocab_size)
        # mode="fill": a traced out-of-range id (it cannot raise under jit) gives NaN, never a clamped token
        return jnp.take(self.vectors(), ids, axis=0, mode="fill", fill_value=jnp.nan)


class Readout(nnx.Module):
    """logits_v = ũ_vᵀ h / Ξ (Eq. 44), token vectors ũ on the unit sphere.

    ``embedding`` given → tied to the input embedding (the default of the paper); otherwise an untied
    table of its own (also on the sphere). Ξ > 0 is a fixed temperature, not learned.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        embedding: SphereEmbedding | None = None,
        xi: float = 1.0,
        dtype: DType = jnp.float32,
    ):
        if not xi > 0:
            raise ValueError(f"xi (the temperature Ξ) must be > 0, got {xi}")
        self.xi = float(xi)
        self.tied = embedding is not None
        self.embedding = (embedding if embedding is not None
                          else SphereEmbedding(vocab_size, d_model, rngs=rngs, dtype=dtype))

    def __call__(self, h: Array) -> Array:
        U = self.embedding.vectors()
        return jnp.einsum("...d,vd->...v", h, U) / jnp.asarray(self.xi, h.dtype)

    def token_logits(self, h: Array, ids: Array) -> Array:
        """The logit of one given token per vector, ũ_{ids}ᵀ h / Ξ — ``self(h)`` read at ``ids`` without
        computing the other V − 1. h [..., D], ids broadcastable to h.shape[:-1] → h.shape[:-1].

        Concrete ids outside [0, V) raise; traced ones read NaN vectors (``mode="fill"``), never a
        silently clamped neighbour."""
        V = self.embedding.vocab_size
        check_token_ids(ids, V)
        try:
            jnp.broadcast_shapes(jnp.shape(ids), h.shape[:-1])
        except ValueError:
            raise ValueError(f"ids of shape {tuple(jnp.shape(ids))} must broadcast to h.shape[:-1] = "
                             f"{tuple(h.shape[:-1])}") from None
        U_ids = jnp.take(self.embedding.vectors(), ids, axis=0, mode="fill", fill_value=jnp.nan).astype(h.dtype)
        return jnp.sum(h * U_ids, axis=-1) / jnp.asarray(self.xi, h.dtype)


# --------------------------------------------------------------------------------------------------
# argsoftmax: u_t ~ softmax(logits / Ξ)
# --------------------------------------------------------------------------------------------------


def float32_or_better(dtype: DType) -> DType:
    """float64 for float64 input, else float32: the dtype of softmax, log-sum-exp, likelihood terms and
    Gumbel noise (DESIGN numerics), so bf16/fp16 activations are upcast and float64 checks stay exact."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def _top_k_filter(logits: Array, k: int) -> Array:
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def _top_p_filter(logits: Array, p: float) -> Array:
    # Keep the smallest set of tokens whose probability mass reaches p (the first token is always kept).
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < p
    keep = jnp.zeros_like(keep_sorted).at[
        tuple(jnp.indices(order.shape)[:-1]) + (order,)
    ].set(keep_sorted)
    return jnp.where(keep, logits, -jnp.inf)


def argsoftmax(
    key: PRNGKey | None,
    logits: Array,
    temperature: float = 1.0,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Array:
    """Draw v ~ softmax(logits / Ξ) along the last axis by the Gumbel-max trick.

    ``temperature == 0`` is the Ξ → 0 limit: greedy argmax (``key`` may be None). ``top_k`` keeps the
    k largest logits, ``top_p`` the smallest nucleus of mass ≥ p; both are applied before sampling.
    Noise and scaled logits are computed in float32 (float64 for float64 logits).
    """
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise ValueError(f"temperature (Ξ) must be a number ≥ 0, got {temperature!r}")
    V = logits.shape[-1]
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= V):
        raise ValueError(f"top_k must be an int in [1, V={V}], got {top_k!r}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    z = logits.astype(float32_or_better(logits.dtype))
    if top_k is not None and top_k < V:
        z = _top_k_filter(z, top_k)
    if top_p is not None and top_p < 1.0:
        z = _top_p_filter(z, top_p)
    if temperature == 0:
        return jnp.argmax(z, axis=-1)
    if key is None:
        raise ValueError("key must be a PRNG key when temperature > 0")
    g = jax.random.gumbel(key, z.shape, z.dtype)
    return jnp.argmax(z / temperature + g, axis=-1)


def log_softmax32(logits: Array) -> Array:
    """log-softmax in float32 or better (DESIGN numerics: likelihood terms never in bf16)."""
    return jax.nn.log_softmax(logits.astype(float32_or_better(logits.dtype)), axis=-1)


def lecun_normal(key: PRNGKey, shape: tuple[int, ...], fan_in: int, dtype: DType) -> Array:
    """N(0, 1/fan_in) (LeCun normal) initialization used by the built-in decompositions."""
    return jax.random.normal(key, shape, dtype) / math.sqrt(fan_in)


def glorot(key: PRNGKey, shape: tuple[int, ...], fan_in: int, dtype: DType) -> Array:
    """Deprecated alias of :func:`lecun_normal` (the old name; it was never Glorot's fan-in + fan-out)."""
    warnings.warn("tvvar.core.glorot is LeCun-normal and is deprecated; use tvvar.core.lecun_normal",
                  DeprecationWarning, stacklevel=2)
    return lecun_normal(key, shape, fan_in, dtype)
