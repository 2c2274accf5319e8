"""Training: optax AdamW + warmup/cosine + clipping, a jitted sharded step, orbax checkpoints, metrics.

The pieces, in the order a run uses them:

* :class:`TrainConfig` — a typed, validated dataclass (model, objective, optimizer, schedule, eval,
  checkpoints, seed, mesh); saved as ``train_config.json`` in the run directory.
* objectives — ``fn(model, batch, rng) -> (loss, metrics)`` registered by name with
  :func:`register_objective`; ``"cross_entropy"`` (next-token NLL, −log softmax(ũᵀh/Ξ) of Eq. 44) is
  built in, and other modules register theirs in :data:`OBJECTIVES` (:mod:`tvvar.registry`).
* :func:`train` — sharded init (``tvvar.sharding``), ``jax.jit`` step with ``in_shardings`` /
  ``out_shardings`` and donated state, batches drawn by a jitted function whose output is born sharded
  over ``data``, periodic evaluation, ``metrics.jsonl``, a tqdm bar, ``loss.png``.
* checkpoints — orbax ``CheckpointManager`` (async save, keep-N, atomic commit by rename). Every random
  stream is a pure function of (seed, step), so a resumed run repeats the uninterrupted one exactly.
* :func:`load_run` — the latest (or a given) checkpoint of a run as ``(model, TrainConfig, data_info)``.

Run directory layout::

    train_config.json   data.json   metrics.jsonl   loss.png   checkpoints/<step>/
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import pickle
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tvvar.core import LRUCache, log_softmax32
from tvvar.model import ModelConfig, TVVARModel
from tvvar.registry import Registry
from tvvar.sharding import (
    abstract_module,
    batch_sharding,
    make_mesh,
    parse_mesh,
    replicated,
    sample_sharding,
    sharded_init_fn,
)
from tvvar.typing import Array, PRNGKey

__all__ = [
    "TrainConfig",
    "register_objective",
    "get_objective",
    "available_objectives",
    "OBJECTIVES",
    "make_optimizer",
    "train",
    "evaluate",
    "load_run",
    "CheckpointError",
    "RESUMABLE_FIELDS",
    "schedule_length",
    "CONFIG_FILE",
    "DATA_FILE",
    "METRICS_FILE",
]

CONFIG_FILE, DATA_FILE, METRICS_FILE, CKPT_DIR, PLOT_FILE = (
    "train_config.json", "data.json", "metrics.jsonl", "checkpoints", "loss.png")


class CheckpointError(RuntimeError):
    """A run/checkpoint directory that cannot be used as asked (foreign, corrupt, or mismatched)."""


# --------------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------------

Objective = Callable[[nnx.Module, dict, PRNGKey], tuple[Array, dict]]
#: training objectives by name (:mod:`tvvar.registry`). ``"cross_entropy"`` is defined here; ``"soft"``,
#: ``"marginal"``, ``"marginal_attention"``, ``"elbo"`` (tvvar.theory.transformer.elbo), ``"llada"``
#: (tvvar.diffusion) and ``"semantic_rd"`` (tvvar.theory.information.directed) register themselves when
#: ``import tvvar`` imports their modules.
OBJECTIVES: Registry[Objective] = Registry("objective", "tvvar-objectives")


def register_objective(name: str) -> Callable[[Objective], Objective]:
    """Decorator: ``fn(model, batch, rng) -> (loss: float32 scalar, metrics: dict[str, scalar])``.

    ``batch`` has at least ``"tokens"``: int32 [B, T + 1] (inputs ``[:, :-1]``, targets ``[:, 1:]``).
    """
    return OBJECTIVES.register(name)


def available_objectives() -> tuple[str, ...]:
    return OBJECTIVES.names()


def get_objective(name: str) -> Objective:
    return OBJECTIVES.get(name)


@register_objective("cross_entropy")
def cross_entropy(model: nnx.Module, batch: dict, rng: PRNGKey) -> tuple[Array, dict]:
    """Next-token negative log-likelihood −log softmax(ũᵀh_i/Ξ)[x_{i+1}] (Eq. 44), mean over tokens.

    With a synthetic source's exact conditional entropies in the batch, also reports the floor
    ``entropy`` and ``excess`` = mean(NLL − H) on the same tokens (an unbiased estimate of the KL from
    the true next-token law to the model's).
    """
    tokens = batch["tokens"]
    logp_BxTxV = log_softmax32(model(tokens[:, :-1]))
    targets = tokens[:, 1:]
    nll_BxT = -jnp.take_along_axis(logp_BxTxV, targets[..., None], axis=-1)[..., 0]
    loss = jnp.mean(nll_BxT)
    metrics = {"ce": loss, "accuracy": jnp.mean((jnp.argmax(logp_BxTxV, -1) == targets).astype(jnp.float32))}
    if "entropy" in batch:
        H = batch["entropy"].astype(jnp.float32)
        metrics["entropy"] = jnp.mean(H)
        metrics["excess"] = jnp.mean(nll_BxT - H)
    return loss, metrics


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run (with the data source), validated on construction.

    steps: optimizer steps; batch_size × seq_len tokens per step (batch_size divisible by the mesh's
    ``data`` size); lr: peak learning rate, reached linearly over ``warmup`` steps, then cosine decay to
    ``lr_min_ratio``·lr at ``schedule_steps`` (None: at ``steps``; constant after it) — set it to train a
    run in parts: 100 steps of a 200-step schedule resumed to ``steps=200`` is the 200-step run;
    weight_decay: AdamW's (decoupled); clip: global gradient-norm
    clip (0 = none); eval_every / eval_batches: validation cadence and size (0 = only at the end);
    ckpt_every: checkpoint cadence (0 = no checkpoints; a final one is saved otherwise); keep: how many
    to keep; seed: every random stream; mesh: ``{"data": d, "model": m}`` or None (one device).
    """

    model: ModelConfig
    objective: str = "cross_entropy"
    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 3e-3
    warmup: int = 100
    schedule_steps: int | None = None
    lr_min_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.99
    weight_decay: float = 0.01
    clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 4
    ckpt_every: int = 500
    keep: int = 2
    async_checkpoint: bool = True
    seed: int = 0
    mesh: dict[str, int] | None = None

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig(**self.model))
        if not isinstance(self.model, ModelConfig):
            raise TypeError(f"model must be a tvvar.model.ModelConfig, got {type(self.model).__name__}")
        for name, lo in (("steps", 0), ("batch_size", 1), ("seq_len", 1), ("warmup", 0), ("eval_every", 0),
                         ("eval_batches", 1), ("ckpt_every", 0), ("keep", 1), ("seed", 0)):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
                raise ValueError(f"{name} must be an int ≥ {lo}, got {v!r}")
        s = self.schedule_steps
        if s is not None and not (isinstance(s, int) and not isinstance(s, bool) and s >= 1):
            raise ValueError(f"schedule_steps must be None (decay over `steps`) or an int ≥ 1, got {s!r}")
        for name in ("lr", "lr_min_ratio", "weight_decay", "clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lr_min_ratio > 1:
            raise ValueError(f"lr_min_ratio must lie in [0, 1], got {self.lr_min_ratio}")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.objective not in available_objectives():
            raise ValueError(f"unknown objective {self.objective!r}; available: {', '.join(available_objectives())}")
        mesh = parse_mesh(self.mesh)
        object.__setattr__(self, "mesh", mesh)
        if mesh is not None and self.batch_size % mesh["data"]:
            raise ValueError(f"batch_size={self.batch_size} must be divisible by the mesh's data axis ({mesh['data']})")
        if self.model.max_len is not None and self.seq_len > self.model.max_len:
            raise ValueError(f"seq_len={self.seq_len} exceeds model.max_len={self.model.max_len}")

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        d["model"] = ModelConfig(**d["model"])
        return cls(**d)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """clip(global norm) → AdamW with linear warmup to ``lr`` then cosine decay to ``lr_min_ratio``·lr."""
    schedule = _schedule(cfg)
    parts = [optax.clip_by_global_norm(cfg.clip)] if cfg.clip > 0 else []
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
    return optax.chain(*parts)


def schedule_length(cfg: TrainConfig) -> int:
    """Steps over which the learning rate warms up and decays: ``schedule_steps``, else ``steps``."""
    return max(cfg.steps if cfg.schedule_steps is None else cfg.schedule_steps, cfg.warmup + 1)


def _schedule(cfg: TrainConfig) -> optax.Schedule:
    total = schedule_length(cfg)
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, total, end_value=cfg.lr * cfg.lr_min_ratio)


# --------------------------------------------------------------------------------------------------
# State, checkpoint naming
# --------------------------------------------------------------------------------------------------


def _path_name(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)


def _flatten(tree: Any) -> dict[str, Any]:
    # Flat, human-readable names ("params.blocks.0.mixer.wq.value"): robust to pytree node types and
    # a useful error message when a foreign checkpoint does not match.
    return {_path_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _unflatten(like: Any, flat: dict[str, Any]) -> Any:
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[_path_name(p)] for p, _ in paths])


@dataclass
class _Setup:
    cfg: TrainConfig
    mesh: Any
    graphdef: Any
    rest: Any
    tx: optax.GradientTransformation
    params: Any
    opt_state: Any
    param_sh: Any
    opt_sh: Any


# Compiled initializers and steps, reused by repeated runs in one process (tests, sweeps, resume). Bounded:
# an entry holds executables, and a step's closure holds its data source, for as long as it is cached. Steps
# hold 16: an experiment that trains each of 4 objectives on 2 sources finds all 8 again on its next run.
_SETUPS = LRUCache(4)
_FNS = LRUCache(16)


def _key(cfg: TrainConfig, *fields: str) -> str:
    d = {**cfg.to_dict(), "schedule": schedule_length(cfg)}
    return json.dumps({f: d[f] for f in fields}, sort_keys=True, default=str)


# what the optimizer and the initial state depend on: ``steps`` only through the schedule's length,
# so a run continued to more steps on the same schedule reuses its compiled step
_INIT_FIELDS = ("model", "seed", "mesh", "schedule", "lr", "warmup", "lr_min_ratio", "b1", "b2", "weight_decay",
                "clip")


def _setup(cfg: TrainConfig) -> _Setup:
    mesh, graphdef, init, tx, param_sh, opt_sh, opt_init = _SETUPS.get_or_create(
        ("setup", _key(cfg, *_INIT_FIELDS)), lambda: _build_setup(cfg))
    with jax.set_mesh(mesh):
        params, rest = nnx.split_state(init(), nnx.Param, ...)
        opt_state = opt_init(params)
    return _Setup(cfg, mesh, graphdef, rest, tx, params, opt_state, param_sh, opt_sh)


def _build_setup(cfg: TrainConfig) -> tuple:
    mesh = make_mesh(cfg.mesh)
    graphdef, state_sh, init = sharded_init_fn(
        lambda: TVVARModel(cfg.model, rngs=nnx.Rngs(params=cfg.seed)), mesh)
    param_sh, _ = nnx.split_state(state_sh, nnx.Param, ...)
    tx = make_optimizer(cfg)
    repl = replicated(mesh)
    abs_params, _ = nnx.split_state(nnx.split(abstract_module(
        lambda: TVVARModel(cfg.model, rngs=nnx.Rngs(params=cfg.seed))))[1], nnx.Param, ...)
    abs_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abs_params)
    abs_opt = jax.eval_shape(tx.init, abs_params)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abs_opt, param_sh,
                                   transform_non_params=lambda _: repl,
                                   is_leaf=lambda x: isinstance(x, (nnx.Variable, jax.sharding.Sharding)))
    opt_init = jax.jit(tx.init, out_shardings=opt_sh)
    return mesh, graphdef, init, tx, param_sh, opt_sh, opt_init


def _train_state(s: _Setup) -> dict:
    return {"params": s.params, "opt_state": s.opt_state}


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _manager(ckpt_dir: Path, cfg: TrainConfig, *, read_only: bool = False):
    import orbax.checkpoint as ocp

    # read-only: the options orbax would otherwise "adjust" with an absl warning each (keep, save interval)
    keep = dict(max_to_keep=None, save_interval_steps=0) if read_only else dict(max_to_keep=cfg.keep)
    with _quiet_orbax():
        options = ocp.CheckpointManagerOptions(create=not read_only, read_only=read_only,
                                               enable_async_checkpointing=cfg.async_checkpoint, **keep)
        return ocp.CheckpointManager(ckpt_dir.resolve(), options=options)


def _committed_steps(ckpt_dir: Path) -> list[int]:
    """Steps with a committed checkpoint; raises CheckpointError on anything foreign in the directory."""
    if not ckpt_dir.exists():
        return []
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir} exists but is not a directory")
    steps, foreign = [], []
    for p in ckpt_dir.iterdir():
        if "orbax-checkpoint-tmp" in p.name:  # an uncommitted save of a killed run: never used
            continue
        if p.is_dir() and p.name.isdigit():
            steps.append(int(p.name))
        else:
            foreign.append(p.name)
    if foreign:
        raise CheckpointError(f"{ckpt_dir} holds entries that are not orbax step checkpoints: {sorted(foreign)[:5]}; "
                              "refusing to use or overwrite it (is it a checkpoint directory of another tool?)")
    return sorted(steps)


def _restore(mngr, step: int, target: dict, ckpt_dir: Path) -> dict:
    """The checkpoint ``step`` as ``target``'s tree; any failure is one :class:`CheckpointError` line."""
    import orbax.checkpoint as ocp

    flat_target = _flatten(_abstract(target))
    _ignore_orphaned_restore_callbacks()
    try:
        with _quiet_orbax():
            flat = mngr.restore(step, args=ocp.args.StandardRestore(flat_target))
    except Exception as e:  # orbax raises many types; all mean "this is not our checkpoint"
        raise CheckpointError(f"checkpoint step {step} in {ckpt_dir} could not be restored ({_short_reason(e)}): it is "
                              "corrupt, or was written by a different model/optimizer configuration") from None
    missing = set(flat_target) - set(flat)
    if missing:
        raise CheckpointError(f"checkpoint step {step} in {ckpt_dir} lacks arrays {sorted(missing)[:5]}")
    return _unflatten(target, flat)


def _short_reason(e: Exception) -> str:
    # tensorstore appends its whole JSON spec (paths, cache sizes, ...) and orbax advice on options the
    # user never set; the first sentence, or its last clause when that is long, says what was wrong
    text = str(e).split(" [tensorstore_spec", 1)[0].split("\n", 1)[0].split(". ", 1)[0].strip()
    if len(text) > 160:
        text = text.rsplit(": ", 1)[-1]
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


@contextlib.contextmanager
def _quiet_orbax():
    # orbax logs each read-only option it adjusts and each unreadable file as absl warnings/errors;
    # a failure becomes the CheckpointError raised by the caller, which says it once
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _ignore_orphaned_restore_callbacks() -> None:
    # When one array of a restore fails, tensorstore still completes the other reads orbax had started;
    # their callbacks post to orbax's event loop, already closed, and Python prints each "Event loop is
    # closed" RuntimeError through sys.unraisablehook, during and after the failure. Those reads belong
    # to an abandoned restore, so exactly that error is dropped; any other goes to the previous hook.
    previous = sys.unraisablehook
    if getattr(previous, "_tvvar_filter", False):
        return

    def hook(u):
        if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
            return
        previous(u)

    hook._tvvar_filter = True
    sys.unraisablehook = hook


# --------------------------------------------------------------------------------------------------
# Jitted functions
# --------------------------------------------------------------------------------------------------


def _keys(seed: int) -> dict[str, PRNGKey]:
    base = jax.random.key(seed)
    return {"data": jax.random.fold_in(base, 1), "step": jax.random.fold_in(base, 2),
            "val_data": jax.random.fold_in(base, 3), "val_step": jax.random.fold_in(base, 4)}


def _data_key(data) -> tuple[str, Any]:
    """``data`` by its content where it pickles — two sources in the same state batch alike, so a run on a source
    built again (each run of an experiment builds its own) reuses the compiled steps — and by identity otherwise
    (an id is not reused while the entry, which holds ``data``, is cached)."""
    try:
        blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 (whatever stops pickling, identity is the safe key)
        return ("id", id(data))
    return (f"{type(data).__module__}.{type(data).__qualname__}", hashlib.sha256(blob).hexdigest())


def _make_fns(s: _Setup, data, objective: Objective):
    key = ("fns", _key(s.cfg, *_INIT_FIELDS, "batch_size", "seq_len", "objective"), _data_key(data), id(objective))
    return _FNS.get_or_create(key, lambda: (data, _build_fns(s, data, objective)))[1]


def _build_fns(s: _Setup, data, objective: Objective):
    cfg, mesh = s.cfg, s.mesh
    B, T = cfg.batch_size, cfg.seq_len
    bsh, repl = batch_sharding(mesh), replicated(mesh)
    graphdef, rest, tx = s.graphdef, s.rest, s.tx

    # keys are derived inside the jitted functions from the (replicated) step number, so the same
    # program runs unchanged on one device, a mesh, or several processes
    # Sample with the rows spread over every device, else XLA repeats the sampler (for a synthetic
    # source a whole model run per position) on each model-axis device; the model then takes the batch
    # split over ``data`` only (a small all-gather of token ids).
    sample_sh = sample_sharding(mesh, B)

    def get_batch(step, split):
        k = _keys(cfg.seed)["data" if split == "train" else "val_data"]
        batch = jax.lax.with_sharding_constraint(data.batch(jax.random.fold_in(k, step), B, T, split), sample_sh)
        return jax.lax.with_sharding_constraint(batch, bsh)

    def train_step(params, opt_state, step):
        batch = get_batch(step, "train")
        rng = jax.random.fold_in(_keys(cfg.seed)["step"], step)

        def loss_fn(p):
            return objective(nnx.merge(graphdef, p, rest), batch, rng)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return params, opt_state, metrics

    def eval_step(params, i):
        batch = get_batch(i, "val")
        rng = jax.random.fold_in(_keys(cfg.seed)["val_step"], i)
        loss, metrics = objective(nnx.merge(graphdef, params, rest), batch, rng)
        return {**metrics, "loss": loss}

    step_fn = jax.jit(train_step, in_shardings=(s.param_sh, s.opt_sh, repl), out_shardings=(s.param_sh, s.opt_sh, repl),
                      donate_argnums=(0, 1))
    eval_fn = jax.jit(eval_step, in_shardings=(s.param_sh, repl), out_shardings=repl)
    # Compiled here, before train() writes anything: a decomposition option, objective or data source
    # that does not fit the model fails now, not after a half-written run directory. The executables
    # land in JAX's compilation cache, so the first real call does not compile again.
    with jax.set_mesh(mesh):
        step_fn.lower(s.params, s.opt_state, np.int32(0)).compile()
        eval_fn.lower(s.params, np.int32(0)).compile()
    return step_fn, eval_fn


def _run_eval(eval_fn, params, batches: int) -> dict[str, float]:
    ms = [eval_fn(params, np.int32(i)) for i in range(batches)]
    ms = jax.device_get(ms)
    return {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}


_EVAL_FNS: list[tuple[Any, ...]] = []


def _eval_fn(graphdef, data, fn, batch_size: int, seq_len: int, split: str):
    # GraphDefs compare by value but do not hash: a short list of compiled evaluators, newest first
    for g, d, f, b, t, sp, one in _EVAL_FNS:
        if d is data and f is fn and (b, t, sp) == (batch_size, seq_len, split) and g == graphdef:
            return one

    @jax.jit
    def one(state, k):
        batch = data.batch(jax.random.fold_in(k, 0), batch_size, seq_len, split)
        loss, metrics = fn(nnx.merge(graphdef, state), batch, jax.random.fold_in(k, 1))
        return {**metrics, "loss": loss}

    _EVAL_FNS.insert(0, (graphdef, data, fn, batch_size, seq_len, split, one))
    del _EVAL_FNS[16:]
    return one


def evaluate(model: nnx.Module, data, objective: str | Objective = "cross_entropy", batches: int = 4,
             rng: PRNGKey | None = None, *, batch_size: int = 32, seq_len: int = 64,
             split: str = "val") -> dict[str, float]:
    """Mean of ``objective``'s loss and metrics over ``batches`` batches of ``data``'s ``split``.

    Batch i is drawn with ``fold_in(rng, i)`` (default key 0), so the same rng evaluates the same tokens.
    """
    fn = get_objective(objective) if isinstance(objective, str) else objective
    rng = jax.random.key(0) if rng is None else rng
    graphdef, state = nnx.split(model)
    one = _eval_fn(graphdef, data, fn, batch_size, seq_len, split)
    ms = jax.device_get([one(state, jax.random.fold_in(rng, i)) for i in range(batches)])
    return {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}


# --------------------------------------------------------------------------------------------------
# The run directory
# --------------------------------------------------------------------------------------------------


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: saved {va!r} vs now {vb!r}")
    return out


#: fields a resumed run may change: how long it runs and what it records, not the math of a step
#: (``steps`` only when the schedule's length, :func:`schedule_length`, stays the same)
RESUMABLE_FIELDS = ("steps", "eval_every", "eval_batches", "ckpt_every", "keep", "async_checkpoint")


def _config_mismatch(saved: TrainConfig, now: TrainConfig) -> list[str]:
    """``field: saved X vs now Y`` for every difference that would change the resumed run's math."""
    skip = set(RESUMABLE_FIELDS) | {"schedule_steps"}
    a, b = ({k: v for k, v in json.loads(json.dumps(c.to_dict())).items() if k not in skip} for c in (saved, now))
    out = _diff(a, b)
    if schedule_length(saved) != schedule_length(now):
        out.append(f"schedule length (schedule_steps, else steps): saved {schedule_length(saved)} vs now "
                   f"{schedule_length(now)} — the learning-rate schedule would change; to continue the saved one "
                   f"pass schedule_steps={schedule_length(saved)} (--schedule-steps {schedule_length(saved)}), "
                   "or set schedule_steps to the final length when a run is to be continued")
    return out


def _read_config(path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the run directory is corrupt") from None
    except (TypeError, KeyError) as e:
        raise CheckpointError(f"{path} is not a tvvar TrainConfig ({type(e).__name__}: {e})") from None
    except ValueError as e:
        hint = (" (a decomposition, Ψ or objective of your own must be registered first: import its module, "
                "or pass --import MODULE to the CLI)") if "unknown" in str(e) else ""
        raise ValueError(f"{path}: {e}{hint}") from None


def _prepare_run_dir(out: Path, cfg: TrainConfig, data, resume: bool) -> list[int]:
    """Validate ``out`` for a fresh or resumed run; returns the committed checkpoint steps."""
    ckpt_dir = out / CKPT_DIR
    steps = _committed_steps(ckpt_dir)
    cfg_file = out / CONFIG_FILE
    has_run = cfg_file.exists() or steps or (out / METRICS_FILE).exists()
    if not resume:
        if has_run:
            raise CheckpointError(f"{out} already holds a run (checkpoints {steps}); pass resume=True (--resume) to "
                                  "continue it, or choose another output directory")
        return []
    if not has_run:
        return []
    if not cfg_file.exists():
        raise CheckpointError(f"{out} has checkpoints but no {CONFIG_FILE}: not a tvvar run directory")
    saved = _read_config(cfg_file)
    d = _config_mismatch(saved, cfg)
    if d:
        raise CheckpointError(f"cannot resume {out} with a different configuration: " + "; ".join(d[:8]))
    if steps and cfg.steps < steps[-1]:
        raise CheckpointError(f"cannot resume {out} to steps={cfg.steps}: its latest checkpoint is step {steps[-1]} "
                              f"(steps must be ≥ {steps[-1]})")
    data_file = out / DATA_FILE
    if data_file.exists():
        d = _diff(json.loads(data_file.read_text()), json.loads(json.dumps(data.info())))
        if d:
            raise CheckpointError(f"cannot resume {out} on a different data source: " + "; ".join(d[:8]))
    return steps


def _plot(out: Path, history: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    tr = history["train"]
    if tr:
        steps = np.array([r["step"] for r in tr])
        loss = np.array([r["loss"] for r in tr])
        w = max(1, len(loss) // 100)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, label=f"train loss (mean of {w})", lw=1)
    va = history["val"]
    if va:
        ax.plot([r["step"] for r in va], [r["loss"] for r in va], "o-", label="validation loss", ms=3)
        if "entropy" in va[-1]:
            ax.axhline(va[-1]["entropy"], color="k", ls="--", lw=1, label="exact conditional entropy (floor)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / PLOT_FILE, dpi=110)
    plt.close(fig)


def _read_metrics(path: Path, upto: int) -> dict[str, list]:
    hist: dict[str, list] = {"train": [], "val": []}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line half-written when the run was killed
            if r.get("step", math.inf) <= upto and r.get("split") in hist:
                hist[r["split"]].append(r)
    return hist


def train(cfg: TrainConfig, data, out_dir: str | Path, resume: bool = False, *, progress: bool = True,
          callback: Callable[[int, dict], None] | None = None, eval_lines: bool | None = None) -> dict:
    """Train ``TVVARModel(cfg.model)`` on ``data`` with ``cfg.objective``; write the run into ``out_dir``.

    ``resume=True`` continues from the latest committed checkpoint (fresh start only when ``out_dir``
    holds no run at all); a foreign, corrupt or differently-configured directory raises
    :class:`CheckpointError`. ``callback(step, metrics)`` is called after each step (host floats).
    ``progress``: a tqdm bar; ``eval_lines``: one line per validation, its loss in nats and bits per token
    (default: with the bar; the CLI keeps them under ``--no-progress``). Every validation record of
    ``metrics.jsonl`` carries ``loss_bits`` = loss / ln 2 beside the loss in nats.
    Returns ``{"final": {...}, "history": {"train": [...], "val": [...]}, "run_dir", "start_step"}``.
    """
    if data.vocab_size != cfg.model.vocab_size:
        raise ValueError(f"data has vocab_size {data.vocab_size} but cfg.model.vocab_size is {cfg.model.vocab_size}")
    objective = get_objective(cfg.objective)
    out = Path(out_dir)
    steps_done = _prepare_run_dir(out, cfg, data, resume)
    main = jax.process_index() == 0
    if jax.process_count() > 1:  # every process has read the directory before process 0 writes to it
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("tvvar.train: run directory checked")
    if steps_done and cfg.ckpt_every == 0:
        raise CheckpointError(f"{out} has checkpoints but ckpt_every=0; cannot resume without checkpointing")
    # Everything that can refuse this configuration (building the model with its options, tracing the
    # objective on the data, compiling the step) happens before the run directory is touched: a refused
    # run leaves nothing behind, and the same command works once the cause is fixed.
    s = _setup(cfg)
    step_fn, eval_fn = _make_fns(s, data, objective)
    created = main and not out.exists()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    mngr, start = None, 0
    try:
        mngr = _manager(out / CKPT_DIR, cfg) if cfg.ckpt_every > 0 else None
        if steps_done:
            start = steps_done[-1]
            restored = _restore(mngr, start, _train_state(s), out / CKPT_DIR)
            s.params, s.opt_state = restored["params"], restored["opt_state"]
    except BaseException:
        if mngr is not None:  # an open manager's threads outlive the error and print at exit
            mngr.close()
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    if main:
        (out / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
        (out / DATA_FILE).write_text(json.dumps(data.info(), indent=2))
    history = _read_metrics(out / METRICS_FILE, start) if start else {"train": [], "val": []}
    if main:  # drop records written after the last commit by an interrupted run
        (out / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in history["train"] + history["val"]))

    schedule = _schedule(cfg)
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.model.decomposition}", dynamic_ncols=True)
    params, opt_state = s.params, s.opt_state
    log = open(out / METRICS_FILE, "a") if main else None
    pending: list[tuple[int, Any]] = []
    t0 = time.perf_counter()

    def flush():
        for st, m in jax.device_get(pending):
            r = {"step": st, "split": "train", **{k: float(v) for k, v in m.items()}, "lr": float(schedule(st - 1))}
            history["train"].append(r)
            if log:
                log.write(json.dumps(r) + "\n")
            if callback is not None:
                callback(st, r)
        if log:
            log.flush()
        if bar is not None and pending:
            bar.update(pending[-1][0] - bar.n)
            bar.set_postfix(loss=f"{history['train'][-1]['loss']:.4f}")
        pending.clear()

    say_evals = (progress if eval_lines is None else eval_lines) and main

    def do_eval(step):
        r = {"step": step, "split": "val", **_run_eval(eval_fn, params, cfg.eval_batches),
             "seconds": time.perf_counter() - t0}
        r["loss_bits"] = r["loss"] / math.log(2)  # the same loss in bits per token
        history["val"].append(r)
        if log:
            log.write(json.dumps(r) + "\n")
            log.flush()
        if say_evals:
            floor = f" (floor {r['entropy']:.4f}, excess {r['excess']:.4f})" if "excess" in r else ""
            line = f"step {step}: val loss {r['loss']:.4f} nats/token = {r['loss_bits']:.4f} bits/token{floor}"
            if bar is not None:
                bar.write(line)
            else:
                print(line, flush=True)

    log_every = 1 if callback is not None else 25
    try:
        with jax.set_mesh(s.mesh):
            for step in range(start, cfg.steps):
                params, opt_state, metrics = step_fn(params, opt_state, np.int32(step))
                done = step + 1
                pending.append((done, metrics))
                if len(pending) >= log_every or done == cfg.steps:
                    flush()
                if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.steps:
                    flush()
                    do_eval(done)
                if mngr is not None and (done % cfg.ckpt_every == 0 or done == cfg.steps):
                    flush()
                    import orbax.checkpoint as ocp

                    mngr.save(done, args=ocp.args.StandardSave(_flatten({"params": params, "opt_state": opt_state})))
            flush()
            if cfg.steps > start or not history["val"]:
                do_eval(cfg.steps)
    finally:
        # an interrupted loop (exception, Ctrl-C) still commits the checkpoint saves already started
        if mngr is not None:
            mngr.wait_until_finished()
            mngr.close()
        if bar is not None:
            bar.close()
        if log:
            log.close()
    if main:
        _plot(out, history)
    s.params, s.opt_state = params, opt_state
    final = {"step": cfg.steps, "train_loss": history["train"][-1]["loss"] if history["train"] else None,
             "val": history["val"][-1], "seconds": time.perf_counter() - t0}
    return {"final": final, "history": history, "run_dir": str(out), "start_step": start,
            "model": nnx.merge(s.graphdef, params, s.rest)}


# --------------------------------------------------------------------------------------------------
# Loading a run
# --------------------------------------------------------------------------------------------------


def load_run(run_dir: str | Path, step: int | None = None) -> tuple[TVVARModel, TrainConfig, dict]:
    """The model of a run's latest (or ``step``) checkpoint on one device, its TrainConfig and data info.

    ``data_info`` is the source's ``info()`` (for a corpus it holds the vocabulary;
    ``tvvar.sources.source_from_info`` turns it into a source or a :class:`tvvar.sources.Vocab`).
    """
    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run} is not a tvvar run directory (no {CONFIG_FILE})")
    cfg = _read_config(run / CONFIG_FILE)
    data_info = json.loads((run / DATA_FILE).read_text()) if (run / DATA_FILE).is_file() else {}
    steps = _committed_steps(run / CKPT_DIR)
    if not steps:
        raise CheckpointError(f"{run} has no committed checkpoint")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"step {step} is not among the committed checkpoints {steps} of {run}")
    cfg1 = cfg.replace(mesh=None)
    s = _setup(cfg1)
    mngr = _manager(run / CKPT_DIR, cfg1, read_only=True)
    try:
        restored = _restore(mngr, step, _train_state(s), run / CKPT_DIR)
    except CheckpointError as e:
        others = [t for t in steps if t != step]
        if not others:
            raise
        raise CheckpointError(f"{e}; the run's other committed checkpoints are steps {others}: load one of them "
                              f"(load_run(..., step=S); --step S for generate)") from None
    finally:
        mngr.close()
    return nnx.merge(s.graphdef, restored["params"], s.rest), cfg, data_info
