"""Meshes, logical-axis partition rules, sharded initialization, multi-process start-up.

"pjit" in this JAX era is ``jax.jit`` with ``in_shardings`` / ``out_shardings`` over
``NamedSharding(Mesh, PartitionSpec)``. The mesh has two axes:

* ``data``  — the batch is split over it (data parallelism; gradients are all-reduced by XLA);
* ``model`` — parameter dimensions named in :data:`DEFAULT_RULES` are split over it (tensor parallelism).

Parameters carry logical axis names from the moment they are created (``tvvar.core.param``, stored as
the ``out_sharding`` metadata of each ``nnx.Param``); :func:`logical_to_spec` maps names to mesh axes
with a rule table. A dimension whose size the mesh axis does not divide is replicated instead (e.g. a
vocabulary of 65 characters on a 4-way model axis) — correct, just not split.

Initialization never materializes an unsharded model: ``nnx.eval_shape`` gives the abstract state,
:func:`state_shardings` its shardings, and a jitted constructor with ``out_shardings`` creates every
parameter directly on its shards (:func:`sharded_init`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "MESH_AXES",
    "DEFAULT_RULES",
    "make_mesh",
    "parse_mesh",
    "logical_to_spec",
    "state_shardings",
    "sharded_init",
    "sharded_init_fn",
    "batch_sharding",
    "sample_sharding",
    "replicated",
    "initialize_distributed",
]

MESH_AXES = ("data", "model")

#: logical axis name → mesh axis (None: replicated). Megatron-style: heads, MLP hidden units and the
#: vocabulary are split over ``model``; widths and per-head dims are replicated.
DEFAULT_RULES: dict[str, str | None] = {
    "vocab": "model",
    "embed": None,
    "embed2": None,
    "heads": "model",
    "kv": None,
    "mlp": "model",
    "state": None,
    "batch": "data",
}


def parse_mesh(spec: str | Mapping[str, int] | None) -> dict[str, int] | None:
    """``"data=2,model=4"`` (or a dict) → ``{"data": 2, "model": 4}``; missing axes get size 1."""
    if spec is None:
        return None
    if isinstance(spec, str):
        out: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, eq, val = part.partition("=")
            if not eq or not val.strip().lstrip("-").isdigit():
                raise ValueError(f"mesh must look like 'data=2,model=4', got {spec!r}")
            out[name.strip()] = int(val)
        spec = out
    spec = dict(spec)
    unknown = set(spec) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes must be among {MESH_AXES}, got unknown {sorted(unknown)}")
    for k, v in spec.items():
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"mesh axis {k!r} must have a size ≥ 1, got {v!r}")
    return {a: int(spec.get(a, 1)) for a in MESH_AXES}


def make_mesh(shape: str | Mapping[str, int] | None = None, devices: list | None = None) -> Mesh:
    """A (data, model) mesh with ``AxisType.Auto`` axes (classic automatic sharding propagation).

    ``shape=None`` is the 1×1 mesh on the first device (unsharded). The product of the axis sizes must
    divide the number of devices; with fewer than all devices, the first ones are used (single process).
    """
    shape = parse_mesh(shape) or {"data": 1, "model": 1}
    devices = list(jax.devices() if devices is None else devices)
    n = math.prod(shape.values())
    if n > len(devices) or len(devices) % n:
        raise ValueError(f"mesh {shape} needs {n} devices, which does not divide the {len(devices)} available")
    if n < len(devices) and jax.process_count() > 1:
        raise ValueError(f"mesh {shape} uses {n} of {len(devices)} devices; a multi-process mesh must use all")
    sizes = tuple(shape[a] for a in MESH_AXES)
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices[:n])


def logical_to_spec(names: tuple[str | None, ...] | None, shape: tuple[int, ...], mesh: Mesh,
                    rules: Mapping[str, str | None] | None = None) -> P:
    """PartitionSpec for an array of ``shape`` whose axes have logical ``names``.

    A mesh axis is used at most once per array, and only where it divides the dimension.
    Unknown names are replicated.
    """
    rules = DEFAULT_RULES if rules is None else rules
    if names is None:
        return P()
    if len(names) != len(shape):
        raise ValueError(f"{len(names)} logical axis names {names} for an array of shape {shape}")
    used: set[str] = set()
    spec: list[str | None] = []
    for name, dim in zip(names, shape, strict=True):
        axis = rules.get(name) if name is not None else None
        if axis is not None and (axis in used or dim % mesh.shape[axis]):
            axis = None
        if axis is not None:
            used.add(axis)
        spec.append(axis)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Mapping[str, str | None] | None = None) -> Any:
    """NamedShardings for every Variable of an (abstract) ``nnx.State``, from its ``out_sharding`` names."""

    def one(v):
        if _is_var(v):
            names = v.get_metadata().get("out_sharding")
            return v.replace(NamedSharding(mesh, logical_to_spec(names, v.shape, mesh, rules)))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, abstract_state, is_leaf=_is_var)


_UNTRACEABLE = (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError)


def abstract_module(make: Callable[[], nnx.Module]) -> nnx.Module:
    """``nnx.eval_shape(make)``; a constructor that cannot be traced (numpy on random draws) is built
    eagerly instead — only shapes and axis-name metadata are read from the result."""
    try:
        return nnx.eval_shape(make)
    except _UNTRACEABLE:
        return make()


def sharded_init_fn(make: Callable[[], nnx.Module], mesh: Mesh, rules: Mapping[str, str | None] | None = None,
                    ) -> tuple[nnx.GraphDef, Any, Callable[[], nnx.State]]:
    """(graphdef, state shardings, jitted ``init() -> state``) — the pieces of :func:`sharded_init`,
    for callers that initialize the same module more than once (the compiled ``init`` is reused)."""
    graphdef, abs_state = nnx.split(abstract_module(make))
    shardings = state_shardings(abs_state, mesh, rules)
    jitted = jax.jit(lambda: nnx.split(make())[1], out_shardings=shardings)

    def init():
        try:
            return jitted()
        except _UNTRACEABLE as e:
            # a constructor that calls numpy on random draws cannot be traced: build it eagerly, then
            # place each array on its shards (correct, but the full model exists once on the host)
            import warnings

            warnings.warn(f"module constructor is not traceable ({type(e).__name__}); initializing eagerly "
                          "and resharding", stacklevel=2)
            return jax.device_put(nnx.split(make())[1], shardings)

    return graphdef, shardings, init


def sharded_init(make: Callable[[], nnx.Module], mesh: Mesh, rules: Mapping[str, str | None] | None = None,
                 ) -> tuple[nnx.GraphDef, nnx.State, Any]:
    """Create a module with every parameter born on its shards: (graphdef, state, state shardings).

    ``jax.eval_shape`` (via ``nnx.eval_shape``) → :func:`state_shardings` → ``jax.jit(init,
    out_shardings=...)``; nothing is ever materialized unsharded.
    """
    graphdef, shardings, init = sharded_init_fn(make, mesh, rules)
    with jax.set_mesh(mesh):
        state = init()
    return graphdef, state, shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over ``data``, everything else replicated."""
    return NamedSharding(mesh, P("data"))


def sample_sharding(mesh: Mesh, batch_size: int) -> NamedSharding:
    """Leading (batch) axis over *every* mesh axis, for drawing a batch inside a jitted step: each
    device samples its own rows, instead of every ``model``-axis device repeating its ``data`` shard's
    sampler. :func:`batch_sharding` when ``batch_size`` does not divide the device count."""
    if batch_size % mesh.size:
        return batch_sharding(mesh)
    return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` from arguments or the environment variables ``TVVAR_COORDINATOR``,
    ``TVVAR_NUM_PROCESSES``, ``TVVAR_PROCESS_ID`` (a no-op when none is set). CPU collectives use gloo."""
    coordinator = coordinator or os.environ.get("TVVAR_COORDINATOR")
    if coordinator is None:
        return
    num_processes = int(num_processes if num_processes is not None else os.environ["TVVAR_NUM_PROCESSES"])
    process_id = int(process_id if process_id is not None else os.environ["TVVAR_PROCESS_ID"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
