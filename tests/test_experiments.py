"""The experiment contract (results.json shape, checks) and the main job, experiments.reproduce."""

import json

import pytest

from experiments import reproduce
from experiments.common import check, load_results


@pytest.mark.parametrize(
    "measured,reference,relation,tol,passed",
    [(1.0, 1.0, "==", 0.0, True), (1.1, 1.0, "~", 0.05, False), (0.9, 1.0, "<=", 0.0, True),
     (1.05, 1.0, "<=", 0.1, True), (0.8, 1.0, ">=", 0.1, False), (float("nan"), 0.0, "<=", 1.0, False)],
)
def test_check_relations(measured, reference, relation, tol, passed):
    assert check("x", measured, reference, relation, tol)["passed"] is passed


def test_check_refuses_unknown_relation():
    with pytest.raises(ValueError, match="relation"):
        check("x", 1.0, 1.0, "!=")


@pytest.mark.slow
def test_reproduce_quick_writes_report_and_results(tmp_path):
    code = reproduce.main(["--quick", "--only", "theorem5", "--out", str(tmp_path)])
    assert code == 0
    res = load_results(tmp_path / "theorem5")
    assert set(res) == {"experiment", "config", "seconds", "checks", "mutants", "figures", "data"}
    assert res["checks"] and all(c["passed"] for c in res["checks"])
    for c in res["checks"]:
        assert set(c) == {"name", "measured", "reference", "relation", "tolerance", "source", "passed", "skipped",
                          "identity", "label", "kills"}
        assert c["label"] == "verifies" and c["kills"], c  # every Theorem 5 row kills a mutant (tests/mutants)
    assert res["mutants"]["survivors"] == [] and res["mutants"]["killed"] == res["mutants"]["mutants"] >= 4
    for fig in res["figures"]:
        assert (tmp_path / "theorem5" / fig).stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "## theorem5" in report and "theorem5_pi.png" in report
    assert "verifies: kills `softmax_over_queries`" in report and "surviving: **none**" in report
    assert json.loads((tmp_path / "summary.json").read_text())["failed"] == []


def test_reproduce_refuses_unknown_experiment(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--only", "nonexistent"])
    assert "unknown experiment" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# skipped checks: visible in report.md / summary.json, and reproduce's exit status honours them
# --------------------------------------------------------------------------------------------------

import dataclasses  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

from experiments import elbo  # noqa: E402
from experiments.common import cli, skipped, tally  # noqa: E402


def _fake_experiment(monkeypatch, run):
    """A tiny module in the shape of experiments/NAME.py, put in place of the real experiments."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        seed: int = 0

        @classmethod
        def quick(cls):
            return cls()

        @classmethod
        def full(cls):
            return cls()

    mod = types.ModuleType("experiments.fake")
    mod.Config, mod.run = Config, run
    monkeypatch.setitem(sys.modules, "experiments.fake", mod)
    monkeypatch.setattr(reproduce, "EXPERIMENTS", ("fake",))
    return mod


def _text_like_run(config, out):
    """What experiments.elbo does about its corpus, without training: its own corpus lookup and the
    skipped rows of its text checks."""
    cfg = elbo.Config.quick()
    corpus, why = elbo.text_corpus(cfg)
    checks = [check("always runs", 0.0, 0.0, "==")]
    if corpus is None:
        checks += elbo.planned_text_checks(cfg, why)
    return {"checks": checks, "figures": [], "data": {}}


def test_skipped_shape_and_tally():
    s = skipped("x", "no corpus", 1.0, "<=", 0.5, "src")
    assert set(s) == set(check("y", 1.0, 1.0, "==")) and s["passed"] is None and s["skipped"] == "no corpus"
    assert tally([s, check("a", 0, 0, "=="), check("b", 1, 0, "==")]) == {"passed": 1, "failed": 1, "skipped": 1,
                                                                          "total": 3}
    with pytest.raises(ValueError, match="reason"):
        skipped("x", "")


def test_missing_corpus_is_skipped_in_report_and_fails_reproduce(monkeypatch, tmp_path, capsys):
    missing = tmp_path / "no_such_corpus.txt"
    monkeypatch.setenv("TVVAR_TEXT", str(missing))
    _fake_experiment(monkeypatch, _text_like_run)
    code = reproduce.main(["--quick", "--out", str(tmp_path / "r")])
    assert code == 1
    report = (tmp_path / "r" / "report.md").read_text()
    rows = [ln for ln in report.splitlines() if ln.startswith("| ") and "⏭️ skipped:" in ln]
    assert len(rows) == len(elbo.Config.quick().objectives) + 6
    assert all("no_such_corpus.txt" in ln and ln.startswith("| text") for ln in rows)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["skipped_count"] == len(rows) and summary["failed"] == [] and summary["passed"] == 1
    assert all("no_such_corpus.txt" in s["reason"] for s in summary["skipped"])
    res = load_results(tmp_path / "r" / "fake")
    assert sum(c["skipped"] is not None for c in res["checks"]) == len(rows)
    assert "--allow-skips" in capsys.readouterr().out


def test_allow_skips_exits_zero_but_still_reports(monkeypatch, tmp_path):
    monkeypatch.setenv("TVVAR_TEXT", str(tmp_path / "no_such_corpus.txt"))
    _fake_experiment(monkeypatch, _text_like_run)
    assert reproduce.main(["--quick", "--allow-skips", "--out", str(tmp_path / "r")]) == 0
    assert "skipped: **10**" in (tmp_path / "r" / "report.md").read_text()


def test_corpus_present_means_nothing_skipped(monkeypatch, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 50)
    monkeypatch.setenv("TVVAR_TEXT", str(corpus))
    _fake_experiment(monkeypatch, _text_like_run)
    assert reproduce.main(["--quick", "--out", str(tmp_path / "r")]) == 0


def test_failed_check_still_fails_with_allow_skips(monkeypatch, tmp_path):
    _fake_experiment(monkeypatch, lambda c, o: {"checks": [check("bad", 1.0, 0.0, "==")], "figures": [], "data": {}})
    assert reproduce.main(["--quick", "--allow-skips", "--out", str(tmp_path / "r")]) == 1


def test_cli_prints_skipped_checks(monkeypatch, tmp_path, capsys):
    mod = _fake_experiment(monkeypatch, lambda c, o: {"checks": [skipped("needs data", "no data here")],
                                                      "figures": [], "data": {}})
    cli("fake", mod.Config, mod.run)(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "[skip] needs data: skipped — no data here" in out and "1 skipped" in out


def test_execute_refuses_hand_built_checks(monkeypatch, tmp_path):
    from experiments.common import execute

    bad = {"name": "x", "measured": 0.0, "reference": 0.0, "relation": "==", "tolerance": 0, "source": "",
           "passed": True}
    with pytest.raises(ValueError, match="check\\(\\) or skipped\\(\\)"):
        execute("fake", None, lambda c, o: {"checks": [bad], "figures": [], "data": {}}, tmp_path)



_FAKE_MODULE = '''
import dataclasses
import os

from experiments.common import check


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    value: float = 1.0

    @classmethod
    def quick(cls):
        return cls(value=2.0)

    @classmethod
    def full(cls):
        return cls()


def run(config, out):
    return {"checks": [check("value is the quick one", config.value, 2.0, "=="),
                       check("seed arrives", config.seed, 7, "==")],
            "figures": [], "data": {"pid": os.getpid()}}
'''


def test_jobs_run_each_experiment_in_its_own_process_with_the_same_report(monkeypatch, tmp_path):
    import os

    for name in ("fake_a", "fake_b", "fake_c"):
        (tmp_path / f"tvvar_fake_{name}.py").write_text(_FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(reproduce, "EXPERIMENTS", ("fake_a", "fake_b", "fake_c"))
    monkeypatch.setattr(reproduce, "module_name", lambda n: f"tvvar_fake_{n}")
    assert reproduce.main(["--quick", "--seed", "7", "--out", str(tmp_path / "one")]) == 0
    assert reproduce.main(["--quick", "--seed", "7", "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    strip = lambda text: [ln for ln in text.splitlines() if "| [fake" not in ln]  # noqa: E731 (the seconds column)
    assert strip((tmp_path / "one" / "report.md").read_text()) == strip((tmp_path / "two" / "report.md").read_text())
    pids = {load_results(tmp_path / "two" / n)["data"]["pid"] for n in ("fake_a", "fake_b", "fake_c")}
    assert len(pids) == 3 and os.getpid() not in pids  # a fresh process per experiment
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["experiments"] == ["fake_a", "fake_b", "fake_c"] and summary["passed"] == 6


def test_jobs_below_one_is_refused(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--jobs", "0"])
    assert "--jobs must be" in capsys.readouterr().err


def test_check_lines_read_as_true_statements():
    from experiments.common import format_check

    assert format_check(check("gap", 1.83, 0.0, "<=", 4.0)) == (
        "  [ok  ] gap: measured 1.83 ≤ reference 0 + tolerance 4: pass")
    assert format_check(check("gap", 5.0, 0.0, "<=", 4.0)).endswith("measured 5 ≤ reference 0 + tolerance 4: fail")
    assert format_check(check("m", 0.5, 1.0, ">=", 0.1)).startswith("  [FAIL] m: measured 0.5 ≥ reference 1 − ")
    assert format_check(check("e", 1.0, 1.05, "~", 0.1)) == (
        "  [ok  ] e: |measured 1 − reference 1.05| ≤ tolerance 0.1: pass")
    assert format_check(skipped("s", "no corpus")) == "  [skip] s: skipped — no corpus"
