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
    assert set(res) == {"experiment", "config", "seconds", "checks", "figures", "data"}
    assert res["checks"] and all(c["passed"] for c in res["checks"])
    for c in res["checks"]:
        assert set(c) == {"name", "measured", "reference", "relation", "tolerance", "source", "passed"}
    for fig in res["figures"]:
        assert (tmp_path / "theorem5" / fig).stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "## theorem5" in report and "theorem5_pi.png" in report
    assert json.loads((tmp_path / "summary.json").read_text())["failed"] == []


def test_reproduce_refuses_unknown_experiment(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--only", "nonexistent"])
    assert "unknown experiment" in capsys.readouterr().err
