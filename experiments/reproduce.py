"""The project's main job: run every experiment and write one report with all theorem plots.

    python -m experiments.reproduce [--quick] [--seed S] [--out DIR] [--only a,b] [--allow-skips] [--jobs N]

Each experiment writes ``OUT/NAME/results.json`` and its figures; this module then writes
``OUT/report.md`` (figures and one table of checks per experiment, skipped checks with their reason)
and ``OUT/summary.json`` (counts of passed, failed and skipped checks, and their names).
Exit status 1 if any check failed, and also if any promised check was skipped (a missing corpus, a part
switched off) unless ``--allow-skips`` is given, so neither a broken theorem nor an unrun one hides in a
green run.

``--jobs N`` runs N experiments at a time, each in a fresh process (most of a quick run is single-threaded XLA
compilation, so two jobs on two cores take about half the wall time of one); the report is the same and in
the same order. The longest experiments start first (:data:`QUICK_SECONDS`, measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from experiments.common import LABELS, execute, tally

# Section V in the paper's order (Theorem 5, Eq. 78, training, Theorems 6–7, Theorem 8, V-E, Eq. 79), then the
# information theory it is measured with: Section III (directed information), II/V-F (estimators), IV (space).
EXPERIMENTS: tuple[str, ...] = (
    "theorem5",
    "ssm_vs_attention",
    "train_synthetic",
    "elbo",
    "latent_alignment",
    "rademacher",
    "hopfield_capacity",
    "llada",
    "semantic_information",
    "estimators",
    "semantic_space",
)


#: seconds of each experiment at quick size, measured alone on 2 cores (2026-12-03): the start order of --jobs
QUICK_SECONDS: dict[str, float] = {"semantic_space": 249, "elbo": 130, "llada": 131, "semantic_information": 109,
                                   "rademacher": 100, "train_synthetic": 76, "hopfield_capacity": 64,
                                   "latent_alignment": 48, "theorem5": 32, "ssm_vs_attention": 30, "estimators": 80}


def module_name(name: str) -> str:
    return f"experiments.{name}"


def run_experiment(module: str, name: str, quick: bool, seed: int, out: Path) -> dict:
    """Import ``module``, build its quick or full Config with ``seed``, run it into ``out/name``."""
    mod = importlib.import_module(module)
    config = mod.Config.quick() if quick else mod.Config.full()
    return execute(name, dataclasses.replace(config, seed=seed), mod.run, out / name)


def _fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _mark(c: dict) -> str:
    if c.get("skipped") is not None:
        return f"⏭️ skipped: {c['skipped']}"
    return "✅" if c["passed"] else "❌"


def _label(c: dict) -> str:
    if c["label"] == "verifies":
        return "verifies: kills " + ", ".join(f"`{m}`" for m in c["kills"])
    if c["label"] == "identity":
        return f"identity ({c['identity']})"
    return "unverified (no mutant of the kit kills it yet)"


def verification(results: list[dict]) -> dict:
    """Rows by label and mutants killed, over all experiments (the report's headline)."""
    rows = [c for r in results for c in r["checks"]]
    by = {lab: sum(c["label"] == lab for c in rows) for lab in LABELS}
    ms = [(r["experiment"], r["mutants"]) for r in results]
    return {"rows": len(rows), **by, "mutants": sum(m["mutants"] for _, m in ms),
            "killed": sum(m["killed"] for _, m in ms),
            "survivors": [f"{exp}:{s}" for exp, m in ms for s in m["survivors"]]}


def render_report(results: list[dict], quick: bool) -> str:
    n = tally([c for r in results for c in r["checks"]])
    v = verification(results)
    lines = [
        "# tvvar — reproduction report",
        "",
        "Bo Bai, *Forget BIT, It is All about TOKEN*, arXiv:2511.01202, Sections III–V.",
        f"Size: {'quick' if quick else 'full'}. Checks passed: **{n['passed']}/{n['total']}**, "
        f"failed: **{n['failed']}**, skipped: **{n['skipped']}**.",
        "",
        f"What the rows prove: **{v['verifies']}** rows verify (each fails under a named mutant, a realistic bug "
        f"patched into the code it checks, `tests/mutants/`), **{v['identity']}** are identities (true by "
        f"construction, not counted as verifications), **{v['unverified']}** are not yet shown to catch a bug. "
        f"Mutants killed: **{v['killed']}/{v['mutants']}**; surviving: "
        + (", ".join(f"`{s}`" for s in v["survivors"]) if v["survivors"] else "**none**") + ".",
        "",
        "| experiment | checks passed | failed | skipped | verify | identity | unverified | mutants killed | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        k = tally(r["checks"])
        lab = {x: sum(c["label"] == x for c in r["checks"]) for x in LABELS}
        m = r["mutants"]
        lines.append(f"| [{r['experiment']}](#{r['experiment']}) | {k['passed']}/{k['total']} | {k['failed']} | "
                     f"{k['skipped']} | {lab['verifies']} | {lab['identity']} | {lab['unverified']} | "
                     f"{m['killed']}/{m['mutants']} | {r['seconds']:.1f} |")
    for r in results:
        lines += ["", f"## {r['experiment']}", "",
                  "| check | measured | relation | reference | tolerance | source | passed | proves |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in r["checks"]:
            measured = "—" if c["measured"] is None else _fmt(c["measured"])
            reference = "—" if c["reference"] is None else _fmt(c["reference"])
            lines.append(f"| {c['name']} | {measured} | {c['relation']} | {reference} | "
                         f"{_fmt(c['tolerance'])} | {c['source']} | {_mark(c)} | {_label(c)} |")
        if r["mutants"]["survivors"]:
            lines += ["", "Surviving mutants (a finding: no row catches this bug): "
                      + ", ".join(f"`{s}`" for s in r["mutants"]["survivors"])]
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
    p.add_argument("--allow-skips", action="store_true",
                   help="exit 0 even if some promised checks were skipped (they are still listed in the report)")
    p.add_argument("--jobs", type=int, default=1, help="experiments run at a time, each in its own process")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be an integer ≥ 1, got {args.jobs}")
    names = EXPERIMENTS if args.only is None else tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        p.error(f"--only: unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")

    t0 = time.perf_counter()
    done: dict[str, dict] = {}

    def finished(res: dict) -> None:
        done[res["experiment"]] = res
        k = tally(res["checks"])
        print(f"[{len(done)}/{len(names)}] {res['experiment']}: {k['passed']}/{k['total']} checks passed, "
              f"{k['skipped']} skipped in {res['seconds']:.1f} s", flush=True)

    if args.jobs == 1 or len(names) == 1:
        for name in names:
            print(f"[{len(done) + 1}/{len(names)}] {name} ...", flush=True)
            finished(run_experiment(module_name(name), name, args.quick, args.seed, args.out))
    else:
        order = sorted(names, key=lambda n: -QUICK_SECONDS.get(n, 0.0))
        # spawn: a fresh interpreter per experiment (no JAX state shared with, or forked from, this process)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 max_tasks_per_child=1) as pool:
            futures = [pool.submit(run_experiment, module_name(n), n, args.quick, args.seed, args.out)
                       for n in order]
            print(f"running {len(names)} experiments, {args.jobs} at a time: {', '.join(order)}", flush=True)
            for f in as_completed(futures):
                finished(f.result())
    results = [done[n] for n in names]

    report = args.out / "report.md"
    report.write_text(render_report(results, args.quick))
    every = [(r["experiment"], c) for r in results for c in r["checks"]]
    n = tally([c for _, c in every])
    failed = [(exp, c["name"]) for exp, c in every if c["skipped"] is None and c["passed"] is not True]
    skips = [{"experiment": exp, "name": c["name"], "reason": c["skipped"]}
             for exp, c in every if c["skipped"] is not None]
    summary = {"experiments": [r["experiment"] for r in results], "seconds": round(time.perf_counter() - t0, 2),
               "checks": n["total"], "passed": n["passed"], "failed_count": n["failed"], "skipped_count": n["skipped"],
               "failed": failed, "skipped": skips, "allow_skips": args.allow_skips,
               "verification": verification(results)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"report: {report}  ({n['passed']}/{n['total']} checks passed, {n['failed']} failed, {n['skipped']} skipped, "
          f"{summary['seconds']:.0f} s)")
    v = summary["verification"]
    print(f"  rows: {v['verifies']} verify, {v['identity']} identities, {v['unverified']} unverified; "
          f"mutants killed {v['killed']}/{v['mutants']}, surviving: {', '.join(v['survivors']) or 'none'}")
    for exp, name in failed:
        print(f"  FAILED [{exp}] {name}")
    for sk in skips:
        print(f"  SKIPPED [{sk['experiment']}] {sk['name']}: {sk['reason']}")
    if skips and not args.allow_skips:
        print(f"  {len(skips)} promised check(s) were skipped: exit 1 (pass --allow-skips to accept them)")
    return 1 if failed or (skips and not args.allow_skips) else 0

if __name__ == "__main__":
    sys.exit(main())
