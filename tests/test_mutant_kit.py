"""The mutant kit's own machinery: rows labelled from a kill table, identities never counted, survivors in the
report's headline, names unique, and a patch that reaches every import site and is undone."""

import json
import sys
import types

import jax
import jax.numpy as jnp
import mutants
import pytest

from experiments import common, reproduce
from experiments.common import check, execute, label_checks, mutant_summary, skipped

TABLE = {"experiment": "fake", "size": {}, "mutants": [
    {"name": "m_sign", "target": "x:y", "bug": "sign", "kills": ["a", "b"]},
    {"name": "m_axis", "target": "x:y", "bug": "axis", "kills": ["a"]},
    {"name": "m_lives", "target": "x:y", "bug": "survives", "kills": []},
]}


def test_rows_are_labelled_from_the_kill_table():
    rows = [check("a", 0, 0, "=="), check("b", 0, 0, "=="), check("c", 0, 0, "=="),
            check("d", 1, 2, "<=", identity="a mean is at most the maximum"), skipped("e", "not run")]
    got = {c["name"]: (c["label"], c["kills"]) for c in label_checks(rows, TABLE)}
    assert got == {"a": ("verifies", ["m_sign", "m_axis"]), "b": ("verifies", ["m_sign"]), "c": ("unverified", []),
                   "d": ("identity", []), "e": ("unverified", [])}
    assert mutant_summary(TABLE) == {"mutants": 3, "killed": 2, "survivors": ["m_lives"]}
    assert all(c["label"] == "unverified" for c in label_checks(rows[:3], None))


def test_identity_needs_a_reason():
    with pytest.raises(ValueError, match="identity"):
        check("x", 0, 0, "==", identity="  ")
    assert check("x", 0, 0, "==", identity="by construction")["identity"] == "by construction"


def test_execute_labels_rows_and_refuses_repeated_names(monkeypatch, tmp_path):
    (tmp_path / "fake.json").write_text(json.dumps(TABLE))
    monkeypatch.setattr(common, "KILLS_DIR", tmp_path)
    rows = [check("a", 0, 0, "=="), check("d", 0, 0, "==", identity="by construction")]
    res = execute("fake", None, lambda c, o: {"checks": rows, "figures": [], "data": {}}, tmp_path / "out")
    assert [c["label"] for c in res["checks"]] == ["verifies", "identity"]
    assert res["mutants"]["survivors"] == ["m_lives"]
    with pytest.raises(ValueError, match="unique"):
        execute("fake", None, lambda c, o: {"checks": rows + rows[:1], "figures": [], "data": {}}, tmp_path / "o2")


def test_report_headline_counts_rows_and_names_survivors(monkeypatch, tmp_path):
    (tmp_path / "fake.json").write_text(json.dumps(TABLE))
    monkeypatch.setattr(common, "KILLS_DIR", tmp_path)
    rows = [check("a", 0, 0, "=="), check("c", 0, 0, "=="), check("d", 0, 0, "==", identity="by construction")]
    res = execute("fake", None, lambda c, o: {"checks": rows, "figures": [], "data": {}}, tmp_path / "out")
    report = reproduce.render_report([res], quick=True)
    assert "**1** rows verify" in report and "**1** are identities" in report and "**1** are not yet" in report
    assert "Mutants killed: **2/3**; surviving: `fake:m_lives`" in report
    assert "| a | 0 | == | 0 | 0 |  | ✅ | verifies: kills `m_sign`, `m_axis` |" in report
    assert "identity (by construction)" in report


def _double(x):
    return 2 * x


@pytest.mark.slow  # not for its own 4 s: it clears the worker's JAX caches, so the fast tests after it retrace
def test_patch_reaches_every_import_site_clears_jit_caches_and_is_undone(monkeypatch):
    lib = types.ModuleType("tvvar._kit_fake_lib")
    lib.double = _double
    user = types.ModuleType("experiments._kit_fake_user")
    user.double = lib.double  # `from tvvar._kit_fake_lib import double`
    user.call = jax.jit(lambda x: user.double(x))  # looked up at trace time
    monkeypatch.setitem(sys.modules, lib.__name__, lib)
    monkeypatch.setitem(sys.modules, user.__name__, user)
    assert float(user.call(jnp.float32(3))) == 6.0  # traced (and cached) with the original
    m = mutants.Mutant("triple", f"{lib.__name__}:double", lambda orig: lambda x: 3 * x, "factor 3 for 2")
    with mutants.patched(m):
        assert lib.double(1) == 3 and user.double(1) == 3
        assert float(user.call(jnp.float32(3))) == 9.0  # the cached trace was dropped
    assert lib.double is _double and user.double is _double
    assert float(user.call(jnp.float32(3))) == 6.0


def test_mutant_needs_a_target_and_a_bug():
    with pytest.raises(ValueError, match="module:attribute"):
        mutants.Mutant("x", "no_colon", lambda f: f, "bug")
    with pytest.raises(ValueError, match="say what the bug is"):
        mutants.Mutant("x", "a:b", lambda f: f, " ")


def test_a_mutant_runs_at_its_named_size_and_unknown_sizes_are_refused(monkeypatch):
    mod = types.ModuleType("mutants.fake_sizes")
    mod.tiny = lambda: {"parts": ("a", "b")}
    mod.SIZES = {"only_a": lambda cfg: {**cfg, "parts": ("a",)}}
    keep = lambda f: f  # noqa: E731
    mod.MUTANTS = tuple(mutants.Mutant(f"m{i}", "x:y", keep, "bug", size=s)
                        for i, s in enumerate([None, "only_a", "only_a", None]))
    monkeypatch.setitem(sys.modules, "mutants.fake_sizes", mod)
    assert mutants.sizes_used("fake_sizes") == ["only_a"]
    assert mutants.sized("fake_sizes") == {"parts": ("a", "b")}
    assert mutants.sized("fake_sizes", "only_a") == {"parts": ("a",)}
    mod.MUTANTS += (mutants.Mutant("m9", "x:y", keep, "bug", size="only_c"),)
    with pytest.raises(ValueError, match="only_c"):
        mutants.load("fake_sizes")
