"""What every source shares: the interface, the splits, argument checks, and the registry of sources by kind.

Every source exposes one interface, used by :mod:`tvvar.train` and the experiments:

* ``vocab_size`` — V;
* ``batch(key, batch_size, seq_len, split="train") -> dict`` — a pure JAX function (traceable, so the
  training loop jits it with ``out_shardings`` and the batch is born sharded over the ``data`` mesh
  axis) returning ``"tokens"``: int32 [B, seq_len + 1] (inputs ``tokens[:, :-1]``, targets
  ``tokens[:, 1:]``) and, for synthetic sources, ``"entropy"``: float32 [B, seq_len], the exact
  conditional entropy H(x_{i+1} | x_{≤i}) in nats of each target under the true source — the floor
  that no model's expected cross-entropy can go below (CE − H = KL ≥ 0);
* ``sample_batch(key, batch_size, seq_len, split="train")`` — just the tokens;
* ``info() -> dict`` — JSON-able description (kind, parameters, vocabulary) saved with every run;
  :func:`tvvar.sources.source_from_info` rebuilds the source (or, for a corpus, its vocabulary).

Synthetic sources fold the split name into the key (:func:`split_key`, the same salts for every source), so train
and validation draws never coincide.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvvar.registry import Registry
from tvvar.typing import Array, PRNGKey

__all__ = ["DataSource", "SPLITS", "CORPUS_KIND", "SOURCES", "register_source", "entropy_of_logits"]

#: the ``kind`` of a text corpus (:class:`tvvar.sources.text.TextCorpus`): named by its path, never registered
CORPUS_KIND = "text"
SPLITS = ("train", "val")
_SPLIT_SALT = {"train": 0x7A1, "val": 0x5EA1}


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def check_sizes(batch_size: int, seq_len: int) -> None:
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r}")
    if not (isinstance(seq_len, (int, np.integer)) and seq_len >= 1):
        raise ValueError(f"seq_len must be an int ≥ 1, got {seq_len!r}")


def check_int(name: str, v: Any, lo: int) -> int:
    if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo):
        raise ValueError(f"{name} must be an int ≥ {lo}, got {v!r}")
    return int(v)


def check_real(name: str, v: Any, valid: str, ok) -> float:
    if not (isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v) and ok(v)):
        raise ValueError(f"{name} must be a finite number {valid}, got {v!r}")
    return float(v)


def is_int(x: Any) -> bool:
    """An integer that is not a bool (numpy integers included)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def finite_number(name: str, x: Any) -> float:
    """``x`` as a float, refused (naming ``name``) unless it is a finite real number."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    return float(x)


def entropy_of_logits(logits: Array) -> Array:
    """H(softmax(logits)) in nats along the last axis, computed in float32 (float64 for float64 input).

    Terms with p = 0 contribute exactly 0 (the limit p log p → 0), never NaN.
    """
    z = logits.astype(jnp.float64 if logits.dtype == jnp.float64 else jnp.float32)
    logp = jax.nn.log_softmax(z, axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def entropy_np(p: np.ndarray) -> np.ndarray:
    """H(p) in nats along the last axis of a float64 table of probabilities (0 log 0 = 0)."""
    p = np.asarray(p, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


class DataSource:
    """The interface shared by every source (see the module docstring)."""

    vocab_size: int
    kind: str = "abstract"

    def batch(self, key: PRNGKey, batch_size: int, seq_len: int, split: str = "train") -> dict[str, Array]:
        raise NotImplementedError  # pragma: no cover

    def sample_batch(self, key: PRNGKey, batch_size: int, seq_len: int, split: str = "train") -> Array:
        return self.batch(key, batch_size, seq_len, split)["tokens"]

    def info(self) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    @property
    def has_entropy(self) -> bool:
        """True when ``batch`` also returns the exact conditional entropy of every target."""
        return False


def split_key(key: PRNGKey, split: str) -> PRNGKey:
    return jax.random.fold_in(key, _SPLIT_SALT[check_split(split)])


def _rebuildable(kind: str, cls: Any) -> None:
    if not callable(getattr(cls, "from_info", None)):
        raise TypeError(f"{getattr(cls, '__name__', cls)} needs a from_info(info) classmethod to be rebuilt from a "
                        "saved run")


#: the synthetic sources by ``kind`` (:mod:`tvvar.registry`); each module of :mod:`tvvar.sources`
#: registers its own (``import tvvar.sources`` imports them all). A corpus is named by
#: its path, not by a kind.
SOURCES: Registry[type[DataSource]] = Registry("data source", "tvvar-sources", validate=_rebuildable,
                                               reserved=("abstract", CORPUS_KIND))


def register_source(cls: type[DataSource]) -> type[DataSource]:
    """Make a source class known to :func:`make_source` and :func:`source_from_info` by its ``kind``
    (it must rebuild itself with ``cls.from_info(info)``). Usable as a class decorator."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or kind in ("abstract", CORPUS_KIND):
        raise ValueError(f"cls.kind must name the source, got {kind!r}")
    return SOURCES.register(kind, cls)
