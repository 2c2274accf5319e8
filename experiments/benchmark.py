"""Side-by-side benchmarks of every fast path against its contender; writes ``benchmark.json``.

    python -m experiments.benchmark [--only NAME[,NAME]] [--quick] [--out DIR] [--no-fail]

Benchmarks live one module per concern in ``experiments/benchmarks/`` (each ``run(quick) -> list``),
discovered automatically. Each entry: {"name", "baseline", "contender", "baseline_s", "contender_s",
"ratio", "target", "met", ...} with medians of interleaved runs after compilation (DESIGN.md).
Exit status 1 when an entry misses its target (``"met": false``; ``None`` only reports), after writing
``benchmark.json``, so a regression fails a script or CI job; ``--no-fail`` keeps it 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

import experiments.benchmarks as _pkg

_NOT_BENCHMARKS = {"timing"}


def discover() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(_pkg.__path__)
                  if m.name not in _NOT_BENCHMARKS and not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    names = discover()
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--only", type=str, default=None, help=f"comma-separated subset of: {', '.join(names)}")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds, for smoke tests)")
    p.add_argument("--out", type=Path, default=Path("runs") / "benchmark", help="output directory")
    p.add_argument("--no-fail", action="store_true", help="exit 0 even when a target is missed (status 1 otherwise)")
    args = p.parse_args(argv)
    chosen = names if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in names]
    if unknown or not chosen:
        p.error(f"--only: unknown benchmark(s) {unknown}; choose from {', '.join(names)}")
    entries = []
    for name in chosen:
        t0 = time.perf_counter()
        mod = importlib.import_module(f"experiments.benchmarks.{name}")
        for e in mod.run(args.quick):
            e = {"module": name, **e}
            entries.append(e)
            met = {True: "met", False: "NOT met", None: "reported"}[e.get("met")]
            unit, scale, b, c = ("ms", 1e3, "baseline_s", "contender_s")
            if "contender_bytes" in e:
                unit, scale, b, c = ("MiB", 2.0**-20, "baseline_bytes", "contender_bytes")
            print(f"[{name}] {e['name']}: {e['contender']} {e[c] * scale:.2f} {unit} vs {e['baseline']} "
                  f"{e[b] * scale:.2f} {unit} → ratio {e['ratio']:.3f} (target {e.get('target')}, {met})", flush=True)
        print(f"[{name}] done in {time.perf_counter() - t0:.1f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps(entries, indent=2, default=str))
    print(f"wrote {args.out / 'benchmark.json'}")
    missed = [f"[{e['module']}] {e['name']}" for e in entries if e.get("met") is False]
    if missed:
        print(f"{len(missed)} of {len(entries)} targets NOT met: {'; '.join(missed)}", file=sys.stderr)
        return 0 if args.no_fail else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
