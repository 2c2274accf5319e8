"""What every experiment shares: the results.json shape, checks, the CLI, figures.

An experiment module ``experiments/NAME.py`` defines

* ``Config`` — a frozen dataclass with a ``seed`` field and classmethods ``quick()`` and ``full()``;
* ``run(config, out: Path) -> dict`` with keys ``checks`` (list of :func:`check` dicts), ``figures``
  (file names written into ``out``) and ``data`` (every number it reports);
* ``main = cli("NAME", Config, run)`` and ``if __name__ == "__main__": main()``.

:func:`execute` adds ``experiment``, ``config`` and ``seconds`` and writes ``out/results.json``:

    {"experiment": "...", "config": {...}, "seconds": 41.2,
     "checks": [{"name", "measured", "reference", "relation", "tolerance", "source", "passed"}, ...],
     "figures": [...], "data": {...}}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check", "execute", "cli", "save_figure", "to_jsonable", "load_results"]

RELATIONS = ("==", "<=", ">=", "~")


def check(name: str, measured: float, reference: float, relation: str, tolerance: float = 0.0, source: str = "") -> dict:
    """A comparison of a measurement with a theorem or literature value.

    ``==``/``~``: |measured − reference| ≤ tolerance;  ``<=``: measured ≤ reference + tolerance;
    ``>=``: measured ≥ reference − tolerance.  A non-finite measurement never passes.
    """
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
            "source": source, "passed": bool(passed)}


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


def save_figure(fig, out: Path, name: str) -> str:
    """Save a matplotlib figure as PNG into ``out`` and close it; returns the file name."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(out / name, dpi=110)
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
    results = {"experiment": name, "config": to_jsonable(config), "seconds": round(seconds, 3),
               "checks": res["checks"], "figures": res["figures"], "data": to_jsonable(res["data"])}
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
        n_pass = sum(c["passed"] for c in results["checks"])
        print(f"{name}: {n_pass}/{len(results['checks'])} checks passed in {results['seconds']:.1f} s → {args.out}/results.json")
        for c in results["checks"]:
            mark = "ok " if c["passed"] else "FAIL"
            print(f"  [{mark}] {c['name']}: {c['measured']:.6g} {c['relation']} {c['reference']:.6g} (tol {c['tolerance']:g})")
        return results

    return main
