"""Write the kill tables: ``.venv/bin/python tests/mutants NAME [NAME ...]`` (no name: every experiment that has
mutants). Runs each experiment at ``tiny()`` clean and under each mutant and writes ``experiments/kills/NAME.json``."""

import os
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(_ROOT / "tests"), str(_ROOT)]
# the suite's persistent compilation cache (tests/conftest.py): each mutant recompiles only what it changed
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".pytest_cache" / "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import mutants  # noqa: E402


def main(argv: list[str]) -> int:
    names = argv or mutants.experiments_with_mutants()
    survivors = []
    for name in names:
        t0 = time.perf_counter()
        table = mutants.observe(name)
        path = mutants.write_table(table)
        survivors += [f"{name}:{m['name']}" for m in table["mutants"] if not m["kills"]]
        print(f"{name}: {len(table['mutants'])} mutants in {time.perf_counter() - t0:.0f} s → {path}", flush=True)
    if survivors:
        print(f"surviving mutants (findings; the test fails until a row kills them): {', '.join(survivors)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
