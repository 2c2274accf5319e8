"""Write the kill tables: ``.venv/bin/python tests/mutants NAME [NAME ...]`` (no name: every experiment that has
mutants). Runs each experiment at ``tiny()`` clean and under each mutant and writes ``experiments/kills/NAME.json``."""

import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

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
