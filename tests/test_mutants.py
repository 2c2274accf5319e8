"""The mutant kit (tests/mutants/): each experiment's checks pass at its tiny size, each mutant — one realistic
bug patched into the code under test — makes at least one check fail, and every row that the experiment's
kill table (experiments/kills/NAME.json, which labels the report) says a mutant kills does fail under it."""

import functools

import mutants
import pytest

from experiments.common import load_kills
from experiments.plotting import strict as strict_figures

EXPERIMENTS = mutants.experiments_with_mutants()
CASES = [(name, m.name) for name in EXPERIMENTS for m in mutants.load(name).MUTANTS]


def _case(name: str, mutant: str):
    """A mutant listed in its module's ``SURVIVORS`` (a finding: no row catches that bug yet) is a strict xfail:
    it stays in the kit and in the report's list of survivors, and the test turns red once a row kills it."""
    why = getattr(mutants.load(name), "SURVIVORS", {}).get(mutant)
    marks = [pytest.mark.xfail(strict=True, reason=f"surviving mutant (a finding): {why}")] if why else []
    return pytest.param(name, mutant, marks=marks, id=f"{name}:{mutant}")


@functools.cache
def _mutant(name: str, mutant: str) -> mutants.Mutant:
    return next(m for m in mutants.load(name).MUTANTS if m.name == mutant)


def test_every_experiment_has_mutants_and_a_kill_table():
    from experiments.reproduce import EXPERIMENTS as ALL

    missing = [n for n in ALL if n not in EXPERIMENTS]
    assert not missing, f"experiments without tests/mutants/NAME.py: {missing}"
    for name in EXPERIMENTS:
        table = load_kills(name)
        assert table is not None, f"{name}: no experiments/kills/{name}.json (write it: python tests/mutants {name})"
        assert [m["name"] for m in table["mutants"]] == [m.name for m in mutants.load(name).MUTANTS], (
            f"{name}: the kill table lists other mutants than tests/mutants/{name}.py (rewrite it)")
        assert [m.get("size") for m in table["mutants"]] == [m.size for m in mutants.load(name).MUTANTS], (
            f"{name}: the kill table was observed at other sizes than tests/mutants/{name}.py names (rewrite it)")
        survivors = {m["name"] for m in table["mutants"] if not m["kills"]}
        declared = set(getattr(mutants.load(name), "SURVIVORS", {}))
        assert survivors == declared, (f"{name}: surviving mutants in the kill table {sorted(survivors)} must be "
                                       f"declared in SURVIVORS with what they show, and only they: {sorted(declared)}")


def test_every_mutant_target_resolves():
    """A target that names nothing (a moved module, a renamed function) is caught without running anything."""
    bad = []
    for name in EXPERIMENTS:
        for m in mutants.load(name).MUTANTS:
            try:
                mutants._resolve(m.target)
            except (ImportError, AttributeError) as e:
                bad.append(f"{name}:{m.name} → {m.target}: {e}")
    assert not bad, "\n".join(bad)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_checks_pass_without_a_mutant(name, tmp_path):
    """…and every figure it saves keeps the plotting conventions (experiments/plotting.py, tests/test_figures.py)."""
    with strict_figures():
        checks = mutants.run_checks(name, mutants.load(name).tiny(), out=tmp_path)
    assert not [c["name"] for c in checks if c["skipped"] is not None], "tiny() must run every check"
    assert not mutants.failed_rows(checks)
    table = load_kills(name)
    names = {c["name"] for c in checks}
    stale = sorted({row for m in (table or {"mutants": []})["mutants"] for row in m["kills"]} - names)
    assert not stale, f"{name}: the kill table names rows the experiment no longer has: {stale}"


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [pytest.param(n, s, id=f"{n}:{s}") for n in EXPERIMENTS
                                       for s in mutants.sizes_used(n)])
def test_checks_pass_without_a_mutant_at_each_size(name, size, tmp_path):
    """A mutant run at a narrower size kills a row only if that row passes there without it — as the mutant runs
    there: without figures (the clean run at tiny() draws and audits them)."""
    checks = mutants.run_checks(name, mutants.sized(name, size), out=tmp_path, figures=False)
    ran = [c for c in checks if c["skipped"] is None]
    assert ran, f"{name}: no row runs at size {size!r}"
    assert not mutants.failed_rows(checks)


@pytest.mark.slow
@pytest.mark.parametrize("name,mutant", [_case(n, m) for n, m in CASES])
def test_mutant_is_killed(name, mutant, tmp_path):
    m = _mutant(name, mutant)
    failed = set(mutants.failed_rows(mutants.run_checks(name, mutants.sized(name, m.size), m, out=tmp_path)))
    assert failed, f"mutant {name}:{mutant} survives ({m.bug}): no check of {name} fails under it"
    table = load_kills(name) or {"mutants": []}
    claimed = next((set(e["kills"]) for e in table["mutants"] if e["name"] == mutant), set())
    assert claimed <= failed, (f"{name}:{mutant}: the kill table says these rows fail but they pass: "
                               f"{sorted(claimed - failed)}")
