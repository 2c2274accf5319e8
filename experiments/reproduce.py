"""The project's main job: run every experiment and write one report with all theorem plots.

    python -m experiments.reproduce [--quick] [--seed S] [--out DIR] [--only a,b]

Each experiment writes ``OUT/NAME/results.json`` and its figures; this module then writes
``OUT/report.md`` (figures and one table of checks per experiment) and ``OUT/summary.json``.
Exit status 1 if any check failed, so a broken theorem never hides in a green run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import time
from pathlib import Path

from experiments.common import execute

# In the order of the paper (Section V): Theorem 5, Eq. 78, training, Theorems 6–7, Theorem 8, V-E, Eq. 79.
EXPERIMENTS: tuple[str, ...] = (
    "theorem5",
    "ssm_vs_attention",
    "train_synthetic",
    "elbo",
    "rademacher",
    "hopfield_capacity",
    "llada",
)


def _fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def render_report(results: list[dict], quick: bool) -> str:
    n_checks = sum(len(r["checks"]) for r in results)
    n_pass = sum(c["passed"] for r in results for c in r["checks"])
    lines = [
        "# tvvar — reproduction report",
        "",
        "Bo Bai, *Forget BIT, It is All about TOKEN*, arXiv:2511.01202, Section V.",
        f"Size: {'quick' if quick else 'full'}. Checks passed: **{n_pass}/{n_checks}**.",
        "",
        "| experiment | checks passed | seconds |",
        "|---|---|---|",
    ]
    for r in results:
        ok = sum(c["passed"] for c in r["checks"])
        lines.append(f"| [{r['experiment']}](#{r['experiment']}) | {ok}/{len(r['checks'])} | {r['seconds']:.1f} |")
    for r in results:
        lines += ["", f"## {r['experiment']}", "", "| check | measured | relation | reference | tolerance | source | passed |",
                  "|---|---|---|---|---|---|---|"]
        for c in r["checks"]:
            mark = "✅" if c["passed"] else "❌"
            lines.append(f"| {c['name']} | {_fmt(c['measured'])} | {c['relation']} | {_fmt(c['reference'])} | "
                         f"{_fmt(c['tolerance'])} | {c['source']} | {mark} |")
        lines.append("")
        for fig in r["figures"]:
            lines.append(f"![{fig}]({r['experiment']}/{fig})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="quick size of every experiment (minutes on 2 CPU cores)")
    p.add_argument("--seed", type=int, default=0, help="random seed passed to every experiment")
    p.add_argument("--out", type=Path, default=Path("runs") / "reproduce", help="output directory")
    p.add_argument("--only", type=str, default=None, help=f"comma-separated subset of: {', '.join(EXPERIMENTS)}")
    args = p.parse_args(argv)
    names = EXPERIMENTS if args.only is None else tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        p.error(f"--only: unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")

    results, t0 = [], time.perf_counter()
    for i, name in enumerate(names, 1):
        mod = importlib.import_module(f"experiments.{name}")
        config = mod.Config.quick() if args.quick else mod.Config.full()
        config = dataclasses.replace(config, seed=args.seed)
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        res = execute(name, config, mod.run, args.out / name)
        ok = sum(c["passed"] for c in res["checks"])
        print(f"[{i}/{len(names)}] {name}: {ok}/{len(res['checks'])} checks passed in {res['seconds']:.1f} s", flush=True)
        results.append(res)

    report = args.out / "report.md"
    report.write_text(render_report(results, args.quick))
    failed = [(r["experiment"], c["name"]) for r in results for c in r["checks"] if not c["passed"]]
    summary = {"experiments": [r["experiment"] for r in results], "seconds": round(time.perf_counter() - t0, 2),
               "checks": sum(len(r["checks"]) for r in results), "failed": failed}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"report: {report}  ({summary['checks'] - len(failed)}/{summary['checks']} checks passed, "
          f"{summary['seconds']:.0f} s)")
    for exp, name in failed:
        print(f"  FAILED [{exp}] {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
