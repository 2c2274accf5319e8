"""What every experiment shares: the results.json shape, checks, the CLI, figures.

An experiment module ``experiments/NAME.py`` defines

* ``Config`` — a frozen dataclass with a ``seed`` field and classmethods ``quick()`` and ``full()``;
* ``run(config, out: Path) -> dict`` with keys ``checks`` (list of :func:`check` / :func:`skipped` dicts),
  ``figures`` (file names written into ``out``) and ``data`` (every number it reports);
* ``main = cli("NAME", Config, run)`` and ``if __name__ == "__main__": main()``.

:func:`execute` adds ``experiment``, ``config`` and ``seconds`` and writes ``out/results.json``:

    {"experiment": "...", "config": {...}, "seconds": 41.2,
     "checks": [{"name", "measured", "reference", "relation", "tolerance", "source", "passed", "skipped"}, ...],
     "figures": [...], "data": {...}}

Every check has the same keys. A check that ran has ``"passed": true/false`` and ``"skipped": null``; a
check the experiment promised but could not run (a missing corpus, a part switched off) has
``"passed": null``, ``"measured": null`` and ``"skipped"`` = the reason (:func:`skipped`,
:func:`as_skipped`). A skipped check is neither passed nor failed; :func:`tally` counts the three, and
``experiments.reproduce`` fails on skips unless ``--allow-skips`` is given, so a check never disappears
silently.

Every row also says what it proves (the mutant kit, ``tests/mutants/``). A check made with
``identity="why"`` holds by construction of the code (for example each term p log(p/q) − p + q ≥ 0): it may
help the reader but verifies nothing. Any other row is ``verifies`` when a mutant — one realistic bug patched
into the code under test — makes it fail, as recorded in ``experiments/kills/NAME.json`` by the mutant tests
(which re-run the experiment under each mutant and confirm every recorded kill), and ``unverified`` when no
mutant of the kit kills it yet. :func:`execute` adds ``label`` (``verifies`` / ``identity`` / ``unverified``)
and ``kills`` (the mutants the row kills) to every row of ``results.json``, and a ``mutants`` summary.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check", "skipped", "as_skipped", "tally", "format_check", "execute", "cli", "fail", "save_figure",
           "to_jsonable", "load_results", "load_kills", "label_checks", "mutant_summary", "KILLS_DIR"]

RELATIONS = ("==", "<=", ">=", "~")
CHECK_KEYS = frozenset({"name", "measured", "reference", "relation", "tolerance", "source", "passed", "skipped",
                        "identity"})
LABELS = ("verifies", "identity", "unverified")
#: the mutant kill tables, one ``NAME.json`` per experiment, written by ``python tests/mutants NAME``
KILLS_DIR = Path(__file__).resolve().parent / "kills"


def _identity_reason(identity: str | None) -> str | None:
    if identity is None:
        return None
    if not (isinstance(identity, str) and identity.strip()):
        raise ValueError(f"identity must be None or a non-empty string saying why the row holds by construction, "
                         f"got {identity!r}")
    return identity


def check(name: str, measured: float, reference: float, relation: str, tolerance: float = 0.0,
          source: str = "", *, identity: str | None = None) -> dict:
    """A comparison of a measurement with a theorem or literature value.

    ``==``/``~``: |measured − reference| ≤ tolerance;  ``<=``: measured ≤ reference + tolerance;
    ``>=``: measured ≥ reference − tolerance.  A non-finite measurement never passes.
    ``identity``: why the row holds for any implementation of the code it reads (it is then labelled
    ``identity`` and never counted as a verification).
    """
    identity = _identity_reason(identity)
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    m, r, tol = float(measured), float(reference), float(tolerance)
    if not math.isfinite(m):
        passed = False
    elif relation in ("==", "~"):
        passed = abs(m - r) <= tol
    elif relation == "<=":
        passed = m <= r + tol
    else:
        passed = m >= r - tol
    return {"name": name, "measured": m, "reference": r, "relation": relation, "tolerance": tol,
            "source": source, "passed": bool(passed), "skipped": None, "identity": identity}


def skipped(name: str, reason: str, reference: float | None = None, relation: str = "==", tolerance: float = 0.0,
            source: str = "", *, identity: str | None = None) -> dict:
    """A check that was promised but not run: ``passed`` and ``measured`` are None, ``skipped`` says why."""
    identity = _identity_reason(identity)
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    if not (isinstance(reason, str) and reason.strip()):
        raise ValueError(f"reason must be a non-empty string saying why the check was skipped, got {reason!r}")
    ref = None if reference is None or not math.isfinite(float(reference)) else float(reference)
    return {"name": name, "measured": None, "reference": ref, "relation": relation, "tolerance": float(tolerance),
            "source": source, "passed": None, "skipped": reason, "identity": identity}


def as_skipped(c: dict, reason: str) -> dict:
    """The skipped form of a planned check (same name, relation and source; the measurement dropped)."""
    return skipped(c["name"], reason, c["reference"], c["relation"], c["tolerance"], c["source"],
                   identity=c.get("identity"))


def load_kills(name: str, kills_dir: Path | None = None) -> dict | None:
    """The mutant kill table of experiment ``name`` (``experiments/kills/NAME.json``), or None if it has none.

    Shape: ``{"experiment", "size", "mutants": [{"name", "target", "bug", "size", "kills": [row names]}, ...]}``
    (a mutant's ``size`` names the narrower run it was observed at, ``null`` for the table's ``size``).
    """
    p = (KILLS_DIR if kills_dir is None else Path(kills_dir)) / f"{name}.json"
    if not p.is_file():
        return None
    table = json.loads(p.read_text())
    for m in table.get("mutants", []):
        if not {"name", "target", "bug", "kills"} <= set(m) <= {"name", "target", "bug", "size", "kills"}:
            raise ValueError(f"{p}: mutant entries need name, target, bug, kills (and may have size); got {sorted(m)}")
    return table


def label_checks(checks: list[dict], kills: dict | None) -> list[dict]:
    """Each check with ``label`` and ``kills`` added (see the module docstring)."""
    killed_by: dict[str, list[str]] = {}
    for m in (kills or {}).get("mutants", []):
        for row in m["kills"]:
            killed_by.setdefault(row, []).append(m["name"])
    out = []
    for c in checks:
        names = killed_by.get(c["name"], [])
        label = "identity" if c.get("identity") else ("verifies" if names else "unverified")
        out.append({**c, "label": label, "kills": names})
    return out


def mutant_summary(kills: dict | None) -> dict:
    """``{"mutants", "killed", "survivors"}`` of one kill table (a survivor kills no row)."""
    ms = (kills or {}).get("mutants", [])
    return {"mutants": len(ms), "killed": sum(bool(m["kills"]) for m in ms),
            "survivors": [m["name"] for m in ms if not m["kills"]]}


def tally(checks: list[dict]) -> dict[str, int]:
    """Counts of a list of checks: ``passed``, ``failed``, ``skipped`` and ``total``."""
    n_skip = sum(c.get("skipped") is not None for c in checks)
    n_pass = sum(c.get("skipped") is None and c["passed"] is True for c in checks)
    return {"passed": n_pass, "failed": len(checks) - n_pass - n_skip, "skipped": n_skip, "total": len(checks)}


def format_check(c: dict) -> str:
    """One line per check for the CLIs, read as a statement that is true: ``[ok  ] NAME: measured 1.83 ≤
    reference 0 + tolerance 4: pass``, ``[FAIL] …: fail``, or ``[skip] NAME: skipped — why``."""
    if c.get("skipped") is not None:
        return f"  [skip] {c['name']}: skipped — {c['skipped']}"
    m, r, tol = c["measured"], c["reference"], c["tolerance"]
    if c["relation"] in ("==", "~"):
        claim = f"|measured {m:.6g} − reference {r:.6g}| ≤ tolerance {tol:g}"
    elif c["relation"] == "<=":
        claim = f"measured {m:.6g} ≤ reference {r:.6g} + tolerance {tol:g}"
    else:
        claim = f"measured {m:.6g} ≥ reference {r:.6g} − tolerance {tol:g}"
    return f"  [{'ok  ' if c['passed'] else 'FAIL'}] {c['name']}: {claim}: {'pass' if c['passed'] else 'fail'}"


def fail(message: str, exc: type[SystemExit] = SystemExit) -> None:
    """The command lines' refusal: one ``error:`` paragraph on stderr and status 2 (a usage error, as argparse's
    own), never a traceback. ``exc``: a ``SystemExit`` subclass a caller handles specially."""
    import sys

    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    raise exc(2)


def to_jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return to_jsonable(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist") and hasattr(x, "dtype"):  # numpy / jax arrays and scalars
        return to_jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


_DRAWING = contextvars.ContextVar("tvvar_experiments_drawing", default=True)


@contextlib.contextmanager
def figures_off() -> Iterator[None]:
    """Within this block :func:`save_figure` closes each figure without laying it out, rendering or writing it
    (the name is still returned): for runs that need only the checks, such as the mutant kit's runs under a
    mutant, where no row reads a figure (theorem5 at its mutant size: 1.7 s with figures, 0.8 s without)."""
    token = _DRAWING.set(False)
    try:
        yield
    finally:
        _DRAWING.reset(token)


#: set to "smallest" by tests/test_notebooks.py: a notebook then runs at the smallest size that executes its cells
NOTEBOOK_SIZE_ENV = "TVVAR_NOTEBOOK_SIZE"
#: the resolution of the figures a notebook draws at its smallest size (the conventions do not depend on it)
SMALLEST_DPI = 30


def notebook_size(config: Any, **smallest) -> Any:
    """The config a notebook runs: ``config`` as the notebook shows it, or, when ``TVVAR_NOTEBOOK_SIZE=smallest``
    (the test suite), ``config`` with the fields ``smallest`` replaced and the figures drawn at
    ``SMALLEST_DPI`` (as the suite draws its own, ``tests/conftest.py``). The test checks that every cell executes,
    not the numbers, and pays only for the smallest run that does. The field names are checked either way."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"notebook_size: config must be an experiment's Config instance, got {type(config).__name__}")
    unknown = sorted(set(smallest) - {f.name for f in dataclasses.fields(config)})
    if unknown:
        raise ValueError(f"notebook_size: {type(config).__name__} has no field(s) {unknown}")
    size = os.environ.get(NOTEBOOK_SIZE_ENV, "shown")
    if size not in ("shown", "smallest"):
        raise ValueError(f"{NOTEBOOK_SIZE_ENV} must be 'shown' or 'smallest', got {size!r}")
    if size == "shown":
        return config
    from experiments import plotting

    plotting.DPI = SMALLEST_DPI
    return dataclasses.replace(config, **smallest)


def save_figure(fig, out: Path, name: str) -> str:
    """Save a matplotlib figure as PNG into ``out`` and close it; returns the file name. The one way figures are
    saved: it checks the conventions of :mod:`experiments.plotting` on the drawn figure (a warning, or an error
    under ``experiments.plotting.strict()``). Under :func:`figures_off` it only closes the figure."""
    import matplotlib.pyplot as plt

    from experiments import plotting

    if not _DRAWING.get():
        plt.close(fig)
        return name
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    try:
        fig.savefig(out / name, dpi=plotting.DPI)
        plotting.audit(fig, name)
    finally:
        plt.close(fig)
    return name


def execute(name: str, config: Any, run: Callable[[Any, Path], dict], out: Path | str) -> dict:
    """Run an experiment, time it, and write ``out/results.json`` in the common shape."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run(config, out)
    seconds = time.perf_counter() - t0
    missing = {"checks", "figures", "data"} - set(res)
    if missing:
        raise ValueError(f"experiment {name!r}: run() must return checks, figures and data; missing {sorted(missing)}")
    # a hand-built dict without "skipped" would be miscounted by tally(): only check()/skipped() shapes pass
    odd = [c.get("name") for c in res["checks"] if set(c) != CHECK_KEYS]
    if odd:
        raise ValueError(f"experiment {name!r}: checks must be made by check() or skipped() "
                         f"(keys {sorted(CHECK_KEYS)}); got other keys in {odd}")
    names = [c["name"] for c in res["checks"]]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # a row is found by name in the kill table, so names must be unique
        raise ValueError(f"experiment {name!r}: check names must be unique; repeated: {twice}")
    kills = load_kills(name)
    results = {"experiment": name, "config": to_jsonable(config), "seconds": round(seconds, 3),
               "checks": label_checks(res["checks"], kills), "mutants": mutant_summary(kills),
               "figures": res["figures"], "data": to_jsonable(res["data"])}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def load_results(path: Path | str) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise FileNotFoundError(f"no results.json at {p}")
    return json.loads(p.read_text())


def cli(name: str, config_cls: type, run: Callable[[Any, Path], dict]) -> Callable[[list[str] | None], dict]:
    """The common entry point: ``python -m experiments.NAME [--quick] [--seed S] [--out DIR]``."""

    def main(argv: list[str] | None = None) -> dict:
        doc = (run.__doc__ or "").strip().splitlines()
        p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=doc[0] if doc else name)
        p.add_argument("--quick", action="store_true", help="small size: about a minute on 2 CPU cores")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--out", type=Path, default=Path("runs") / name, help="output directory (results.json, PNGs)")
        args = p.parse_args(argv)
        config = (config_cls.quick() if args.quick else config_cls.full())
        config = dataclasses.replace(config, seed=args.seed)
        results = execute(name, config, run, args.out)
        n = tally(results["checks"])
        print(f"{name}: {n['passed']}/{n['total']} checks passed, {n['failed']} failed, {n['skipped']} skipped "
              f"in {results['seconds']:.1f} s → {args.out}/results.json")
        for c in results["checks"]:
            print(format_check(c))
        return results

    return main
