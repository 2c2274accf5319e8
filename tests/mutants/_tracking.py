"""Which of JAX's cached traces a mutant makes stale, so that :func:`mutants.patched` drops only those.

A function ``jax.jit`` traced with the original still runs the original after the patch: its cached executable
(the C++ fast path) must go. Clearing every cache (``jax.clear_caches()``) is always right but makes the mutant's
run, and every run after it in the same worker, retrace, lower and load every function again — more than half of
a mutant run's time, measured (tests/test_mutant_kit.py has the account). This module keeps the rest:

* :func:`install` (run by ``import mutants``, before anything imports ``tvvar``) records every ``jax.jit``
  function made from then on, and replaces each mutant's target by a *spy*: the same function, which, when it is
  called while JAX traces, notes the functions being traced by ``jit`` at that moment (every ``jit`` frame on the
  stack: the one that calls the target and the ones around it);
* :func:`drop` clears the C++ cache of every ``jit`` function noted for a target and every Python-level staging
  cache of JAX (all but the cache of eagerly run primitives, keyed by primitive and parameters, which a patch
  cannot make stale), and falls back to ``jax.clear_caches()`` whenever it cannot tell: a target that is not a
  plain Python function (a ``jit`` function, a dict), a noted function whose ``jit`` was made before
  :func:`install`.

The spy's only cost outside a trace is one check of JAX's trace state.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any

_SPIED = "__mutant_kit_spied__"  # a spy's attribute: the function it watches
_jitted: weakref.WeakSet = weakref.WeakSet()  # every jit function made since install()
_funs_seen: set[int] = set()  # ids of the functions those wrap (kept alive by _noted while noted)
_noted: dict[str, list] = {}  # spy key -> the functions (as given to jit) traced while it was called
_installed = False


def install() -> None:
    """Record every ``jax.jit`` function made from now on (idempotent)."""
    global _installed
    if _installed:
        return
    from jax._src import pjit

    make = pjit._cpp_pjit

    @functools.wraps(make)
    def recorded(fun, jit_info):
        jitted = make(fun, jit_info)
        _jitted.add(jitted)
        _funs_seen.add(id(fun))
        return jitted

    pjit._cpp_pjit = recorded
    _installed = True


def _traced_by_jit() -> list:
    """The functions ``jit`` is tracing now, innermost first (read from its frames on the stack)."""
    from jax._src import pjit

    code = inspect.unwrap(pjit._infer_params).__code__
    out, frame = [], sys._getframe(2)
    while frame is not None:
        if frame.f_code is code:
            out.append(frame.f_locals["fun"])
        frame = frame.f_back
    return out


def spyable(fn: Any) -> bool:
    return isinstance(fn, types.FunctionType)


def spy(key: str, fn: Callable) -> Callable:
    """``fn``, noting under ``key`` the ``jit`` functions being traced whenever it is called inside a trace."""
    from jax._src import core

    noted = _noted.setdefault(key, [])

    @functools.wraps(fn)
    def spied(*args, **kwargs):
        if not core.trace_state_clean():
            for fun in _traced_by_jit():
                if not any(fun is f for f in noted):
                    noted.append(fun)
        return fn(*args, **kwargs)

    setattr(spied, _SPIED, fn)
    return spied


def unspied(fn: Any) -> Any:
    return getattr(fn, _SPIED, fn)


def is_spy(fn: Any) -> bool:
    return hasattr(fn, _SPIED)


def forget(key: str) -> None:
    _noted.pop(key, None)


def drop(key: str | None) -> bool:
    """Drop what a patch of the function spied as ``key`` makes stale (``None``: everything). True if only the
    noted functions were cleared, False if it fell back to ``jax.clear_caches()``."""
    import jax
    from jax._src import dispatch, util

    noted = None if key is None or not _installed else _noted.get(key, [])
    if noted is None or any(id(f) not in _funs_seen for f in noted):
        jax.clear_caches()
        return False
    for jitted in list(_jitted):
        if any(jitted._fun is f for f in noted):
            jitted._clear_cache()
    keep = dispatch.xla_primitive_callable
    for cache in list(util._caches.keys()):
        if cache is not keep:
            cache.cache_clear()
    return True
