"""tvvar.registry: one mechanism for decompositions, sources, objectives, Ψ layers and norms."""

import sys
import types

import pytest

from tvvar.core import DECOMPOSITIONS
from tvvar.model import NORMS, PSI
from tvvar.registry import Registry
from tvvar.sources import SOURCES
from tvvar.train import OBJECTIVES


def test_import_tvvar_registers_every_builtin():
    assert {"attention", "bilinear_attention", "dense", "mamba", "ssm"} <= set(DECOMPOSITIONS.names())
    assert {"synthetic-tvvar", "markov", "hmm", "prompted", "latent-alignment"} <= set(SOURCES.names())
    assert {"cross_entropy", "soft", "marginal", "marginal_attention", "elbo", "llada", "semantic_rd"} <= set(
        OBJECTIVES.names())
    assert {"ffn", "swiglu", "gelu_mlp", "identity", "hopfield"} <= set(PSI.names())
    assert {"rms", "layernorm"} <= set(NORMS.names())


def test_unknown_names_list_the_known_ones_and_conflicts_are_refused():
    r = Registry("widget", "tvvar-test-widgets", reserved=("none",))

    @r.register("a")
    def a():
        pass

    assert r["a"] is a and "a" in r and r.names() == ("a",) and len(r) == 1
    with pytest.raises(ValueError, match=r"unknown widget 'b'; available: a"):
        r.get("b")
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", lambda: None)
    with pytest.raises(ValueError, match="reserved"):
        r.register("none", a)
    with pytest.raises(ValueError, match="non-empty string"):
        r.register("", a)


def test_the_same_definition_run_again_replaces_itself():
    r = Registry("widget", "tvvar-test-widgets")

    def make():
        def w():
            pass
        return w

    first, again = make(), make()
    r.register("w", first)
    r.register("w", again)  # a reloaded module / a notebook cell run twice
    assert r["w"] is again


def test_temporarily_restores_what_was_there():
    r = Registry("widget", "tvvar-test-widgets")
    r.register("x", int)
    with r.temporarily("x", float) as got:
        assert got is float and r["x"] is float
    assert r["x"] is int
    with r.temporarily("y", str):
        assert "y" in r
    assert "y" not in r


def test_validation_runs_before_a_member_is_stored():
    def only_types(name, m):
        if not isinstance(m, type):
            raise TypeError(f"{name}: a class is needed")

    r = Registry("widget", "tvvar-test-widgets", validate=only_types)
    with pytest.raises(TypeError, match="a class is needed"):
        r.register("f", len)
    assert "f" not in r


def test_an_installed_package_declares_members_as_entry_points(monkeypatch):
    r = Registry("widget", "tvvar-test-widgets")
    mod = types.ModuleType("tvvar_test_plugin")
    mod_body = "r.register('plugged', object)"
    monkeypatch.setitem(sys.modules, "tvvar_test_plugin", mod)
    loaded = []

    class EP:
        value = "tvvar_test_plugin:anything"

    def entry_points(group):
        assert group == "tvvar-test-widgets"
        loaded.append(group)
        exec(mod_body, {"r": r})  # what importing the plugin module does: it registers its members
        return [EP()]

    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert r["plugged"] is object and loaded == ["tvvar-test-widgets"]
    r.names()
    assert loaded == ["tvvar-test-widgets"]  # the group is read once
