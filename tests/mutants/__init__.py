"""The mutant kit: every row of a checks table must catch a plausible bug in the code it checks.

A *mutant* is one realistic bug in one library (or experiment) function — a sum over the wrong axis, a log in
base 2 where nats are meant, an off-by-one in a mask or a lag, a missing ½ or √ scale, swapped arguments, an
iteration stopped early, a float32 accumulation where the identity needs float64, a sign flipped in one term —
applied as a patch for the duration of one run of an experiment. It is written as

    Mutant("rpre_bracket", "tvvar.theory.information.capacity:one_step_rpre", mutate,
           "multiplier bracketed in [-60, 60]")

where ``mutate(original) -> replacement`` builds the buggy function (a re-implementation with the one bug, or
a wrapper around the original when the bug is a missing factor or a swapped argument). The target names the
function where it is defined; :func:`patched` replaces it there *and* in every ``tvvar.*`` / ``experiments.*``
module that imported the same object (``from … import f`` binds a second name), then clears JAX's caches so
that no function traced with the original survives into the mutant's run.

Each experiment with mutants has a module ``tests/mutants/NAME.py`` (NAME as in
``experiments.reproduce.EXPERIMENTS``) defining

* ``tiny()`` — the smallest ``Config`` of ``experiments.NAME`` that still computes every check (and passes);
* ``MUTANTS`` — a tuple of at least four :class:`Mutant`, the bugs that would most plausibly hide in the code
  the experiment's rows are meant to verify;
* optionally ``SIZES`` — ``{size name: narrow}`` where ``narrow(tiny()) -> Config`` keeps only the part of the
  experiment some mutants need (one source, one objective, one section): a mutant with ``size="name"`` runs
  there instead of at the whole ``tiny()``, so that each mutant pays only for the part its bug lives in. Rows
  of the parts switched off do not run (or are skipped); the clean run at each size used must pass every row
  that runs, and the kill table records the size of each mutant;
* optionally ``SURVIVORS`` — ``{mutant name: what its survival shows}`` for mutants that no row kills yet. They
  stay in ``MUTANTS`` and in the kill table (with no kills), the report lists them, and their test is a strict
  xfail that turns red as soon as a row kills them.

``tests/test_mutants.py`` runs every experiment at ``tiny()`` once clean (every check must pass) and once under
each mutant (at least one check must fail, and every row that ``experiments/kills/NAME.json`` says it kills
must fail). That table labels the report's rows (``experiments.common.label_checks``); write it with

    .venv/bin/python tests/mutants NAME [NAME ...]

which runs the same thing and records, per mutant, the rows it kills. A surviving mutant is a finding to
report (it stays in the table with no kills, and the test fails), never a mutant to delete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import pkgutil
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["Mutant", "experiments_with_mutants", "load", "sized", "sizes_used", "patched", "run_checks",
           "failed_rows", "observe", "write_table", "edited"]

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent.parent
_SCANNED = ("tvvar", "experiments")


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str  # unique within its experiment: the name the report prints
    target: str  # "package.module:function" (or "package.module:Class.method") where the original is defined
    mutate: Callable[[Callable], Callable]  # original -> the buggy replacement
    bug: str  # one line: the mistake, as a reviewer would describe it
    size: str | None = None  # a key of the module's SIZES (a narrower run than tiny()), or None for tiny()

    def __post_init__(self):
        if ":" not in self.target:
            raise ValueError(f"Mutant {self.name!r}: target must be 'module:attribute', got {self.target!r}")
        if not self.bug.strip():
            raise ValueError(f"Mutant {self.name!r}: say what the bug is")


def edited(original: Callable, old: str, new: str) -> Callable:
    """``original`` recompiled from its source with the text ``old`` (found exactly once) replaced by ``new``, in
    its own module's globals: the way to write a one-line bug inside a long function without copying it."""
    src = textwrap.dedent(inspect.getsource(original))
    if src.count(old) != 1:
        raise ValueError(f"{original.__name__}: expected the text {old!r} exactly once in its source")
    ns: dict = {}
    exec(compile(src.replace(old, new), inspect.getsourcefile(original), "exec"), original.__globals__, ns)
    return ns[original.__name__]


def experiments_with_mutants() -> list[str]:
    """Names of the experiments that have a ``tests/mutants/NAME.py``, in the report's order."""
    from experiments.reproduce import EXPERIMENTS

    have = {m.name for m in pkgutil.iter_modules([str(_HERE)]) if not m.name.startswith("_")}
    unknown = have - set(EXPERIMENTS)
    if unknown:
        raise ValueError(f"tests/mutants/ has modules for unknown experiments {sorted(unknown)}")
    return [n for n in EXPERIMENTS if n in have]


def load(name: str):
    """The mutant module of experiment ``name`` (its ``tiny()`` and ``MUTANTS``), checked for shape."""
    mod = importlib.import_module(f"{__name__}.{name}")
    names = [m.name for m in mod.MUTANTS]
    if len(set(names)) != len(names):
        raise ValueError(f"tests/mutants/{name}.py: mutant names repeat: {names}")
    if len(names) < 4:
        raise ValueError(f"tests/mutants/{name}.py: at least 4 mutants per experiment, got {len(names)}")
    sizes = getattr(mod, "SIZES", {})
    unknown = sorted({m.size for m in mod.MUTANTS if m.size is not None and m.size not in sizes})
    if unknown:
        raise ValueError(f"tests/mutants/{name}.py: mutants name sizes that SIZES does not define: {unknown} "
                         f"(defined: {sorted(sizes)})")
    return mod


def sized(name: str, size: str | None = None) -> Any:
    """The config a mutant of size ``size`` runs at: ``tiny()``, narrowed by ``SIZES[size]`` if a size is named."""
    mod = load(name)
    cfg = mod.tiny()
    return cfg if size is None else mod.SIZES[size](cfg)


def sizes_used(name: str) -> list[str]:
    """The named sizes the mutants of ``name`` run at, in the order they first appear."""
    return list(dict.fromkeys(m.size for m in load(name).MUTANTS if m.size is not None))


def _resolve(target: str) -> tuple[Any, str, Any]:
    mod_name, attr = target.split(":")
    owner: Any = importlib.import_module(mod_name)
    *path, leaf = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    if not hasattr(owner, leaf):
        raise AttributeError(f"mutant target {target!r}: {owner!r} has no attribute {leaf!r}")
    return owner, leaf, getattr(owner, leaf)


@contextlib.contextmanager
def patched(mutant: Mutant | None) -> Iterator[None]:
    """Apply ``mutant`` wherever its original is looked up; restore everything on exit."""
    import jax

    if mutant is None:
        yield
        return
    owner, leaf, original = _resolve(mutant.target)
    replacement = mutant.mutate(original)
    if isinstance(owner, type) and isinstance(owner.__dict__.get(leaf), (staticmethod, classmethod)):
        replacement = type(owner.__dict__[leaf])(replacement)
        original = owner.__dict__[leaf]
    sites = [(owner, leaf, original)]
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or mod is owner or mod_name.split(".")[0] not in _SCANNED:
            continue
        for k, v in list(vars(mod).items()):
            if v is original:
                sites.append((mod, k, v))
    jax.clear_caches()
    try:
        for obj, k, _ in sites:
            setattr(obj, k, replacement)
        yield
    finally:
        for obj, k, v in sites:
            setattr(obj, k, v)
        jax.clear_caches()


def run_checks(name: str, config: Any, mutant: Mutant | None = None, out: Path | None = None, *,
               figures: bool | None = None) -> list[dict]:
    """The checks of ``experiments.NAME`` run at ``config`` (under ``mutant`` if given). ``figures``: whether the
    figures are rendered (default: only without a mutant); otherwise ``experiments.common.figures_off`` — no row
    reads a figure, and the clean runs at ``tiny()`` draw and audit every one."""
    import matplotlib

    from experiments.common import figures_off

    matplotlib.use("Agg")
    exp = importlib.import_module(f"experiments.{name}")
    with contextlib.ExitStack() as stack:
        if out is None:
            out = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if figures is None:
            figures = mutant is None
        if not figures:
            stack.enter_context(figures_off())
        with patched(mutant):
            res = exp.run(config, Path(out))
    return res["checks"]


def failed_rows(checks: list[dict]) -> list[str]:
    """Names of the rows that ran and did not pass (a NaN, an exception-free wrong value)."""
    return [c["name"] for c in checks if c["skipped"] is None and c["passed"] is not True]


def observe(name: str) -> dict:
    """Run experiment ``name`` clean (at ``tiny()`` and at every size its mutants use) and under each mutant at
    its size; the kill table it yields."""
    mod = load(name)
    cfg = mod.tiny()
    clean = run_checks(name, cfg)
    bad = failed_rows(clean) + [c["name"] for c in clean if c["skipped"] is not None]
    if bad:
        raise AssertionError(f"{name}: at tiny() these rows do not pass without a mutant: {bad}")
    for size in sizes_used(name):
        bad = failed_rows(run_checks(name, sized(name, size), figures=False))
        if bad:
            raise AssertionError(f"{name}: at size {size!r} these rows do not pass without a mutant: {bad}")
    rows = []
    for m in mod.MUTANTS:
        kills = failed_rows(run_checks(name, sized(name, m.size), m))
        print(f"  {name}:{m.name}: kills {len(kills)} row(s){'' if kills else ' — SURVIVES'}", flush=True)
        rows.append({"name": m.name, "target": m.target, "bug": m.bug, "size": m.size, "kills": kills})
    from experiments.common import to_jsonable

    return {"experiment": name, "size": to_jsonable(cfg), "mutants": rows}


def write_table(table: dict) -> Path:
    from experiments.common import KILLS_DIR

    KILLS_DIR.mkdir(exist_ok=True)
    p = KILLS_DIR / f"{table['experiment']}.json"
    p.write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n")
    return p
